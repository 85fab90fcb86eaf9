"""The event stream over HTTP: what scripts, alerting and other tools follow."""

from __future__ import annotations

import json
import logging

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.http import JsonResponse
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from fleet.budgets import Budgets, admit_report
from fleet.console import ReportRejected, receive_report
from fleet.hosts import expire_actions, host_rows
from jobs_app.models import AuditEntry
from monitor_app import published
from monitor_app.fleet_reader import fleet
from monitor_app.live import get_snapshot
from monitor_app.models import Event, EventKind, HostToken, RemoteAction, own_host_problem
from monitor_app.remote_actions import request_action
from monitor_app.stopping import stop_session
from monitor_app.telemetry_receiver import Refused, inflate
from opsconsole.auth import api_view, json_error, unauthorized
from sessions_app.database import DATABASE_AWAY
from sessions_app.models import LIVE_STATUSES, Session
from wrapper.formats import is_session_id

log = logging.getLogger(__name__)

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


# ----------------------------------------------------------------------------- hosts

MAX_REPORT_BYTES = 8 * 1024 * 1024


def host_of_request(request) -> tuple[str | None, JsonResponse | None]:
    """The host a bearer host token is bound to, or the 401 to answer."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None, unauthorized(
            "A host reports with 'Authorization: Bearer oc_host_...' "
            "(opsconsole create_host_token HOSTNAME on the console)."
        )
    row = HostToken.authenticate(token.strip())
    if row is None:
        return None, unauthorized("Invalid or revoked host token.")
    problem = own_host_problem(row.host)
    if problem:  # a token issued before issuing one for this name was refused
        return None, json_error(f"{problem}: revoke this token (revoke_host_token).", 403)
    return row.host, None


def read_report_body(request) -> bytes:
    try:
        length = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        length = -1
    if not 0 < length <= MAX_REPORT_BYTES:
        raise ReportRejected(f"a report is 1 to {MAX_REPORT_BYTES} bytes", 413)
    body = request.read(length)
    limit = settings.OPSCONSOLE_HOST_REPORT_MAX_INFLATED_BYTES
    try:
        # Never inflated past the limit (as the OTLP receiver's bodies): a small bomb
        # costs the limit, not its size.
        return inflate(body, request.headers.get("Content-Encoding", ""), limit)
    except Refused as exc:
        reason = exc.reason
        if exc.status == 413:
            reason = f"report too large once inflated (over {limit} bytes)"
        raise ReportRejected(reason, exc.status) from exc


@csrf_exempt
@login_not_required
@require_POST
def hosts_report(request):
    """POST /api/hosts/report: a host's monitor reports its sample, events, completions."""
    host, refusal = host_of_request(request)
    if refusal is not None:
        return refusal
    limits = Budgets.from_settings()
    try:
        wait = admit_report(host, timezone.now(), limits)
        if wait is not None:
            raise ReportRejected(
                f"over {limits.reports_per_minute} reports a minute: send the next one later",
                429,
                retry_after=wait,
            )
        payload = json.loads(read_report_body(request))
        answer = receive_report(payload, host, limits=limits)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested past any report
        return json_error(f"report is not JSON: {type(exc).__name__}: {exc}"[:500], 400)
    except ReportRejected as exc:
        response = json_error(str(exc), exc.status)
        if exc.retry_after is not None:
            response["Retry-After"] = str(exc.retry_after)
        return response
    except DATABASE_AWAY as exc:
        log.warning("report of %s not recorded: %s", host, exc)
        return json_error("database unavailable: report not recorded, send it again", 503)
    return JsonResponse(answer)


@api_view
@require_POST
def session_stop(request, session_id: str):
    """Stop a live run, on this host or on a reporting host (then a pending request)."""
    if not request.user.is_staff:
        return json_error("Operator actions need admin rights (staff status).", 403)
    session = (
        Session.objects.filter(session_id=session_id).first() if is_session_id(session_id) else None
    )
    if session is None:
        return json_error(f"No session {session_id} on record.", 404)
    actor = request.user.get_username()
    if session.host != settings.OPSCONSOLE_HOST:
        if session.status not in LIVE_STATUSES:
            return json_error(f"{session_id} is not live ({session.status}).", 409)
        action = request_action(RemoteAction.Kind.STOP, session, actor)
        return JsonResponse(remote_action_payload(action), status=202)
    live = get_snapshot(fresh=True).get(session_id)
    if live is None:
        return json_error(f"{session_id} is not live on {settings.OPSCONSOLE_HOST}.", 409)
    outcome = stop_session(
        live, actor=actor, reason="stopped", grace=settings.OPSCONSOLE_STOP_GRACE_SECONDS
    )
    AuditEntry.objects.create(
        actor=actor,
        action="stop",
        job=session.job,
        target=session_id,
        ok=not outcome.errors,
        output="\n".join(outcome.errors),
        detail={"terminated": outcome.terminated, "killed": outcome.killed},
    )
    return JsonResponse(
        {"ok": not outcome.errors, "state": "done", "message": outcome.summary},
        status=200 if not outcome.errors else 502,
    )


@api_view
@require_GET
def remote_action(request, action_id: int):
    action = RemoteAction.objects.filter(pk=action_id).select_related("job").first()
    if action is None:
        return json_error(f"No request {action_id}.", 404)
    return JsonResponse(remote_action_payload(action))


def remote_action_payload(action: RemoteAction) -> dict:
    return {
        "id": action.pk,
        "host": action.host,
        "kind": action.kind,
        "session_id": str(action.session_id) if action.session_id else None,
        "job": {"id": action.job_id, "label": action.job.label} if action.job_id else None,
        "arguments": action.arguments,
        "requested_by": action.requested_by,
        "requested_at": action.requested_at.isoformat(),
        "state": action.state,
        "sent_at": action.sent_at.isoformat() if action.sent_at else None,
        "message": action.message,
        "detail": action.detail,
        "finished_at": action.finished_at.isoformat() if action.finished_at else None,
        "url": reverse("api-remote-action", args=[action.pk]),
    }


@api_view
@require_GET
def hosts(request):
    expire_actions()
    return JsonResponse(
        {
            "hosts": [
                {
                    "host": row.host,
                    "this_host": row.this_host,
                    "silent": row.silent,
                    "last_sample_age_seconds": row.age_seconds,
                    "taken_at": row.sample.taken_at.isoformat() if row.sample else None,
                    "received_at": row.sample.received_at.isoformat()
                    if row.sample and row.sample.received_at
                    else None,
                    "clock_skew_seconds": row.sample.clock_skew_seconds if row.sample else None,
                    "monitor_version": row.sample.monitor_version if row.sample else None,
                    # Declared by an idle host: it reports this often, not every sample.
                    "heartbeat_seconds": row.sample.heartbeat_seconds if row.sample else None,
                    "live_runs": row.live_runs,
                    "leftovers": row.leftovers,
                    "quota_until": row.quota_until,
                    "jobs": row.jobs,
                    "runs_30d": row.runs_30d,
                    "cost_usd_30d": row.cost_30d,
                    "refused_items": row.refused_items,
                    "unknown_cost_runs_30d": row.unknown_cost_30d,
                }
                for row in host_rows()
            ]
        }
    )


def claude_active_of(request, host: str):
    """/api/claude-active?host=NAME|all: a reporting host's sample, or the fleet's."""
    from django.http import HttpResponse, HttpResponseNotModified

    if host == "all":
        body, etag = fleet.api_document()
        taken_at, source = None, "fleet"
    else:
        item, source = published.reader.published(host[:255])
        if item is None:
            return json_error(f"No sample from host {host[:255]!r}.", 404)
        body, etag, taken_at = item.api_body, item.etag, item.taken_at
        if not published.is_fresh(item):
            source = "silent"
    if etag in {
        t.strip().removeprefix("W/") for t in request.headers.get("If-None-Match", "").split(",")
    }:
        response = HttpResponseNotModified()
    else:
        response = HttpResponse(body, content_type="application/json")
    response["ETag"] = etag
    response["Cache-Control"] = "private, no-cache"
    response["X-Sample-Source"] = source
    if taken_at is not None:
        response["X-Sample-Taken-At"] = taken_at.isoformat()
    return response
