"""What one host token may cost the console, decided on a clock that is handed in.

Per host: reports per minute (past it, 429 with Retry-After: the host's next report
is taken), live sessions per report (past it, the sample is refused), scheduler jobs
on record (past it, a new job is refused; those on record are still kept up), bytes of
transcript per hour and in all (past either, chunks are refused with 429 and the host
pauses shipping until the hour turns; one `host_over_budget` event per window). The
counts live in the host's HostBudget row, locked for the report's transaction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction

from monitor_app.models import HostBudget

MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class Budgets:
    reports_per_minute: int
    sessions_per_report: int
    transcript_bytes_per_hour: int
    transcript_bytes_total: int
    jobs_per_host: int

    @classmethod
    def from_settings(cls) -> Budgets:
        return cls(
            reports_per_minute=settings.OPSCONSOLE_HOST_REPORTS_PER_MINUTE,
            sessions_per_report=settings.OPSCONSOLE_HOST_SESSIONS_PER_REPORT,
            transcript_bytes_per_hour=settings.OPSCONSOLE_HOST_TRANSCRIPT_BYTES_PER_HOUR,
            transcript_bytes_total=settings.OPSCONSOLE_HOST_TRANSCRIPT_BYTES_TOTAL,
            jobs_per_host=settings.OPSCONSOLE_HOST_JOBS,
        )


def count_report(budget: HostBudget, now: datetime, limits: Budgets) -> int | None:
    """Count one report in the host's current minute: None when it may be taken, else
    the whole seconds until the minute turns."""
    if budget.minute_started_at is None or now - budget.minute_started_at >= MINUTE:
        budget.minute_started_at, budget.minute_reports = now, 0
    if budget.minute_reports >= limits.reports_per_minute:
        left = MINUTE - (now - budget.minute_started_at)
        return max(1, math.ceil(left.total_seconds()))
    budget.minute_reports += 1
    return None


def transcript_allowance(budget: HostBudget, now: datetime, limits: Budgets) -> int:
    """Bytes of transcript the host may still send in this hour (and in all)."""
    if budget.hour_started_at is None or now - budget.hour_started_at >= HOUR:
        budget.hour_started_at, budget.hour_transcript_bytes = now, 0
    hour_left = limits.transcript_bytes_per_hour - budget.hour_transcript_bytes
    total_left = limits.transcript_bytes_total - budget.transcript_bytes_total
    return max(0, min(hour_left, total_left))


def spend_transcript(budget: HostBudget, size: int) -> None:
    budget.hour_transcript_bytes += size
    budget.transcript_bytes_total += size


def seconds_to_next_hour(budget: HostBudget, now: datetime) -> int:
    if budget.hour_started_at is None:
        return 0
    return max(1, math.ceil((HOUR - (now - budget.hour_started_at)).total_seconds()))


def locked_budget(host: str) -> HostBudget:
    """The host's row, locked until the transaction ends (reports of one host queue)."""
    HostBudget.objects.get_or_create(host=host)
    return HostBudget.objects.select_for_update().get(host=host)


def admit_report(host: str, now: datetime, limits: Budgets) -> int | None:
    """Count a report before its body is parsed: None, or seconds to wait (429)."""
    # Almost always: a report within the current minute's allowance, one statement,
    # as written: every report asks it, and the ORM built it at more CPU than it cost.
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {HostBudget._meta.db_table} SET minute_reports = minute_reports + 1 "  # noqa: S608 - the model's own table
            "WHERE host = %s AND minute_started_at > %s AND minute_reports < %s",
            [
                host,
                connection.ops.adapt_datetimefield_value(now - MINUTE),
                limits.reports_per_minute,
            ],
        )
        if cursor.rowcount:
            return None
    with transaction.atomic():
        budget = locked_budget(host)
        wait = count_report(budget, now, limits)
        budget.save(update_fields=["minute_started_at", "minute_reports"])
    return wait
