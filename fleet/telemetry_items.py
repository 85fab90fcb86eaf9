"""A run's telemetry in a host's report, item by item: a rollup, a span.

A reporting host ships the rollups of its runs (sessions_app.telemetry.Rollup, the
latest whole one per session) and the spans its receiver took (fleet.reporting). The
console trusts neither: each item is checked field by field against the limits in
wrapper.formats and the bounds the host's own rollup keeps (TTFT_KEPT, MODELS_KEPT, ...),
and what is recorded is rebuilt from the checked values, never the host's JSON as sent:
a key the console does not know is left out, a value it cannot hold refuses the item
(ItemRefused, with the reason the Hosts page shows).
"""

from __future__ import annotations

from typing import Any

from fleet.item_checks import ItemRefused, check, number
from sessions_app.telemetry import (
    ERRORS_KEPT,
    MODELS_KEPT,
    SPAN_ATTRIBUTES_KEPT,
    TOOLS_KEPT,
    TTFT_KEPT,
    Rollup,
)
from wrapper.formats import (
    MAX_COST_USD,
    MAX_TELEMETRY_FIGURE,
    REPORT_TELEMETRY_INT_RANGES,
    REPORT_TELEMETRY_TEXT_LIMITS,
    is_session_id,
)

HEX = frozenset("0123456789abcdef")


def is_hex(value: object, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and set(value) <= HEX


def text(value: object, limit: str, what: str) -> str:
    most = REPORT_TELEMETRY_TEXT_LIMITS[limit]
    check(isinstance(value, str), f"{what} is text")
    check(len(value) <= most, f"{what} is {len(value)} characters long (at most {most})")
    return value


def whole(value: object, kind: str, what: str) -> int:
    low, high = REPORT_TELEMETRY_INT_RANGES[kind]
    check(
        isinstance(value, int) and not isinstance(value, bool) and low <= value <= high,
        f"{what} is a whole number from {low} to {high}",
    )
    return value


def figure(value: object, what: str, high: float = MAX_TELEMETRY_FIGURE) -> float:
    check(number(value, 0, high), f"{what} is a number from 0 to {high:g}")
    return float(value)


def mapping(value: object, most: int, what: str) -> dict:
    check(isinstance(value, dict), f"{what} is an object")
    check(len(value) <= most, f"{what} has {len(value)} entries (at most {most})", 413)
    return value


def listing(value: object, most: int, what: str) -> list:
    check(isinstance(value, list), f"{what} is a list")
    check(len(value) <= most, f"{what} has {len(value)} items (at most {most})", 413)
    return value


def fields(value: object, names: tuple[str, ...], what: str) -> dict:
    check(isinstance(value, dict), f"{what} is an object")
    missing = [name for name in names if name not in value]
    check(not missing, f"{what} lacks {', '.join(missing)}")
    return value


# --------------------------------------------------------------------------- a rollup

COUNTS = ("events", "api_requests", "api_errors", "max_attempt")
COUNTS += ("tool_calls", "tool_failures", "compactions")
TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens")


def rollup_item(item: object, host: str) -> Rollup:
    """A host's rollup, checked and rebuilt (ItemRefused when any field is out of bounds)."""
    check(isinstance(item, dict), "a rollup is an object")
    session_id = item.get("session_id")
    check(is_session_id(session_id), "a rollup names a session id")
    tagged = text(item.get("host", ""), "host", "the rollup's host")
    check(tagged in ("", host), f"rollup {session_id} names host {tagged!r}, not {host!r}", 403)
    trace_id = item.get("trace_id", "")
    check(trace_id == "" or is_hex(trace_id, 32), "trace_id is 32 hex digits")
    segment = item.get("segment", "0")
    check(
        isinstance(segment, str) and 1 <= len(segment) <= 32 and segment.isalnum(),
        "segment is up to 32 letters and digits",
    )
    built = Rollup(
        session_id=session_id,
        segment=segment,
        job=text(item.get("job", ""), "job", "job"),
        host=tagged,
        trace_id=trace_id,
        first_ns=whole(item.get("first_ns", 0), "ns", "first_ns"),
        last_ns=whole(item.get("last_ns", 0), "ns", "last_ns"),
        cost_usd=figure(item.get("cost_usd", 0.0), "cost_usd", MAX_COST_USD),
        active_seconds=figure(item.get("active_seconds", 0.0), "active_seconds"),
    )
    for name in COUNTS:
        setattr(built, name, whole(item.get(name, 0), "count", name))
    for name in TOKENS:
        setattr(built, name, whole(item.get(name, 0), "tokens", name))
    requests = mapping(item.get("requests_by", {}), MODELS_KEPT, "requests_by")
    for key, row in requests.items():
        text(key, "requests_by", "a requests_by key")
        row = fields(row, ("requests", "cost_usd", "output_tokens"), f"requests_by[{key!r}]")
        built.requests_by[key] = {
            "requests": whole(row["requests"], "count", "requests"),
            "cost_usd": figure(row["cost_usd"], "cost_usd", MAX_COST_USD),
            "output_tokens": whole(row["output_tokens"], "tokens", "output_tokens"),
        }
    statuses = mapping(item.get("errors_by_status", {}), MODELS_KEPT, "errors_by_status")
    for status, count in statuses.items():
        built.errors_by_status[text(status, "status", "a status")] = whole(count, "count", status)
    for error in listing(item.get("last_errors", []), ERRORS_KEPT, "last_errors"):
        error = fields(error, ("at_ns", "status", "attempt", "error"), "an API error")
        built.last_errors.append(
            {
                "at_ns": whole(error["at_ns"], "ns", "an error's at_ns"),
                "status": text(error["status"], "status", "an error's status"),
                "attempt": whole(error["attempt"], "count", "an error's attempt"),
                "error": text(error["error"], "error", "an error's text"),
            }
        )
    for name, row in mapping(item.get("tools", {}), TOOLS_KEPT, "tools").items():
        text(name, "name", "a tool's name")
        row = fields(row, ("calls", "failures", "slowest_ms"), f"tools[{name!r}]")
        built.tools[name] = {
            "calls": whole(row["calls"], "count", "calls"),
            "failures": whole(row["failures"], "count", "failures"),
            "slowest_ms": figure(row["slowest_ms"], "slowest_ms"),
        }
    slowest = item.get("slowest_tool", {})
    if slowest:
        slowest = fields(slowest, ("name", "ms"), "slowest_tool")
        built.slowest_tool = {
            "name": text(slowest["name"], "name", "the slowest tool's name"),
            "ms": figure(slowest["ms"], "the slowest tool's ms"),
        }
    ttft = listing(item.get("ttft_ms", []), TTFT_KEPT, "ttft_ms")
    built.ttft_ms = [figure(value, "a ttft_ms") for value in ttft]
    for use_id, use in mapping(item.get("open_tools", {}), TOOLS_KEPT, "open_tools").items():
        text(use_id, "name", "a tool use id")
        use = fields(use, ("name", "since_ns"), "an open tool")
        built.open_tools[use_id] = {
            "name": text(use["name"], "name", "an open tool's name"),
            "since_ns": whole(use["since_ns"], "ns", "an open tool's since_ns"),
        }
    return built


# --------------------------------------------------------------------------- a span


def span_key(item: object) -> str:
    """What the host knows a span by: trace id / span id."""
    if not isinstance(item, dict):
        return ""
    return f"{str(item.get('trace_id', ''))[:32]}/{str(item.get('span_id', ''))[:16]}"


def span_item(item: object, host: str) -> dict[str, Any]:
    """A host's span row (sessions_app.telemetry.span_row), checked and rebuilt."""
    check(isinstance(item, dict), "a span is an object")
    check(is_hex(item.get("trace_id"), 32), "a span's trace_id is 32 hex digits")
    check(is_hex(item.get("span_id"), 16), "a span's span_id is 16 hex digits")
    parent = item.get("parent_span_id", "")
    check(parent == "" or is_hex(parent, 16), "a span's parent_span_id is 16 hex digits")
    session_id = item.get("session_id")
    check(session_id is None or is_session_id(session_id), "a span's session_id is a session id")
    check(isinstance(item.get("error", False), bool), "a span's error is true or false")
    attributes = {}
    given = mapping(item.get("attributes", {}), SPAN_ATTRIBUTES_KEPT, "a span's attributes")
    for name, value in given.items():
        text(name, "attribute", "an attribute's name")
        if isinstance(value, str):
            value = text(value, "attribute_value", f"attribute {name}")
        elif isinstance(value, int):  # bool included
            value = value if isinstance(value, bool) else whole(value, "attribute", name)
        elif isinstance(value, float):
            check(number(abs(value), 0, MAX_TELEMETRY_FIGURE), f"attribute {name} is finite")
        else:
            raise ItemRefused(f"attribute {name} is not text, a number or true/false")
        attributes[name] = value
    return {
        "trace_id": item["trace_id"],
        "span_id": item["span_id"],
        "parent_span_id": parent,
        "session_id": session_id,
        "name": text(item.get("name"), "name", "a span's name"),
        "start_ns": whole(item.get("start_ns"), "ns", "a span's start_ns"),
        "duration_ms": figure(item.get("duration_ms"), "a span's duration_ms"),
        "error": item.get("error", False),
        "attributes": attributes,
    }
