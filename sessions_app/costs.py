"""Cost and tokens per job and per day. A run whose cost is unknown is counted as
unknown, never added in as $0."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.db.models import Count, Q, Sum
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from sessions_app.models import LIVE_STATUSES, Session

TOKEN_COLUMNS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens")


@dataclass
class CostLine:
    key: str  # a tag, or a day (YYYY-MM-DD)
    cost_usd: Decimal = Decimal("0")  # the sum over runs whose cost is known
    runs: int = 0
    unknown_cost_runs: int = 0
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


def _aggregates() -> dict:
    tokens = sum(
        (Coalesce(Sum(column), 0) for column in TOKEN_COLUMNS[1:]),
        Coalesce(Sum(TOKEN_COLUMNS[0]), 0),
    )
    return {
        "cost": Sum("cost_usd"),
        "runs": Count("id"),
        "unknown": Count("id", filter=Q(cost_usd__isnull=True)),
        "tokens": tokens,
    }


def _line(key: str, row: dict) -> CostLine:
    return CostLine(
        key=key,
        cost_usd=row["cost"] or Decimal("0"),
        runs=row["runs"],
        unknown_cost_runs=row["unknown"],
        tokens=int(row["tokens"] or 0),
    )


def cost_report(days: int = 30, now: datetime | None = None) -> CostReport:
    now = now or timezone.now()
    since = (now - timedelta(days=days - 1)).date()
    rows = Session.objects.exclude(status__in=LIVE_STATUSES).filter(started_at__date__gte=since)
    by_tag = [
        _line(row["script_tag"], row)
        for row in rows.values("script_tag").annotate(**_aggregates()).order_by("-cost")
    ]
    by_tag.sort(key=lambda line: (-line.cost_usd, line.key))
    daily: dict[str, CostLine] = {}
    for offset in range(days):
        day = (since + timedelta(days=offset)).isoformat()
        daily[day] = CostLine(key=day)
    per_day_tag = (
        rows.annotate(day=TruncDate("started_at"))
        .values("day", "script_tag")
        .annotate(**_aggregates())
        .order_by("day")
    )
    for row in per_day_tag:
        line = daily.setdefault(row["day"].isoformat(), CostLine(key=row["day"].isoformat()))
        line.cost_usd += row["cost"] or Decimal("0")
        line.runs += row["runs"]
        line.unknown_cost_runs += row["unknown"]
        line.tokens += int(row["tokens"] or 0)
        if row["cost"]:
            line.by_tag[row["script_tag"]] = row["cost"]
    total = CostLine(key="total")
    for line in by_tag:
        total.cost_usd += line.cost_usd
        total.runs += line.runs
        total.unknown_cost_runs += line.unknown_cost_runs
        total.tokens += line.tokens
    return CostReport(
        days=days, since=since, by_day=list(daily.values()), by_tag=by_tag, total=total
    )
