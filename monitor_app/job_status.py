"""Jobs joined to their runs: what the dashboard and /api/status show.

The collectors are read live but at most once per snapshot window, like the
process table. What they find is recorded (collected fields only), so the
human fields edited in the admin travel with each job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from jobs_app.collectors import collect_all
from jobs_app.collectors.base import CollectedJob, Collection
from jobs_app.linking import forget_index
from jobs_app.models import Job
from monitor_app.runs import Run, run_from_live
from monitor_app.snapshot import Snapshot
from sessions_app.models import LIVE_STATUSES, Session
from sessions_app.outcome import outcome_of
from wrapper.formats import EXIT_OVERLAP_SKIP, EXIT_QUOTA_SKIP

log = logging.getLogger(__name__)

CACHE_KEY = "opsconsole:jobs-collection"
# A run that starts this long before the expected time still counts as that run.
EARLY_START_SLACK = timedelta(minutes=1)


@dataclass
class CollectionReport:
    taken_at: datetime
    errors: dict[str, list[str]] = field(default_factory=dict)  # scheduler -> messages
    schedulers: list[str] = field(default_factory=list)


@dataclass
class Badge:
    kind: str  # a status class: live, retrying, quota_skip, failed, killed, late, ...
    label: str
    url: str = ""


@dataclass
class JobStatus:
    job: Job
    live: list[Run]
    last_session: Session | None
    badges: list[Badge]
    expected_run_at: datetime | None

    @property
    def platform(self) -> str:
        """The admin's platform; else the one its runs pass with --platform."""
        if self.job.platform:
            return self.job.platform
        for run in self.live:
            if run.platform:
                return run.platform
        return self.last_session.platform if self.last_session else ""

    @property
    def enabled(self) -> bool:
        job = self.job
        return job.enabled and job.scheduler_enabled and job.present

    @property
    def next_run_at(self) -> datetime | None:
        """None for a disabled job: it has no next run."""
        return self.job.next_run_at if self.enabled else None

    @property
    def schedule_raw_if_different(self) -> str:
        """The scheduler's own words, when they add something to the description."""
        raw = self.job.schedule_raw
        return "" if raw.strip() == self.job.schedule_text.strip() else raw

    @property
    def state(self) -> str:
        if self.live:
            return "running"
        return self.job.state or "unknown"


# ----------------------------------------------------------------------------- collection


def collect_and_record(now: datetime | None = None) -> CollectionReport:
    now = now or timezone.now()
    known: dict[str, set[str]] = {}
    for scheduler, label in Job.objects.filter(host=settings.OPSCONSOLE_HOST).values_list(
        "scheduler", "label"
    ):
        known.setdefault(scheduler, set()).add(label)
    collections = collect_all(now, known)
    record_collections(collections, now)
    return CollectionReport(
        taken_at=now,
        errors={c.scheduler: c.errors for c in collections if c.errors},
        schedulers=[c.scheduler for c in collections],
    )


def recorded_report() -> CollectionReport:
    """What the monitor's latest collection left on record, without collecting again."""
    jobs = Job.objects.filter(host=settings.OPSCONSOLE_HOST, present=True).only(
        "scheduler", "collector_error", "collected_at"
    )
    errors: dict[str, list[str]] = {}
    schedulers: set[str] = set()
    taken_at = None
    for job in jobs:
        schedulers.add(job.scheduler)
        if job.collector_error:
            errors.setdefault(job.scheduler, []).append(job.collector_error)
        if job.collected_at and (taken_at is None or job.collected_at > taken_at):
            taken_at = job.collected_at
    return CollectionReport(taken_at or timezone.now(), errors, sorted(schedulers))


def _collected_values(found: CollectedJob, now: datetime) -> dict:
    return {
        "tags": found.tags,
        "command": found.command,
        "schedule_raw": found.schedule_raw,
        "schedule_text": found.schedule_text,
        "interval_seconds": found.interval_seconds,
        "next_run_at": found.next_run_at,
        "previous_run_at": found.previous_run_at,
        "pids": found.pids,
        "last_exit_status": found.last_exit_status,
        "state": found.state,
        "scheduler_enabled": found.enabled,
        "source": found.source,
        "scope": found.scope,
        "collector_error": found.error,
        "present": True,
        "wrapped": found.wrapped,
    }


def record_collections(
    collections: list[Collection], now: datetime, host: str | None = None, most: int | None = None
) -> list[CollectedJob]:
    """Upsert what the collectors found; touch only collected fields, and only when changed.

    `host`: whose jobs these are (a reporting host's, fleet.console); this host's
    by default. `most`: the jobs the host may have on record, gone ones included (a
    collection never deletes one); a job found for the first time past it is not
    recorded, and returned (the jobs on record are kept up as ever)."""
    host = host or settings.OPSCONSOLE_HOST
    existing = {(j.scheduler, j.label): j for j in Job.objects.filter(host=host)}
    unrecorded: list[CollectedJob] = []
    index_stale = False
    for collection in collections:
        seen = set()
        for found in collection.jobs:
            key = (found.scheduler, found.label)
            seen.add(key)
            values = _collected_values(found, now)
            job = existing.get(key)
            if job is None and most is not None and len(existing) >= most:
                unrecorded.append(found)
                continue
            if job is None:
                job = Job.objects.create(
                    scheduler=found.scheduler,
                    label=found.label,
                    host=host,
                    collected_at=now,
                    first_seen_at=now,
                    **values,
                )
                existing[key] = job
                index_stale = True
                link_earlier_sessions(job)
                continue
            changed = [name for name, value in values.items() if getattr(job, name) != value]
            if changed:
                index_stale = index_stale or "tags" in changed
                for name in changed:
                    setattr(job, name, values[name])
                job.collected_at = now
                job.save(update_fields=[*changed, "collected_at"])
                if "tags" in changed:
                    link_earlier_sessions(job)
        if collection.errors:
            continue  # a collector that could not see everything says nothing about the rest
        gone = [
            job
            for (scheduler, label), job in existing.items()
            if scheduler == collection.scheduler and (scheduler, label) not in seen and job.present
        ]
        for job in gone:
            job.present = False
            job.state = "gone"
            job.pids = []
            job.save(update_fields=["present", "state", "pids"])
    if index_stale:
        forget_index()
    return unrecorded


def link_earlier_sessions(job: Job) -> None:
    if job.tags:
        Session.objects.filter(job__isnull=True, host=job.host, script_tag__in=job.tags).update(
            job=job
        )


# ----------------------------------------------------------------------------- status


def live_runs_of(job: Job, snapshot: Snapshot, *, record_links: bool | None = None) -> list[Run]:
    """Joined by process ancestry (the job's PIDs) and by the wrapper tag it runs."""
    found = {}
    for pid in job.pids or []:
        for live in snapshot.sessions_for_pid(pid):
            found[live.session_id] = live
    if record_links is None:
        record_links = snapshot.source == "on-demand"
    if found and record_links:
        # Joined by ancestry alone (its tag is not the job's): put the link on record.
        # (The monitor does this for every job on its collection cadence; a page that
        # reads the monitor's sample writes nothing.)
        Session.objects.filter(session_id__in=list(found), job__isnull=True).update(job=job)
    for live in snapshot.sessions:
        if live.sidecar.host != job.host:
            continue
        # By the wrapper tag, or by the job the process itself names (jobs_app.linking).
        if live.sidecar.script_tag in (job.tags or []) or live.job_id == job.pk:
            found[live.session_id] = live
    return [run_from_live(live) for live in found.values()]


def last_finished_session(job: Job) -> Session | None:
    """Its runs by tag, and those tied to it from their processes (Session.job)."""
    runs = Q(job=job)
    if job.tags:
        runs |= Q(host=job.host, script_tag__in=job.tags)
    return (
        Session.objects.filter(runs)
        .exclude(status__in=LIVE_STATUSES)
        .order_by("-started_at")
        .first()
    )


def expected_run(job: Job, last: Session | None, now: datetime) -> datetime | None:
    """When the schedule says the job should most recently have started, if it says."""
    if job.previous_run_at:
        return job.previous_run_at
    if job.interval_seconds and last is not None:
        return last.started_at + timedelta(seconds=job.interval_seconds)
    if job.next_run_at and job.next_run_at < now:
        return job.next_run_at  # systemd: the next elapse is already behind us
    return None


def badges_for(
    job: Job, live: list[Run], last: Session | None, expected: datetime | None, now: datetime
) -> list[Badge]:
    badges: list[Badge] = []
    for run in live:
        url = reverse("session", args=[run.session_id])
        badges.append(Badge(run.status, run.status, url))
        if run.attempt > 1:
            badges.append(Badge("retrying", f"retrying (attempt {run.attempt})", url))
        if now - run.started_at > timedelta(minutes=job.max_runtime_minutes):
            badges.append(Badge("hung", f"hung (> {job.max_runtime_minutes} min)", url))
    if not live:
        badges.extend(outcome_badges(job, last))
    enabled = job.enabled and job.scheduler_enabled and job.present
    if not job.present:
        badges.append(Badge("disabled", "gone from the scheduler"))
    elif not enabled:
        badges.append(Badge("disabled", "disabled"))
    grace = timedelta(seconds=settings.OPSCONSOLE_LATE_GRACE_SECONDS)
    if enabled and not live and expected is not None and expected + grace < now:
        ran = last is not None and last.started_at >= expected - EARLY_START_SLACK
        # A run due before the console first saw the job was nobody's to watch.
        unseen = job.first_seen_at is not None and expected < job.first_seen_at
        if not ran and not unseen:
            badges.append(Badge("late", "late"))
    if job.collector_error:
        badges.append(Badge("error", "collector: " + job.collector_error[:80]))
    return badges


def outcome_badges(job: Job, last: Session | None) -> list[Badge]:
    """How the last run ended, from its record; else from the scheduler's exit status."""
    if last is not None:
        outcome = outcome_of(last)
        return [Badge(outcome.kind, outcome.label, reverse("session", args=[last.session_id]))]
    status = job.last_exit_status
    if status is None:
        return []
    if status == EXIT_QUOTA_SKIP:
        return [Badge("quota_skip", "quota skip")]  # a skip, never a failure
    if status == EXIT_OVERLAP_SKIP:
        return [Badge("overlap_skip", "overlap skip")]  # the previous run was still live
    if status < 0:
        return [Badge("killed", f"killed (signal {-status})")]
    if status > 0:
        return [Badge("failed", f"failed (exit {status})")]
    return [Badge("succeeded", "succeeded")]


def job_statuses(
    snapshot: Snapshot,
    now: datetime | None = None,
    *,
    record_links: bool | None = None,
) -> list[JobStatus]:
    now = now or timezone.now()
    statuses = []
    for job in Job.objects.all().order_by("label"):
        live = (
            live_runs_of(job, snapshot, record_links=record_links)
            if job.host == settings.OPSCONSOLE_HOST
            else []
        )
        last = last_finished_session(job)
        expected = expected_run(job, last, now)
        statuses.append(
            JobStatus(
                job=job,
                live=live,
                last_session=last,
                badges=badges_for(job, live, last, expected, now),
                expected_run_at=expected,
            )
        )
    statuses.sort(key=lambda status: (status.platform, status.job.label))
    return statuses


def status_payload(status: JobStatus) -> dict:
    job = status.job
    last = status.last_session
    return {
        "id": job.pk,
        "html_url": reverse("job", args=[job.pk]),
        "label": job.label,
        "scheduler": job.scheduler,
        "wrapped": job.wrapped,
        "host": job.host,
        "platform": status.platform,
        "tags": job.tags,
        "pids": job.pids,
        "last_exit_status": job.last_exit_status,
        "state": status.state,
        "enabled": status.enabled,
        "badges": [{"kind": b.kind, "label": b.label, "url": b.url or None} for b in status.badges],
        "schedule": job.schedule_text or job.schedule_raw,
        "schedule_raw": job.schedule_raw,
        "next_run": status.next_run_at.isoformat() if status.next_run_at else None,
        "expected_run": status.expected_run_at.isoformat() if status.expected_run_at else None,
        "live_sessions": [
            {
                "session_id": r.session_id,
                "attempt": r.attempt,
                "state": r.status,
                "started_at": r.started_at.isoformat(),
                **r.urls(),
            }
            for r in status.live
        ],
        "last_session": None
        if last is None
        else {
            "session_id": str(last.session_id),
            "status": last.status,
            "outcome": outcome_of(last).kind,
            "exit_code": last.exit_code,
            "started_at": last.started_at.isoformat(),
            "ended_at": last.ended_at.isoformat() if last.ended_at else None,
            "cost_usd": float(cost) if (cost := last.shown_cost_usd) is not None else None,
            "cost_source": last.shown_cost_source or None,
            "html_url": reverse("session", args=[last.session_id]),
        },
        "collector_error": job.collector_error or None,
    }
