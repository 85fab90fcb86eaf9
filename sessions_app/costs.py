"""Cost and tokens per job and per day. A run's cost is Session.shown_cost_usd: the one
the CLI reported (its `result` event) or, when it reported none (imported, killed,
plain-text runs), the one computed from its transcript with the price table; $0 for a
quota skip; a run with neither is counted as unknown, never added in as $0, and a total
that leaves some out says so (total_words)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.db.models import Sum
from django.utils import timezone

from sessions_app.models import MICROS, RunDay

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


SUMMED = (
    "runs",
    "cost_micros",
    "unknown_cost_runs",
    "computed_cost_runs",
    "telemetry_cost_runs",
    *TOKEN_COLUMNS,
)


def _sums(rows, *keys: str):
    """The rollup rows summed per `keys`, in the database: (keys..., sums in SUMMED order,
    the four token columns added up)."""
    sums = rows.values_list(*keys).annotate(*(Sum(name) for name in SUMMED))
    for row in sums.order_by():
        values = row[len(keys) :]
        yield (*row[: len(keys)], *(v or 0 for v in values[:5]), sum(v or 0 for v in values[5:]))


def _add(totals: list[int], row: tuple, start: int) -> None:
    for index in range(6):
        totals[index] += row[start + index]


def _line(key: str, totals: list[int]) -> CostLine:
    runs, micros, unknown, computed, telemetry, tokens = totals
    return CostLine(
        key=key,
        cost_usd=Decimal(micros) / MICROS,
        runs=runs,
        unknown_cost_runs=unknown,
        computed_cost_runs=computed,
        telemetry_cost_runs=telemetry,
        tokens=tokens,
    )


def cost_report(days: int = 30, now: datetime | None = None, host: str = "") -> CostReport:
    """From the (day, tag, host) rollup the database keeps as runs are written
    (sessions_app.rollups: the UTC day of each run's start): one sum per day and tag,
    one per host; per-day, per-tag and total lines are added up from the first (in
    integers: millionths of a dollar). `host` narrows the report to one host; the
    per-host lines always cover every host, so the fleet's total stays in sight."""
    now = now or timezone.now()
    since = (now - timedelta(days=days - 1)).date()
    in_range = RunDay.objects.filter(day__gte=since)
    days_seen: dict[str, list[int]] = {
        (since + timedelta(days=offset)).isoformat(): [0] * 6 for offset in range(days)
    }
    day_tags: dict[str, dict[str, Decimal]] = {key: {} for key in days_seen}
    tags: dict[str, list[int]] = {}
    total = [0] * 6
    hosts = [_line(row[0], list(row[1:])) for row in _sums(in_range, "host") if row[1]]
    for row in _sums(in_range.filter(host=host) if host else in_range, "day", "script_tag"):
        if not row[2]:
            continue
        day, tag = row[0].isoformat(), row[1]
        _add(days_seen.setdefault(day, [0] * 6), row, 2)
        _add(tags.setdefault(tag, [0] * 6), row, 2)
        _add(total, row, 2)
        if row[3]:
            day_tags.setdefault(day, {})[tag] = Decimal(row[3]) / MICROS
    by_day = []
    for day in sorted(days_seen):
        line = _line(day, days_seen[day])
        line.by_tag = day_tags.get(day, {})
        by_day.append(line)
    by_tag = [_line(tag, sums) for tag, sums in tags.items()]
    return CostReport(
        days=days,
        since=since,
        by_day=by_day,
        by_tag=sorted(by_tag, key=lambda line: (-line.cost_usd, line.key)),
        total=_line("total", total),
        by_host=sorted(hosts, key=lambda line: (-line.cost_usd, line.key)),
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
