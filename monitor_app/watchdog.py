"""The watchdog: runs past their job's time limit are stopped and put on record.

A run's limit is its job's max_runtime_minutes (edited in the admin), else
OPSCONSOLE_DEFAULT_MAX_RUNTIME_MINUTES. Orphaned agents count too. Bad sidecars,
vanished processes and permission errors are reported and skipped; the watchdog
carries on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psutil
from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from jobs_app.linking import job_index
from jobs_app.models import AuditEntry, Job
from monitor_app.snapshot import LiveSession, Snapshot
from monitor_app.stopping import StopOutcome, stop_session
from sessions_app.timeline import stall_words

log = logging.getLogger(__name__)


@dataclass
class Overdue:
    live: LiveSession
    job: Job | None
    limit: timedelta
    runtime: timedelta
    stall: str = ""  # which kind of stall its telemetry shows, if it shows one

    def describe(self) -> str:
        minutes = int(self.runtime.total_seconds() // 60)
        limit = int(self.limit.total_seconds() // 60)
        owner = self.job.label if self.job else "no job"
        kind = f"; {self.stall}" if self.stall else ""
        return (
            f"{self.live.sidecar.script_tag} ({self.live.session_id}, {self.live.state}, "
            f"{owner}): running {minutes} min, limit {limit} min{kind}"
        )


@dataclass
class WatchdogReport:
    overdue: list[Overdue] = field(default_factory=list)
    stopped: list[StopOutcome] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def find_overdue(snapshot: Snapshot, now: datetime) -> list[Overdue]:
    index = job_index()
    jobs = Job.objects.in_bulk(
        {
            index[key]
            for key in ((s.sidecar.host, s.sidecar.script_tag) for s in snapshot.sessions)
            if key in index
        }
    )
    default = timedelta(minutes=settings.OPSCONSOLE_DEFAULT_MAX_RUNTIME_MINUTES)
    overdue = []
    for live in snapshot.sessions:
        job = jobs.get(index.get((live.sidecar.host, live.sidecar.script_tag)))
        limit = timedelta(minutes=job.max_runtime_minutes) if job else default
        runtime = now - live.started_at
        if runtime > limit:
            stall = stall_words(live, now=now)
            overdue.append(Overdue(live, job, limit, runtime, stall))
    return overdue


def run_watchdog(
    snapshot: Snapshot, *, dry_run: bool, grace: float, now: datetime | None = None
) -> WatchdogReport:
    report = WatchdogReport()
    report.skipped += [f"sidecar {s.name}: {s.reason}" for s in snapshot.skipped]
    if snapshot.active_dir_error:
        report.skipped.append(f"sidecar directory: {snapshot.active_dir_error}")
    try:
        report.overdue = find_overdue(snapshot, now or timezone.now())
    except DatabaseError as exc:
        report.skipped.append(f"database unavailable, job limits unknown: {exc}")
        return report
    if dry_run:
        return report
    stopped, skipped = stop_overdue(report.overdue, grace=grace)
    report.stopped += stopped
    report.skipped += skipped
    return report


def stop_overdue(overdue: list[Overdue], *, grace: float) -> tuple[list[StopOutcome], list[str]]:
    """Stop each overdue run's tree and audit it; returns (stopped, skipped)."""
    stopped: list[StopOutcome] = []
    skipped: list[str] = []
    for item in overdue:
        try:
            outcome = stop_session(item.live, actor="watchdog", reason="watchdog", grace=grace)
        except (psutil.Error, OSError, DatabaseError) as exc:
            skipped.append(f"{item.live.session_id}: could not stop ({exc})")
            continue
        stopped.append(outcome)
        AuditEntry.objects.create(
            actor="watchdog",
            action="watchdog",
            job=item.job,
            target=item.live.session_id,
            ok=not outcome.errors,
            output="\n".join(outcome.errors),
            detail={
                "message": item.describe(),
                "runtime_seconds": int(item.runtime.total_seconds()),
                "limit_seconds": int(item.limit.total_seconds()),
                "terminated": outcome.terminated,
                "killed": outcome.killed,
            },
        )
    return stopped, skipped
