"""Real processes standing in for a wrapper and its agent, with real sidecars.

These let the console's tests put a session in any state (live, orphaned,
vanished, reused PID) without waiting for the wrapper to get there.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from monitor_app.published import Published, read_local_sample
from tests.conftest import State
from wrapper.formats import (
    Sidecar,
    StatePaths,
    ensure_private_dir,
    host_name,
    new_session_id,
    process_start_time,
    transcript_path,
    utc_now_iso,
    write_json_atomic,
)

# A process that spawns a grandchild (`sleep`) and then waits: wrapper -> agent -> tool.
SLEEPER = [
    sys.executable,
    "-c",
    "import subprocess, time; subprocess.Popen(['sleep', '300']); time.sleep(300)",
]


def claude_lookalike(folder: Path, program: str = "sleep") -> Path:
    """A copy of `program` (sleep, bash) installed as `<folder>/<program>/claude`. The
    monitor judges a registry file's process by its executable's path and how it was
    started (sessions_app.trust.is_claude_code), so this passes for Claude Code's native
    binary, where the plain `sleep` a registry file might name does not."""
    target = folder / program / "claude"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(shutil.which(program), target)
    return target


@dataclass
class FakeRun:
    sidecar: Sidecar
    wrapper: subprocess.Popen
    agent: subprocess.Popen | None
    sidecar_file: Path
    transcript: Path
    extra: list[subprocess.Popen] = field(default_factory=list)

    @property
    def session_id(self) -> str:
        return self.sidecar.session_id

    def kill_all(self) -> None:
        for proc in [self.agent, self.wrapper, *self.extra]:
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def start_fake_run(
    state: State,
    tag: str = "nightly-report",
    *,
    attempt: int = 1,
    with_agent: bool = True,
    transcript_lines: list[bytes] | None = None,
    wrapper_argv: list[str] | None = None,
) -> FakeRun:
    """A live 'wrapper' process (and an 'agent' child group) with a valid sidecar."""
    wrapper = subprocess.Popen(wrapper_argv or SLEEPER, start_new_session=True)
    agent = subprocess.Popen(SLEEPER, start_new_session=True) if with_agent else None
    sidecar = sidecar_for(
        wrapper.pid,
        tag=tag,
        cwd=str(state.workdir),
        config_dir=state.config_dir,
        attempt=attempt,
        agent_pid=agent.pid if agent else None,
    )
    transcript = Path(sidecar.transcript_path)
    transcript.parent.mkdir(parents=True, exist_ok=True)
    transcript.write_bytes(b"".join(transcript_lines or []))
    ensure_private_dir(state.active)
    sidecar_file = state.paths.sidecar_path(wrapper.pid)
    write_json_atomic(sidecar_file, sidecar.to_dict())
    return FakeRun(sidecar, wrapper, agent, sidecar_file, transcript)


def sidecar_for(
    pid: int,
    *,
    tag: str,
    cwd: str,
    config_dir: Path,
    attempt: int = 1,
    agent_pid: int | None = None,
) -> Sidecar:
    """A valid sidecar naming a real, running process as its wrapper."""
    session_id = new_session_id()
    return Sidecar(
        session_id=session_id,
        script_tag=tag,
        wrapper_pid=pid,
        wrapper_started=_start_time(pid),
        started_at=utc_now_iso(),
        attempt=attempt,
        platform="linux-test",
        host=host_name(),
        cwd=cwd,
        claude_config_dir=str(config_dir),
        transcript_path=str(transcript_path(config_dir, cwd, session_id)),
        claude_pid=agent_pid,
        claude_started=_start_time(agent_pid) if agent_pid else None,
    )


def write_dead_sidecars(
    paths: StatePaths,
    *,
    count: int,
    cwd: str,
    config_dir: Path,
    tag: str = "dead",
    host: str | None = None,
) -> list[Sidecar]:
    """`count` sidecars of runs whose wrapper is gone (PIDs above pid_max: no process can
    have them) and that left no completion record: dead runs for the monitor to record."""
    ensure_private_dir(paths.active)
    try:
        pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    except OSError:
        pid_max = 99_999  # macOS
    sidecars = []
    started = time.time() - 3600
    for index in range(count):
        session_id = new_session_id()
        sidecar = Sidecar(
            session_id=session_id,
            script_tag=tag,
            wrapper_pid=pid_max + 1 + index,
            wrapper_started=started,
            started_at=utc_now_iso(),
            attempt=1,
            platform="linux-test",
            host=host or host_name(),
            cwd=cwd,
            claude_config_dir=str(config_dir),
            transcript_path=str(transcript_path(config_dir, cwd, session_id)),
        )
        # As the wrapper leaves it (0600), without an fsync each: ten thousand of them.
        fd = os.open(paths.sidecar_path(sidecar.wrapper_pid), os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(sidecar.to_dict(), handle)
        sidecars.append(sidecar)
    return sidecars


def _start_time(pid: int) -> float:
    for _ in range(100):
        started = process_start_time(pid)
        if started is not None:
            return started
        time.sleep(0.01)
    raise RuntimeError(f"process {pid} has no start time")


def kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def wait_until(predicate, timeout=30.0, interval=0.1):
    """The predicate's first truthy value, asked every `interval` seconds; fails after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("timed out waiting")


def start_monitor(env: dict[str, str], *, migrate: bool = True, **popen) -> subprocess.Popen:
    """`opsconsole monitor` as its own process, as `serve` or a unit runs it, after
    migrating its database (unless the test means that database to be unreachable)."""
    from tests.conftest import PYTHON, REPO_ROOT

    if migrate:
        subprocess.run(
            [PYTHON, "-m", "opsconsole.cli", "migrate", "--noinput"],
            env=env,
            cwd=REPO_ROOT,
            check=True,
            capture_output=True,
            timeout=120,
        )
    popen.setdefault("stdout", subprocess.DEVNULL)
    popen.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(
        [PYTHON, "-m", "opsconsole.cli", "monitor"], env=env, cwd=REPO_ROOT, **popen
    )


def write_sidecar_raw(state: State, name: str, content: bytes, mode: int = 0o600) -> Path:
    ensure_private_dir(state.active)
    path = state.active / name
    path.write_bytes(content)
    path.chmod(mode)
    return path


def monitor_sample(state: State) -> tuple[Published, dict] | None:
    """The sample a monitor process last published (its local copy) and its state
    document, or None before its first: what *that* monitor saw, not what a web worker
    sampled on demand."""
    published = read_local_sample(state.home / "monitor" / "sample.json")
    if published is None:
        return None
    return published, json.loads(published.state_document)


def monitor_session(state: State, session_id: str) -> dict | None:
    """The session as the monitor's latest published sample lists it."""
    sample = monitor_sample(state)
    if sample is None:
        return None
    return next(
        (s for s in sample[1]["sessions"] if s["sidecar"]["session_id"] == session_id), None
    )


def wait_for_samples(state: State, count: int, timeout: float = 60.0) -> Published:
    """Until the monitor has published `count` more samples: "nothing new happened for
    two samples" measured in samples, which a loaded machine slows down with it."""
    first = monitor_sample(state)
    start = first[0].seq if first else -1
    return wait_until(
        lambda: (s := monitor_sample(state)) and s[0].seq >= start + count and s[0],
        timeout=timeout,
    )
