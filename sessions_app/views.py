"""Pages. Thin: every question is answered by live, runs or transcript_store."""

from __future__ import annotations

from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.http import FileResponse, Http404, HttpResponseForbidden, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from jobs_app.models import Job
from sessions_app import transcript_store
from sessions_app.charts import cost_chart
from sessions_app.costs import cost_report
from sessions_app.export import csv_lines
from sessions_app.history import HistoryFilters, history_page
from sessions_app.leftovers import kill_leftovers, leftovers_of
from sessions_app.live import ensure_history_current, get_snapshot
from sessions_app.models import Session, Status
from sessions_app.runs import find_run, live_runs, retry_chain
from sessions_app.transcripts.tail import open_transcript


def _live_context(request) -> dict:
    # ?host=NAME shows a reporting host's runs, ?host=all the whole fleet (monitor_app.fleet).
    host = request.GET.get("host", "")[:255]
    if host and host != settings.OPSCONSOLE_HOST:
        from monitor_app.fleet import fleet

        snapshot = fleet.snapshot(None if host == "all" else [host])
    else:
        host, snapshot = "", get_snapshot()
    runs = live_runs(snapshot)
    context = {"snapshot": snapshot, "runs": runs, "host_filter": host, "runs_total": len(runs)}
    if host == "all" and len(runs) > settings.OPSCONSOLE_FLEET_LIVE_ROWS:
        # A page of thousands of rows helps nobody and costs ~0.2 ms a row: the most
        # recent ones, the rest one host away.
        context["runs"] = runs[: settings.OPSCONSOLE_FLEET_LIVE_ROWS]
        context["runs_hidden"] = len(runs) - len(context["runs"])
    return context


@require_GET
def live(request):
    from monitor_app.fleet import is_silent
    from monitor_app.models import HostSample

    context = _live_context(request)
    samples = HostSample.objects.only("host", "taken_at", "received_at", "interval_seconds")
    # Reporting hosts only: a one-host console shows no host filter.
    context["fleet_hosts"] = [
        (s.host, is_silent(s)) for s in samples if s.host != settings.OPSCONSOLE_HOST
    ]
    return render(request, "sessions_app/live.html", context)


@require_GET
def live_rows(request):
    return render(request, "sessions_app/_live_section.html", _live_context(request))


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
        before = int(request.GET["before"]) if "before" in request.GET else None
    except ValueError:
        before = None
    page = transcript_store.read_page(
        session_id, sidecar=_sidecar_of(session_id), session=run.record, before=before
    )
    from monitor_app.models import RemoteAction

    snapshot = get_snapshot()
    if run.host != settings.OPSCONSOLE_HOST:  # a reporting host's run: its latest sample
        from monitor_app.fleet import fleet

        snapshot = fleet.snapshot([run.host])
    return render(
        request,
        "sessions_app/session.html",
        {
            "run": run,
            "remote": run.host != settings.OPSCONSOLE_HOST,
            "remote_actions": RemoteAction.objects.filter(session_id=session_id)[:10],
            "leftovers": leftovers_of(session_id, snapshot),
            "can_act": request.user.is_staff,
            "chain": retry_chain(run),
            "page": page,
            "paging_back": before is not None,
            "following": run.live and before is None,
            "subagents": transcript_store.subagents(page.located),
        },
    )


@require_GET
def session_header(request, session_id):
    run = _run_or_404(str(session_id))
    return render(request, "sessions_app/_session_header.html", {"run": run})


@require_GET
def transcript_follow(request, session_id):
    """New transcript entries after byte `after`, plus the follower that asks for the next."""
    session_id = str(session_id)
    run = _run_or_404(session_id)
    try:
        after = max(0, int(request.GET.get("after", "0")))
    except ValueError:
        after = 0
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
    return render(
        request,
        "sessions_app/history.html",
        {
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
    ensure_history_current()
    report = cost_report(days)
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
    response = FileResponse(
        open_transcript(located.path),
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
