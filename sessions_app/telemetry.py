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

import functools
import statistics
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sessions_app.otlp import Event, Point, Span, is_true

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
            failed = not is_true(a.get("success"))
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
        value = attributes.get(name)
        if value is not None and (key := _session_uuid(str(value))) is not None:
            return key
    return None


@functools.lru_cache(maxsize=4096)
def _session_uuid(value: str) -> str | None:
    """`value` as a session UUID (canonical, lower case), or None. Cached: every record of
    a body names the same run, and parsing a UUID was a tenth of the receiver's CPU."""
    value = value.lower()
    try:
        return value if str(uuid.UUID(value)) == value else None
    except ValueError:
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
