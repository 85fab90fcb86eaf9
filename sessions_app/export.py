"""History as CSV and JSON, streamed: a million rows never sit in memory at once."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator

from sessions_app.history import HistoryFilters, filtered_sessions
from sessions_app.outcome import outcome_of_row

COLUMNS = (
    "session_id",
    "script_tag",
    "job",
    "platform",
    "host",
    "attempt",
    "retry_of",
    "status",
    "outcome",  # status in words for people and filters: rate_limited is its own
    "rate_limit_reset_at",
    "end_reason",
    "exit_code",
    "error",
    "stopped_by",
    "started_at",
    "ended_at",
    "duration_ms",
    "num_turns",
    "cost_usd",
    "cost_telemetry_usd",
    "cost_computed_usd",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_creation_tokens",
    "stop_reason",
    "api_error_status",
    "model",
)
# Spreadsheets run a cell that starts like a formula; a tag or error text must not.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


COMPUTED = ("outcome", "rate_limit_reset_at")


def _rows(filters: HistoryFilters) -> Iterator[dict]:
    queryset = filtered_sessions(filters).order_by("-started_at", "-id")
    stored = [c if c != "job" else "job__label" for c in COLUMNS if c not in COMPUTED]
    for row in queryset.values(*stored).iterator(chunk_size=2000):
        row["job"] = row.pop("job__label")
        outcome = outcome_of_row(row)
        row["outcome"] = outcome.kind
        row["rate_limit_reset_at"] = outcome.reset_at
        yield {column: row[column] for column in COLUMNS}


def _cell(value) -> str:
    if value is None:
        return ""  # unknown stays empty: never 0
    text = value.isoformat() if hasattr(value, "isoformat") else str(value)
    if text.startswith(FORMULA_PREFIXES) and not _is_number(text):
        return "'" + text
    return text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class _Echo:
    def write(self, value: str) -> str:
        return value


def csv_lines(filters: HistoryFilters) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(COLUMNS)
    for row in _rows(filters):
        yield writer.writerow([_cell(row[column]) for column in COLUMNS])


def json_chunks(filters: HistoryFilters) -> Iterator[str]:
    yield '{"sessions": ['
    first = True
    for row in _rows(filters):
        for key, value in row.items():
            if hasattr(value, "isoformat"):
                row[key] = value.isoformat()
            elif key in ("session_id", "retry_of") and value is not None:
                row[key] = str(value)
            elif (
                key in ("cost_usd", "cost_telemetry_usd", "cost_computed_usd") and value is not None
            ):
                row[key] = float(value)
        yield ("" if first else ",") + json.dumps(row)
        first = False
    yield "]}"
