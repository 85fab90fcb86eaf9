from django.conf import settings


def console(request):
    return {
        "poll_seconds": settings.OPSCONSOLE_POLL_SECONDS,
        "console_host": settings.OPSCONSOLE_HOST,
        "leftover_grace_seconds": settings.OPSCONSOLE_LEFTOVER_GRACE_SECONDS,
    }
