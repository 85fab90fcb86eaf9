"""Stopping a session: its whole process tree, and nothing else.

SIGTERM goes deepest-first (tools before the agent before the wrapper); after a
grace period the tree is walked again, because a process may start children
after the first TERM, and everything still alive gets SIGKILL. Identity is
checked by PID *and* start time, so a reused PID is never signalled; and a process
of another user is never signalled unless OPSCONSOLE_SIGNAL_OTHER_USERS=1. A session
known only from Claude Code's registry is signalled only while its agent is Claude Code.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass, field

import psutil
from django.conf import settings
from django.db import DatabaseError

from monitor_app.snapshot import LiveSession
from sessions_app.models import LIVE_STATUSES, Session, leftover_members
from sessions_app.trust import claude_code_problem
from wrapper.formats import same_start_time

log = logging.getLogger(__name__)


@dataclass
class StopOutcome:
    session_id: str
    terminated: list[int] = field(default_factory=list)
    killed: list[int] = field(default_factory=list)  # still alive after the grace period
    errors: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        text = f"{self.session_id}: TERM to {len(self.terminated)} process(es)"
        if self.killed:
            text += f", KILL to {len(self.killed)} that outlived the grace period"
        return text


def verified_roots(live: LiveSession, outcome: StopOutcome | None = None) -> list[psutil.Process]:
    """The wrapper and the agent, if each is still the process the sidecar names. For a
    session no wrapper started (Claude Code's registry named it), the agent must also be
    Claude Code, checked again now: a registry file is never a way to signal anything else."""
    roots = []
    sidecar = live.sidecar
    for pid, started in (
        (sidecar.wrapper_pid, sidecar.wrapper_started),
        (sidecar.claude_pid, sidecar.claude_started),
    ):
        if not pid:
            continue
        try:
            proc = psutil.Process(pid)
            if not same_start_time(proc.create_time(), started):
                continue
        except psutil.Error:
            continue
        problem = None if live.wrapped else claude_code_problem(pid)
        if problem is not None:
            log.warning("stop of %s: pid %s not signalled: %s", live.session_id, pid, problem)
            if outcome is not None and problem not in outcome.errors:
                outcome.errors.append(problem)
            continue
        roots.append(proc)
    return roots


def walk(roots: list[psutil.Process]) -> list[tuple[int, psutil.Process]]:
    """(depth, process) for the roots and all their descendants, deepest first."""
    found: dict[int, tuple[int, psutil.Process]] = {}
    for root in roots:
        try:
            if not root.is_running():
                continue
            found.setdefault(root.pid, (0, root))
            for child in root.children(recursive=True):
                depth = _depth_below(child, root)
                found.setdefault(child.pid, (depth, child))
        except psutil.Error:
            continue
    return sorted(found.values(), key=lambda item: -item[0])


# Rounds of walk-and-stop before the tree is taken as it is (each round only finds
# children started between the previous walk and its SIGSTOP).
FREEZE_ROUNDS = 10


def freeze(roots: list[psutil.Process], outcome: StopOutcome) -> list[psutil.Process]:
    """SIGSTOP the roots and every descendant, walking again until a walk finds nothing
    new, and return them deepest first. A stopped process starts no child, so the KILL
    that follows leaves none behind: a single walk raced a trap that forks on TERM."""
    frozen: dict[int, tuple[int, psutil.Process]] = {}
    for _ in range(FREEZE_ROUNDS):
        found = [(depth, proc) for depth, proc in walk(roots) if proc.pid not in frozen]
        if not found:
            break
        for depth, proc in found:
            frozen[proc.pid] = (depth, proc)
            _signal(proc, signal.SIGSTOP, outcome)
    return [proc for _, proc in sorted(frozen.values(), key=lambda item: -item[0])]


def _depth_below(proc: psutil.Process, root: psutil.Process) -> int:
    depth = 1
    try:
        for parent in proc.parents():
            if parent.pid == root.pid:
                return depth
            depth += 1
    except psutil.Error:
        pass
    return depth


def _of_another_user(proc: psutil.Process) -> bool:
    if getattr(settings, "OPSCONSOLE_SIGNAL_OTHER_USERS", False):
        return False
    uid = os.geteuid()
    uids = proc.uids()
    return (uids.real, uids.effective) != (uid, uid)


def _signal(proc: psutil.Process, signum: int, outcome: StopOutcome) -> bool:
    try:
        if _of_another_user(proc):
            message = (
                f"pid {proc.pid} runs as another user: not signalled "
                "(OPSCONSOLE_SIGNAL_OTHER_USERS=1 allows it)"
            )
            if message not in outcome.errors:
                outcome.errors.append(message)
            return False
        proc.send_signal(signum)  # psutil refuses a PID that now belongs to another process
        return True
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied as exc:
        outcome.errors.append(f"pid {proc.pid}: permission denied ({exc})")
        return False


def stop_session(
    live: LiveSession, *, actor: str, reason: str, grace: float, on_record: bool = True
) -> StopOutcome:
    """Stop one live session's tree and put who stopped it, and why, on its record.

    `on_record=False`: a reporting monitor (no database here); the console put the
    reason on record when it handed the request over."""
    outcome = StopOutcome(live.session_id)
    # On record first, so the completion record that follows keeps the reason. A stop is
    # a safety action: a locked or unreachable database must not keep it from happening.
    recorded = not on_record or _record_stopper(live.session_id, actor, reason)
    roots = verified_roots(live, outcome)
    first = walk(roots)
    for _, proc in first:
        if _signal(proc, signal.SIGTERM, outcome):
            outcome.terminated.append(proc.pid)
    psutil.wait_procs([proc for _, proc in first], timeout=grace)
    # Survivors may have started children after the TERM, and may still be starting them.
    survivors = [proc for _, proc in first if _alive(proc)]
    for proc in freeze(survivors + [r for r in roots if _alive(r)], outcome):
        if _alive(proc) and _signal(proc, signal.SIGKILL, outcome):
            outcome.killed.append(proc.pid)
    if not recorded and not _record_stopper(live.session_id, actor, reason):
        outcome.errors.append("stopped, but who stopped it could not be put on record")
    log.info("stopped %s (%s) for %s: %s", live.session_id, reason, actor, outcome.summary)
    return outcome


def _record_stopper(session_id: str, actor: str, reason: str) -> bool:
    try:
        Session.objects.filter(session_id=session_id, status__in=LIVE_STATUSES).update(
            stopped_by=actor, end_reason=reason
        )
    except DatabaseError as exc:
        log.warning("stop of %s: not on record yet (%s)", session_id, exc)
        return False
    return True


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kill_leftover_processes(members: list[tuple[int, float]], signum: int) -> StopOutcome:
    """Signal processes an ended run left behind, each checked by PID *and* start time."""
    outcome = StopOutcome(session_id="")
    for pid, started in members:
        try:
            proc = psutil.Process(pid)
            if not same_start_time(proc.create_time(), started):
                continue  # the PID now belongs to another process
        except psutil.Error:
            continue
        if _signal(proc, signum, outcome):
            (outcome.killed if signum == signal.SIGKILL else outcome.terminated).append(pid)
    return outcome


def stop_leftovers(
    session_id: str, members: list[dict], *, actor: str, grace: float
) -> StopOutcome:
    """Staff's "kill leftovers": TERM, wait the grace period, KILL what is left."""
    outcome = kill_leftover_processes(list(leftover_members(members)), signal.SIGTERM)
    outcome.session_id = session_id
    procs = []
    for pid in outcome.terminated:
        try:
            procs.append(psutil.Process(pid))
        except psutil.Error:
            continue
    psutil.wait_procs(procs, timeout=grace)
    for proc in procs:
        if _alive(proc) and _signal(proc, signal.SIGKILL, outcome):
            outcome.killed.append(proc.pid)
    log.info("leftovers of %s stopped for %s: %s", session_id, actor, outcome.summary)
    return outcome
