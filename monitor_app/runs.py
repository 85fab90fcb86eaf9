"""One run as known, live or on record: what pages, the API and commands show.

A live session's truth is its sidecar and the process table; a finished one's
is its Session row. `live.find_run` joins the two so callers never have to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.db import DatabaseError
from django.urls import get_script_prefix, get_urlconf, reverse

from monitor_app.snapshot import LiveSession
from sessions_app.models import Session
from sessions_app.proctree import ProcessDetail, TreeFigures
from wrapper.formats import parse_iso


@dataclass
class Run(TreeFigures):
    session_id: str
    script_tag: str
    platform: str
    host: str
    attempt: int
    retry_of: str | None
    status: str
    started_at: datetime
    ended_at: datetime | None = None
    exit_code: int | None = None
    end_reason: str = ""
    error: str = ""
    cost_usd: Decimal | None = None
    duration_ms: int | None = None
    num_turns: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_creation_tokens: int | None = None
    stop_reason: str = ""
    api_error_status: int | None = None
    model: str = ""
    cwd: str = ""
    wrapper_pid: int | None = None
    claude_pid: int | None = None
    last_tool_call: str | None = None
    processes: list[ProcessDetail] = field(default_factory=list)
    live: bool = False
    record: Session | None = None
    # A reporting host's run as its API document lists it (`run_from_listing`): no
    # process list travels with it, only the tree's CPU and memory as the host summed them.
    listed_figures: tuple[float, int] | None = None

    @property
    def cpu_percent(self) -> float:
        if self.listed_figures is not None:
            return self.listed_figures[0]
        return TreeFigures.cpu_percent.fget(self)

    @property
    def rss(self) -> int:
        if self.listed_figures is not None:
            return self.listed_figures[1]
        return TreeFigures.rss.fget(self)

    @property
    def html_url(self) -> str:
        return session_url_templates()[0].format(self.session_id)

    @property
    def total_tokens(self) -> int | None:
        parts = [
            self.input_tokens,
            self.output_tokens,
            self.cache_read_tokens,
            self.cache_creation_tokens,
        ]
        known = [p for p in parts if p is not None]
        return sum(known) if known else None

    def urls(self) -> dict[str, str]:
        html, jsonl = session_url_templates()
        return {
            "jsonl_url": jsonl.format(self.session_id),
            "html_url": html.format(self.session_id),
        }


# (URLconf, script prefix) -> the session page and transcript URLs with a placeholder.
_url_templates: dict[tuple, tuple[str, str]] = {}


def session_url_templates() -> tuple[str, str]:
    """The session page and transcript URLs with "{}" for the id: one reverse() per
    URLconf, not one per run (a fleet page lists hundreds)."""
    key = (get_urlconf(), settings.ROOT_URLCONF, get_script_prefix())
    found = _url_templates.get(key)
    if found is None:
        marker = "00000000-0000-4000-8000-000000000000"
        html = reverse("session", args=[marker]).replace(marker, "{}")
        jsonl = reverse("api-transcript", args=[marker]).replace(marker, "{}")
        found = _url_templates[key] = (html, jsonl)
    return found


def run_from_live(live: LiveSession, record: Session | None = None) -> Run:
    sidecar = live.sidecar
    run = run_from_record(record) if record is not None else None
    values = {
        "session_id": sidecar.session_id,
        "script_tag": sidecar.script_tag,
        "platform": sidecar.platform,
        "host": sidecar.host,
        "attempt": sidecar.attempt,
        "retry_of": sidecar.retry_of,
        "status": live.state,
        "started_at": parse_iso(sidecar.started_at),
        "cwd": sidecar.cwd,
        "wrapper_pid": sidecar.wrapper_pid,
        "claude_pid": sidecar.claude_pid,
        "last_tool_call": live.last_tool_call,
        "processes": live.processes,
        "live": True,
        "record": record,
    }
    if run is None:
        return Run(**values)
    for name, value in values.items():
        setattr(run, name, value)
    return run


def run_from_listing(item: dict) -> Run:
    """A live run from a host's /api/claude-active entry (monitor_app.published.api_dict):
    what the fleet's live page lists without rebuilding each host's whole snapshot."""
    return Run(
        session_id=item["session_id"],
        script_tag=item["script_tag"],
        platform=item["platform"],
        host=item["host"],
        attempt=item["attempt"],
        retry_of=item.get("retry_of"),
        status=item["state"],
        started_at=parse_iso(item["started_at"]),
        wrapper_pid=item.get("wrapper_pid"),
        claude_pid=item.get("claude_pid"),
        last_tool_call=item.get("last_tool_call"),
        live=True,
        listed_figures=(item.get("cpu_percent") or 0.0, item.get("rss") or 0),
    )


def run_from_record(session: Session) -> Run:
    return Run(
        session_id=str(session.session_id),
        script_tag=session.script_tag,
        platform=session.platform,
        host=session.host,
        attempt=session.attempt,
        retry_of=str(session.retry_of) if session.retry_of else None,
        status=session.status,
        started_at=session.started_at,
        ended_at=session.ended_at,
        exit_code=session.exit_code,
        end_reason=session.end_reason,
        error=session.error,
        cost_usd=session.shown_cost_usd,  # the run's cost, as History shows it
        duration_ms=session.duration_ms,
        num_turns=session.num_turns,
        input_tokens=session.input_tokens,
        output_tokens=session.output_tokens,
        cache_read_tokens=session.cache_read_tokens,
        cache_creation_tokens=session.cache_creation_tokens,
        stop_reason=session.stop_reason,
        api_error_status=session.api_error_status,
        model=session.model,
        cwd=session.cwd,
        wrapper_pid=session.wrapper_pid,
        claude_pid=session.claude_pid,
        record=session,
    )


def retry_chain(run: Run) -> list[Run]:
    """Every attempt of the same wrapper invocation, first attempt first."""
    if run.record is None and run.retry_of is None:
        return [run]
    chain = [run]
    try:
        earlier = run.retry_of
        seen = {run.session_id}
        while earlier and earlier not in seen and len(chain) < 20:
            row = Session.objects.filter(session_id=earlier).first()
            if row is None:
                break
            seen.add(earlier)
            chain.insert(0, run_from_record(row))
            earlier = str(row.retry_of) if row.retry_of else None
        later = run.session_id
        while len(chain) < 20:
            row = Session.objects.filter(retry_of=later).first()
            if row is None or str(row.session_id) in seen:
                break
            seen.add(str(row.session_id))
            chain.append(run_from_record(row))
            later = str(row.session_id)
    except DatabaseError:
        pass
    return chain


def run_payload(run: Run, *, with_processes: bool = False, urls: bool = True) -> dict:
    """The JSON shape of a run (field names kept from the seed's API)."""
    payload = {
        "session_id": run.session_id,
        "script_tag": run.script_tag,
        "platform": run.platform,
        "host": run.host,
        "attempt": run.attempt,
        "retry_of": run.retry_of,
        "state": run.status,
        "status": run.status,
        "started_at": run.started_at.isoformat(),
        "ended_at": run.ended_at.isoformat() if run.ended_at else None,
        "exit_code": run.exit_code,
        "end_reason": run.end_reason or None,
        "error": run.error or None,
        "cost_usd": float(run.cost_usd) if run.cost_usd is not None else None,
        "duration_ms": run.duration_ms,
        "num_turns": run.num_turns,
        "tokens": {
            "input": run.input_tokens,
            "output": run.output_tokens,
            "cache_read": run.cache_read_tokens,
            "cache_creation": run.cache_creation_tokens,
        },
        "stop_reason": run.stop_reason or None,
        "api_error_status": run.api_error_status,
        "wrapper_pid": run.wrapper_pid,
        "claude_pid": run.claude_pid,
        "live": run.live,
        **(run.urls() if urls else {}),
    }
    if run.live:
        payload["last_tool_call"] = run.last_tool_call
        payload["cpu_percent"] = run.cpu_percent
        payload["rss"] = run.rss
    if with_processes and run.live:
        payload["processes"] = [p.to_dict() for p in run.processes]
    return payload
