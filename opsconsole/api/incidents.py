"""Incidents over HTTP: list them, and acknowledge, snooze or resolve one (staff)."""

from __future__ import annotations

from django.db import transaction
from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from alerts_app.incidents import (
    INCIDENT_ACTIONS,
    IncidentActionError,
    act,
    next_repeat_at,
    repeat_every,
)
from alerts_app.models import Incident
from opsconsole.auth import api_view, json_error

INCIDENTS_SHOWN = 200


def _iso(moment) -> str | None:
    return moment.isoformat() if moment is not None else None


def incident_fields(incident: Incident, every) -> dict:
    return {
        "id": incident.pk,
        "key": incident.key,
        "rule": incident.rule,
        "summary": incident.summary,
        "host": incident.host,
        "job_id": incident.job_id,
        "session_id": str(incident.session_id) if incident.session_id else None,
        "opened_at": _iso(incident.opened_at),
        "resolved_at": _iso(incident.resolved_at),
        "resolved_by": incident.resolved_by or None,
        "resolution_note": incident.resolution_note,
        "acknowledged_at": _iso(incident.acknowledged_at),
        "acknowledged_by": incident.acknowledged_by or None,
        "snoozed_until": _iso(incident.snoozed_until),
        "snoozed_by": incident.snoozed_by or None,
        "last_told_at": _iso(incident.last_told_at),
        "next_repeat_at": _iso(next_repeat_at(incident, every)),
    }


@api_view
@require_GET
def incidents(request):
    """GET /api/incidents?state=open|resolved|all (default open), newest first."""
    state = request.GET.get("state", "open")
    rows = Incident.objects.all()
    if state == "open":
        rows = rows.filter(resolved_at__isnull=True)
    elif state == "resolved":
        rows = rows.filter(resolved_at__isnull=False)
    elif state != "all":
        return json_error("state must be open, resolved or all.", 400)
    every = repeat_every()
    return JsonResponse({"incidents": [incident_fields(i, every) for i in rows[:INCIDENTS_SHOWN]]})


@api_view
@require_POST
def incident_action(request, pk: int, action: str):
    """POST /api/incidents/<id>/acknowledge | snooze (minutes= or until=) | resolve (note=)."""
    if not request.user.is_staff:
        return json_error("Operator actions need admin rights (staff status).", 403)
    if action not in INCIDENT_ACTIONS:
        return json_error(f"action must be one of {', '.join(INCIDENT_ACTIONS)}.", 404)
    with transaction.atomic():
        incident = Incident.objects.select_for_update().filter(pk=pk).first()
        if incident is None:
            return json_error(f"No incident {pk}.", 404)
        try:
            done = act(incident, action, request.user.get_username(), timezone.now(), request.POST)
        except IncidentActionError as exc:
            return json_error(str(exc), 409 if incident.resolved_at else 400)
    return JsonResponse(
        {"ok": True, "message": done, "incident": incident_fields(incident, repeat_every())}
    )
