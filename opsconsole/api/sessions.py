"""JSON API. Paths kept from the seed so existing curl habits still work."""

from __future__ import annotations

import re

from django.conf import settings
from django.core.paginator import EmptyPage, InvalidPage, Paginator
from django.db import DatabaseError
from django.http import (
    HttpResponse,
    HttpResponseNotModified,
    JsonResponse,
    StreamingHttpResponse,
)
from django.views.decorators.http import require_GET, require_POST

from monitor_app import published
from monitor_app.leftovers import kill_leftovers, leftover_payload, leftovers_of
from monitor_app.live import ensure_history_current, find_run, get_snapshot
from monitor_app.runs import run_from_record, run_payload
from opsconsole.api.hosts import claude_active_of
from opsconsole.auth import api_view, json_error
from sessions_app import transcript_store
from sessions_app.ending import ending_payload
from sessions_app.export import json_chunks
from sessions_app.history import HistoryFilters
from sessions_app.models import Session, Status
from sessions_app.outcome import outcome_of
from sessions_app.transcripts.tail import (
    OffsetBeyondEnd,
    parse_range_header,
    read_from,
    read_tail,
)
from wrapper.formats import field_problem, is_session_id

# A page number: a few digits, no more ("1e9", "abc" and 5,000 digits are not pages).
_PAGE_RE = re.compile(r"[0-9]{1,9}")


@api_view
@require_GET
def claude_active(request):
    """The monitor's latest sample, byte for byte as it published it; 304 if unchanged.

    `?host=NAME`: that host's latest sample; `?host=all`: every host's (the fleet)."""
    host = request.GET.get("host", "")
    if host and host != settings.OPSCONSOLE_HOST:
        return claude_active_of(request, host)
    item, source = published.reader.published(settings.OPSCONSOLE_HOST)
    if item is None or not published.is_fresh(item):
        # No monitor publishing: sample on demand and say so.
        snapshot = get_snapshot()
        item, source = on_demand_document(snapshot), snapshot.source
    if item.etag in _etags(request.headers.get("If-None-Match", "")):
        response = HttpResponseNotModified()
    else:
        response = HttpResponse(item.api_body, content_type="application/json")
    response["ETag"] = item.etag
    response["Cache-Control"] = "private, no-cache"
    response["X-Sample-Source"] = source
    response["X-Sample-Taken-At"] = item.taken_at.isoformat()
    return response


_on_demand: list = [None, None]  # [snapshot, its document]: built once per snapshot


def on_demand_document(snapshot):
    """The published form of an on-demand snapshot, serialised once however many clients
    poll it (snapshots are shared for OPSCONSOLE_SNAPSHOT_SECONDS)."""
    built_for, item = _on_demand
    if built_for is not snapshot:
        item = published.build(snapshot, settings.OPSCONSOLE_HOST, snapshot.seq, None)
        _on_demand[:] = [snapshot, item]
    return item


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


@api_view
@require_GET
def session_detail(request, session_id: str):
    if not is_session_id(session_id):
        return json_error("Not a session id (a lowercase UUID).", 400)
    run = find_run(session_id)
    if run is None:
        return json_error(f"No session {session_id} is live or on record.", 404)
    payload = with_record_fields(run_payload(run, with_processes=True), run.record)
    payload["leftovers"] = leftover_payload(leftovers_of(session_id, get_snapshot()))
    return JsonResponse(payload)


@api_view
@require_POST
def session_kill_leftovers(request, session_id: str):
    if not is_session_id(session_id):
        return json_error("Not a session id (a lowercase UUID).", 400)
    if not request.user.is_staff:
        return json_error("Operator actions need admin rights (staff status).", 403)
    session = Session.objects.filter(session_id=session_id).first()
    if session is None:
        return json_error(f"No session {session_id} on record.", 404)
    result = kill_leftovers(session, request.user.get_username())
    return JsonResponse(
        {
            "ok": not result.outcome.errors,
            "message": result.message,
            "terminated": result.outcome.terminated,
            "killed": result.outcome.killed,
            "errors": result.outcome.errors,
        },
        status=200 if not result.outcome.errors else 502,
    )


def _usd(value) -> float | None:
    return float(value) if value is not None else None


def with_record_fields(payload: dict, record: Session | None) -> dict:
    """Who stopped the run, and how it ended in words (rate-limited, with the reset time)."""
    outcome = outcome_of(record) if record is not None else None
    payload["stopped_by"] = (record.stopped_by or None) if record is not None else None
    payload["outcome"] = outcome.kind if outcome else payload.get("status")
    payload["outcome_label"] = outcome.label if outcome else payload.get("status")
    payload["rate_limit_reset_at"] = (
        outcome.reset_at.isoformat() if outcome and outcome.reset_at else None
    )
    payload["cost_source"] = (record.shown_cost_source or None) if record is not None else None
    # All three, each as its source gave it (None: that source has none).
    payload["costs"] = (
        {
            "reported": _usd(record.cost_usd),
            "telemetry": _usd(record.cost_telemetry_usd),
            "computed": _usd(record.cost_computed_usd),
        }
        if record is not None
        else None
    )
    payload["reason"] = ending_payload(record)
    return payload


@api_view
@require_GET
def session_list(request):
    ensure_history_current()
    rows = Session.objects.all()
    for name in ("tag", "platform", "host", "status"):
        value = request.GET.get(name)
        if value:
            column = "script_tag" if name == "tag" else name
            if field_problem(column, value):
                return json_error(f"{name} is not a name a run can have.", 400)
            rows = rows.filter(**{column: value})
    if request.GET.get("status") and request.GET["status"] not in Status.values:
        return json_error(f"status must be one of {', '.join(Status.values)}.", 400)
    number = request.GET.get("page") or "1"
    if not _PAGE_RE.fullmatch(number):
        return json_error("page must be a whole number.", 400)
    paginator = Paginator(rows, settings.OPSCONSOLE_API_PAGE_SIZE)
    try:
        page = paginator.page(int(number))
    except EmptyPage:
        return json_error("No such page.", 404)
    except InvalidPage:
        return json_error("page must be a whole number.", 400)
    try:
        sessions = [
            with_record_fields(run_payload(run_from_record(row)), row) for row in page.object_list
        ]
    except DatabaseError as exc:
        return json_error(f"Database unavailable: {exc}", 503)
    return JsonResponse(
        {
            "sessions": sessions,
            "page": page.number,
            "pages": paginator.num_pages,
            "count": paginator.count,
            "next": _page_url(request, page.next_page_number()) if page.has_next() else None,
        }
    )


def _page_url(request, number: int) -> str:
    query = request.GET.copy()
    query["page"] = str(number)
    return f"{request.path}?{query.urlencode()}"


@api_view
@require_GET
def transcript_tail(request, session_id: str):
    """The tail of a transcript; `Range: bytes=N-` returns only what came after byte N."""
    if not is_session_id(session_id):
        return json_error("Not a session id (a lowercase UUID).", 400)
    run = find_run(session_id)
    live = get_snapshot().get(session_id)
    located = transcript_store.locate(
        session_id,
        sidecar=live.sidecar if live else None,
        session=run.record if run else None,
    )
    if located is None:
        return json_error(f"No transcript for session {session_id}.", 404)

    range_header = request.headers.get("Range")
    offset = parse_range_header(range_header) if range_header else None
    try:
        if offset is None:
            chunk = read_tail(located.path, settings.OPSCONSOLE_TAIL_BYTES)
            response = HttpResponse(chunk.data, status=200)
        else:
            chunk = read_from(located.path, offset, settings.OPSCONSOLE_TAIL_BYTES)
            if not chunk.data:  # no complete line after N yet: nothing to send
                raise OffsetBeyondEnd(offset, chunk.total)
            response = HttpResponse(chunk.data, status=206)
            response["Content-Range"] = f"bytes {chunk.start}-{chunk.end - 1}/{chunk.total}"
    except OffsetBeyondEnd as exc:
        response = HttpResponse(b"", status=416)
        response["Content-Range"] = f"bytes */{exc.total}"
        response["X-Transcript-Total-Bytes"] = str(exc.total)
        return response
    except OSError:
        return json_error("The transcript could not be read.", 503)
    response["Content-Type"] = "text/plain; charset=utf-8"
    response["Accept-Ranges"] = "bytes"
    response["Cache-Control"] = "no-store"
    response["X-Transcript-Path"] = str(located.path)
    response["X-Transcript-Kind"] = located.kind
    response["X-Transcript-Total-Bytes"] = str(chunk.total)
    response["X-Transcript-Start"] = str(chunk.start)
    response["X-Transcript-End"] = str(chunk.end)
    return response


@api_view
@require_GET
def history_json(request):
    ensure_history_current()
    filters = HistoryFilters.from_query(request.GET)
    if filters.errors:
        return json_error("; ".join(filters.errors), 400)
    return StreamingHttpResponse(json_chunks(filters), content_type="application/json")
