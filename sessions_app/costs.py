"""Cost and tokens per job and per day. A run's cost is Session.shown_cost_usd: the one
the CLI reported (its `result` event) or, when it reported none (imported, killed,
plain-text runs), the one computed from its transcript with the price table; $0 for a
quota skip; a run with neither is counted as unknown, never added in as $0, and a total
that leaves some out says so (total_words)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal

from django.db.models import CharField, Count, Q, Sum
from django.db.models.functions import Cast, Coalesce, Substr
from django.utils import timezone

from sessions_app.models import LIVE_STATUSES, Session, run_cost_expression, unknown_cost_q

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


def _aggregates() -> dict:
    tokens = sum(
        (Coalesce(Sum(column), 0) for column in TOKEN_COLUMNS[1:]),
        Coalesce(Sum(TOKEN_COLUMNS[0]), 0),
    )
    return {
        "cost": Sum(run_cost_expression()),
        "telemetry": Count("id", filter=Q(cost_usd__isnull=True, cost_telemetry_usd__isnull=False)),
        "computed": Count(
            "id",
            filter=Q(
                cost_usd__isnull=True,
                cost_telemetry_usd__isnull=True,
                cost_computed_usd__isnull=False,
            ),
        ),
        "runs": Count("id"),
        "unknown": Count("id", filter=unknown_cost_q()),
        "tokens": tokens,
    }


def _line(key: str, row: dict) -> CostLine:
    return CostLine(
        key=key,
        cost_usd=row["cost"] or Decimal("0"),
        runs=row["runs"],
        unknown_cost_runs=row["unknown"],
        computed_cost_runs=row["computed"],
        telemetry_cost_runs=row["telemetry"],
        tokens=int(row["tokens"] or 0),
    )


def _add(line: CostLine, row: dict) -> None:
    line.cost_usd += row["cost"] or Decimal("0")
    line.runs += row["runs"]
    line.unknown_cost_runs += row["unknown"]
    line.computed_cost_runs += row["computed"]
    line.telemetry_cost_runs += row["telemetry"]
    line.tokens += int(row["tokens"] or 0)


def cost_report(days: int = 30, now: datetime | None = None, host: str = "") -> CostReport:
    """One GROUP BY (day, tag, host) over the range; per-tag, per-host and total lines are
    summed from it. `host` narrows the report to one host; the per-host lines always
    cover every host, so the fleet's total stays in sight."""
    now = now or timezone.now()
    since = (now - timedelta(days=days - 1)).date()
    # Compare the timestamp itself (not its date) so the started_at index is used.
    start = datetime.combine(since, time.min, tzinfo=now.tzinfo)
    rows = (
        Session.objects.exclude(status__in=LIVE_STATUSES)
        .filter(started_at__gte=start)
        # The stored UTC timestamp's first ten characters: a day key with no per-row
        # function call (SQLite runs TruncDate in Python), the same on PostgreSQL.
        .annotate(day=Substr(Cast("started_at", CharField()), 1, 10))
        .values("day", "script_tag", "host")
        .annotate(**_aggregates())
        .order_by()
    )
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
        _add(hosts.setdefault(row["host"], CostLine(key=row["host"])), row)
        if host and row["host"] != host:
            continue
        day = row["day"]
        line = daily.setdefault(day, CostLine(key=day))
        tag = tags.setdefault(row["script_tag"], CostLine(key=row["script_tag"]))
        for target in (line, tag, total):
            _add(target, row)
        if row["cost"]:
            line.by_tag[row["script_tag"]] = line.by_tag.get(row["script_tag"], 0) + row["cost"]
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
