"""The rules on how a run ended: failures (one alert per incident, consecutive-failure
thresholds, a retry that may still follow; a failed output check is one), false
successes, quota errors, runtimes outside the usual, and cost budgets per run and per
day."""

from __future__ import annotations

import logging
import os
import statistics
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db.models import Sum
from django.utils import timezone

from alerts_app import messages
from alerts_app.incidents import (
    RUNTIME_HISTORY,
    RUNTIME_MIN_HISTORY,
    open_incident,
    resolve_incident,
    rule_settings,
    subject_key,
)
from alerts_app.models import Incident, Rule
from jobs_app.models import Job
from monitor_app.models import Event
from sessions_app.models import (
    LIVE_STATUSES,
    RunTelemetry,
    Session,
    Status,
    run_cost_expression,
)
from sessions_app.timeline import three_costs

log = logging.getLogger(__name__)


# A refusal whose wrapper is still alive may be retried; after this it is decided anyway.
DEFER_LIMIT = timedelta(hours=1)


# Without a snapshot (standalone delivery), how long a refusal waits for its retry to show.
DEFER_WITHOUT_SNAPSHOT = timedelta(seconds=10)


DEFER_WITHOUT_RECORD = timedelta(minutes=1)


# A failed output check is a failure like any other: one alert, one recovery.
FAILURE_STATUSES = (Status.FAILED, Status.KILLED, Status.REFUSED, Status.CHECK_FAILED)


# Runs that say something about whether a job works (a quota skip or an import does not).
VERDICT_STATUSES = (*FAILURE_STATUSES, Status.SUCCEEDED, Status.FALSE_SUCCESS)


def budget_day_start(now: datetime) -> datetime:
    """Where a daily budget's day begins: local midnight (TIME_ZONE)."""
    return timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)


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
    # Tuples, not model instances: /metrics asks this of every failing job of a fleet.
    recent = list(
        Session.objects.filter(job=job, status__in=VERDICT_STATUSES)
        .order_by("-started_at", "-id")
        .values_list("session_id", "retry_of", "status")[:50]
    )
    retried = {retry_of for _, retry_of, _ in recent if retry_of}
    count = 0
    for session_id, _, status in recent:
        if session_id in retried:
            continue
        if status == Status.SUCCEEDED:
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
                Status.CHECK_FAILED: "failed its output check",
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


def check_cost_drift(session, job, now) -> None:
    """One alert for a run whose costs disagree by more than OPSCONSOLE_COST_DRIFT_PERCENT
    (telemetry lost, a price table behind, a CLI that under-reports)."""
    telemetry = RunTelemetry.objects.filter(session_id=session.session_id).first()
    _, drift = three_costs(session, telemetry)
    if not drift:
        return
    title, body = messages.run_message(session, job, f"cost drift: {drift}")
    open_incident(
        f"run:{session.session_id}:cost_drift",
        Rule.COST_DRIFT,
        now,
        title,
        body,
        job=job,
        host=session.host,
        session_id=session.session_id,
    )


def check_costs(session, job, rules, subject, name, now) -> None:
    cost = session.shown_cost_usd
    if cost is None:
        return
    if settings.OPSCONSOLE_COST_DRIFT_ALERT:
        check_cost_drift(session, job, now)
    if rules.cost_per_run_usd is not None:
        key = f"{subject}:cost_run"
        capped = Incident.objects.filter(key=f"run:{session.session_id}:cost_cap").exists()
        if cost > rules.cost_per_run_usd and not capped:
            headline = (
                f"cost {messages.cost_words(cost)}, over its run budget of "
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
        elif cost <= rules.cost_per_run_usd:
            resolve_incident(key, now, announce=False)
    if rules.cost_per_day_usd is not None:
        day_start = budget_day_start(now)
        spent = subject_runs(session).filter(started_at__gte=day_start).aggregate(
            total=Sum(run_cost_expression())
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
