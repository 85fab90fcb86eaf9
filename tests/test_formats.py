"""The file formats' limits (wrapper/formats.py): every field of every file is checked
against the columns it becomes, and Claude Code's registry is read as strictly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import PYTHON, wrapper_command
from wrapper.formats import (
    INT_RANGES,
    MAX_REGISTRY_BYTES,
    NAME_LIMITS,
    FormatError,
    QuotaStamp,
    Sidecar,
    SpoolRecord,
    ensure_private_dir,
    field_problem,
    is_session_id,
    is_valid_tag,
    new_session_id,
    process_start_time,
    read_registry_entry,
    read_sidecar,
    read_spool_record,
    registry_dir,
    same_start_time,
    scan_registry,
    ticks_to_epoch,
    write_json_atomic,
)

SESSION = "0b6f3c1e-8a55-4d2b-9c3e-1f2a3b4c5d6e"


def spool_dict(**changes) -> dict:
    record = {
        "session_id": SESSION,
        "script_tag": "nightly",
        "platform": "cron",
        "host": "box",
        "attempt": 1,
        "started_at": "2026-01-01T00:00:00.000Z",
        "ended_at": "2026-01-01T00:01:00.000Z",
        "end_reason": "succeeded",
        "exit_code": 0,
        "cost_usd": 0.25,
        "usage": {"input_tokens": 10, "output_tokens": 20},
    }
    record.update(changes)
    return record


def sidecar_dict(**changes) -> dict:
    sidecar = {
        "session_id": SESSION,
        "script_tag": "nightly",
        "wrapper_pid": 4242,
        "wrapper_started": 1_700_000_000.5,
        "started_at": "2026-01-01T00:00:00.000Z",
        "attempt": 1,
        "platform": "cron",
        "host": "box",
        "cwd": "/srv",
        "claude_config_dir": "/home/me/.claude",
        "transcript_path": "/home/me/.claude/projects/-srv/x.jsonl",
    }
    sidecar.update(changes)
    return sidecar


# --------------------------------------------------------------------------- session ids


def test_session_id_with_a_trailing_newline_is_not_a_session_id():
    assert is_session_id(SESSION)
    assert not is_session_id(SESSION + "\n")
    assert not is_session_id(SESSION + "\r\n")
    assert not is_session_id("\n" + SESSION)
    assert not is_valid_tag("nightly\n")
    with pytest.raises(FormatError, match="session_id"):
        SpoolRecord.from_dict(spool_dict(session_id=SESSION + "\n"))
    with pytest.raises(FormatError, match="retry_of"):
        Sidecar.from_dict(sidecar_dict(retry_of=SESSION + "\n"))


def test_wrapper_refuses_a_claude_session_id_with_a_trailing_newline(state, fake_claude):
    env = dict(state.env, CLAUDE_SESSION_ID=SESSION + "\n", FAKE_CLAUDE_BEHAVIOUR="succeed")
    result = subprocess.run(
        wrapper_command("nightly", "-p", "hi"),
        env=env,
        cwd=state.workdir,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert b"is not a lowercase UUID" in result.stderr
    assert not (fake_claude / "calls").exists()  # claude never started
    assert not list(state.paths.spool.glob("*.json"))


# --------------------------------------------------------------------------- field limits


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("exit_code", 2**80),
        ("attempt", 2**70),
        ("attempt", 0),
        ("attempt", 32768),
        ("cost_usd", 1e300),
        ("cost_usd", -1.0),
        ("cost_usd", 10**6),
        ("duration_ms", 2**63),
        ("num_turns", 2**31),
        ("api_error_status", 2**40),
        ("wrapper_pid", 2**40),
        ("platform", "p" * 101),
        ("host", "h" * 256),
        ("model", "m" * 101),
        ("stop_reason", "s" * 65),
        ("platform", "cron\x00"),
        ("error", "boom\x00"),
        ("cwd", "/srv\x00/x"),
        ("model", "\ud800"),
        ("script_tag", "t" * 101),
        ("script_tag", "nightly\n"),
        ("started_at", "0001-01-01T00:00:00+05:00"),
        ("ended_at", "9999-12-31T23:59:59-05:00"),
        ("usage", {"input_tokens": 2**64}),
        ("usage", {"input_tokens": -1}),
    ],
)
def test_spool_record_with_out_of_range_field_is_a_format_error(field, value):
    """Before: 2**80, NaN, 1e300 or a 101-character platform passed the reader and
    failed in the database (OverflowError, DataError...), taking the pages down."""
    with pytest.raises(FormatError):
        SpoolRecord.from_dict(spool_dict(**{field: value}))


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_spool_file_with_a_non_finite_cost_is_a_format_error(tmp_path, constant):
    ensure_private_dir(tmp_path / "spool")
    path = tmp_path / "spool" / f"{SESSION}.json"
    text = json.dumps(spool_dict(cost_usd=0.5)).replace("0.5", constant)
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(FormatError):
        read_spool_record(path)


def test_spool_file_with_an_integer_past_the_digit_limit_is_a_format_error(tmp_path):
    """json.loads raises a plain ValueError (not JSONDecodeError) for 5,000 digits."""
    path = tmp_path / f"{SESSION}.json"
    text = json.dumps(spool_dict()).replace('"exit_code": 0', '"exit_code": ' + "9" * 5000)
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(FormatError, match="not valid JSON"):
        read_spool_record(path)


def test_spool_file_nested_too_deep_is_a_format_error(tmp_path):
    path = tmp_path / f"{SESSION}.json"
    path.write_text('{"a": ' + "[" * 30000 + "]" * 30000 + "}")
    path.chmod(0o600)
    with pytest.raises(FormatError):
        read_spool_record(path)


@pytest.mark.parametrize(
    ("field", "value"),
    [("wrapper_started", float("nan")), ("attempt", 2**70), ("claude_pid", 1), ("host", "x" * 300)],
)
def test_sidecar_with_out_of_range_field_is_a_format_error(field, value):
    with pytest.raises(FormatError):
        Sidecar.from_dict(sidecar_dict(**{field: value}))


def test_quota_stamp_fields_are_checked():
    good = {"until": "2026-01-01T00:00:00Z", "set_at": "2026-01-01T00:00:00Z", "reason": "429"}
    assert QuotaStamp.from_dict(good).reason == "429"
    for bad in ({"reason": "x\x00"}, {"until": "0001-01-01T00:00:00+01:00"}, {"session_id": "x"}):
        with pytest.raises(FormatError):
            QuotaStamp.from_dict(dict(good, **bad))


def test_valid_records_still_pass():
    record = SpoolRecord.from_dict(spool_dict(cost_usd=999_999.5, attempt=32767))
    assert record.cost_usd == 999_999.5
    assert Sidecar.from_dict(sidecar_dict()).wrapper_pid == 4242


@pytest.mark.django_db
def test_limits_match_the_session_model():
    """One definition: formats.py's limits are the Session columns' limits."""
    from sessions_app.models import Session

    for name in ("script_tag", "platform", "host", "model", "stop_reason", "end_reason"):
        assert NAME_LIMITS[name] == Session._meta.get_field(name).max_length, name
    assert INT_RANGES["attempt"] == (1, 32767)  # PositiveSmallIntegerField, 0 is no attempt
    cost = Session._meta.get_field("cost_usd")
    assert 10 ** (cost.max_digits - cost.decimal_places) == 10**6


def test_wrapper_refuses_a_platform_too_long_for_the_database(state, fake_claude):
    """Before: a 101-character --platform was written as is, and on PostgreSQL the
    record's DataError made every page say 'Database unavailable'."""
    env = dict(state.env, FAKE_CLAUDE_BEHAVIOUR="succeed")
    result = subprocess.run(
        wrapper_command("nightly", "-p", "hi", extra=("--platform", "p" * 101)),
        env=env,
        cwd=state.workdir,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert b"--platform" in result.stderr and b"at most 100" in result.stderr
    assert not (fake_claude / "calls").exists()


def test_wrapper_refuses_a_host_name_too_long_for_the_database(state, fake_claude):
    env = dict(state.env, FAKE_CLAUDE_BEHAVIOUR="succeed", OPSCONSOLE_HOST_NAME="h" * 300)
    result = subprocess.run(
        wrapper_command("nightly", "-p", "hi"),
        env=env,
        cwd=state.workdir,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert b"OPSCONSOLE_HOST_NAME" in result.stderr
    assert not (fake_claude / "calls").exists()


def test_field_problem_says_why():
    assert field_problem("platform", "p" * 101) == "platform is 101 characters long (at most 100)"
    assert field_problem("platform", "cron") is None
    assert "out of range" in field_problem("exit_code", 2**80)


# --------------------------------------------------------------------------- registry


def registry_file(config_dir: Path, name: int, fields: dict) -> Path:
    folder = registry_dir(config_dir)
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(fields))
    path.chmod(0o644)  # as Claude Code writes it
    return path


MINIMAL_ENTRY = {"pid": 77, "sessionId": SESSION, "cwd": "/srv", "startedAt": 1, "procStart": "1"}


def proc_start_ticks(pid: int) -> str:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rfind(")") + 2 :].split()[19]


def test_registry_entry_of_a_running_process(tmp_path):
    sleeper = subprocess.Popen([PYTHON, "-c", "import time; time.sleep(60)"])
    try:
        session_id = new_session_id()
        path = registry_file(
            tmp_path,
            sleeper.pid,
            {
                "pid": sleeper.pid,
                "sessionId": session_id,
                "cwd": "/srv/reports",
                "startedAt": int(time.time() * 1000),
                "procStart": proc_start_ticks(sleeper.pid),
                "version": "2.1.197",
                "peerProtocol": 1,
                "kind": "interactive",
                "entrypoint": "sdk-cli",
                "name": "work-46",
            },
        )
        entry = read_registry_entry(path)
        assert entry.pid == sleeper.pid and entry.session_id == session_id
        assert entry.cwd == "/srv/reports" and entry.entrypoint == "sdk-cli"
        assert abs(entry.started_at - time.time()) < 60
        assert same_start_time(entry.process_started, process_start_time(sleeper.pid))
        assert entry.process_started == ticks_to_epoch(entry.proc_start_ticks)
        assert entry.is_running()
        entries, skipped = scan_registry(tmp_path)
        assert entries == [entry] and skipped == []
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not entry.is_running()  # left behind after SIGKILL: not believed


@pytest.mark.parametrize(
    "changes",
    [
        {"pid": 1},
        {"pid": "77"},
        {"pid": True},
        {"sessionId": SESSION + "\n"},
        {"sessionId": SESSION.upper()},
        {"cwd": "relative/path"},
        {"cwd": "/srv\x00"},
        {"startedAt": "1700000000000"},
        {"startedAt": 2**80},
        {"startedAt": -5},
        {"procStart": 56336},
        {"procStart": "56x"},
        {"procStart": "9" * 30},
        {"version": "v" * 65},
        {"name": ["x"]},
        {"kind": "a\x00"},
    ],
)
def test_registry_entry_with_a_bad_field_is_rejected(tmp_path, changes):
    fields = {
        "pid": 77,
        "sessionId": SESSION,
        "cwd": "/srv",
        "startedAt": 1_700_000_000_000,
        "procStart": "56336",
    }
    fields.update(changes)
    path = registry_file(tmp_path, 77, fields)
    with pytest.raises(FormatError):
        read_registry_entry(path)
    entries, skipped = scan_registry(tmp_path)
    assert entries == [] and skipped[0][0] == "77.json"


def test_registry_file_name_must_be_its_pid(tmp_path):
    path = registry_file(tmp_path, 78, dict(MINIMAL_ENTRY, pid=77))
    with pytest.raises(FormatError, match="file name"):
        read_registry_entry(path)


def test_registry_symlink_big_file_and_missing_dir(tmp_path):
    assert scan_registry(tmp_path / "nowhere") == ([], [])
    good = registry_file(tmp_path, 77, MINIMAL_ENTRY)
    link = registry_dir(tmp_path) / "78.json"
    link.symlink_to(good)
    with pytest.raises(FormatError, match="symlink"):
        read_registry_entry(link)
    big = registry_dir(tmp_path) / "79.json"
    big.write_text(json.dumps({"pid": 79, "pad": "x" * MAX_REGISTRY_BYTES}))
    with pytest.raises(FormatError, match="too large"):
        read_registry_entry(big)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a file another user owns")
def test_registry_file_owned_by_another_user_is_rejected(tmp_path):
    path = registry_file(tmp_path, 77, MINIMAL_ENTRY)
    os.chown(path, 65534, 65534)
    with pytest.raises(FormatError, match="owned by uid 65534"):
        read_registry_entry(path)


def test_formats_module_still_imports_without_django():
    code = "import sys; sys.modules['django'] = None; import wrapper.formats, wrapper.run"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


def test_sidecar_written_by_the_wrapper_helpers_reads_back(tmp_path):
    ensure_private_dir(tmp_path / "active")
    path = tmp_path / "active" / "4242.json"
    write_json_atomic(path, sidecar_dict())
    assert read_sidecar(path).session_id == SESSION
