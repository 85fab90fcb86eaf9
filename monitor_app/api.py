"""The event stream over HTTP: what scripts, alerting and other tools follow."""

from __future__ import annotations

from django.http import JsonResponse
from django.views.decorators.http import require_GET

from monitor_app.models import Event, EventKind
from opsconsole.auth import api_view, json_error

PAGE_SIZE = 200


@api_view
@require_GET
def events(request):
    """Events after id `after` (oldest first), so a follower never misses or repeats one."""
    try:
        after = int(request.GET.get("after", "0"))
        limit = min(PAGE_SIZE, max(1, int(request.GET.get("limit", str(PAGE_SIZE)))))
    except ValueError:
        return json_error("after and limit must be whole numbers.", 400)
    if not 0 <= after < 2**63:
        return json_error("after is out of range.", 400)
    rows = Event.objects.filter(id__gt=after).order_by("id")
    kind = request.GET.get("kind")
    if kind:
        if kind not in EventKind.values:
            return json_error(f"kind must be one of {', '.join(EventKind.values)}.", 400)
        rows = rows.filter(kind=kind)
    if request.GET.get("host"):
        rows = rows.filter(host=request.GET["host"][:255])
    page = list(rows[:limit])
    return JsonResponse(
        {
            "events": [
                {
                    "id": event.id,
                    "at": event.at.isoformat(),
                    "host": event.host,
                    "kind": event.kind,
                    "session_id": str(event.session_id) if event.session_id else None,
                    "job_id": event.job_id,
                    "script_tag": event.script_tag,
                    "status": event.status or None,
                    "message": event.message,
                    "detail": event.detail,
                }
                for event in page
            ],
            "next_after": page[-1].id if page else after,
        }
    )
