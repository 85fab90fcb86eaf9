"""Requests for another host: an operator's stop, kill-leftovers or job control for a
run or job that lives on a reporting host. Queued here, audited when asked; that
host's held poll is woken at once (monitor_app.action_bell, fleet.action_push), and
its next report collects whatever no poll took (fleet.console delivers them)."""

from __future__ import annotations

from datetime import datetime

from django.utils import timezone

from jobs_app.models import AuditEntry, Job
from monitor_app.action_bell import ring
from monitor_app.models import RemoteAction
from sessions_app.models import Session

# How a request reaches its host, in the words a person reads when asking.
ON_ITS_WAY = "pending: its monitor gets it at once if it is listening, else with its next report"


def request_action(
    kind: str, session: Session, actor: str, now: datetime | None = None
) -> RemoteAction:
    """An operator's stop or kill-leftovers for a run on another host: queued for its
    monitor's next report, audited when asked and again when the host answers."""
    now = now or timezone.now()
    action = RemoteAction.objects.create(
        host=session.host,
        kind=kind,
        session_id=session.session_id,
        requested_by=actor,
        requested_at=now,
    )
    AuditEntry.objects.create(
        actor=actor,
        action=f"request_{kind}",
        job=session.job,
        target=str(session.session_id),
        ok=True,
        output="",
        detail={"host": session.host, "remote_action": action.pk, "state": "pending"},
    )
    ring(action.host)
    return action


def request_job_action(
    kind: str,
    job: Job,
    actor: str,
    schedule: str = "",
    now: datetime | None = None,
    detail: dict | None = None,
) -> RemoteAction:
    """Run now, enable, disable or a new schedule for a job on another host: queued for
    its monitor, which carries it out with monitor_app.job_controls.execute. `detail`:
    why it was asked (a catch-up's misses), kept in the audit of the request and of the
    host's answer (fleet.host_requests)."""
    action = RemoteAction.objects.create(
        host=job.host,
        kind=kind,
        job=job,
        arguments={"schedule": schedule} if kind == RemoteAction.Kind.SCHEDULE else {},
        requested_by=actor,
        requested_at=now or timezone.now(),
        detail=detail or {},
    )
    AuditEntry.objects.create(
        actor=actor,
        action=f"request_{kind}"[:32],
        job=job,
        target=job.label[:1000],
        ok=True,
        output="",
        detail={
            "message": f"asked {job.host}'s monitor (request {action.pk}): pending",
            "host": job.host,
            "remote_action": action.pk,
            "state": "pending",
            **action.arguments,
            **action.detail,
        },
    )
    ring(action.host)
    return action
