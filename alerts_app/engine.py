"""The alert rules: the monitor's event stream and live snapshot in, incidents and
outbox items out, then delivery of what is due.

`tick(now, snapshot)` is one round, called by the monitor once per sample (and by
`deliver_alerts` standalone). It reads the events after a stored cursor, lets each
rule open or resolve incidents (one alert when an incident opens, one when it
resolves, flapping damped), checks live runs for stalls and cost caps, and sends
what is due within a time budget. `monitor_silent()` is what `serve`'s supervisor
calls when the monitor has not sampled for three intervals.
"""

from __future__ import annotations

import logging
import os
import statistics
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import Sum
from django.utils import timezone

from alerts_app import delivery, messages
from alerts_app.models import Alert, EngineCursor, Incident, JobAlertSettings, Rule
from jobs_app.models import Job
from monitor_app.models import Event, EventKind, HostSample
from sessions_app.models import LIVE_STATUSES, Session, Status

log = logging.getLogger(__name__)

EVENTS_PER_TICK = 500
# A refusal whose wrapper is still alive may be retried; after this it is decided anyway.
DEFER_LIMIT = timedelta(hours=1)
# Without a snapshot (standalone delivery), how long a refusal waits for its retry to show.
DEFER_WITHOUT_SNAPSHOT = timedelta(seconds=10)
DEFER_WITHOUT_RECORD = timedelta(minutes=1)
FAILURE_STATUSES = (Status.FAILED, Status.KILLED, Status.REFUSED)
# Runs that say something about whether a job works (a quota skip or an import does not).
VERDICT_STATUSES = (*FAILURE_STATUSES, Status.SUCCEEDED, Status.FALSE_SUCCESS)
LIVE_RUN_STATES = ("live", "orphaned")
RUNTIME_HISTORY = 20
RUNTIME_MIN_HISTORY = 5
ENV_SYNC_EVERY = timedelta(seconds=60)

_env_synced_at: datetime | None = None


@dataclass
class TickResult:
    events: int = 0
    alerts: int = 0
    delivered: int = 0
    failed: int = 0
    notes: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.events or self.alerts or self.delivered or self.failed)


# ----------------------------------------------------------------------------- incidents


def open_incident(
    key: str,
    rule: str,
    now: datetime,
    title: str,
    body: str,
    *,
    job: Job | None = None,
    host: str = "",
    session_id=None,
    detail: dict | None = None,
) -> Alert | None:
    """Open an incident unless one is open for `key`; the alert it sends, if any.

    Re-opened within OPSCONSOLE_ALERT_FLAP_SECONDS of its last resolution, it waits
    out the rest of that window before anyone is told (and is told only if it is
    still open then).
    """
    if Incident.objects.filter(key=key, resolved_at__isnull=True).exists():
        return None
    flap = timedelta(seconds=settings.OPSCONSOLE_ALERT_FLAP_SECONDS)
    # Anchored to the last resolution people were told about: at most one pair of
    # messages per window, however often it flaps in between.
    last = (
        Incident.objects.filter(key=key, resolved_at__isnull=False, recovery_told=True)
        .order_by("-resolved_at")
        .first()
    )
    damped = last is not None and now - last.resolved_at < flap
    incident = Incident.objects.create(
        key=key,
        rule=rule,
        job=job,
        host=host,
        session_id=session_id,
        opened_at=now,
        summary=title.removeprefix("[opsconsole] "),
        notified=not damped,
        notify_after=(last.resolved_at + flap) if damped else None,
        detail={**(detail or {}), "title": title, "body": body},
    )
    if damped:
        log.info("incident %s re-opened within the flap window: told after %s", key, flap)
        return None
    return _alert(incident, Alert.Phase.OPENED, now, title, body)


def resolve_incident(
    key: str, now: datetime, title: str = "", body: str = "", *, announce: bool = True
) -> Alert | None:
    """Resolve the open incident for `key`; the recovery alert if its opening was told."""
    incident = Incident.objects.filter(key=key, resolved_at__isnull=True).first()
    if incident is None:
        return None
    incident.resolved_at = now
    incident.save(update_fields=["resolved_at"])
    if not (announce and incident.notified and title):
        return None
    incident.recovery_told = True
    incident.save(update_fields=["recovery_told"])
    return _alert(incident, Alert.Phase.RESOLVED, now, title, body)


def _alert(incident: Incident, phase: str, now: datetime, title: str, body: str) -> Alert:
    alert = Alert.objects.create(
        created_at=now,
        rule=incident.rule,
        phase=phase,
        incident=incident,
        job=incident.job,
        host=incident.host,
        session_id=incident.session_id,
        title=title[:250],
        body=body,
    )
    delivery.enqueue(alert, now)
    return alert


def rule_settings(job: Job | None) -> JobAlertSettings:
    """The job's alert settings, or the defaults (unsaved) for a job without any."""
    if job is not None:
        try:
            return job.alert_settings
        except JobAlertSettings.DoesNotExist:
            pass
    return JobAlertSettings()


def subject_key(job: Job | None, host: str, script_tag: str) -> str:
    return f"job:{job.pk}" if job is not None else f"tag:{host}:{script_tag}"


# ----------------------------------------------------------------------------- run outcomes


def subject_runs(session: Session):
    if session.job_id is not None:
        return Session.objects.filter(job_id=session.job_id)
    return Session.objects.filter(host=session.host, script_tag=session.script_tag, wrapped=True)


def final_attempts(session: Session, limit: int) -> list[Session]:
    """The subject's latest runs that decided something, one per run (retried attempts out)."""
    # As of this run: events read in a batch must not see the runs that came after.
    recent = list(
        subject_runs(session)
        .filter(status__in=VERDICT_STATUSES, started_at__lte=session.started_at)
        .order_by("-started_at", "-id")[: limit * 3 + 5]
    )
    # A retry starts seconds after its attempt, so it is among these rows too.
    retried = {s.retry_of for s in recent if s.retry_of}
    return [s for s in recent if s.session_id not in retried][:limit]


def consecutive_failures(job: Job) -> int:
    """Runs of a job that did not succeed in a row, latest first (false successes count;
    a retried attempt counts once)."""
    recent = list(
        Session.objects.filter(job=job, status__in=VERDICT_STATUSES)
        .order_by("-started_at", "-id")
        .only("session_id", "retry_of", "status")[:50]
    )
    retried = {s.retry_of for s in recent if s.retry_of}
    count = 0
    for run in recent:
        if run.session_id in retried:
            continue
        if run.status == Status.SUCCEEDED:
            break
        count += 1
    return count


# The wrapper's own sentence when an attempt sets the quota stamp (wrapper/run.py).
QUOTA_STAMP_SENTENCE = "skips (exit 79) until "


def is_quota_failure(session: Session) -> bool:
    """A 429 or a usage-limit result is the quota rule's to tell (one alert for the
    stamp), not a run failure."""
    return session.api_error_status == 429 or QUOTA_STAMP_SENTENCE in (session.error or "")


def retry_may_follow(session: Session, event: Event, snapshot, now: datetime) -> bool:
    """A refused attempt whose wrapper is still alive is about to be retried."""
    if Session.objects.filter(retry_of=session.session_id).exists():
        return False  # it was: the retry decides
    if now - event.at > DEFER_LIMIT:
        return False
    if session.host != settings.OPSCONSOLE_HOST:  # another host's wrapper: give it a moment
        return now - event.at < DEFER_WITHOUT_SNAPSHOT
    if not session.wrapper_pid:
        return False
    if snapshot is not None:
        return any(
            live.sidecar.wrapper_pid == session.wrapper_pid and live.sidecar.host == session.host
            for live in snapshot.sessions
        )
    return wrapper_alive(session.wrapper_pid)


def wrapper_alive(pid: int) -> bool:
    """Without a sample: the wrapper keeps its sidecar until it exits, and its PID lives."""
    if not settings.OPSCONSOLE_STATE.sidecar_path(pid).exists():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def on_run_outcome(event: Event, snapshot, now: datetime) -> str:
    """Rules on a finished attempt. Returns "defer" to look again at the next tick."""
    session = Session.objects.select_related("job").filter(session_id=event.session_id).first()
    if session is None:  # its record is written first; give a late write a minute
        return "defer" if now - event.at < DEFER_WITHOUT_RECORD else "done"
    if not session.wrapped or session.status in LIVE_STATUSES:
        return "done"
    if session.status == Status.REFUSED and retry_may_follow(session, event, snapshot, now):
        return "defer"
    if Session.objects.filter(retry_of=session.session_id).exists():
        return "done"  # not the last attempt: its retry speaks for the run
    job = session.job or event.job
    subject = subject_key(job, session.host, session.script_tag)
    rules = rule_settings(job)
    name = messages.subject_name(job, session.script_tag)
    host = session.host
    status = session.status

    stopped_on_purpose = status == Status.KILLED and session.stopped_by not in ("", "watchdog")
    if stopped_on_purpose:
        pass  # a person who stopped it knows; a cost-cap stop was told when it happened
    elif status in FAILURE_STATUSES and not is_quota_failure(session):
        needed = max(1, rules.consecutive_failures)
        finals = final_attempts(session, needed)
        streak = len(finals) == needed and all(s.status in FAILURE_STATUSES for s in finals)
        if rules.alert_on_failure and streak:
            headline = {
                Status.FAILED: "failed",
                Status.KILLED: "was killed",
                Status.REFUSED: "was refused",
            }[status]
            if needed > 1:
                headline += f" ({needed} runs in a row)"
            title, body = messages.run_message(session, job, headline)
            open_incident(
                f"{subject}:failing",
                Rule.RUN_FAILED,
                now,
                title,
                body,
                job=job,
                host=host,
                session_id=session.session_id,
            )
    elif status == Status.FALSE_SUCCESS and rules.alert_on_false_success:
        title, body = messages.run_message(session, job, "exited 0 but did not succeed")
        open_incident(
            f"{subject}:false_success",
            Rule.FALSE_SUCCESS,
            now,
            title,
            body,
            job=job,
            host=host,
            session_id=session.session_id,
        )
    elif status == Status.SUCCEEDED:
        keys = [f"{subject}:failing", f"{subject}:false_success"]
        if Incident.objects.filter(key__in=keys, resolved_at__isnull=True).exists():
            title, body = messages.run_message(session, job, "recovered")  # reads the transcript
            for key in keys:
                resolve_incident(key, now, title, body)

    if status in (Status.SUCCEEDED, Status.FALSE_SUCCESS, Status.FAILED):
        check_runtime(session, job, rules, subject, name, now)
    check_costs(session, job, rules, subject, name, now)
    return "done"


def check_runtime(session, job, rules, subject, name, now) -> None:
    if not rules.alert_on_runtime or session.duration_ms is None:
        return
    key = f"{subject}:runtime"
    seconds = session.duration_ms / 1000
    history = list(
        subject_runs(session)
        .filter(status=Status.SUCCEEDED, duration_ms__isnull=False)
        .exclude(pk=session.pk)
        .order_by("-started_at")
        .values_list("duration_ms", flat=True)[:RUNTIME_HISTORY]
    )
    unusual = None
    if len(history) >= RUNTIME_MIN_HISTORY and rules.runtime_multiple:
        median = statistics.median(history) / 1000
        if median > 0 and seconds > rules.runtime_multiple * median:
            usual = messages.duration_words(int(median * 1000))
            unusual = (
                f"took {messages.duration_words(session.duration_ms)}, over "
                f"{rules.runtime_multiple:g}x its median of {usual}"
            )
    floor = rules.runtime_floor_seconds
    if unusual is None and floor and session.status == Status.SUCCEEDED and seconds < floor:
        unusual = (
            f"finished in {messages.duration_words(session.duration_ms)}, "
            f"under its floor of {floor}s"
        )
    if unusual is None:
        resolve_incident(key, now, announce=False)
        return
    title, body = messages.run_message(session, job, unusual)
    open_incident(
        key,
        Rule.RUNTIME,
        now,
        title,
        body,
        job=job,
        host=session.host,
        session_id=session.session_id,
    )


def check_costs(session, job, rules, subject, name, now) -> None:
    if session.cost_usd is None:
        return
    if rules.cost_per_run_usd is not None:
        key = f"{subject}:cost_run"
        capped = Incident.objects.filter(key=f"run:{session.session_id}:cost_cap").exists()
        if session.cost_usd > rules.cost_per_run_usd and not capped:
            headline = (
                f"cost {messages.cost_words(session.cost_usd)}, over its run budget of "
                f"{messages.cost_words(rules.cost_per_run_usd)}"
            )
            title, body = messages.run_message(session, job, headline)
            open_incident(
                key,
                Rule.COST_RUN,
                now,
                title,
                body,
                job=job,
                host=session.host,
                session_id=session.session_id,
            )
        elif session.cost_usd <= rules.cost_per_run_usd:
            resolve_incident(key, now, announce=False)
    if rules.cost_per_day_usd is not None:
        day_start = timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)
        spent = subject_runs(session).filter(started_at__gte=day_start).aggregate(
            total=Sum("cost_usd")
        )["total"] or Decimal(0)
        if spent > rules.cost_per_day_usd:
            day = day_start.date().isoformat()
            title, body = messages.plain_message(
                f"{name} spent {messages.cost_words(spent)} today, over its daily budget of "
                f"{messages.cost_words(rules.cost_per_day_usd)}",
                session.host,
                [f"Latest run: {messages.session_link(session.session_id)}"],
                job=job,
            )
            open_incident(
                f"{subject}:cost_day:{day}",
                Rule.COST_DAY,
                now,
                title,
                body,
                job=job,
                host=session.host,
                detail={"day": day},
            )


# ----------------------------------------------------------------------------- other events


def on_quota_set(event: Event, now: datetime) -> None:
    until = event.detail.get("until") or event.detail.get("reset_at")
    reason = event.detail.get("reason") or event.message
    lines = [
        f"Every run on {event.host} is skipped (exit 79) until {until or 'the stamp is cleared'}.",
        f"Reason: {reason}",
    ]
    session_id = event.detail.get("session_id") or event.session_id
    if session_id:
        lines.append(f"Run that hit it: {messages.session_link(session_id)}")
    lines.append("Clear it early: opsconsole-run --clear-quota-stamp")
    title, body = messages.plain_message(
        f"Quota hit: runs skipped until {until or 'cleared'}", event.host, lines
    )
    open_incident(
        f"quota:{event.host}",
        Rule.QUOTA,
        now,
        title,
        body,
        host=event.host,
        detail={"until": until},
    )


def on_quota_cleared(event: Event, now: datetime) -> None:
    title, body = messages.plain_message(
        "Quota cleared: runs start again", event.host, [event.message]
    )
    resolve_incident(f"quota:{event.host}", now, title, body)


def event_job(event: Event) -> Job | None:
    """The event's job: its link, else the job_id its detail names."""
    if event.job is not None:
        return event.job
    job_id = event.detail.get("job_id") if isinstance(event.detail, dict) else None
    return Job.objects.filter(pk=job_id).first() if isinstance(job_id, int) else None


def on_job_late(event: Event, now: datetime) -> None:
    job = event_job(event)
    if job is None or not rule_settings(job).alert_on_late:
        return
    expected = event.detail.get("expected_at") or "its schedule"
    title, body = messages.plain_message(
        f"{job.label} is late: its run expected at {expected} did not happen",
        event.host or job.host,
        [f"Schedule: {job.schedule_text or job.schedule_raw or 'unknown'}", event.message],
        job=job,
    )
    open_incident(
        f"job:{job.pk}:late", Rule.LATE, now, title, body, job=job, host=event.host or job.host
    )


def on_run_started(event: Event, now: datetime) -> None:
    job = event.job
    if job is None:
        return
    title, body = messages.plain_message(
        f"{job.label} ran again",
        event.host,
        [f"Session: {messages.session_link(event.session_id)}"],
    )
    resolve_incident(f"job:{job.pk}:late", now, title, body)


def on_leftovers(event: Event, now: datetime) -> None:
    key = f"run:{event.session_id}:leftovers"
    session = Session.objects.select_related("job").filter(session_id=event.session_id).first()
    job = event.job or (session.job if session else None)
    if event.kind == EventKind.LEFTOVERS_SEEN:
        if not rule_settings(job).alert_on_leftovers:
            return
        if session is not None and not session.wrapped:
            return  # a person's own session: its processes are theirs
        pids = event.detail.get("pids") or []
        name = messages.subject_name(job, event.script_tag)
        title, body = messages.plain_message(
            f"{name}: {len(pids)} leftover process(es) after its run",
            event.host,
            [
                event.message,
                f"PIDs: {', '.join(str(p) for p in pids[:20])}",
                f"Session (kill them there): {messages.session_link(event.session_id)}",
            ],
            job=job,
        )
        open_incident(
            key,
            Rule.LEFTOVERS,
            now,
            title,
            body,
            job=job,
            host=event.host,
            session_id=event.session_id,
        )
    else:
        word = "killed" if event.kind == EventKind.LEFTOVERS_KILLED else "gone"
        name = messages.subject_name(job, event.script_tag)
        title, body = messages.plain_message(
            f"{name}: leftover processes {word}", event.host, [event.message]
        )
        resolve_incident(key, now, title, body)


def on_collector_error(event: Event, now: datetime) -> None:
    scheduler = event.detail.get("scheduler") or "jobs"
    key = f"collector:{event.host}:{scheduler}"
    open_one = Incident.objects.filter(key=key, resolved_at__isnull=True).first()
    if open_one is not None:
        open_one.detail = {**open_one.detail, "last_seen": event.at.isoformat()}
        open_one.save(update_fields=["detail"])
        return
    errors = event.detail.get("errors") or [event.message]
    title, body = messages.plain_message(
        f"The {scheduler} collector fails", event.host, [str(e)[:300] for e in errors[:5]]
    )
    open_incident(
        key,
        Rule.COLLECTOR_ERROR,
        now,
        title,
        body,
        host=event.host,
        detail={"last_seen": event.at.isoformat(), "scheduler": scheduler},
    )


def on_monitor_started(event: Event, now: datetime) -> None:
    title, body = messages.plain_message("The monitor is sampling again", event.host, [])
    resolve_incident(f"monitor:{event.host}:silent", now, title, body)


def handle(event: Event, snapshot, now: datetime) -> str:
    kind = event.kind
    if kind in (EventKind.RUN_ENDED, EventKind.RUN_VANISHED):
        on_run_started(event, now)  # a run too short to be sampled live still ran
        return on_run_outcome(event, snapshot, now)
    if kind == EventKind.QUOTA_SET:
        on_quota_set(event, now)
    elif kind == EventKind.QUOTA_CLEARED:
        on_quota_cleared(event, now)
    elif kind == EventKind.JOB_LATE:
        on_job_late(event, now)
    elif kind in (EventKind.RUN_STARTED, EventKind.RUN_RETRIED):
        on_run_started(event, now)
    elif kind in (
        EventKind.LEFTOVERS_SEEN,
        EventKind.LEFTOVERS_GONE,
        EventKind.LEFTOVERS_KILLED,
    ):
        on_leftovers(event, now)
    elif kind == EventKind.COLLECTOR_ERROR:
        on_collector_error(event, now)
    elif kind == EventKind.MONITOR_STARTED:
        on_monitor_started(event, now)
    return "done"


def handle_safely(event: Event, snapshot, now: datetime) -> str:
    """One bad event must not stop every later alert: its changes roll back, it is logged."""
    try:
        with transaction.atomic():
            return handle(event, snapshot, now)
    except DatabaseError:
        raise  # a database blip: the cursor stays, the next tick tries this event again
    except Exception:
        log.exception("alert rules failed on event %s (%s)", event.pk, event.kind)
        return "done"


def process_events(snapshot, now: datetime) -> int:
    """Every event after the cursor, in order; the cursor moves with each in one transaction."""
    cursor = EngineCursor.current()
    handled = 0
    for event_id in list(cursor.deferred):
        event = Event.objects.select_related("job").filter(pk=event_id).first()
        with transaction.atomic():
            verdict = "done" if event is None else handle_safely(event, snapshot, now)
            if verdict == "done":
                cursor.deferred = [e for e in cursor.deferred if e != event_id]
                cursor.save(update_fields=["deferred"])
    events = list(
        Event.objects.select_related("job")
        .filter(pk__gt=cursor.last_event_id)
        .order_by("pk")[:EVENTS_PER_TICK]
    )
    for event in events:
        with transaction.atomic():
            verdict = handle_safely(event, snapshot, now)
            cursor.last_event_id = event.pk
            if verdict == "defer" and event.pk not in cursor.deferred:
                cursor.deferred = [*cursor.deferred, event.pk]
            cursor.save(update_fields=["last_event_id", "deferred"])
        handled += 1
    return handled


# ----------------------------------------------------------------------------- live runs


def check_live(snapshot, now: datetime) -> None:
    """Stalled runs and running cost caps, from the monitor's latest sample."""
    # Agents a wrapper runs: a person's own terminal session (unwrapped) waits on them,
    # and a leftovers row is not an agent at all.
    live_sessions = [
        live
        for live in getattr(snapshot, "sessions", None) or []
        if getattr(live, "state", "live") in LIVE_RUN_STATES
    ]
    live_ids = [live.session_id for live in live_sessions]
    open_keys = set(
        Incident.objects.filter(resolved_at__isnull=True, key__startswith="run:").values_list(
            "key", flat=True
        )
    )
    jobs_by_session = dict(
        Session.objects.filter(session_id__in=live_ids).values_list("session_id", "job_id")
    )
    jobs_by_session = {str(k): v for k, v in jobs_by_session.items()}
    jobs = Job.objects.select_related("alert_settings").in_bulk(
        [j for j in jobs_by_session.values() if j]
    )
    for live in live_sessions:
        job = jobs.get(jobs_by_session.get(live.session_id))
        rules = rule_settings(job)
        check_stall(live, job, rules, now, open_keys)
        check_cost_cap(live, job, rules, now)
        check_live_runtime(live, job, rules, now)
    # A run that ended is no longer stalled or over a running cap: its outcome speaks.
    for incident in Incident.objects.filter(
        rule__in=[Rule.STALLED, Rule.COST_RUN],
        key__startswith="run:",
        resolved_at__isnull=True,
        host=settings.OPSCONSOLE_HOST,
    ).exclude(session_id__in=live_ids):
        resolve_incident(incident.key, now, announce=False)


# Median runtimes by subject, recomputed at most once a minute (not per sample).
_usual_runtime: dict[str, tuple[datetime, float | None]] = {}
USUAL_RUNTIME_TTL = timedelta(seconds=60)


def usual_seconds(job: Job | None, host: str, tag: str, now: datetime) -> float | None:
    key = subject_key(job, host, tag)
    cached = _usual_runtime.get(key)
    if cached is not None and abs(now - cached[0]) < USUAL_RUNTIME_TTL:
        return cached[1]
    runs = (
        Session.objects.filter(job=job)
        if job is not None
        else Session.objects.filter(host=host, script_tag=tag, wrapped=True)
    )
    history = list(
        runs.filter(status=Status.SUCCEEDED, duration_ms__isnull=False)
        .order_by("-started_at")
        .values_list("duration_ms", flat=True)[:RUNTIME_HISTORY]
    )
    median = statistics.median(history) / 1000 if len(history) >= RUNTIME_MIN_HISTORY else None
    _usual_runtime[key] = (now, median)
    return median


def check_live_runtime(live, job, rules, now: datetime) -> None:
    """A run still going past a multiple of its usual time is told while it runs."""
    if not rules.alert_on_runtime or not rules.runtime_multiple:
        return
    sidecar = live.sidecar
    median = usual_seconds(job, sidecar.host, sidecar.script_tag, now)
    running = (now - live.started_at).total_seconds()
    if not median or running <= rules.runtime_multiple * median:
        return
    name = messages.subject_name(job, sidecar.script_tag)
    took = messages.duration_words(int(running * 1000))
    usual = messages.duration_words(int(median * 1000))
    title, body = messages.plain_message(
        f"{name} is still running after {took}, over {rules.runtime_multiple:g}x "
        f"its median of {usual}",
        sidecar.host,
        [
            f"Started {messages.when_words(live.started_at)}, attempt {sidecar.attempt}",
            f"Session: {messages.session_link(live.session_id)}",
        ],
        job=job,
    )
    open_incident(
        f"{subject_key(job, sidecar.host, sidecar.script_tag)}:runtime",
        Rule.RUNTIME,
        now,
        title,
        body,
        job=job,
        host=sidecar.host,
        session_id=live.session_id,
    )


def check_stall(live, job, rules, now: datetime, open_keys: set[str]) -> None:
    key = f"run:{live.session_id}:stalled"
    idle_since = getattr(live, "idle_since", None)
    sidecar = live.sidecar
    name = messages.subject_name(job, sidecar.script_tag)
    if idle_since is None:
        if key not in open_keys:
            return
        title, body = messages.plain_message(
            f"{name} is active again", sidecar.host, [messages.session_link(live.session_id)]
        )
        resolve_incident(key, now, title, body)
        return
    limit = timedelta(minutes=rules.stall_minutes)
    if job is not None and job.max_runtime_minutes:
        # Told before the watchdog's hard limit, whatever the settings say.
        limit = min(limit, timedelta(minutes=job.max_runtime_minutes) * 0.8)
    if not rules.alert_on_stall or now - idle_since < limit or key in open_keys:
        return
    idle = messages.duration_words(int((now - idle_since).total_seconds() * 1000))
    title, body = messages.plain_message(
        f"{name} is stalled: no transcript growth and no CPU for {idle}",
        sidecar.host,
        [
            f"Started {messages.when_words(live.started_at)}, attempt {sidecar.attempt}",
            f"State: {live.state}, CPU {getattr(live, 'cpu_percent', 0) or 0:.0f}%",
            f"Session (stop it there): {messages.session_link(live.session_id)}",
        ],
        job=job,
    )
    open_incident(
        key, Rule.STALLED, now, title, body, job=job, host=sidecar.host, session_id=live.session_id
    )


def check_cost_cap(live, job, rules, now: datetime) -> None:
    running = getattr(live, "running_cost_usd", None)
    budget = rules.cost_per_run_usd
    if running is None or budget is None or Decimal(str(running)) <= budget:
        return
    key = f"run:{live.session_id}:cost_cap"
    if Incident.objects.filter(key=key).exists():
        return  # told (and stopped) once per run
    sidecar = live.sidecar
    name = messages.subject_name(job, sidecar.script_tag)
    stopping = rules.stop_on_cost_cap and job is not None
    lines = [
        f"Running cost {messages.cost_words(running)}, budget {messages.cost_words(budget)}",
        "Stopping it now (stop on cost cap is on)." if stopping else "It is still running.",
        f"Session: {messages.session_link(live.session_id)}",
    ]
    title, body = messages.plain_message(
        f"{name} is over its cost cap", sidecar.host, lines, job=job
    )
    open_incident(
        key,
        Rule.COST_RUN,
        now,
        title,
        body,
        job=job,
        host=sidecar.host,
        session_id=live.session_id,
        detail={"running_cost_usd": float(running), "stopped": stopping},
    )
    if stopping:
        # A stop waits out its grace period: on a thread, so the sample loop does not.
        thread = threading.Thread(
            target=_stop_for_cost_thread,
            args=(live, job, running, budget),
            name=f"cost-cap-{live.session_id[:8]}",
            daemon=True,
        )
        _stop_threads[:] = [t for t in _stop_threads if t.ident is None or t.is_alive()]
        _stop_threads.append(thread)
        # After the incident is committed: the stop writes to the database too.
        transaction.on_commit(thread.start)


_stop_threads: list[threading.Thread] = []


def _stop_for_cost_thread(live, job, running, budget) -> None:
    try:
        stop_for_cost(live, job, running, budget)
    except Exception:
        log.exception("cost-cap stop of %s failed", live.session_id)
    finally:
        connection.close()


def stop_for_cost(live, job, running, budget) -> None:
    from jobs_app.models import AuditEntry
    from monitor_app.stopping import stop_session

    outcome = stop_session(
        live, actor="cost-cap", reason="cost_cap", grace=settings.OPSCONSOLE_STOP_GRACE_SECONDS
    )
    AuditEntry.objects.create(
        actor="cost-cap",
        action="stop",
        job=job,
        target=live.session_id,
        ok=not outcome.errors,
        output=outcome.summary + ("\n" + "\n".join(outcome.errors) if outcome.errors else ""),
        detail={"running_cost_usd": float(running), "budget_usd": str(budget)},
    )


# ----------------------------------------------------------------------------- timers


def collector_recovered(incident: Incident) -> bool:
    """A collection after the last error recorded its jobs, and none carries an error.

    (The monitor writes a repeated collector error once a day, so silence alone is
    no sign of health; a whole collector failing updates no job at all.)"""
    try:
        last_seen = datetime.fromisoformat(incident.detail["last_seen"])
    except (KeyError, TypeError, ValueError):
        last_seen = incident.opened_at
    jobs = Job.objects.filter(
        host=incident.host, scheduler=incident.detail.get("scheduler"), present=True
    )
    return (
        jobs.filter(collected_at__gt=last_seen).exists()
        and not jobs.exclude(collector_error="").exists()
    )


def check_timers(now: datetime) -> None:
    """What time alone decides: damped incidents now due, quiet collectors, new days."""
    for incident in Incident.objects.filter(
        resolved_at__isnull=True, notified=False, notify_after__lte=now
    ):
        incident.notified = True
        incident.save(update_fields=["notified"])
        _alert(
            incident,
            Alert.Phase.OPENED,
            now,
            incident.detail.get("title") or incident.summary,
            incident.detail.get("body") or incident.summary,
        )
    for incident in Incident.objects.filter(rule=Rule.COLLECTOR_ERROR, resolved_at__isnull=True):
        if collector_recovered(incident):
            title, body = messages.plain_message(
                f"The {incident.detail.get('scheduler', 'jobs')} collector works again",
                incident.host,
                [],
            )
            resolve_incident(incident.key, now, title, body)
    today = timezone.localtime(now).date().isoformat()
    for incident in Incident.objects.filter(rule=Rule.COST_DAY, resolved_at__isnull=True):
        if incident.detail.get("day") != today:
            resolve_incident(incident.key, now, announce=False)
    for incident in Incident.objects.filter(rule=Rule.MONITOR_SILENT, resolved_at__isnull=True):
        sample = HostSample.objects.filter(host=incident.host).first()
        if sample is not None and sample.taken_at > incident.opened_at:
            title, body = messages.plain_message("The monitor is sampling again", incident.host, [])
            resolve_incident(incident.key, now, title, body)


# ----------------------------------------------------------------------------- entry points


_delivery_thread: threading.Thread | None = None


def deliver_in_background(now: datetime) -> bool:
    """Send what is due on a thread of its own, so a slow receiver never holds up the
    sample loop; one such thread at a time. False when the previous one still runs."""
    global _delivery_thread
    if _delivery_thread is not None and _delivery_thread.is_alive():
        return False

    def deliver() -> None:
        try:
            delivery.deliver_due(now)
        except Exception:  # the outbox keeps it; the next tick tries again
            log.exception("alert delivery round failed")
        finally:
            connection.close()

    _delivery_thread = threading.Thread(target=deliver, name="alert-delivery", daemon=True)
    _delivery_thread.start()
    return True


PRUNE_EVERY = timedelta(hours=1)
_pruned_at: datetime | None = None


def prune(now: datetime) -> int:
    """Alerts (with their deliveries) and resolved incidents older than the retention."""
    cutoff = now - timedelta(days=settings.OPSCONSOLE_ALERT_RETENTION_DAYS)
    alerts, _ = Alert.objects.filter(created_at__lt=cutoff).delete()
    incidents, _ = Incident.objects.filter(resolved_at__lt=cutoff).delete()
    return alerts + incidents


def tick(
    now: datetime | None = None, snapshot=None, *, background_delivery: bool | None = None
) -> TickResult:
    """One round: events, live runs, timers, then delivery within the time budget.

    The monitor calls this once per sample; delivery then runs on a background thread
    (OPSCONSOLE_ALERT_DELIVER_IN_BACKGROUND). `deliver_alerts` delivers in line.
    """
    global _env_synced_at, _pruned_at
    now = now or timezone.now()
    if background_delivery is None:
        background_delivery = settings.OPSCONSOLE_ALERT_DELIVER_IN_BACKGROUND
    result = TickResult()
    last_alert = Alert.objects.order_by("-id").values_list("id", flat=True).first() or 0
    if _env_synced_at is None or abs(now - _env_synced_at) > ENV_SYNC_EVERY:
        delivery.sync_environment_channels()
        _env_synced_at = now
    result.events = process_events(snapshot, now)
    if snapshot is not None:
        with transaction.atomic():
            check_live(snapshot, now)
    with transaction.atomic():
        check_timers(now)
    result.alerts = Alert.objects.filter(id__gt=last_alert).count()
    if _pruned_at is None or abs(now - _pruned_at) > PRUNE_EVERY:
        prune(now)
        _pruned_at = now
    EngineCursor.objects.filter(pk=1).update(last_tick_at=now)
    if background_delivery:
        deliver_in_background(now)
    else:
        sent = delivery.deliver_due(now)
        result.delivered, result.failed = sent.delivered, sent.failed
    return result


def monitor_silent(host: str, last_sample_at: datetime | None, now: datetime | None = None):
    """Called by `serve`'s supervisor: no sample for 3 intervals. Tells people at once
    (nobody else will deliver while the monitor is down). Returns the alert, if new."""
    now = now or timezone.now()
    since = messages.when_words(last_sample_at) if last_sample_at else "never"
    title, body = messages.plain_message(
        "The monitor is silent: no sample for 3 intervals",
        host,
        [
            f"Last sample: {since}",
            "Live runs, the watchdog and alerts about runs wait until it is back.",
        ],
    )
    with transaction.atomic():
        alert = open_incident(
            f"monitor:{host}:silent", Rule.MONITOR_SILENT, now, title, body, host=host
        )
    delivery.deliver_due(now)
    return alert
