"""Where a run's time and money went: its telemetry laid out for the session page.

Built from the run's rollup (`RunTelemetry`) and spans (`TelemetrySpan`): LLM requests
with their time to first token and attempts, tools with their command (from the
transcript, by tool_use id) and duration, waits on permission, and for a live run what
is open now. Beside it the run's three costs, each labelled with where it comes from,
and the drift between them when it is over OPSCONSOLE_COST_DRIFT_PERCENT. A function
of `now`; no request objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings

from sessions_app import transcript_store
from sessions_app.models import RunTelemetry, Session, TelemetrySpan
from sessions_app.telemetry import Rollup, StallKind, ns_to_datetime, stall_kind
from sessions_app.telemetry_records import run_spans, stored_rollup
from sessions_app.transcripts.parse import ToolCalls

# The span names a person reads, in Claude Code's terms.
SPAN_KINDS = {
    "opsconsole.run": ("fire", "the scheduled fire (wrapper)"),
    "opsconsole.attempt": ("attempt", "attempt"),
    "claude_code.interaction": ("interaction", "turn"),
    "claude_code.llm_request": ("llm", "LLM request"),
    "claude_code.tool": ("tool", "tool"),
    "claude_code.tool.execution": ("execution", "running"),
    "claude_code.tool.blocked_on_user": ("wait", "waiting for permission"),
}
BARS_SHOWN = 400


@dataclass
class Bar:
    kind: str
    label: str
    detail: str
    offset_pct: float
    width_pct: float
    duration_ms: float
    error: bool = False
    open: bool = False  # still running (a live run's tool)


@dataclass
class CostLine:
    source: str  # reported, telemetry, computed
    words: str
    usd: Decimal | None
    shown: bool = False  # the one pages and totals use


@dataclass
class Timeline:
    row: RunTelemetry | None
    rollup: Rollup | None
    bars: list[Bar] = field(default_factory=list)
    hidden_bars: int = 0
    stall: StallKind | None = None
    costs: list[CostLine] = field(default_factory=list)
    drift: str = ""
    requests_by: list[tuple[str, dict]] = field(default_factory=list)
    tools: list[tuple[str, dict]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.row is None and not self.bars


def three_costs(record: Session | None, row: RunTelemetry | None) -> tuple[list[CostLine], str]:
    """The run's costs, labelled, and the drift between them ('' when within bounds)."""
    reported = record.cost_usd if record is not None else None
    telemetry = row.cost_usd if row is not None and row.api_requests else None
    if telemetry is None and record is not None:
        telemetry = record.cost_telemetry_usd
    computed = record.cost_computed_usd if record is not None else None
    shown = record.shown_cost_source if record is not None else ""
    lines = [
        CostLine("reported", "reported by the CLI (its result event)", reported),
        CostLine("telemetry", "from telemetry (auxiliary requests included)", telemetry),
        CostLine("computed", "computed from the transcript", computed),
    ]
    for line in lines:
        line.shown = line.source == shown
    known = [line for line in lines if line.usd is not None]
    drift = ""
    if len(known) >= 2:
        high = max(known, key=lambda line: line.usd)
        low = min(known, key=lambda line: line.usd)
        if high.usd > 0:
            percent = float((high.usd - low.usd) / high.usd * 100)
            if percent > settings.OPSCONSOLE_COST_DRIFT_PERCENT:
                drift = f"{low.source} is {percent:.0f}% under {high.source}" + (
                    ": the transcript never sees auxiliary requests (a session title, "
                    "a quota check)"
                    if low.source == "computed"
                    else ""
                )
    return lines, drift


def _bar(span: TelemetrySpan, start: datetime, total_ms: float, commands: dict[str, str]) -> Bar:
    kind, words = SPAN_KINDS.get(span.name, ("other", span.name))
    a = span.attributes or {}
    detail = []
    label = words
    if kind == "llm":
        label = f"LLM request · {a.get('model', '?')}"
        if a.get("ttft_ms") is not None:
            detail.append(f"TTFT {a['ttft_ms']} ms")
        if int(a.get("attempt") or 1) > 1:
            detail.append(f"attempt {a['attempt']}")
        if a.get("status_code"):
            detail.append(f"status {a['status_code']}")
        if a.get("stop_reason"):
            detail.append(str(a["stop_reason"]))
    elif kind == "tool":
        use_id = str(a.get("tool_use_id", ""))
        label = commands.get(use_id) or str(a.get("tool_name", "tool"))
    elif kind in ("attempt", "fire"):
        label = f"{words} {a.get('opsconsole.attempt', '')}".strip()
        if a.get("opsconsole.end_reason"):
            detail.append(str(a["opsconsole.end_reason"]))
    offset = (span.start_at - start).total_seconds() * 1000
    return Bar(
        kind,
        label,
        " · ".join(detail),
        max(0.0, min(100.0, offset / total_ms * 100)),
        max(0.3, min(100.0, span.duration_ms / total_ms * 100)),
        span.duration_ms,
        span.error,
    )


def run_timeline(
    session_id: str,
    *,
    record: Session | None,
    started_at: datetime,
    live: bool,
    now: datetime,
    tools: ToolCalls | None = None,
) -> Timeline:
    tools = tools or ToolCalls()
    commands = tools.named
    row = RunTelemetry.objects.filter(session_id=session_id).first()
    rollup = stored_rollup(row.rollup) if row is not None else None
    spans = run_spans(row.trace_id if row else "", session_id)
    costs, drift = three_costs(record, row)
    timeline = Timeline(row, rollup, costs=costs, drift=drift)
    if rollup is not None:
        timeline.requests_by = sorted(rollup.requests_by.items(), key=lambda kv: -kv[1]["cost_usd"])
        timeline.tools = sorted(rollup.tools.items(), key=lambda kv: -kv[1]["calls"])
    start = min([started_at, *(s.start_at for s in spans)])
    end_candidates = [s.start_at + timedelta(milliseconds=s.duration_ms) for s in spans]
    if live:
        end_candidates.append(now)
    elif record is not None and record.ended_at:
        end_candidates.append(record.ended_at)
    end = max([start + timedelta(seconds=1), *end_candidates])
    total_ms = (end - start).total_seconds() * 1000
    shown = [s for s in spans if s.name != "claude_code.tool.execution"]
    timeline.bars = [_bar(s, start, total_ms, commands) for s in shown[:BARS_SHOWN]]
    timeline.hidden_bars = max(0, len(shown) - BARS_SHOWN)
    if live and rollup is not None:
        for use_id, tool in rollup.open_tools.items():
            since = ns_to_datetime(tool["since_ns"])
            took = max(0.0, (now - since).total_seconds() * 1000)
            offset = (since - start).total_seconds() * 1000
            timeline.bars.append(
                Bar(
                    "tool",
                    commands.get(use_id) or tool["name"],
                    "running now",
                    max(0.0, min(100.0, offset / total_ms * 100)),
                    max(0.3, min(100.0, took / total_ms * 100)),
                    took,
                    open=True,
                )
            )
    if live:
        timeline.stall = stall_kind(
            rollup,
            telemetry_on=(record.wrapped if record is not None else True)
            and settings.OPSCONSOLE_TELEMETRY_RECEIVER,
            now=now,
            since=started_at,
            awaiting=tools.awaiting,
        )
    return timeline


def stall_words(live, *, now: datetime) -> str:
    """Which kind of stall a live run (monitor_app.snapshot.LiveSession) is in, in words,
    or '' when its telemetry says nothing: for the stall alert and the watchdog."""
    row = RunTelemetry.objects.filter(session_id=live.session_id).only("rollup").first()
    rollup = stored_rollup(row.rollup) if row is not None else None
    tools = ToolCalls()
    if rollup is not None and rollup.events:
        tools = transcript_store.tool_calls(
            transcript_store.locate(live.session_id, sidecar=live.sidecar)
        )
    kind = stall_kind(
        rollup,
        telemetry_on=live.wrapped and settings.OPSCONSOLE_TELEMETRY_RECEIVER,
        now=now,
        since=live.started_at,
        awaiting=tools.awaiting,
    )
    return kind.text if kind else ""
