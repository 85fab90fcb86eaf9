"""How a run ended, in the words a person reads: one rule for pages, badges and exports.

A run that hit the API's rate or usage limit (HTTP 429, or the CLI's usage-limit
result) is "rate-limited", with the time the limit resets when the wrapper
recorded one; never "failed (exit 1)". How it is stored does not change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace

from django.db.models import Q
from django.utils import timezone

# The wrapper's own sentence (wrapper/run.py set_quota_stamp): "... until 2026-11-24T14:05:00Z"
RESET_MARKER = "skips (exit 79) until "
_UNTIL_RE = re.compile(re.escape(RESET_MARKER) + r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2})?Z?)")

RATE_LIMITED = "rate_limited"


@dataclass(frozen=True)
class Outcome:
    kind: str  # a status class for badges: succeeded, failed, rate_limited, killed, ...
    label: str  # what the badge says
    reset_at: datetime | None = None  # rate-limited: when the limit lifts, if known


def reset_time(error: str) -> datetime | None:
    match = _UNTIL_RE.search(error or "")
    if not match:
        return None
    try:
        return datetime.fromisoformat(match.group(1).replace("Z", "+00:00"))
    except ValueError:
        return None


def rate_limited_q() -> Q:
    """The same rule as is_rate_limited, for a query."""
    return Q(status="failed") & (Q(api_error_status=429) | Q(error__contains=RESET_MARKER))


def is_rate_limited(status: str, api_error_status: int | None, error: str) -> bool:
    return status == "failed" and (api_error_status == 429 or reset_time(error) is not None)


def _when(moment: datetime) -> str:
    local = timezone.localtime(moment)
    if local.date() == timezone.localtime().date():
        return local.strftime("%H:%M")
    return local.strftime("%m-%d %H:%M")


def outcome_of(run) -> Outcome:
    """`run`: a Session, a Run, or anything with status, exit_code, api_error_status, error."""
    status = str(getattr(run, "status", run))
    exit_code = getattr(run, "exit_code", None)
    error = getattr(run, "error", "") or ""
    if is_rate_limited(status, getattr(run, "api_error_status", None), error):
        reset = reset_time(error)
        label = f"rate-limited until {_when(reset)}" if reset else "rate-limited"
        return Outcome(RATE_LIMITED, label, reset)
    if status == "failed" and exit_code is not None:
        return Outcome("failed", f"failed (exit {exit_code})")
    return Outcome(status, status.replace("_", " "))


def outcome_of_row(row: dict) -> Outcome:
    """The same, for a values() row of an export."""
    fields = ("status", "exit_code", "api_error_status", "error")
    return outcome_of(SimpleNamespace(**{key: row.get(key) for key in fields}))
