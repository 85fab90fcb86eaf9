"""Cost and tokens per job and per day. A run's cost is Session.shown_cost_usd: the one
the CLI reported (its `result` event) or, when it reported none (imported, killed,
plain-text runs), the one computed from its transcript with the price table; $0 for a
quota skip; a run with neither is counted as unknown, never added in as $0, and a total
that leaves some out says so (total_words)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from sessions_app.models import MICROS, RunDay

TOKEN_COLUMNS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens")
# The costliest tags of a range, drawn each in its colour on the chart; the rest are "other".
CHART_TAGS = 6


@dataclass
class CostLine:
    key: str  # a tag, or a day (YYYY-MM-DD)
    cost_usd: Decimal = Decimal("0")  # the sum over runs whose cost is known
    runs: int = 0
    unknown_cost_runs: int = 0
    computed_cost_runs: int = 0  # priced from the transcript: the CLI reported no cost
    telemetry_cost_runs: int = 0  # from its telemetry: the CLI reported no cost
    tokens: int = 0
    # Days only: the cost of each of the chart's tags that day (CHART_TAGS of them).
    by_tag: dict[str, Decimal] = field(default_factory=dict)

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
    chart_tags: list[str] = field(default_factory=list)  # the costliest, CHART_TAGS of them


SUMS = ", ".join(
    f"CAST(SUM({column}) AS bigint)"
    for column in (
        "runs",
        "cost_micros",
        "unknown_cost_runs",
        "computed_cost_runs",
        "telemetry_cost_runs",
        " + ".join(TOKEN_COLUMNS),
    )
)


def _grouped(since: date, columns: tuple[str, ...], host: str = ""):
    """The rollup rows of the range summed per each of `columns` on its own, in one
    statement: (column, its value, runs, micros, unknown, computed, telemetry, tokens).
    PostgreSQL reads the range once for every grouping (GROUPING SETS); SQLite has no
    grouping sets and reads it once per column (UNION ALL)."""
    table = RunDay._meta.db_table
    where, params = "day >= %s", [connection.ops.adapt_datefield_value(since)]
    if host:
        where, params = f"{where} AND host = %s", [*params, host]
    if connection.vendor == "postgresql":
        # GROUPING(column) is 0 in the rows grouped by that column.
        kind = "CASE " + " ".join(f"WHEN GROUPING({c}) = 0 THEN '{c}'" for c in columns) + " END"
        sets = ", ".join(f"({c})" for c in columns)
        sql = (
            f"SELECT {kind}, {', '.join(columns)}, {SUMS} FROM {table} WHERE {where} "  # noqa: S608 (our constants)
            f"GROUP BY GROUPING SETS ({sets})"
        )
    else:
        sql = " UNION ALL ".join(
            f"SELECT '{c}', {', '.join(c if o == c else 'NULL' for o in columns)}, {SUMS} "  # noqa: S608 (our constants)
            f"FROM {table} WHERE {where} GROUP BY {c}"
            for c in columns
        )
        params = params * len(columns)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        for kind, *keys_and_sums in cursor.fetchall():
            key = keys_and_sums[columns.index(kind)]
            yield kind, str(key), [value or 0 for value in keys_and_sums[len(columns) :]]


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


def _by_cost(lines: list[CostLine]) -> list[CostLine]:
    return sorted(lines, key=lambda line: (-line.cost_usd, line.key))


def cost_report(days: int = 30, now: datetime | None = None, host: str = "") -> CostReport:
    """From the (day, tag, host) rollup the database keeps as runs are written
    (sessions_app.rollups: the UTC day of each run's start): sums per day, per tag and
    per host in one statement (in integers: millionths of a dollar), then the cost per
    day of the chart's tags (CHART_TAGS, the costliest) only, a few hundred rows
    whatever the number of tags. `host` narrows the report to one host; the per-host
    lines always cover every host, so the fleet's total stays in sight."""
    now = now or timezone.now()
    since = (now - timedelta(days=days - 1)).date()
    days_seen = {(since + timedelta(days=offset)).isoformat(): [0] * 6 for offset in range(days)}
    tags: dict[str, list[int]] = {}
    hosts: dict[str, list[int]] = {}
    found = {"day": days_seen, "script_tag": tags, "host": hosts}
    grouped = (
        [*_grouped(since, ("day", "script_tag"), host), *_grouped(since, ("host",))]
        if host
        else _grouped(since, ("day", "script_tag", "host"))
    )
    for kind, key, sums in grouped:
        if sums[0]:  # a rollup row may hold no run any more (a run's ending corrected)
            found[kind][key] = sums
    total = [sum(column) for column in zip(*tags.values(), strict=True)] if tags else [0] * 6
    by_tag = _by_cost([_line(tag, sums) for tag, sums in tags.items()])
    by_day = [_line(day, days_seen[day]) for day in sorted(days_seen)]
    charted = [line.key for line in by_tag if line.cost_usd > 0][:CHART_TAGS]
    if charted:
        lines = {line.key: line for line in by_day}
        in_range = RunDay.objects.filter(day__gte=since, script_tag__in=charted)
        costs = (in_range.filter(host=host) if host else in_range).values_list("day", "script_tag")
        for day, tag, micros in costs.annotate(Sum("cost_micros")).order_by():
            if micros and day.isoformat() in lines:
                lines[day.isoformat()].by_tag[tag] = Decimal(micros) / MICROS
    return CostReport(
        days=days,
        since=since,
        by_day=by_day,
        by_tag=by_tag,
        total=_line("total", total),
        by_host=_by_cost([_line(name, sums) for name, sums in hosts.items()]),
        host=host,
        chart_tags=charted,
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
