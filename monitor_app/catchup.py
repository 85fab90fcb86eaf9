"""Catch-up after a quota stamp clears: the fires a stamp skipped, run again.

A job's catch-up policy (jobs_app.models.CatchUp) says what happens to its runs the
stamp skipped (quota_skip rows): `none` (they are lost, as before), `once` (one run
for all of them), `all_missed` (one run per skipped fire within the job's window,
one at a time). Never while a stamp holds, never twice for one miss (the job keeps
the latest miss dealt with: caught_up_through), never on top of a live run.

`decide()` is the rule, a pure function of `now`; `catchup_round()` is the monitor
step that gathers the facts and starts the runs as "run now" does (job_controls),
audited as actor `catch-up`, with a catch_up event. A job on a reporting host is caught
up by `remote_catchup_round()` (one console of several: the fleet's duty): against that
host's own stamp (its latest sample), with a "run now" request its monitor carries out
(remote_actions), counted as a live run of the job until the host has answered it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import close_old_connections, transaction

from jobs_app.models import CatchUp, Job
from monitor_app.events import EventOutbox
from monitor_app.fleet_reader import fleet
from monitor_app.job_controls import execute, record
from monitor_app.job_status import live_runs_of
from monitor_app.models import EventKind, HostSample, RemoteAction
from monitor_app.monitor import Cadence, Monitor
from monitor_app.remote_actions import request_job_action
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
        # A "run now" its host has not answered yet (a reporting host's): a run to come.
        or RemoteAction.objects.filter(
            job=job, kind=RemoteAction.Kind.RUN, state__in=RemoteAction.OPEN_STATES
        ).exists()
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
    jobs = jobs_to_catch_up(Job.objects.filter(host=monitor.host))
    with state.lock:
        starting = set(state.starting)
    due = due_catch_ups(jobs, snapshot, monitor.quota, now, starting, monitor.events)
    for decision, job in due:
        with state.lock:
            state.starting.add(job.pk)
        thread = threading.Thread(
            target=_start_in_background,
            args=(job, decision, state),
            name=f"catch-up-{job.pk}",
            daemon=True,
        )
        thread.start()


def remote_catchup_round(monitor: Monitor, snapshot: Snapshot, now: datetime) -> None:
    """A monitor step (on the console holding the fleet's duty): the jobs of reporting
    hosts with a catch-up policy, every OPSCONSOLE_CATCHUP_SECONDS, each host against its
    own quota stamp and live runs (its latest sample). A silent host is left until it is
    heard again: what its sample says is no longer its present. Each run is a "run now"
    request to the host's monitor, audited as actor catch-up."""
    state = monitor.step_state.setdefault("remote_catch_up", CatchUpState())
    if not state.cadence.due(now, settings.OPSCONSOLE_CATCHUP_SECONDS):
        return
    by_host: dict[str, dict[int, Job]] = {}
    for job in jobs_to_catch_up(Job.objects.exclude(host=monitor.host)).values():
        by_host.setdefault(job.host, {})[job.pk] = job
    heard = HostSample.objects.filter(host__in=list(by_host), reported=True)
    for sample in heard:
        if sample.is_silent(now):
            continue
        host_snapshot = fleet.snapshot([sample.host])
        outbox = EventOutbox(sample.host, None)
        # The marker moves with the request, or neither does (asked again next round).
        with transaction.atomic():
            due = due_catch_ups(
                by_host[sample.host], host_snapshot, stamp_of(host_snapshot), now, set(), outbox
            )
            for decision, job in due:
                detail = catch_up_detail(job, decision)
                request_job_action(
                    RemoteAction.Kind.RUN, job, CATCH_UP_ACTOR, now=now, detail=detail
                )
            outbox.flush()


def stamp_of(snapshot: Snapshot) -> QuotaStamp | None:
    """The quota stamp a host's sample says holds there (a sample names only one in force)."""
    if not snapshot.quota_until:
        return None
    return QuotaStamp(until=snapshot.quota_until, set_at="", reason=snapshot.quota_reason or "")


def jobs_to_catch_up(jobs) -> dict[int, Job]:
    """Those of `jobs` (a queryset) with a catch-up policy, by id."""
    policies = (CatchUp.ONCE, CatchUp.ALL_MISSED)
    return {job.pk: job for job in jobs.filter(catchup_policy__in=policies)}


def due_catch_ups(
    jobs: dict[int, Job],
    snapshot: Snapshot,
    stamp: QuotaStamp | None,
    now: datetime,
    starting: set[int],
    events: EventOutbox,
) -> list[tuple[Decision, Job]]:
    """The decisions for one host's `jobs`, each put on record (the job's marker moves
    first: a miss is never caught up twice, even if the start then fails) with a
    catch_up event; those that start a run, with the job."""
    facts = [facts_of(job, snapshot, now, starting) for job in jobs.values()]
    due = []
    for decision in decide(now, stamp, facts):
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
        events.add(
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
            due.append((decision, job))
    return due


def catch_up_detail(job: Job, decision: Decision) -> dict:
    """What a catch-up run's audit entry says of the policy and the misses it answers."""
    return {
        "catch_up": job.catchup_policy,
        "misses": decision.misses,
        "through": decision.through.isoformat(),
    }


def start_catch_up(job: Job, decision: Decision) -> None:
    """Start the job as "run now" does, audited as actor catch-up."""
    result = execute(job, "run")
    result.detail.update(catch_up_detail(job, decision))
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
