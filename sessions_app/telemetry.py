"""A run's telemetry rolled up: where its time and money went, from Claude Code's own OTLP.

`Rollup` is what one session's events and metric points add up to: API requests by model
and `query_source` (the auxiliary ones, such as the session title, included), errors and
retries with their status codes, tool calls (count, failures, slowest), compactions, time
to first token, tokens and cost; and what is open now (a tool decided on and not yet
returned). It is built by the host's monitor as records arrive, kept in a file there
across restarts, written to `RunTelemetry` rows (or shipped in a report), and read back by
the session page and the stall rule. `stall_kind()` says which kind of stall a quiet run
is in, as a function of `now`.
"""

from __future__ import annotations

import statistics
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Exists, OuterRef, Q

from sessions_app.models import RunTelemetry, Session, TelemetrySpan
from sessions_app.otlp import Event, Point, Span

PREFIX = "claude_code."
# Time to first token: the latest this many values, for the percentiles.
TTFT_KEPT = 200
ERRORS_KEPT = 20
MODELS_KEPT = 32
TOOLS_KEPT = 64
# A run whose API calls keep failing: this many attempts of one request is a retry storm.
RETRY_STORM_ATTEMPT = 3


def _number(value: object) -> float:
    """Claude Code sends some numbers as strings ("2272")."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
    return number if number == number and abs(number) < 1e15 else 0.0  # NaN, inf


def _flag(value: object) -> bool:
    return value is True or str(value).lower() == "true"


def ns_to_datetime(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)


def new_segment() -> str:
    return uuid.uuid4().hex[:16]


@dataclass
class Rollup:
    session_id: str
    # Which stretch of the run's records this is: a receiver that (re)starts, or meets a
    # run it had let go of (a late record, a `--resume`d session), begins a new segment.
    # The row on record keeps each segment and sums them: writing one replaces only
    # itself, so a partial rollup never overwrites a whole one.
    segment: str = field(default_factory=new_segment)
    job: str = ""
    host: str = ""  # opsconsole.host, as the wrapper tagged it
    trace_id: str = ""
    first_ns: int = 0
    last_ns: int = 0
    events: int = 0
    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    api_requests: int = 0
    # "model · query_source" -> {requests, cost_usd, output_tokens}
    requests_by: dict[str, dict[str, float]] = field(default_factory=dict)
    api_errors: int = 0
    errors_by_status: dict[str, int] = field(default_factory=dict)
    max_attempt: int = 0
    last_errors: list[dict[str, Any]] = field(default_factory=list)
    tool_calls: int = 0
    tool_failures: int = 0
    tools: dict[str, dict[str, float]] = field(
        default_factory=dict
    )  # name -> calls, failures, slowest_ms
    slowest_tool: dict[str, Any] = field(default_factory=dict)
    compactions: int = 0
    ttft_ms: list[float] = field(default_factory=list)
    # tool_use_id -> {name, since_ns}: decided on, no result yet.
    open_tools: dict[str, dict[str, Any]] = field(default_factory=dict)
    active_seconds: float = 0.0

    # ------------------------------------------------------------------ taking records

    def note_time(self, ns: int) -> None:
        if ns:
            self.first_ns = min(self.first_ns, ns) if self.first_ns else ns
            self.last_ns = max(self.last_ns, ns)

    def tag(self, attributes: dict[str, Any]) -> None:
        self.job = self.job or str(attributes.get("opsconsole.job", ""))[:100]
        self.host = self.host or str(attributes.get("opsconsole.host", ""))[:255]

    def take_event(self, event: Event) -> None:
        name = event.name.removeprefix(PREFIX)
        a = event.attributes
        self.events += 1
        self.tag(a)
        self.note_time(event.time_ns)
        if name == "api_request":
            cost = _number(a.get("cost_usd"))
            output = int(_number(a.get("output_tokens")))
            self.api_requests += 1
            self.cost_usd += cost
            self.input_tokens += int(_number(a.get("input_tokens")))
            self.output_tokens += output
            self.cache_read_tokens += int(_number(a.get("cache_read_tokens")))
            self.cache_creation_tokens += int(_number(a.get("cache_creation_tokens")))
            source = str(a.get("query_source") or "?")
            if "compact" in source:
                self.compactions += 1
            key = f"{a.get('model') or '?'} · {source}"[:200]
            if key in self.requests_by or len(self.requests_by) < MODELS_KEPT:
                row = self.requests_by.setdefault(
                    key, {"requests": 0, "cost_usd": 0.0, "output_tokens": 0}
                )
                row["requests"] += 1
                row["cost_usd"] += cost
                row["output_tokens"] += output
        elif name == "api_error":
            status = str(a.get("status_code") or "none")[:16]
            attempt = int(_number(a.get("attempt")))
            self.api_errors += 1
            if status in self.errors_by_status or len(self.errors_by_status) < MODELS_KEPT:
                self.errors_by_status[status] = self.errors_by_status.get(status, 0) + 1
            self.max_attempt = max(self.max_attempt, attempt)
            self.last_errors = [
                *self.last_errors[-(ERRORS_KEPT - 1) :],
                {
                    "at_ns": event.time_ns,
                    "status": status,
                    "attempt": attempt,
                    "error": str(a.get("error", ""))[:300],
                },
            ]
        elif name == "tool_decision":
            use_id = str(a.get("tool_use_id", ""))[:100]
            if (
                use_id
                and str(a.get("decision", "")).lower() == "accept"
                and len(self.open_tools) < TOOLS_KEPT
            ):
                self.open_tools[use_id] = {
                    "name": str(a.get("tool_name", "?"))[:100],
                    "since_ns": event.time_ns,
                }
        elif name == "tool_result":
            tool = str(a.get("tool_name") or "?")[:100]
            failed = not _flag(a.get("success"))
            took = _number(a.get("duration_ms"))
            self.open_tools.pop(str(a.get("tool_use_id", "")), None)
            self.tool_calls += 1
            self.tool_failures += failed
            if tool in self.tools or len(self.tools) < TOOLS_KEPT:
                row = self.tools.setdefault(tool, {"calls": 0, "failures": 0, "slowest_ms": 0.0})
                row["calls"] += 1
                row["failures"] += failed
                row["slowest_ms"] = max(row["slowest_ms"], took)
            if took >= float(self.slowest_tool.get("ms", -1)):
                self.slowest_tool = {"name": tool, "ms": took}

    def take_span(
        self, name: str, attributes: dict[str, Any], trace_id: str, start_ns: int, end_ns: int
    ) -> None:
        self.tag(attributes)
        self.trace_id = self.trace_id or trace_id
        self.note_time(end_ns or start_ns)
        if name == PREFIX + "llm_request":
            ttft = attributes.get("ttft_ms")
            if ttft is not None:
                self.ttft_ms = [*self.ttft_ms[-(TTFT_KEPT - 1) :], _number(ttft)]

    def take_point(self, point: Point) -> None:
        self.tag(point.attributes)
        if point.name == PREFIX + "active_time.total":
            self.active_seconds += max(0.0, point.value)

    # ------------------------------------------------------------------ reading

    def ttft_percentiles(self) -> tuple[float | None, float | None]:
        values = sorted(self.ttft_ms)
        if not values:
            return None, None
        if len(values) == 1:
            return values[0], values[0]
        cuts = statistics.quantiles(values, n=20, method="inclusive")
        return statistics.median(values), cuts[18]

    def to_dict(self) -> dict[str, Any]:
        # copy() copies every container: a plain dict of it is JSON-ready, and far cheaper
        # than dataclasses.asdict's recursion (200 rollups a sample).
        return dict(vars(self.copy()))

    def add(self, other: Rollup) -> None:
        """Add another segment's records of the same run to this one."""
        for name in (
            "events",
            "cost_usd",
            "input_tokens",
            "output_tokens",
            "cache_read_tokens",
            "cache_creation_tokens",
            "api_requests",
            "api_errors",
            "tool_calls",
            "tool_failures",
            "compactions",
            "active_seconds",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.job, self.host = self.job or other.job, self.host or other.host
        self.trace_id = self.trace_id or other.trace_id
        self.note_time(other.first_ns)
        self.note_time(other.last_ns)
        self.max_attempt = max(self.max_attempt, other.max_attempt)
        for key, row in other.requests_by.items():
            if key in self.requests_by or len(self.requests_by) < MODELS_KEPT:
                mine = self.requests_by.setdefault(
                    key, {"requests": 0, "cost_usd": 0.0, "output_tokens": 0}
                )
                for figure, value in row.items():
                    mine[figure] = mine.get(figure, 0) + value
        for status, count in other.errors_by_status.items():
            if status in self.errors_by_status or len(self.errors_by_status) < MODELS_KEPT:
                self.errors_by_status[status] = self.errors_by_status.get(status, 0) + count
        self.last_errors = sorted(self.last_errors + other.last_errors, key=lambda e: e["at_ns"])[
            -ERRORS_KEPT:
        ]
        for name, row in other.tools.items():
            if name in self.tools or len(self.tools) < TOOLS_KEPT:
                mine = self.tools.setdefault(name, {"calls": 0, "failures": 0, "slowest_ms": 0.0})
                mine["calls"] += row["calls"]
                mine["failures"] += row["failures"]
                mine["slowest_ms"] = max(mine["slowest_ms"], row["slowest_ms"])
        if float(other.slowest_tool.get("ms", -1)) > float(self.slowest_tool.get("ms", -1)):
            self.slowest_tool = dict(other.slowest_tool)
        self.ttft_ms = (self.ttft_ms + other.ttft_ms)[-TTFT_KEPT:]
        for use_id, tool in other.open_tools.items():
            if len(self.open_tools) < TOOLS_KEPT:
                self.open_tools.setdefault(use_id, dict(tool))

    def copy(self) -> Rollup:
        """A copy that later records do not change: containers copied one level down
        (what they hold is numbers and strings, or dicts of them), far cheaper than a
        deepcopy, which the receiver's lock is held for."""
        copied = replace(self)
        for name in ("requests_by", "tools", "open_tools"):
            setattr(copied, name, {k: dict(v) for k, v in getattr(self, name).items()})
        copied.errors_by_status = dict(self.errors_by_status)
        copied.last_errors = [dict(e) for e in self.last_errors]
        copied.slowest_tool = dict(self.slowest_tool)
        copied.ttft_ms = list(self.ttft_ms)
        return copied

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rollup:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class StallKind:
    kind: str  # tool, api_retry, permission, no_telemetry
    text: str


def stall_kind(
    rollup: Rollup | None,
    *,
    telemetry_on: bool,
    now: datetime,
    since: datetime,
    awaiting: dict[str, str] | None = None,
) -> StallKind | None:
    """Which kind of stall a quiet run is in, from its telemetry, or None when it says
    nothing. `since`: when the run started; `awaiting`: tool calls its transcript shows
    without a result (id -> what), which telemetry tells apart: decided on and running,
    or not decided on yet (waiting for permission)."""
    awaiting = awaiting or {}
    if rollup is None or not (rollup.events or rollup.first_ns):  # nothing at all came
        if telemetry_on and (now - since).total_seconds() > 60:
            return StallKind(
                "no_telemetry",
                "no telemetry since it started: a startup hang, or telemetry turned off",
            )
        return None
    awaiting = awaiting or {}
    if rollup.open_tools:
        use_id = min(rollup.open_tools, key=lambda k: rollup.open_tools[k]["since_ns"])
        use = rollup.open_tools[use_id]
        seconds = max(0, int((now - ns_to_datetime(use["since_ns"])).total_seconds()))
        took = f"{seconds // 60} min" if seconds >= 60 else f"{seconds} s"
        what = awaiting.get(use_id) or use["name"]
        return StallKind("tool", f"a tool has been running {took}: {what}")
    undecided = [what for use_id, what in awaiting.items() if use_id not in rollup.open_tools]
    if undecided:
        return StallKind("permission", f"waiting for permission to run {undecided[0]}")
    if rollup.last_errors and rollup.max_attempt >= RETRY_STORM_ATTEMPT:
        last = rollup.last_errors[-1]
        if (now - ns_to_datetime(last["at_ns"])).total_seconds() < 600:
            return StallKind(
                "api_retry", f"API retry storm: attempt {last['attempt']}, status {last['status']}"
            )
    return None


# --------------------------------------------------------------------------- spans

# Attributes a span row keeps (the rest repeat the resource or name the user).
SPAN_ATTRIBUTES_LEFT_OUT = frozenset(
    {"user.id", "terminal.type", "user_prompt", "opsconsole.job", "opsconsole.host"}
)
SPAN_VALUE_CHARS = 300
SPAN_ATTRIBUTES_KEPT = 32


def session_key(attributes: dict[str, Any]) -> str | None:
    """The run a record belongs to: `session.id` (Claude Code's), else the wrapper's
    `opsconsole.run_id`; None when neither is a session UUID."""
    for name in ("session.id", "opsconsole.run_id"):
        value = str(attributes.get(name, "")).lower()
        try:
            if str(uuid.UUID(value)) == value:
                return value
        except ValueError:
            continue
    return None


def span_row(span: Span) -> dict[str, Any]:
    """What is kept of a span: a plain dict, the same on a host and in a report."""
    attributes = {
        k: (v[:SPAN_VALUE_CHARS] if isinstance(v, str) else v)
        for k, v in list(span.attributes.items())[:SPAN_ATTRIBUTES_KEPT]
        if k not in SPAN_ATTRIBUTES_LEFT_OUT and not k.startswith(("os.", "host.", "service."))
    }
    return {
        "trace_id": span.trace_id,
        "span_id": span.span_id,
        "parent_span_id": span.parent_span_id,
        "session_id": session_key(span.attributes),
        "name": span.name[:100],
        "start_ns": span.start_ns,
        "duration_ms": max(0.0, (span.end_ns - span.start_ns) / 1e6) if span.end_ns else 0.0,
        "error": span.error,
        "attributes": attributes,
    }


# --------------------------------------------------------------------------- on record


@dataclass
class Written:
    rollups: int = 0
    spans: int = 0
    refused: list[str] = field(default_factory=list)  # session ids another host owns


def write_rollups(rollups: list[Rollup], host: str) -> Written:
    """Put rollups on record for `host`: a few statements, however many. A session that
    another host's run or telemetry owns is refused (its id in `refused`), never merged."""
    written = Written()
    if not rollups:
        return written
    ids = [r.session_id for r in rollups]
    owners = dict(RunTelemetry.objects.filter(session_id__in=ids).values_list("session_id", "host"))
    sessions = {
        str(sid): (pk, owner, cost, tag)
        for sid, pk, owner, cost, tag in Session.objects.filter(session_id__in=ids).values_list(
            "session_id", "id", "host", "cost_telemetry_usd", "script_tag"
        )
    }
    owners = {str(k): v for k, v in owners.items()}
    existing = {
        str(t.session_id): t for t in RunTelemetry.objects.filter(session_id__in=ids, host=host)
    }
    creates, updates, costs = [], [], []
    for rollup in rollups:
        sid = rollup.session_id
        run_host = sessions.get(sid, (None, host, None, ""))[1] or host
        if owners.get(sid, host) != host or run_host != host:
            written.refused.append(sid)
            continue
        row = existing.get(sid) or RunTelemetry(session_id=sid, host=host)
        stored, total = with_segment(row.rollup, rollup)
        fill_row(row, total)
        row.rollup = stored
        # The job a row counts under (/metrics) is its run's, never what the sender's
        # resource attributes claim: unknown until the run is on record.
        row.job_tag = sessions[sid][3] if sid in sessions else ""
        (updates if row.pk else creates).append(row)
        if sid in sessions and sessions[sid][2] != row.cost_usd:  # most records cost nothing
            costs.append(Session(id=sessions[sid][0], cost_telemetry_usd=row.cost_usd))
    RunTelemetry.objects.bulk_create(creates, ignore_conflicts=True)
    # This host's rows, rewritten as one upsert: bulk_update's CASE per column costs
    # seconds for 200 rows (a report's worth), the upsert a tenth of a second.
    RunTelemetry.objects.bulk_create(
        updates, update_conflicts=True, unique_fields=["session_id"], update_fields=ROLLUP_COLUMNS
    )
    Session.objects.bulk_update(costs, ["cost_telemetry_usd"])
    written.rollups = len(creates) + len(updates)
    return written


# Segments a row keeps; past this the two oldest are added into one.
SEGMENTS_KEPT = 8


def segments_of(stored: dict[str, Any]) -> dict[str, Rollup]:
    """A row's rollup segments ({} when none); a row from before segments is one."""
    if not isinstance(stored, dict):
        return {}
    raw = stored.get("segments") if "segments" in stored else {"0": stored} if stored else {}
    segments = {}
    for key, value in (raw or {}).items():
        try:
            segments[str(key)] = Rollup.from_dict(value)
        except (TypeError, ValueError):
            continue
    return segments


def stored_rollup(stored: dict[str, Any]) -> Rollup | None:
    """The whole run's rollup: its segments added up (None when there are none)."""
    segments = sorted(segments_of(stored).values(), key=lambda r: r.first_ns)
    if not segments:
        return None
    total = segments[0].copy()
    for segment in segments[1:]:
        total.add(segment)
    return total


def with_segment(stored: dict[str, Any], rollup: Rollup) -> tuple[dict[str, Any], Rollup]:
    """The row's rollup JSON with `rollup` put in as its segment, and the new total."""
    segments = segments_of(stored)
    segments[rollup.segment] = rollup
    while len(segments) > SEGMENTS_KEPT:
        oldest, older = sorted(segments, key=lambda k: segments[k].first_ns)[:2]
        merged = segments.pop(oldest).copy()
        merged.add(segments.pop(older))
        merged.segment = oldest
        segments[oldest] = merged
    total = stored_rollup({"segments": {k: r.to_dict() for k, r in segments.items()}})
    return {"segments": {k: r.to_dict() for k, r in segments.items()}}, total


ROLLUP_COLUMNS = [
    "job_tag",
    "trace_id",
    "cost_usd",
    "api_requests",
    "api_errors",
    "tool_calls",
    "tool_failures",
    "ttft_p50_ms",
    "ttft_p95_ms",
    "input_tokens",
    "output_tokens",
    "last_event_at",
    "rollup",
]


def fill_row(row: RunTelemetry, rollup: Rollup) -> None:
    p50, p95 = rollup.ttft_percentiles()
    row.trace_id = rollup.trace_id
    row.cost_usd = Decimal(str(round(min(rollup.cost_usd, 10**6 - 1), 6)))
    row.api_requests = rollup.api_requests
    row.api_errors = rollup.api_errors
    row.tool_calls = rollup.tool_calls
    row.tool_failures = rollup.tool_failures
    row.ttft_p50_ms, row.ttft_p95_ms = p50, p95
    row.input_tokens = rollup.input_tokens
    row.output_tokens = rollup.output_tokens
    row.last_event_at = ns_to_datetime(rollup.last_ns) if rollup.last_ns else None


def write_spans(rows: list[dict[str, Any]], host: str) -> int:
    """Spans on record for `host`; a span already there (same trace and span id) is kept as
    it was. Spans naming a session another host owns are left out."""
    ids = {r["session_id"] for r in rows if r.get("session_id")}
    foreign = set()
    if ids:
        foreign = {
            str(s)
            for s in Session.objects.filter(session_id__in=ids)
            .exclude(host=host)
            .values_list("session_id", flat=True)
        }
    spans = [
        TelemetrySpan(
            trace_id=r["trace_id"],
            span_id=r["span_id"],
            parent_span_id=r.get("parent_span_id", ""),
            session_id=r.get("session_id"),
            host=host,
            name=r["name"],
            start_at=ns_to_datetime(r["start_ns"]),
            duration_ms=r["duration_ms"],
            error=bool(r.get("error")),
            attributes=r.get("attributes") or {},
        )
        for r in rows
        if r.get("session_id") not in foreign
    ]
    TelemetrySpan.objects.bulk_create(spans, ignore_conflicts=True, batch_size=500)
    return len(spans)


def prune_spans(keep: timedelta, now: datetime) -> int:
    """Spans past their days, and rollups of sessions that never came on record here."""
    deleted, _ = TelemetrySpan.objects.filter(start_at__lt=now - keep).delete()
    runs = Session.objects.filter(session_id=OuterRef("session_id"))
    orphans, _ = (
        RunTelemetry.objects.filter(updated_at__lt=now - keep).filter(~Exists(runs)).delete()
    )
    return deleted + orphans


def run_spans(rollup_trace: str, session_id: str) -> list[TelemetrySpan]:
    """The spans of one run's timeline: its own, and the wrapper's spans of its fire."""
    query = Q(session_id=session_id)
    if rollup_trace:
        query |= Q(trace_id=rollup_trace, session_id__isnull=True)
    return list(TelemetrySpan.objects.filter(query).order_by("start_at", "id")[:2000])
