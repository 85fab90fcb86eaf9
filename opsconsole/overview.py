"""The overview at `/`: what is wrong right now, read in five seconds. Open incidents
(oldest first), jobs failing, late or quota-skipped, quota stamps in force, silent
hosts, runs live on every host, today's spend against the budgets; and the two counts
the navigation shows on every page. Plain data: the view only renders it.

It sits on the top floor because it reads both floor-4 packages (alerts, fleet)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from functools import cached_property

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Sum
from django.utils import timezone

from alerts_app.models import Incident, JobAlertSettings
from alerts_app.outcome_rules import budget_day_start
from fleet.hosts import HostRow, host_rows, silent_hosts
from monitor_app.job_status import Badge, JobStatus, job_statuses
from monitor_app.live import live_runs
from monitor_app.snapshot import Snapshot
from opsconsole.middleware import is_outage, outage
from sessions_app.costs import CostLine, cost_report
from sessions_app.models import Session, run_cost_expression

# Badge kinds (monitor_app.job_status) that put a job on the overview, worst first.
FAILING_KINDS = (
    "failed",
    "killed",
    "refused",
    "false_success",
    "check_failed",
    "hung",
    "rate_limited",
    "error",
)
ATTENTION_KINDS = (*FAILING_KINDS, "late", "quota_skip", "overlap_skip")

# Enough to see what is wrong; the Alerts page lists every one.
INCIDENTS_SHOWN = 15


@dataclass
class JobAttention:
    status: JobStatus
    badges: list[Badge]  # only those that need someone

    @property
    def rank(self) -> int:
        return min(ATTENTION_KINDS.index(badge.kind) for badge in self.badges)


@dataclass
class QuotaStamp:
    host: str
    until: str
    reason: str = ""


@dataclass
class HostLive:
    host: str
    live_runs: int
    silent: bool
    this_host: bool


@dataclass
class Budget:
    settings: JobAlertSettings
    spent: Decimal
    budget: Decimal

    @property
    def over(self) -> bool:
        return self.spent > self.budget

    @property
    def percent(self) -> int:
        return int(self.spent * 100 / self.budget) if self.budget else 0


@dataclass
class Overview:
    now: datetime
    incidents: list[Incident]
    incidents_open: int
    jobs: list[JobAttention]
    quotas: list[QuotaStamp]
    silent: list[HostRow]
    hosts_live: list[HostLive]
    spend_today: CostLine
    budgets: list[Budget] = field(default_factory=list)

    @property
    def live_total(self) -> int:
        return sum(host.live_runs for host in self.hosts_live)

    @property
    def all_clear(self) -> bool:
        return not (self.incidents_open or self.jobs or self.quotas or self.silent)


def jobs_needing_attention(statuses: list[JobStatus]) -> list[JobAttention]:
    """Jobs whose latest state needs someone: failing first, then late, then skipped."""
    found = []
    for status in statuses:
        badges = [badge for badge in status.badges if badge.kind in ATTENTION_KINDS]
        if badges:
            found.append(JobAttention(status, badges))
    return sorted(found, key=lambda item: (item.rank, item.status.job.label))


def daily_budgets(now: datetime) -> list[Budget]:
    """Every job with a daily budget: what its runs cost since the budget's day began
    (the same sum the cost_day alert rule takes), fullest first."""
    rules = list(
        JobAlertSettings.objects.filter(cost_per_day_usd__isnull=False).select_related("job")
    )
    if not rules:
        return []
    spent = dict(
        Session.objects.filter(
            job_id__in=[rule.job_id for rule in rules], started_at__gte=budget_day_start(now)
        )
        .values("job_id")
        .annotate(total=Sum(run_cost_expression()))
        .values_list("job_id", "total")
    )
    budgets = [
        Budget(rule, spent.get(rule.job_id) or Decimal(0), rule.cost_per_day_usd) for rule in rules
    ]
    return sorted(budgets, key=lambda b: (-b.percent, b.settings.job.label))


def quota_stamps(rows: list[HostRow], snapshot: Snapshot) -> list[QuotaStamp]:
    """Stamps in force: this host's from its sample, other hosts' from their reports."""
    stamps = []
    if snapshot.quota_until:
        stamps.append(
            QuotaStamp(settings.OPSCONSOLE_HOST, snapshot.quota_until, snapshot.quota_reason or "")
        )
    for row in rows:
        if row.quota_until and not row.this_host:
            stamps.append(QuotaStamp(row.host, row.quota_until))
    return stamps


def overview(snapshot: Snapshot, now: datetime | None = None) -> Overview:
    now = now or timezone.now()
    open_incidents = Incident.objects.filter(resolved_at__isnull=True)
    rows = host_rows(now)
    silent = set(silent_hosts(now))
    hosts_live = [
        HostLive(
            host=row.host,
            live_runs=len(live_runs(snapshot)) if row.this_host else row.live_runs,
            silent=row.host in silent,
            this_host=row.this_host,
        )
        for row in rows
    ]
    return Overview(
        now=now,
        incidents=list(
            open_incidents.select_related("job").order_by("opened_at", "id")[:INCIDENTS_SHOWN]
        ),
        incidents_open=open_incidents.count(),
        jobs=jobs_needing_attention(job_statuses(snapshot, now)),
        quotas=quota_stamps(rows, snapshot),
        silent=[row for row in rows if row.host in silent],
        hosts_live=sorted(hosts_live, key=lambda h: (-h.live_runs, not h.this_host, h.host)),
        # Today as the budgets count it: from local midnight (TIME_ZONE), not UTC's.
        spend_today=cost_report(days=1, now=timezone.localtime(now)).total,
        budgets=daily_budgets(now),
    )


class NavCounts:
    """The navigation's two counts, read only when a page shows them (a polled fragment
    never does). A database that fails here leaves the counts out, not the page."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    @cached_property
    def incidents(self) -> int | None:
        try:
            return Incident.objects.filter(resolved_at__isnull=True).count()
        except DatabaseError as exc:
            note_outage(exc)
            return None

    @cached_property
    def silent_hosts(self) -> int | None:
        try:
            return len(silent_hosts(self.now))
        except DatabaseError as exc:
            note_outage(exc)
            return None


def note_outage(exc: DatabaseError) -> None:
    """A count that timed out is an outage on record: the next pages answer from the
    sample at once instead of each waiting out the database's timeout again."""
    if is_outage(exc):
        outage.record(exc)
