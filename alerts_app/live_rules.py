"""The rules on runs still live, from the monitor's latest sample: stalled (no
transcript growth and no CPU), running past the usual, and over a running cost cap
(stopped when the job says so)."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction

from alerts_app import messages
from alerts_app.incidents import (
    open_incident,
    resolve_incident,
    rule_settings,
    subject_key,
    usual_seconds,
)
from alerts_app.models import Incident, Rule
from jobs_app.models import AuditEntry, Job
from monitor_app.stopping import stop_session
from sessions_app.models import Session
from sessions_app.timeline import stall_words

log = logging.getLogger(__name__)


LIVE_RUN_STATES = ("live", "orphaned")


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
    # Which kind of stall, from its telemetry: a tool running, an API retry storm, no
    # telemetry at all (a startup hang).
    kind = stall_words(live, now=now)
    title, body = messages.plain_message(
        f"{name} is stalled: no transcript growth and no CPU for {idle}",
        sidecar.host,
        [
            *([f"Telemetry: {kind}"] if kind else []),
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
