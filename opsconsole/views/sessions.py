"""Pages. Thin: every question is answered by live, runs or transcript_store."""

from __future__ import annotations

import threading
import time
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.http import (
    FileResponse,
    Http404,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseForbidden,
    StreamingHttpResponse,
)
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET, require_POST

from jobs_app.models import Job
from monitor_app.fleet_reader import fleet
from monitor_app.leftovers import kill_leftovers, leftovers_of
from monitor_app.live import ensure_history_current, find_run, get_snapshot, live_runs
from monitor_app.models import HostSample
from monitor_app.runs import retry_chain
from opsconsole.views.hosts import requests_for_session
from sessions_app import transcript_store
from sessions_app.charts import cost_chart
from sessions_app.costs import cost_report
from sessions_app.ending import ending_of, no_transcript_reason
from sessions_app.export import csv_lines
from sessions_app.history import HistoryFilters, history_page
from sessions_app.models import Session, Status
from sessions_app.search import search_with_sessions as transcript_search
from sessions_app.timeline import run_timeline
from sessions_app.transcripts.tail import open_transcript, parse_offset

# The live section, rendered once per second however many tabs poll, and once per sample
# for this host: (host filter, sample, outage, staff, second) -> HTML. The key names every
# way the section may differ between viewers; nothing else in it depends on who asks.
_sections: dict[tuple, str] = {}
_sections_lock = threading.Lock()


def _live_context(request, snapshot=None) -> dict:
    # ?host=NAME shows a reporting host's runs, ?host=all the whole fleet (fleet.console).
    host = request.GET.get("host", "")[:255]
    if host == "all":
        # A page of thousands of rows helps nobody and costs ~0.1 ms a row: the most
        # recent ones, the rest one host away.
        view = fleet.live(settings.OPSCONSOLE_FLEET_LIVE_ROWS)
        return {
            "snapshot": view.snapshot,
            "runs": view.runs,
            "host_filter": host,
            "runs_total": view.runs_total,
            "runs_hidden": view.runs_total - len(view.runs),
        }
    if host and host != settings.OPSCONSOLE_HOST:
        snapshot = fleet.snapshot([host])
    else:
        host, snapshot = "", snapshot or get_snapshot()
    runs = live_runs(snapshot)
    return {"snapshot": snapshot, "runs": runs, "host_filter": host, "runs_total": len(runs)}


def _live_section(request, outage_reason: str | None) -> str:
    host = request.GET.get("host", "")[:255]
    if host == settings.OPSCONSOLE_HOST:
        host = ""
    if host not in ("", "all"):
        # One reporting host's runs: its sample is parsed once per seq, the page is small.
        context = {**_live_context(request), "outage_reason": outage_reason}
        return render_to_string("sessions_app/_live_section.html", context, request=request)
    snapshot = None
    if host == "all":
        # Hosts report every few seconds each, so the fleet changes many times a second:
        # the section is at most a second old (a new run shows by the next poll).
        sample = None
    else:
        snapshot = get_snapshot()
        sample = (snapshot.seq, snapshot.source)
    now = int(time.time())
    key = (host, sample, outage_reason, bool(request.user.is_staff), now)
    html = _sections.get(key)
    if html is None:
        context = {**_live_context(request, snapshot), "outage_reason": outage_reason}
        html = render_to_string("sessions_app/_live_section.html", context, request=request)
        with _sections_lock:
            for old in [k for k in _sections if k[-1] != now]:
                del _sections[old]
            _sections[key] = html
    return html


def forget_live_sections() -> None:
    with _sections_lock:
        _sections.clear()


def render_live(request, *, outage_reason: str | None = None):
    """The live page, or its polled fragment; also what a logged-in person gets while the
    database is unreachable (the monitor's sample needs none)."""
    section = _live_section(request, outage_reason)
    if request.path_info.rstrip("/").endswith("live/rows"):
        return HttpResponse(section)
    host = request.GET.get("host", "")[:255]
    context = {
        "host_filter": "" if host == settings.OPSCONSOLE_HOST else host,
        "live_section": mark_safe(section),  # noqa: S308 - rendered (and escaped) above
        "outage_reason": outage_reason,
    }
    if outage_reason is None:
        samples = HostSample.objects.only(*HostSample.SILENCE_FIELDS)
        # Reporting hosts only: a one-host console shows no host filter.
        now = timezone.now()
        context["fleet_hosts"] = [
            (s.host, s.is_silent(now)) for s in samples if s.host != settings.OPSCONSOLE_HOST
        ]
    return render(request, "sessions_app/live.html", context)


@require_GET
def live(request):
    return render_live(request)


@require_GET
def live_rows(request):
    return render_live(request)


def _run_or_404(session_id: str):
    run = find_run(str(session_id))
    if run is None:
        raise Http404("No session with that id is live or on record.")
    return run


def _sidecar_of(session_id: str):
    live_session = get_snapshot().get(session_id)
    return live_session.sidecar if live_session else None


@require_GET
def session_page(request, session_id):
    session_id = str(session_id)
    run = _run_or_404(session_id)
    try:
        before = parse_offset(request.GET.get("before"))
        at = parse_offset(request.GET.get("at"))
    except ValueError:
        return HttpResponseBadRequest("before and at must be byte offsets (whole numbers >= 0).")
    sidecar = _sidecar_of(session_id)
    page = transcript_store.read_page(
        session_id, sidecar=sidecar, session=run.record, before=before, at=at
    )

    snapshot = get_snapshot()
    if run.host != settings.OPSCONSOLE_HOST:  # a reporting host's run: its latest sample
        snapshot = fleet.snapshot([run.host])
    return render(
        request,
        "sessions_app/session.html",
        {
            "run": run,
            "remote": run.host != settings.OPSCONSOLE_HOST,
            **requests_for_session(session_id, run.host),
            "leftovers": leftovers_of(session_id, snapshot),
            "can_act": request.user.is_staff,
            "chain": retry_chain(run),
            "page": page,
            "paging_back": before is not None,
            "reading_at": at is not None,
            "following": run.live and before is None and at is None,
            "subagents": transcript_store.subagents(page.located),
            "open_agent": request.GET.get("agent", ""),
            "running_cost": _running_cost(run, sidecar),
            "ending": None if run.live else ending_of(run.record),
            "timeline": _timeline(run, page.located),
            "no_transcript": "" if run.live else no_transcript_reason(run.record),
        },
    )


def _running_cost(run, sidecar):
    if not run.live:
        return None
    return transcript_store.live_running_cost(run.session_id, sidecar=sidecar, session=run.record)


def _timeline(run, located):
    return run_timeline(
        run.session_id,
        record=run.record,
        started_at=run.started_at,
        live=run.live,
        now=timezone.now(),
        tools=transcript_store.tool_calls(located),
    )


@require_GET
def session_timeline(request, session_id):
    """The timeline alone, polled while the run lives."""
    run = _run_or_404(str(session_id))
    located = transcript_store.locate(
        run.session_id, sidecar=_sidecar_of(run.session_id), session=run.record
    )
    return render(
        request, "sessions_app/_timeline.html", {"run": run, "timeline": _timeline(run, located)}
    )


@require_GET
def session_header(request, session_id):
    run = _run_or_404(str(session_id))
    return render(
        request,
        "sessions_app/_session_header.html",
        {"run": run, "running_cost": _running_cost(run, _sidecar_of(run.session_id))},
    )


@require_GET
def transcript_follow(request, session_id):
    """New transcript entries after byte `after`, plus the follower that asks for the next."""
    session_id = str(session_id)
    run = _run_or_404(session_id)
    try:
        after = parse_offset(request.GET.get("after")) or 0
    except ValueError:
        return HttpResponseBadRequest("after must be a byte offset (a whole number >= 0).")
    page = transcript_store.read_page(
        session_id, sidecar=_sidecar_of(session_id), session=run.record, after=after
    )
    # Keep following while the run lives, or while bytes remain unread.
    following = run.live or page.next_offset < page.total
    return render(
        request,
        "sessions_app/_transcript_follow.html",
        {"run": run, "page": page, "following": following},
    )


@require_GET
def history(request):
    ensure_history_current()
    filters = HistoryFilters.from_query(request.GET)
    page = history_page(filters, before=request.GET.get("before") or None)
    text = str(request.GET.get("text", "")).strip()[:200]
    return render(
        request,
        "sessions_app/history.html",
        {
            "text": text,
            "hits": transcript_search(text) if text else None,
            "filters": filters,
            "page": page,
            "statuses": Status.choices,
            "jobs": Job.objects.order_by("label").only("id", "label"),
            "query": urlencode(filters.as_query()),
        },
    )


@require_GET
def history_csv(request):
    ensure_history_current()
    filters = HistoryFilters.from_query(request.GET)
    response = StreamingHttpResponse(csv_lines(filters), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="opsconsole-history.csv"'
    return response


COST_RANGES = (7, 30, 90)


@require_GET
def costs(request):
    try:
        days = int(request.GET.get("days", "30"))
    except ValueError:
        days = 30
    days = days if days in COST_RANGES else 30
    host = request.GET.get("host", "")[:255]
    ensure_history_current()
    report = cost_report(days, host=host)
    return render(
        request,
        "sessions_app/costs.html",
        {"report": report, "chart": cost_chart(report), "ranges": COST_RANGES},
    )


@require_GET
def transcript_download(request, session_id):
    """The whole transcript file, as Claude Code wrote it."""
    session_id = str(session_id)
    run = _run_or_404(session_id)
    located = transcript_store.locate(
        session_id, sidecar=_sidecar_of(session_id), session=run.record
    )
    if located is None:
        raise Http404("No transcript for this session.")
    try:
        # Never through a symlink (O_NOFOLLOW), like every other transcript read.
        handle = open_transcript(located.path)
    except OSError as exc:
        raise Http404("The transcript is a symlink or not a regular file.") from exc
    response = FileResponse(
        handle,
        content_type="application/x-ndjson",
        as_attachment=True,
        filename=f"{run.script_tag}_{session_id}.jsonl",
    )
    return response


@require_POST
def kill_leftovers_view(request, session_id):
    """Staff: stop the processes an ended run left behind."""
    if not request.user.is_staff:
        return HttpResponseForbidden("Operator actions need admin rights (staff status).")
    session = get_object_or_404(Session, session_id=session_id)
    result = kill_leftovers(session, request.user.get_username())
    if result.outcome.errors:
        messages.error(request, f"kill leftovers: {result.message}; {result.outcome.errors}")
    else:
        messages.success(request, f"kill leftovers: {result.message}")
    return redirect("session", session_id=session_id)
