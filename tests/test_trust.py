"""A sidecar can name any process on the host: it is trusted only when the processes it
names run as the owner of the file, and Stop never signals another user's process
unless configured to (issue 11, item 8)."""

from __future__ import annotations

import os
import subprocess

import pytest

from monitor_app.snapshot import LiveSession
from monitor_app.stopping import stop_session
from sessions_app.trust import is_trusted_sidecar, may_signal, sidecar_trust_problem
from tests.live_helpers import SLEEPER, kill, sidecar_for
from wrapper.formats import ensure_private_dir, write_json_atomic

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as another user")


@pytest.fixture
def processes():
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def start(processes, argv, **kwargs) -> subprocess.Popen:
    proc = subprocess.Popen(argv, start_new_session=True, **kwargs)
    processes.append(proc)
    return proc


def sidecar_file(state, wrapper: subprocess.Popen, agent: subprocess.Popen | None):
    sidecar = sidecar_for(
        wrapper.pid,
        tag="trust",
        cwd=str(state.workdir),
        config_dir=state.config_dir,
        agent_pid=agent.pid if agent else None,
    )
    ensure_private_dir(state.active)
    path = state.paths.sidecar_path(wrapper.pid)
    write_json_atomic(path, sidecar.to_dict())
    return sidecar, path


def test_sidecar_naming_our_own_processes_is_trusted(state, processes):
    wrapper = start(processes, SLEEPER)
    agent = start(processes, ["sleep", "300"])
    sidecar, path = sidecar_file(state, wrapper, agent)
    assert sidecar_trust_problem(sidecar, path) is None
    assert is_trusted_sidecar(sidecar, path)
    assert may_signal(agent.pid)


@needs_root
def test_sidecar_naming_a_process_of_another_user_is_not_trusted(state, processes):
    """Before: any sidecar was believed, so Stop or the watchdog would signal whatever
    process it named."""
    wrapper = start(processes, SLEEPER)
    someone_elses = start(processes, ["sleep", "300"], user=NOBODY)
    sidecar, path = sidecar_file(state, wrapper, someone_elses)

    problem = sidecar_trust_problem(sidecar, path)

    assert problem is not None and f"runs as uid {NOBODY}" in problem
    assert not may_signal(someone_elses.pid)
    assert may_signal(someone_elses.pid, other_users=True)


@needs_root
def test_sidecar_owned_by_a_user_the_console_does_not_watch_is_not_trusted(state, processes):
    wrapper = start(processes, SLEEPER)
    sidecar, path = sidecar_file(state, wrapper, None)
    os.chown(path, NOBODY, NOBODY)
    assert "owned by uid" in sidecar_trust_problem(sidecar, path)
    assert sidecar_trust_problem(sidecar, path, allowed_uids={NOBODY}) is not None  # wrapper


@needs_root
@pytest.mark.django_db
def test_stop_never_signals_a_process_of_another_user(state, processes, settings):
    wrapper = start(processes, SLEEPER)
    someone_elses = start(processes, ["sleep", "300"], user=NOBODY)
    sidecar, _ = sidecar_file(state, wrapper, someone_elses)
    live = LiveSession(sidecar=sidecar, state="live", processes=[])

    outcome = stop_session(live, actor="alice", reason="stopped", grace=0.5)

    assert someone_elses.poll() is None, "another user's process was signalled"
    assert someone_elses.pid not in outcome.terminated + outcome.killed
    assert any("another user" in error for error in outcome.errors)
    assert wrapper.wait(timeout=10) is not None  # our own process was stopped

    settings.OPSCONSOLE_SIGNAL_OTHER_USERS = True
    stop_session(live, actor="alice", reason="stopped", grace=0.5)
    assert someone_elses.wait(timeout=10) is not None
    kill(wrapper)
