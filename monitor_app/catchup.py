"""Catch-up after a quota stamp clears: the fires a stamp skipped, run again.

A job's catch-up policy (jobs_app.models.CatchUp) says what happens to its runs the
stamp skipped (quota_skip rows): `none` (they are lost, as before), `once` (one run
for all of them), `all_missed` (one run per skipped fire within the job's window,
one at a time). Never while a stamp holds, never twice for one miss (the job keeps
the latest miss dealt with: caught_up_through), never on top of a live run.

`decide()` is the rule, a pure function of `now`; `catchup_round()` is the monitor
step that gathers the facts and starts the runs as "run now" does (job_controls),
audited as actor `catch-up`, with a catch_up event.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import close_old_connections

from jobs_app.models import CatchUp, Job
from monitor_app.job_controls import execute, record
from monitor_app.job_status import live_runs_of
from monitor_app.models import EventKind
from monitor_app.monitor import Cadence, Monitor
from monitor_app.snapshot import Snapshot
from sessions_app.models import LIVE_STATUSES, NOT_RUN_STATUSES, Session, Status
from wrapper.formats import QuotaStamp

log = logging.getLogger(__name__)

CATCH_UP_ACTOR = "catch-up"


@dataclass(frozen=True)
class JobFacts:
    """What the rule needs to know of one job, as of `now`."""

    job_id: int
    policy: str  # CatchUp
    window: timedelta
    caught_up_through: datetime | None  # the latest miss already dealt with
    misses: tuple[datetime, ...]  # start times of its quota_skip runs, oldest first
    live: bool  # a run of it is live (or being started)
    latest_run: datetime | None = None  # the latest run claude started (not a skip)


@dataclass(frozen=True)
class Decision:
    job_id: int
    through: datetime  # the newest miss this decision deals with
    misses: int  # how many skipped fires it answers
    run: bool  # False: a run since the last miss already did the work; only noted


def decide(now: datetime, stamp: QuotaStamp | None, jobs: list[JobFacts]) -> list[Decision]:
    """Which jobs to catch up now, and which misses each run answers."""
    if stamp is not None and stamp.holds(now):
        return []
    decisions = []
    for job in jobs:
        if job.policy not in (CatchUp.ONCE, CatchUp.ALL_MISSED) or job.live:
            continue
        oldest = now - job.window
        if job.caught_up_through is not None:
            oldest = max(oldest, job.caught_up_through)
        misses = sorted(m for m in job.misses if oldest < m <= now)
        if not misses:
            continue
        if job.policy == CatchUp.ONCE:
            covered = job.latest_run is not None and job.latest_run > misses[-1]
            decisions.append(Decision(job.job_id, misses[-1], len(misses), run=not covered))
        else:  # one run per miss, oldest first; the next one once this one has ended
            decisions.append(Decision(job.job_id, misses[0], 1, run=True))
    return decisions


def facts_of(job: Job, snapshot: Snapshot, now: datetime, starting: set[int]) -> JobFacts:
    window = timedelta(hours=job.catchup_window_hours)
    oldest = now - window
    if job.caught_up_through is not None:
        oldest = max(oldest, job.caught_up_through)
    runs = Session.objects.filter(job=job)
    misses = tuple(
        runs.filter(status=Status.QUOTA_SKIP, started_at__gt=oldest)
        .order_by("started_at")
        .values_list("started_at", flat=True)[:1000]
    )
    live = (
        job.pk in starting
        or bool(live_runs_of(job, snapshot, record_links=False))
        or runs.filter(status__in=LIVE_STATUSES).exists()
    )
    latest_run = (
        runs.exclude(status__in=NOT_RUN_STATUSES)
        .order_by("-started_at")
        .values_list("started_at", flat=True)
        .first()
    )
    return JobFacts(
        job.pk, job.catchup_policy, window, job.caught_up_through, misses, live, latest_run
    )


class CatchUpState:
    """Per monitor: the cadence, and the jobs whose catch-up run is being started."""

    def __init__(self) -> None:
        self.cadence = Cadence()
        self.starting: set[int] = set()
        self.lock = threading.Lock()


def catchup_round(monitor: Monitor, snapshot: Snapshot, now: datetime) -> None:
    """A monitor step: this host's jobs with a catch-up policy, every
    OPSCONSOLE_CATCHUP_SECONDS. Each run starts in a thread (a start waits until the
    run is seen); the job counts as live until it has."""
    state = monitor.step_state.setdefault("catch_up", CatchUpState())
    if not state.cadence.due(now, settings.OPSCONSOLE_CATCHUP_SECONDS):
        return
    for decision, job in due_catch_ups(monitor, snapshot, now, state):
        thread = threading.Thread(
            target=_start_in_background,
            args=(job, decision, state),
            name=f"catch-up-{job.pk}",
            daemon=True,
        )
        thread.start()


def due_catch_ups(monitor: Monitor, snapshot: Snapshot, now: datetime, state: CatchUpState):
    """The decisions for this host's jobs, each put on record (the job's marker moves
    first: a miss is never caught up twice, even if the start then fails), with the job."""
    jobs = {
        job.pk: job
        for job in Job.objects.filter(
            host=monitor.host, catchup_policy__in=(CatchUp.ONCE, CatchUp.ALL_MISSED)
        )
    }
    with state.lock:
        starting = set(state.starting)
    facts = [facts_of(job, snapshot, now, starting) for job in jobs.values()]
    due = []
    for decision in decide(now, monitor.quota, facts):
        job = jobs[decision.job_id]
        moved = Job.objects.filter(pk=job.pk, caught_up_through=job.caught_up_through).update(
            caught_up_through=decision.through
        )
        if not moved:
            continue  # another monitor round dealt with it first
        job.caught_up_through = decision.through
        what = (
            f"catching up {decision.misses} run(s) the quota stamp skipped"
            if decision.run
            else f"{decision.misses} skipped run(s) already made up by a later run"
        )
        monitor.events.add(
            EventKind.CATCH_UP,
            f"{job.label}: {what}",
            key=f"catch_up:{job.pk}:{decision.through.isoformat()}",
            at=now,
            script_tag=(job.tags or [""])[0],
            detail={
                "job_id": job.pk,
                "policy": job.catchup_policy,
                "misses": decision.misses,
                "through": decision.through.isoformat(),
                "run": decision.run,
            },
        )
        if decision.run:
            with state.lock:
                state.starting.add(job.pk)
            due.append((decision, job))
    return due


def start_catch_up(job: Job, decision: Decision) -> None:
    """Start the job as "run now" does, audited as actor catch-up."""
    result = execute(job, "run")
    result.detail.update(
        catch_up=job.catchup_policy,
        misses=decision.misses,
        through=decision.through.isoformat(),
    )
    record(job, "run", CATCH_UP_ACTOR, result)


def _start_in_background(job: Job, decision: Decision, state: CatchUpState) -> None:
    try:
        start_catch_up(job, decision)
    except Exception:
        log.exception("catch-up of job %s failed", job.pk)
    finally:
        with state.lock:
            state.starting.discard(job.pk)
        close_old_connections()
