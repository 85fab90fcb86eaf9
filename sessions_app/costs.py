"""Cost and tokens per job and per day. A run's cost is Session.shown_cost_usd: the one
the CLI reported (its `result` event) or, when it reported none (imported, killed,
plain-text runs), the one computed from its transcript with the price table; $0 for a
quota skip; a run with neither is counted as unknown, never added in as $0, and a total
that leaves some out says so (total_words)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.utils import timezone

from sessions_app.models import RunDay

TOKEN_COLUMNS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens")


@dataclass
class CostLine:
    key: str  # a tag, or a day (YYYY-MM-DD)
    cost_usd: Decimal = Decimal("0")  # the sum over runs whose cost is known
    runs: int = 0
    unknown_cost_runs: int = 0
    computed_cost_runs: int = 0  # priced from the transcript: the CLI reported no cost
    telemetry_cost_runs: int = 0  # from its telemetry: the CLI reported no cost
    tokens: int = 0
    by_tag: dict[str, Decimal] = field(default_factory=dict)  # days only

    @property
    def known_cost_runs(self) -> int:
        return self.runs - self.unknown_cost_runs


@dataclass
class CostReport:
    days: int
    since: date
    by_day: list[CostLine]
    by_tag: list[CostLine]
    total: CostLine
    # Every host with runs in the range (all of them, whatever `host` the report is for).
    by_host: list[CostLine] = field(default_factory=list)
    host: str = ""


def _add(line: CostLine, row: RunDay) -> None:
    line.cost_usd += row.cost_usd
    line.runs += row.runs
    line.unknown_cost_runs += row.unknown_cost_runs
    line.computed_cost_runs += row.computed_cost_runs
    line.telemetry_cost_runs += row.telemetry_cost_runs
    line.tokens += sum(getattr(row, column) for column in TOKEN_COLUMNS)


def cost_report(days: int = 30, now: datetime | None = None, host: str = "") -> CostReport:
    """The (day, tag, host) rollup over the range, which the database keeps as runs are
    written (sessions_app.rollups: the UTC day of each run's start); per-tag, per-host
    and total lines are summed from it. `host` narrows the report to one host; the
    per-host lines always cover every host, so the fleet's total stays in sight."""
    now = now or timezone.now()
    since = (now - timedelta(days=days - 1)).date()
    rows = RunDay.objects.filter(day__gte=since, runs__gt=0).order_by()
    daily = {
        (since + timedelta(days=offset)).isoformat(): CostLine(
            key=(since + timedelta(days=offset)).isoformat()
        )
        for offset in range(days)
    }
    tags: dict[str, CostLine] = {}
    hosts: dict[str, CostLine] = {}
    total = CostLine(key="total")
    for row in rows:
        _add(hosts.setdefault(row.host, CostLine(key=row.host)), row)
        if host and row.host != host:
            continue
        day = row.day.isoformat()
        line = daily.setdefault(day, CostLine(key=day))
        tag = tags.setdefault(row.script_tag, CostLine(key=row.script_tag))
        for target in (line, tag, total):
            _add(target, row)
        if row.cost_micros:
            line.by_tag[row.script_tag] = line.by_tag.get(row.script_tag, 0) + row.cost_usd
    by_tag = sorted(tags.values(), key=lambda line: (-line.cost_usd, line.key))
    return CostReport(
        days=days,
        since=since,
        by_day=sorted(daily.values(), key=lambda line: line.key),
        by_tag=by_tag,
        total=total,
        by_host=sorted(hosts.values(), key=lambda line: (-line.cost_usd, line.key)),
        host=host,
    )


def total_words(amount: Decimal | float | None, unknown_runs: int, runs: int | None = None) -> str:
    """A sum of run costs in words: "$1.20"; "≥ $1.20 + 3 unknown" when some runs' cost
    is unknown; "unknown" when no run's is known. Never "$0.00" for unknowns."""
    known = (runs - unknown_runs) if runs is not None else None
    if unknown_runs and (known == 0 or (known is None and not amount)):
        return "unknown"
    dollars = usd_words(amount or Decimal("0"))
    return f"≥ {dollars} + {unknown_runs} unknown" if unknown_runs else dollars


def usd_words(amount) -> str:
    """Dollars as every page shows them; None is "unknown", never $0."""
    if amount is None or amount == "":
        return "unknown"
    amount = Decimal(str(amount))
    if amount == 0:
        return "$0.00"
    if abs(amount) < 1:
        return f"${amount:.4f}"
    return f"${amount:,.2f}"
