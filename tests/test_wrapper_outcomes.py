"""The wrapper never lets a run be recorded wrong: one session id is one run, and a
completion record it cannot write (disk full) does not turn into 'killed' (issue 11,
item 5, the wrapper's side)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid

import pytest

from monitor_app.live import take_snapshot
from sessions_app.models import Session, Status
from tests.conftest import wrapper_command
from wrapper.formats import EXIT_SESSION_ID_IN_USE, StatePaths, read_sidecar, read_spool_record

STREAM = ("-p", "work", "--output-format", "stream-json", "--verbose")


def calls(fake_claude) -> list[str]:
    path = fake_claude / "calls"
    return path.read_text().split() if path.exists() else []


def wrapper(state, session_id: str, behaviour: str, *, wait: bool = True, **env):
    environment = dict(
        state.env, CLAUDE_SESSION_ID=session_id, FAKE_CLAUDE_BEHAVIOUR=behaviour, **env
    )
    command = wrapper_command("nightly", *STREAM)
    if not wait:
        return subprocess.Popen(
            command, env=environment, cwd=state.workdir, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
    return subprocess.run(
        command, env=environment, cwd=state.workdir, capture_output=True, timeout=60
    )


def wait_for(predicate, timeout: float = 15.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_two_wrappers_given_the_same_session_id_the_second_refuses(state, fake_claude):
    """Before: the second ran claude (which refused the used id) and wrote its own 'failed'
    completion record over the first run's outcome."""
    session_id = str(uuid.uuid4())
    first = wrapper(state, session_id, "sleep:3", wait=False)
    try:
        wait_for(lambda: calls(fake_claude))  # the first has started claude

        second = wrapper(state, session_id, "succeed")

        assert second.returncode == EXIT_SESSION_ID_IN_USE
        assert b"already in use" in second.stderr
        assert calls(fake_claude) == [session_id]  # claude started once
        assert first.wait(timeout=60) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    record = read_spool_record(state.paths.spool_path(session_id))
    assert record.end_reason == "succeeded" and record.wrapper_pid == first.pid


def test_a_used_session_id_is_refused_after_its_run_ended(state, fake_claude):
    session_id = str(uuid.uuid4())
    assert wrapper(state, session_id, "succeed").returncode == 0
    again = wrapper(state, session_id, "succeed")
    assert again.returncode == EXIT_SESSION_ID_IN_USE
    assert b"transcript exists" in again.stderr
    assert read_spool_record(state.paths.spool_path(session_id)).end_reason == "succeeded"
    assert not any((state.paths.home / "claims").iterdir())  # claims go with their run


def test_a_used_session_id_is_refused_even_while_a_quota_stamp_holds(state, fake_claude):
    """The quota skip writes a record under the id: for a used id it would overwrite the
    run's outcome, so the id is checked first."""
    session_id = str(uuid.uuid4())
    assert wrapper(state, session_id, "succeed").returncode == 0
    assert wrapper(state, str(uuid.uuid4()), "429").returncode == 1  # sets the stamp
    again = wrapper(state, session_id, "succeed")
    assert again.returncode == EXIT_SESSION_ID_IN_USE
    assert read_spool_record(state.paths.spool_path(session_id)).end_reason == "succeeded"


@contextlib.contextmanager
def small_disk(path, size: str = "256k"):
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder) -> None:
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)


@pytest.mark.django_db(transaction=True)
def test_completion_record_that_cannot_be_written_is_not_recorded_as_killed(
    state, fake_claude, tmp_path, settings
):
    """Before: with the disk full, claude exited 0 but no completion record was written,
    the sidecar was removed, and the console recorded the run as killed/vanished."""
    with small_disk(tmp_path / "small") as disk:
        home = disk / "home"
        home.mkdir(mode=0o700)
        paths = StatePaths(home=home, active=home / "active")
        env = {"OPSCONSOLE_HOME": str(home), "OPSCONSOLE_ACTIVE_DIR": str(paths.active)}
        session_id = str(uuid.uuid4())
        run = wrapper(state, session_id, "sleep:2", wait=False, **env)
        sidecar_path = paths.sidecar_path(run.pid)
        wait_for(lambda: sidecar_path.exists() and read_sidecar(sidecar_path).claude_pid)
        fill(disk)  # the disk fills up while claude works

        _, err = run.communicate(timeout=60)

        assert run.returncode == 0, err
        assert b"could not write the completion record" in err
        assert not paths.spool_path(session_id).exists()
        sidecar = read_sidecar(sidecar_path)  # kept, with the outcome
        assert (sidecar.end_reason, sidecar.exit_code) == ("succeeded", 0)
        assert sidecar.ended_at

        os.unlink(disk / "filler")
        settings.OPSCONSOLE_STATE = paths
        take_snapshot(paths)

        row = Session.objects.get(session_id=session_id)
        assert row.status == Status.SUCCEEDED and row.exit_code == 0
        assert row.end_reason == "succeeded"
        assert not sidecar_path.exists()  # collected once on record
