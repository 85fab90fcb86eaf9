"""The run wrapper around the stand-in claude: real processes, real files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import at_once, wrapper_command
from tests.live_helpers import wait_until
from wrapper.formats import (
    EXIT_NO_CLAUDE,
    EXIT_QUOTA_SKIP,
    EXIT_SESSION_ID_IN_USE,
    EXIT_UNSAFE_STATE_DIR,
    encode_project_dir,
    read_sidecar,
    read_spool_record,
)

STREAM = ("-p", "do the thing", "--output-format", "stream-json", "--verbose")


def run(state, *claude_args, behaviour="succeed", extra=(), timeout=60, **env):
    environment = dict(state.env, FAKE_CLAUDE_BEHAVIOUR=behaviour, **env)
    return subprocess.run(
        wrapper_command("nightly", *claude_args, extra=extra),
        env=environment,
        cwd=state.workdir,
        capture_output=True,
        timeout=timeout,
    )


def start(state, *claude_args, behaviour, **env):
    environment = dict(state.env, FAKE_CLAUDE_BEHAVIOUR=behaviour, **env)
    return subprocess.Popen(
        wrapper_command("nightly", *claude_args),
        env=environment,
        cwd=state.workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def spool_records(state):
    return sorted(
        (read_spool_record(p) for p in state.paths.spool.glob("*.json")),
        key=lambda r: (r.attempt, r.started_at),
    )


def calls(fake_claude: Path) -> list[str]:
    calls_file = fake_claude / "calls"
    return calls_file.read_text().split() if calls_file.exists() else []


def wait_for_sidecar(state, proc, with_claude=True, timeout=10.0):
    path = state.paths.sidecar_path(proc.pid)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists():
            sidecar = read_sidecar(path)
            if sidecar.claude_pid or not with_claude:
                return sidecar
        time.sleep(0.02)
    raise AssertionError(f"no sidecar at {path}")


def test_success_passes_output_through_and_records_the_run(state, fake_claude):
    result = run(state, *STREAM)

    assert result.returncode == 0
    events = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [e["type"] for e in events] == ["system", "assistant", "result"]
    assert result.stderr == b""
    (record,) = spool_records(state)
    (session_id,) = calls(fake_claude)
    assert record.session_id == session_id == events[0]["session_id"]
    assert (record.end_reason, record.exit_code, record.cost_usd) == ("succeeded", 0, 0.0123)
    assert record.usage["input_tokens"] == 120
    assert record.model == "claude-sonnet-4-5"
    archived = Path(record.archive_path)
    transcript = state.config_dir / "projects" / encode_project_dir(str(state.workdir))
    assert archived.read_bytes() == (transcript / f"{session_id}.jsonl").read_bytes()
    assert archived.stat().st_mode & 0o777 == 0o600
    assert list(state.active.iterdir()) == []


def test_text_output_passes_through_and_cost_stays_unknown(state, fake_claude):
    result = run(state, "-p", "hello")

    assert result.stdout == b"All done.\n"
    (record,) = spool_records(state)
    assert record.end_reason == "succeeded"
    assert record.cost_usd is None


def test_sidecar_present_while_running_and_gone_after(state, fake_claude):
    proc = start(state, *STREAM, behaviour="sleep:1.5")
    sidecar = wait_for_sidecar(state, proc)

    assert sidecar.wrapper_pid == proc.pid
    assert sidecar.script_tag == "nightly"
    assert sidecar.claude_started is not None and sidecar.wrapper_started is not None
    assert os.path.exists(f"/proc/{sidecar.claude_pid}") or os.uname().sysname != "Linux"
    assert sidecar.cwd == str(state.workdir)
    assert sidecar.claude_config_dir == str(state.config_dir)
    mode = state.paths.sidecar_path(proc.pid).stat().st_mode & 0o777
    assert mode == 0o600
    assert state.active.stat().st_mode & 0o777 == 0o700

    assert proc.wait(timeout=30) == 0
    assert not state.paths.sidecar_path(proc.pid).exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signals_are_forwarded_and_the_sidecar_removed(state, fake_claude, signum):
    proc = start(state, *STREAM, behaviour="sleep:30")
    sidecar = wait_for_sidecar(state, proc)

    proc.send_signal(signum)
    code = proc.wait(timeout=20)

    assert code == 128 + signum
    assert not state.paths.sidecar_path(proc.pid).exists()
    with pytest.raises(ProcessLookupError):
        os.kill(sidecar.claude_pid, 0)
    (record,) = spool_records(state)
    assert (record.end_reason, record.signal) == ("signalled", signum)


def ignores_term(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    ignored = next(line for line in status.splitlines() if line.startswith("SigIgn:"))
    return bool(int(ignored.split()[1], 16) & (1 << (signal.SIGTERM - 1)))


def test_claude_ignoring_term_is_killed_after_the_grace(state, fake_claude):
    proc = start(
        state,
        *STREAM,
        behaviour="sleep:60",
        FAKE_CLAUDE_IGNORE_TERM="1",
        OPSCONSOLE_KILL_GRACE_SECONDS="0.5",
    )
    sidecar = wait_for_sidecar(state, proc)
    # TERM only once the stand-in ignores it (the kernel says so), else the grace is moot.
    wait_until(lambda: ignores_term(sidecar.claude_pid), timeout=30)

    proc.terminate()

    assert proc.wait(timeout=20) == 128 + signal.SIGTERM
    with pytest.raises(ProcessLookupError):
        os.kill(sidecar.claude_pid, 0)


def test_refusal_retries_under_a_fresh_uuid(state, fake_claude):
    result = run(state, *STREAM, behaviour="refuse,succeed")

    assert result.returncode == 0
    first, second = spool_records(state)
    assert (first.attempt, first.end_reason, first.stop_reason) == (1, "refused", "refusal")
    assert (second.attempt, second.end_reason) == (2, "succeeded")
    assert second.retry_of == first.session_id
    assert first.session_id != second.session_id
    assert calls(fake_claude) == [first.session_id, second.session_id]
    assert b"retrying under a fresh session id" in result.stderr


def test_max_attempts_is_respected(state, fake_claude):
    result = run(state, *STREAM, behaviour="refuse", extra=("--max-attempts", "2"))

    assert result.returncode == 1
    assert [r.end_reason for r in spool_records(state)] == ["refused", "refused"]
    assert len(calls(fake_claude)) == 2


def test_429_stamps_and_the_next_run_skips_fast_without_claude(state, fake_claude):
    first = run(state, *STREAM, behaviour="429")
    assert first.returncode == 1
    stamp = json.loads(state.paths.quota_stamp.read_text())
    assert "429" in stamp["reason"]

    began = time.monotonic()
    second = run(state, *STREAM)
    elapsed = time.monotonic() - began

    assert second.returncode == EXIT_QUOTA_SKIP
    assert at_once(elapsed, state.env), elapsed
    assert len(calls(fake_claude)) == 1, "claude must not start while the stamp holds"
    assert b"--clear-quota-stamp" in second.stderr
    failed, skipped = sorted(spool_records(state), key=lambda r: r.end_reason)
    assert (failed.end_reason, failed.api_error_status) == ("failed", 429)
    assert (skipped.end_reason, skipped.exit_code) == ("quota_skip", EXIT_QUOTA_SKIP)


def test_reset_time_from_the_cli_is_honoured_and_the_stamp_can_be_cleared(state, fake_claude):
    reset = int(time.time()) + 7200
    run(state, "-p", "x", "--output-format", "json", behaviour=f"limit:{reset}")
    stamp = json.loads(state.paths.quota_stamp.read_text())
    assert stamp["until"].startswith(time.strftime("%Y-%m-%dT%H:%M", time.gmtime(reset)))

    cleared = subprocess.run(
        [*wrapper_command("x")[:3], "--clear-quota-stamp"], env=state.env, capture_output=True
    )

    assert cleared.returncode == 0
    assert not state.paths.quota_stamp.exists()
    assert run(state, *STREAM).returncode == 0


def test_usage_limit_text_in_tool_output_does_not_stamp(state, fake_claude):
    result = run(state, *STREAM, behaviour="mention-limit")

    assert result.returncode == 0
    assert not state.paths.quota_stamp.exists()
    assert spool_records(state)[0].end_reason == "succeeded"


def test_claude_missing_is_127_with_one_line_and_a_record(state, tmp_path):
    env = dict(state.env, OPSCONSOLE_CLAUDE_BIN=str(tmp_path / "nope"), PATH="/usr/bin:/bin")
    result = subprocess.run(
        wrapper_command("nightly", "-p", "x"), env=env, cwd=state.workdir, capture_output=True
    )

    assert result.returncode == EXIT_NO_CLAUDE
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1
    assert "OPSCONSOLE_CLAUDE_BIN" in lines[0] and "PATH" in lines[0]
    (record,) = spool_records(state)
    assert (record.end_reason, record.exit_code) == ("failed", EXIT_NO_CLAUDE)


def test_session_id_from_the_environment_is_used_first(state, fake_claude):
    wanted = "0b7d5c1e-3f1a-4c2b-9d8e-7a6b5c4d3e2f"
    run(state, *STREAM, CLAUDE_SESSION_ID=wanted)
    assert calls(fake_claude) == [wanted]


def test_reused_session_id_fails_like_the_real_cli(state, fake_claude):
    """Refused before claude starts (exit 75), and no record overwrites the first run's."""
    wanted = "0b7d5c1e-3f1a-4c2b-9d8e-7a6b5c4d3e2f"
    assert run(state, *STREAM, CLAUDE_SESSION_ID=wanted).returncode == 0
    again = run(state, *STREAM, CLAUDE_SESSION_ID=wanted)
    assert again.returncode == EXIT_SESSION_ID_IN_USE
    assert b"already in use" in again.stderr
    assert calls(fake_claude) == [wanted]
    (record,) = spool_records(state)
    assert record.end_reason == "succeeded"


def hostile(state, how, tmp_path):
    state.paths.home.mkdir(exist_ok=True)
    if how == "symlink":
        target = tmp_path / "elsewhere"
        target.mkdir(mode=0o700)
        state.active.symlink_to(target)
    elif how == "world-writable":
        state.active.mkdir(mode=0o700)
        state.active.chmod(0o777)
    elif how == "other-owner":
        state.active.mkdir(mode=0o700)
        os.chown(state.active, 65534, 65534)
    elif how == "a-file":
        state.active.write_text("not a directory")


@pytest.mark.parametrize("how", ["symlink", "world-writable", "other-owner", "a-file"])
def test_hostile_active_dir_is_refused_and_claude_not_started(state, fake_claude, tmp_path, how):
    if how == "other-owner" and os.geteuid() != 0:
        pytest.skip("needs root to give a directory to another user")
    hostile(state, how, tmp_path)

    result = run(state, *STREAM)

    assert result.returncode == EXIT_UNSAFE_STATE_DIR
    assert b"claude not started" in result.stderr
    assert calls(fake_claude) == []


def test_unwritable_state_root_is_a_clear_error(state, fake_claude, tmp_path):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where a directory should be")
    result = run(
        state,
        *STREAM,
        OPSCONSOLE_HOME=str(blocked / "home"),
        OPSCONSOLE_ACTIVE_DIR=str(blocked / "home" / "active"),
    )

    assert result.returncode == EXIT_UNSAFE_STATE_DIR
    assert len(result.stderr.decode().strip().splitlines()) == 1
    assert calls(fake_claude) == []


def test_concurrent_wrappers_never_share_a_uuid_or_a_sidecar(state, fake_claude):
    procs = [start(state, *STREAM, behaviour="sleep:1") for _ in range(10)]
    sidecars = [wait_for_sidecar(state, p) for p in procs]
    codes = [p.wait(timeout=60) for p in procs]

    assert codes == [0] * 10
    assert len({s.session_id for s in sidecars}) == 10
    assert len({s.wrapper_pid for s in sidecars}) == 10
    assert len({r.session_id for r in spool_records(state)}) == 10
    assert list(state.active.iterdir()) == []


def test_exit_code_is_claudes_own(state, fake_claude):
    result = run(state, "-p", "x", behaviour="exit:3")
    assert result.returncode == 3
    assert spool_records(state)[0].end_reason == "failed"


def test_bad_arguments(state, fake_claude):
    for args in (["--tag", "../etc", "--", "-p", "x"], ["--tag", "ok"], ["--", "-p", "x"]):
        result = subprocess.run(
            [*wrapper_command("x")[:3], *args], env=state.env, capture_output=True
        )
        assert result.returncode == 2, args
    assert calls(fake_claude) == []
