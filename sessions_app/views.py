"""Pages. Thin: every question is answered by live, runs or transcript_store."""

from __future__ import annotations

from urllib.parse import urlencode

from django.http import FileResponse, Http404, StreamingHttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from jobs_app.models import Job
from sessions_app import transcript_store
from sessions_app.charts import cost_chart
from sessions_app.costs import cost_report
from sessions_app.export import csv_lines
from sessions_app.history import HistoryFilters, history_page
from sessions_app.live import get_snapshot
from sessions_app.models import Status
from sessions_app.runs import find_run, live_runs, retry_chain
from sessions_app.search import search_with_sessions as transcript_search
from sessions_app.transcripts.tail import open_transcript


def _live_context() -> dict:
    snapshot = get_snapshot()
    return {"snapshot": snapshot, "runs": live_runs(snapshot)}


@require_GET
def live(request):
    return render(request, "sessions_app/live.html", _live_context())


@require_GET
def live_rows(request):
    return render(request, "sessions_app/_live_section.html", _live_context())


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
    before = _offset(request.GET.get("before"))
    at = _offset(request.GET.get("at"))
    sidecar = _sidecar_of(session_id)
    page = transcript_store.read_page(
        session_id, sidecar=sidecar, session=run.record, before=before, at=at
    )
    return render(
        request,
        "sessions_app/session.html",
        {
            "run": run,
            "chain": retry_chain(run),
            "page": page,
            "paging_back": before is not None,
            "reading_at": at is not None,
            "following": run.live and before is None and at is None,
            "subagents": transcript_store.subagents(page.located),
            "open_agent": request.GET.get("agent", ""),
            "running_cost": _running_cost(run, sidecar),
        },
    )


def _offset(value: str | None) -> int | None:
    try:
        return max(0, int(value)) if value is not None else None
    except ValueError:
        return None


def _running_cost(run, sidecar):
    if not run.live:
        return None
    return transcript_store.live_running_cost(run.session_id, sidecar=sidecar, session=run.record)


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
    get_snapshot()  # ingests completion records: history is current without a cron entry
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
    get_snapshot()
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
    get_snapshot()
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
