"""Leftover processes: what an ended run's tree left running, and stopping them.

The monitor finds them (a member of a run's last-seen tree still alive, by PID and
start time, after the agent is gone) and publishes them with each sample; the
record keeps them on the Session row. This module answers "what is left of this
run now" for pages and the API, and is the one way people stop them (audited).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError

from jobs_app.models import AuditEntry
from monitor_app.remote_actions import ON_ITS_WAY, request_action
from monitor_app.snapshot import LeftoverRun, Snapshot
from monitor_app.stopping import StopOutcome, stop_leftovers
from sessions_app.models import Session


@dataclass
class LeftoversKilled:
    outcome: StopOutcome
    message: str


def leftovers_of(session_id: str, snapshot: Snapshot) -> LeftoverRun | None:
    return snapshot.leftover_run(session_id)


def leftover_payload(run: LeftoverRun | None) -> list[dict]:
    if run is None:
        return []
    return [
        {
            "pid": p.pid,
            "cmdline": p.cmdline,
            "started": p.started,
            "cpu_percent": p.cpu_percent,
            "rss": p.rss,
        }
        for p in run.processes
    ]


def kill_leftovers(session: Session, actor: str) -> LeftoversKilled:
    """TERM the run's leftovers (each checked by PID and start time), KILL what
    outlives the grace period, and audit it whatever happens.

    For a run on a reporting host, the request waits for that host's monitor
    (fleet.console), which answers with its next report."""
    outcome = StopOutcome(str(session.session_id))
    if session.host != settings.OPSCONSOLE_HOST:
        action = request_action("kill_leftovers", session, actor)
        return LeftoversKilled(
            outcome,
            f"requested from {session.host} (request {action.pk}): {ON_ITS_WAY}",
        )
    try:
        outcome = stop_leftovers(
            str(session.session_id),
            list(session.leftovers or []),
            actor=actor,
            grace=settings.OPSCONSOLE_STOP_GRACE_SECONDS,
        )
        message = outcome.summary if outcome.terminated else "no leftover process was running"
    except OSError as exc:
        outcome.errors.append(str(exc))
        message = f"could not stop the leftovers: {exc}"
    # The processes are stopped either way; stopping_leftovers logged what it did.
    with contextlib.suppress(DatabaseError):
        AuditEntry.objects.create(
            actor=actor,
            action="kill_leftovers",
            job=session.job,
            target=str(session.session_id),
            ok=not outcome.errors,
            output="\n".join(outcome.errors),
            detail={"terminated": outcome.terminated, "killed": outcome.killed},
        )
    return LeftoversKilled(outcome, message)
