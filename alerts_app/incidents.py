"""Incidents and what every alert rule asks of its subject: open or resolve an
incident (one alert when it opens, one when it resolves, flapping damped), the job's
rule settings, the subject key, and the subject's usual runtime."""

from __future__ import annotations

import logging
import statistics
from datetime import datetime, timedelta

from django.conf import settings

from alerts_app import delivery
from alerts_app.models import Alert, Incident, JobAlertSettings
from jobs_app.models import Job
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
