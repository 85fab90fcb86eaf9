"""Incidents and what every alert rule asks of its subject: open or resolve an
incident (one alert when it opens, one when it resolves, flapping damped), repeat it
while nobody owns it, what a person does with it (acknowledge, snooze, resolve with
a note, each audited), the job's rule settings, the subject key, and the subject's
usual runtime."""

from __future__ import annotations

import logging
import statistics
from collections.abc import Mapping
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from alerts_app import delivery, messages
from alerts_app.models import Alert, Incident, JobAlertSettings
from jobs_app.models import AuditEntry, Job
from sessions_app.human_time import human_time
from sessions_app.models import Session, Status

log = logging.getLogger(__name__)


RUNTIME_HISTORY = 20


RUNTIME_MIN_HISTORY = 5


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
    # Resolved only if still open: a person may have resolved it since it was read, and
    # then their resolution (and its message) stands, not a second one.
    if not Incident.objects.filter(pk=incident.pk, resolved_at__isnull=True).update(
        resolved_at=now
    ):
        return None
    incident.resolved_at = now
    if not (announce and incident.notified and title):
        return None
    incident.recovery_told = True
    incident.save(update_fields=["recovery_told"])
    return _alert(incident, Alert.Phase.RESOLVED, now, title, body)


def _alert(incident: Incident, phase: str, now: datetime, title: str, body: str) -> Alert:
    if phase in (Alert.Phase.OPENED, Alert.Phase.REPEATED):
        incident.last_told_at = now
        incident.save(update_fields=["last_told_at"])
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


# ----------------------------------------------------------------------------- repeats


def repeat_every() -> timedelta | None:
    minutes = settings.OPSCONSOLE_ALERT_REPEAT_MINUTES
    return timedelta(minutes=minutes) if minutes > 0 else None


def next_repeat_at(incident: Incident, every: timedelta | None) -> datetime | None:
    """When people are next told this open incident is still open, or None: never
    (repeats off, resolved, not yet told, or acknowledged by a person).

    A snooze holds repeats until it ends; one is due then if the incident is still open.
    """
    if every is None or incident.resolved_at is not None or not incident.notified:
        return None
    if incident.acknowledged_at is not None:
        return None
    last_told = incident.last_told_at or incident.opened_at
    if incident.snoozed_until is not None and incident.snoozed_until > last_told:
        return incident.snoozed_until
    return last_told + every


def repeat_due(incident: Incident, now: datetime, every: timedelta | None) -> bool:
    due = next_repeat_at(incident, every)
    return due is not None and due <= now


def repeat_alert(incident: Incident, now: datetime) -> Alert:
    """Tell people again: still open, since when, and where to own it."""
    title = incident.detail.get("title") or f"[opsconsole] {incident.summary}"
    body = incident.detail.get("body") or incident.summary
    since = f"Still open since {human_time(incident.opened_at)}, nobody has acknowledged it."
    own = f"Acknowledge, snooze or resolve it: {messages.link('/alerts/')}"
    title = "[opsconsole] Still open: " + title.removeprefix("[opsconsole] ")
    return _alert(incident, Alert.Phase.REPEATED, now, title, f"{since}\n{body}\n{own}")


def send_due_repeats(now: datetime) -> int:
    every = repeat_every()
    if every is None:
        return 0
    sent = 0
    for incident in Incident.objects.filter(
        resolved_at__isnull=True, notified=True, acknowledged_at__isnull=True
    ):
        if not repeat_due(incident, now, every):
            continue
        # Told again only if nobody acknowledged or resolved it since it was read.
        still_open = Incident.objects.filter(
            pk=incident.pk, resolved_at__isnull=True, acknowledged_at__isnull=True
        )
        if still_open.update(last_told_at=now):
            repeat_alert(incident, now)
            sent += 1
    return sent


# ----------------------------------------------------------------------------- people


class IncidentActionError(ValueError):
    """What a person asked cannot be done (the incident is resolved, a time is past)."""


def _audit(incident: Incident, actor: str, action: str, detail: dict) -> None:
    AuditEntry.objects.create(
        actor=actor,
        action=action,
        job=incident.job,
        target=f"incident {incident.pk}: {incident.summary}"[:500],
        ok=True,
        detail={"incident_id": incident.pk, "key": incident.key, **detail},
    )


def _still_open(incident: Incident) -> None:
    if incident.resolved_at is not None:
        by = f" by {incident.resolved_by}" if incident.resolved_by else ""
        when = human_time(incident.resolved_at)
        raise IncidentActionError(f"Incident {incident.pk} was already resolved{by} at {when}.")


def acknowledge(incident: Incident, actor: str, now: datetime) -> Incident:
    """A person is on it: no more repeats. Who and when are shown and audited."""
    _still_open(incident)
    incident.acknowledged_at = now
    incident.acknowledged_by = actor
    incident.save(update_fields=["acknowledged_at", "acknowledged_by"])
    _audit(incident, actor, "incident_ack", {"at": now.isoformat()})
    return incident


def snooze(incident: Incident, actor: str, until: datetime, now: datetime) -> Incident:
    """No repeats until `until`; then, still open, it is told again and repeats resume."""
    _still_open(incident)
    if until <= now:
        raise IncidentActionError(f"Snooze until a time to come, not {human_time(until)}.")
    incident.snoozed_until = until
    incident.snoozed_by = actor
    incident.save(update_fields=["snoozed_until", "snoozed_by"])
    _audit(incident, actor, "incident_snooze", {"until": until.isoformat()})
    return incident


def resolve_by_person(incident: Incident, actor: str, note: str, now: datetime) -> Alert | None:
    """A person closes it, saying why. The condition coming back opens a new incident.
    People told it opened are told who resolved it; the alert, if any."""
    _still_open(incident)
    note = note.strip()
    if not note:
        raise IncidentActionError("Say in a note why it is resolved (what was done).")
    incident.resolved_at = now
    incident.resolved_by = actor
    incident.resolution_note = note[:5000]
    incident.save(update_fields=["resolved_at", "resolved_by", "resolution_note"])
    _audit(incident, actor, "incident_resolve", {"note": incident.resolution_note})
    if not incident.notified:
        return None
    incident.recovery_told = True
    incident.save(update_fields=["recovery_told"])
    title = f"[opsconsole] Resolved by {actor}: {incident.summary}"
    body = f"Resolved by {actor} at {human_time(now)}\nNote: {incident.resolution_note}"
    return _alert(
        incident, Alert.Phase.RESOLVED, now, title, f"{body}\nAlerts: {messages.link('/alerts/')}"
    )


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


# ----------------------------------------------------------------------------- one entry

INCIDENT_ACTIONS = ("acknowledge", "snooze", "resolve")
SNOOZE_CHOICES_MINUTES = (30, 60, 240, 720)
SNOOZE_MAX = timedelta(days=30)


def snooze_until(now: datetime, minutes: str = "", until: str = "") -> datetime:
    """The end of a snooze a person asked for: `minutes` from now, or `until` (ISO 8601;
    without a zone, the console's)."""
    if until:
        try:
            moment = datetime.fromisoformat(until.strip().replace("Z", "+00:00"))
        except ValueError as exc:
            raise IncidentActionError(
                f"until must be an ISO 8601 time (2026-12-07T09:00), not {until[:40]!r}."
            ) from exc
        if timezone.is_naive(moment):
            moment = timezone.make_aware(moment, timezone.get_default_timezone())
    elif minutes:
        try:
            count = float(minutes)
        except ValueError as exc:
            raise IncidentActionError(f"minutes must be a number, not {minutes[:40]!r}.") from exc
        if not 0 < count <= SNOOZE_MAX.total_seconds() / 60:
            raise IncidentActionError("minutes must be above 0 and at most 30 days.")
        moment = now + timedelta(minutes=count)
    else:
        raise IncidentActionError("Snooze needs minutes or until.")
    if moment - now > SNOOZE_MAX:
        raise IncidentActionError("A snooze lasts at most 30 days.")
    return moment


def act(incident: Incident, action: str, actor: str, now: datetime, form: Mapping) -> str:
    """What the Alerts page and the API do for a person: one of INCIDENT_ACTIONS, with
    its fields from `form` (a request's POST: minutes or until, note). Returns what was
    done, in words; raises IncidentActionError when it cannot be."""
    minutes, until, note = (str(form.get(name, "")) for name in ("minutes", "until", "note"))
    if action == "acknowledge":
        acknowledge(incident, actor, now)
        return f"Incident {incident.pk} acknowledged by {actor}: no more repeats."
    if action == "snooze":
        end = snooze_until(now, minutes, until)
        snooze(incident, actor, end, now)
        return f"Incident {incident.pk} snoozed until {human_time(end)}."
    if action == "resolve":
        resolve_by_person(incident, actor, note, now)
        return f"Incident {incident.pk} resolved by {actor}."
    raise IncidentActionError(f"action must be one of {', '.join(INCIDENT_ACTIONS)}.")
