"""Pages. Thin: every question is answered by live, runs or transcript_store."""

from __future__ import annotations

from django.http import Http404
from django.shortcuts import render
from django.views.decorators.http import require_GET

from sessions_app import transcript_store
from sessions_app.live import get_snapshot
from sessions_app.runs import find_run, live_runs, retry_chain


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
    page = transcript_store.read_page(
        session_id, sidecar=_sidecar_of(session_id), session=run.record
    )
    return render(
        request,
        "sessions_app/session.html",
        {"run": run, "chain": retry_chain(run), "page": page, "following": run.live},
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
