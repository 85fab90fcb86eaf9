from django.conf import settings
from django.utils import timezone

from opsconsole.middleware import outage
from opsconsole.overview import NavCounts


def console(request):
    context = {
        "poll_seconds": settings.OPSCONSOLE_POLL_SECONDS,
        "console_host": settings.OPSCONSOLE_HOST,
        "leftover_grace_seconds": settings.OPSCONSOLE_LEFTOVER_GRACE_SECONDS,
    }
    user = getattr(request, "user", None)
    # While the database is out the page comes from the monitor's sample: no counts.
    if user is not None and user.is_authenticated and outage.current() is None:
        context["nav_counts"] = NavCounts(timezone.now())
    return context
