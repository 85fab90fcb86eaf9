"""The alert rules: the monitor's event stream and live snapshot in, incidents and
outbox items out, then delivery of what is due.

`tick(now, snapshot)` is one round, called by the monitor once per sample (and by
`deliver_alerts` standalone). It reads the events after a stored cursor and hands
each to its rule (alerts_app.outcome_rules for a run's end, the rest here), which
opens or resolves incidents (alerts_app.incidents); checks live runs for stalls and
cost caps (alerts_app.live_rules); and sends what is due within a time budget.
`monitor_silent()` is what `serve`'s supervisor calls when the monitor has not
sampled for three intervals.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from alerts_app import delivery, messages
from alerts_app.incidents import (
    _alert,
    open_incident,
    resolve_incident,
    rule_settings,
    send_due_repeats,
)
from alerts_app.live_rules import check_live
from alerts_app.models import Alert, EngineCursor, Incident, Rule
from alerts_app.outcome_rules import on_run_outcome
from jobs_app.models import Job
from monitor_app.models import Event, EventKind, HostSample
from monitor_app.monitor import Monitor
from monitor_app.snapshot import Snapshot
from sessions_app.models import Session

log = logging.getLogger(__name__)

EVENTS_PER_TICK = 500
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


# ----------------------------------------------------------------------------- other events


def recorded_time_words(value) -> str | None:
    """A time an event recorded as ISO 8601, in the one human format; else as recorded."""
    if not value:
        return None
    try:
        return messages.when_words(datetime.fromisoformat(str(value)))
    except ValueError:
        return str(value)


def on_quota_set(event: Event, now: datetime) -> None:
    until_recorded = event.detail.get("until") or event.detail.get("reset_at")
    until = recorded_time_words(until_recorded)
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
        detail={"until": until_recorded},
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
    expected = recorded_time_words(event.detail.get("expected_at")) or "its schedule"
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
        if session is not None and not session.wrapped and session.job_id is None:
            return  # a person's own session (no job started it): its processes are theirs
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


def silent_key(host: str) -> str:
    """One incident per host whose monitor is silent: this console's own (raised by
    `serve`'s supervisor) or a reporting host's (a monitor_silent event, fleet.hosts)."""
    return f"monitor:{host}:silent"


def on_monitor_started(event: Event, now: datetime) -> None:
    title, body = messages.plain_message("The monitor is sampling again", event.host, [])
    resolve_incident(silent_key(event.host), now, title, body)


def on_host_silent(event: Event, now: datetime) -> None:
    """A reporting host sent nothing for three of its intervals: one incident, one alert.
    Handled late, after the host already reported again, it is history: nobody is told."""
    sample = HostSample.objects.filter(host=event.host).first()
    try:
        heard = datetime.fromisoformat(event.detail["last_heard"])
    except (KeyError, TypeError, ValueError):
        heard = None
    if sample is not None and heard is not None and sample.last_heard > heard:
        return
    title, body = messages.plain_message(
        "Host silent: its monitor has not reported for 3 intervals",
        event.host,
        [
            f"Last report: {messages.when_words(heard)}",
            "Its live runs, its jobs' status and alerts about its runs wait until it is back.",
        ],
    )
    open_incident(silent_key(event.host), Rule.MONITOR_SILENT, now, title, body, host=event.host)


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
    elif kind == EventKind.MONITOR_SILENT:
        on_host_silent(event, now)
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
    """What time alone decides: damped incidents now due, repeats of incidents nobody
    owns, quiet collectors, new days, silent monitors heard again."""
    for incident in Incident.objects.filter(
        resolved_at__isnull=True, notified=False, notify_after__lte=now
    ).exclude(snoozed_until__gt=now):
        if incident.acknowledged_at is not None:
            continue  # a person owned it on the page before anyone was told
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
        # last_heard: when the console received it (a reporting host's clock may be off)
        if sample is not None and sample.last_heard > incident.opened_at:
            title, body = messages.plain_message("The monitor is sampling again", incident.host, [])
            resolve_incident(incident.key, now, title, body)
    send_due_repeats(now)


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
    now: datetime | None = None,
    snapshot=None,
    *,
    background_delivery: bool | None = None,
    live_rules: bool = True,
) -> TickResult:
    """One round: events, live runs, timers, then delivery within the time budget.

    The monitor calls this once per sample; delivery then runs on a background thread
    (OPSCONSOLE_ALERT_DELIVER_IN_BACKGROUND). `deliver_alerts` delivers in line.
    `live_rules=False`: the snapshot's live runs are left to `live_round` (the monitor
    runs those on every console, the rest on one).
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
    if snapshot is not None and live_rules:
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
        alert = open_incident(silent_key(host), Rule.MONITOR_SILENT, now, title, body, host=host)
    delivery.deliver_due(now)
    return alert


def alert_round(monitor: Monitor, snapshot: Snapshot, now: datetime) -> None:
    """The fleet's alert rules, as a step of the monitor: every host's events, the
    timers, retention and the outbox (delivery has a thread of its own, so a slow
    receiver never holds a sample back). One console of several runs it
    (opsconsole.monitoring); the live rules on this host's own runs are `live_round`.
    The sample still tells a refusal's rule whether this host's wrapper will retry."""
    tick(now, snapshot, live_rules=False)


def live_round(monitor: Monitor, snapshot: Snapshot, now: datetime) -> None:
    """The rules on the runs live on this console's own host (stalls, running cost
    caps and runtimes), from its own sample: every console runs them for its host."""
    with transaction.atomic():
        check_live(snapshot, now)
