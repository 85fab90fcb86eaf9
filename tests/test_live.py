"""The live snapshot against real processes and real sidecars."""

from __future__ import annotations

import json
import os
import subprocess
import time

import psutil
import pytest

from monitor_app.live import get_snapshot, take_snapshot
from sessions_app.models import Session, Status
from tests.live_helpers import SLEEPER, kill, start_fake_run, wait_until, write_sidecar_raw

pytestmark = pytest.mark.django_db(transaction=True)


def tool_call_line(session_id: str, command: str) -> bytes:
    record = {
        "type": "assistant",
        "sessionId": session_id,
        "uuid": "a1",
        "parentUuid": None,
        "timestamp": "2026-11-24T02:00:00.000Z",
        "message": {
            "id": "msg_1",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": command}}
            ],
            "usage": {"input_tokens": 10, "output_tokens": 5},
        },
        "requestId": "req_1",
    }
    return json.dumps(record).encode() + b"\n"


def test_live_session_is_listed_with_its_process_tree(console_state, runs):
    run = start_fake_run(console_state)
    runs.append(run)
    # The sleepers' own `sleep` children, there before the sample (no fixed wait).
    wait_until(lambda: psutil.Process(run.wrapper.pid).children(), timeout=30)

    snapshot = take_snapshot(console_state.paths)

    live = snapshot.get(run.session_id)
    assert live is not None and live.state == Status.LIVE
    pids = {p.pid for p in live.processes}
    assert run.wrapper.pid in pids
    assert any("sleep 300" in p.cmdline for p in live.processes)
    assert all(p.rss > 0 for p in live.processes)
    row = Session.objects.get(session_id=run.session_id)
    assert row.status == Status.LIVE and row.recorded_from == "sidecar"


def test_last_tool_call_comes_from_the_transcript(console_state, runs):
    run = start_fake_run(console_state)
    runs.append(run)
    run.transcript.write_bytes(tool_call_line(run.session_id, "find / -name '*.log'"))

    live = take_snapshot(console_state.paths).get(run.session_id)

    assert live.last_tool_call is not None
    assert "find / -name" in live.last_tool_call


def test_scheduler_pid_finds_its_session_through_ancestry(console_state, runs):
    # A shell standing in for cron/launchd starts the "wrapper" as its child.
    scheduler = subprocess.Popen(
        ["bash", "-c", f"{SLEEPER[0]} -c 'import time; time.sleep(300)' & wait"],
        start_new_session=True,
    )
    try:
        deadline = time.time() + 5
        child_pid = None
        while time.time() < deadline and child_pid is None:
            out = subprocess.run(
                ["pgrep", "-P", str(scheduler.pid)], capture_output=True, text=True
            ).stdout.split()
            child_pid = int(out[0]) if out else None
            time.sleep(0.05)
        assert child_pid, "the stand-in scheduler did not start its job"
        run = start_fake_run(console_state, with_agent=False)
        runs.append(run)
        # Point the sidecar at the scheduler's child: that is our wrapper now.
        data = run.sidecar.to_dict()
        from wrapper.formats import process_start_time, write_json_atomic

        data["wrapper_pid"] = child_pid
        data["wrapper_started"] = process_start_time(child_pid)
        run.sidecar_file.unlink()
        write_json_atomic(console_state.paths.sidecar_path(child_pid), data)

        snapshot = take_snapshot(console_state.paths)

        assert [s.session_id for s in snapshot.sessions_for_pid(scheduler.pid)] == [run.session_id]
        assert run.session_id in snapshot.sessions_by_ancestor[scheduler.pid]
    finally:
        kill(scheduler)


def test_wrapper_gone_agent_running_is_orphaned(console_state, runs):
    run = start_fake_run(console_state)
    runs.append(run)
    kill(run.wrapper)

    live = take_snapshot(console_state.paths).get(run.session_id)

    assert live is not None and live.state == Status.ORPHANED
    assert run.agent.pid in {p.pid for p in live.processes}
    assert Session.objects.get(session_id=run.session_id).status == Status.ORPHANED
    assert run.sidecar_file.exists()


def test_vanished_run_is_recorded_as_killed_with_its_transcript(console_state, runs):
    run = start_fake_run(console_state, transcript_lines=[b'{"type":"user","x":1}\n'])
    runs.append(run)
    take_snapshot(console_state.paths)  # seen live first
    run.kill_all()

    snapshot = take_snapshot(console_state.paths)

    assert snapshot.get(run.session_id) is None
    assert not run.sidecar_file.exists()
    row = Session.objects.get(session_id=run.session_id)
    assert row.status == Status.KILLED
    assert row.end_reason == "vanished"
    assert row.ended_at is not None
    archived = console_state.paths.archive.glob(f"*/*_{run.session_id}.jsonl")
    assert [p.read_bytes() for p in archived] == [b'{"type":"user","x":1}\n']


def test_completion_record_wins_over_vanished(console_state, runs):
    """A wrapper that finished normally but left its sidecar is not 'killed'."""
    from wrapper.formats import SpoolRecord, ensure_private_dir, utc_now_iso, write_json_atomic

    run = start_fake_run(console_state)
    runs.append(run)
    run.kill_all()
    ensure_private_dir(console_state.paths.spool)
    record = SpoolRecord(
        session_id=run.session_id,
        script_tag=run.sidecar.script_tag,
        platform="linux-test",
        host=run.sidecar.host,
        attempt=1,
        started_at=run.sidecar.started_at,
        ended_at=utc_now_iso(),
        end_reason="succeeded",
        exit_code=0,
        cost_usd=0.0123,
    )
    write_json_atomic(console_state.paths.spool_path(run.session_id), record.to_dict())

    take_snapshot(console_state.paths)

    row = Session.objects.get(session_id=run.session_id)
    assert row.status == Status.SUCCEEDED
    assert str(row.cost_usd) == "0.012300"
    assert not run.sidecar_file.exists()


def test_reused_pid_is_not_shown(console_state, runs):
    run = start_fake_run(console_state, with_agent=False)
    runs.append(run)
    # Same PID, but the sidecar remembers a different start: the PID was reused.
    data = run.sidecar.to_dict()
    data["wrapper_started"] = data["wrapper_started"] - 3600
    from wrapper.formats import write_json_atomic

    write_json_atomic(run.sidecar_file, data)

    snapshot = take_snapshot(console_state.paths)

    assert snapshot.get(run.session_id) is None
    assert Session.objects.get(session_id=run.session_id).status == Status.KILLED
    assert run.wrapper.poll() is None, "the unrelated process must be left alone"


BAD_SIDECARS = {
    "garbage": b"\x00\xff not json",
    "partial": b'{"session_id": "6f1c',
    "array": b"[1, 2, 3]",
    "wrong-types": json.dumps(
        {
            "session_id": "6f1c6f1c-6f1c-4f1c-8f1c-6f1c6f1c6f1c",
            "script_tag": "x",
            "wrapper_pid": "123",
            "wrapper_started": 1.0,
            "started_at": "2026-11-24T00:00:00Z",
            "attempt": 1,
            "platform": "p",
            "host": "h",
            "cwd": "/",
            "claude_config_dir": "/",
            "transcript_path": "/x",
        }
    ).encode(),
    "huge": b'{"pad": "' + b"x" * 200_000 + b'"}',
}


@pytest.mark.parametrize("case", sorted(BAD_SIDECARS))
def test_bad_sidecar_is_skipped_and_counted(console_state, runs, case):
    good = start_fake_run(console_state)
    runs.append(good)
    write_sidecar_raw(console_state, "424242.json", BAD_SIDECARS[case])

    snapshot = take_snapshot(console_state.paths)

    assert [s.session_id for s in snapshot.sessions] == [good.session_id]
    assert [s.name for s in snapshot.skipped] == ["424242.json"]
    assert (console_state.active / "424242.json").exists(), "evidence is kept, not deleted"


def test_pid_1_sidecar_is_skipped(console_state):
    data = json.loads(BAD_SIDECARS["wrong-types"])
    data["wrapper_pid"] = 1
    write_sidecar_raw(console_state, "1.json", json.dumps(data).encode())

    snapshot = take_snapshot(console_state.paths)

    assert snapshot.sessions == []
    assert "cannot be a wrapper" in snapshot.skipped[0].reason


def test_symlinked_sidecar_is_skipped(console_state, runs, tmp_path):
    run = start_fake_run(console_state)
    runs.append(run)
    target = tmp_path / "elsewhere.json"
    target.write_bytes(run.sidecar_file.read_bytes())
    run.sidecar_file.unlink()
    run.sidecar_file.symlink_to(target)

    snapshot = take_snapshot(console_state.paths)

    assert snapshot.sessions == []
    assert "symlink" in snapshot.skipped[0].reason


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_sidecar_owned_by_another_user_is_skipped(console_state, runs):
    run = start_fake_run(console_state)
    runs.append(run)
    os.chown(run.sidecar_file, 65534, 65534)

    snapshot = take_snapshot(console_state.paths)

    assert snapshot.sessions == []
    assert "owned by uid 65534" in snapshot.skipped[0].reason


def test_world_writable_active_dir_is_not_trusted(console_state, runs):
    run = start_fake_run(console_state)
    runs.append(run)
    console_state.active.chmod(0o777)

    snapshot = take_snapshot(console_state.paths)

    assert snapshot.sessions == []
    assert "world-writable" in snapshot.active_dir_error


def test_snapshot_is_cached_for_the_window(console_state, settings, runs):
    settings.OPSCONSOLE_SNAPSHOT_SECONDS = 30
    first = get_snapshot()
    run = start_fake_run(console_state)
    runs.append(run)

    assert get_snapshot().taken_at == first.taken_at
    assert get_snapshot(fresh=True).get(run.session_id) is not None


def test_spool_ingest_is_idempotent_and_keeps_malformed_records(console_state):
    from sessions_app.ingest import ingest_spool
    from wrapper.formats import SpoolRecord, ensure_private_dir, new_session_id, write_json_atomic

    ensure_private_dir(console_state.paths.spool)
    session_id = new_session_id()
    record = SpoolRecord(
        session_id=session_id,
        script_tag="digest",
        platform="p",
        host="h",
        attempt=2,
        retry_of=new_session_id(),
        started_at="2026-11-24T01:00:00.000Z",
        ended_at="2026-11-24T01:02:00.000Z",
        end_reason="refused",
        exit_code=1,
        stop_reason="refusal",
        usage={"input_tokens": 100, "output_tokens": 7},
    )
    write_json_atomic(console_state.paths.spool_path(session_id), record.to_dict())
    (console_state.paths.spool / "broken.json").write_text("{nope")

    first = ingest_spool(console_state.paths)
    write_json_atomic(console_state.paths.spool_path(session_id), record.to_dict())
    second = ingest_spool(console_state.paths)

    assert (first.recorded, second.recorded) == (1, 1)
    assert [name for name, _ in first.rejected] == ["broken.json"]
    assert (console_state.paths.spool / "rejected" / "broken.json").exists()
    assert Session.objects.count() == 1
    row = Session.objects.get(session_id=session_id)
    assert (row.status, row.attempt, row.input_tokens, row.cost_usd) == (
        Status.REFUSED,
        2,
        100,
        None,
    )
    assert row.duration_ms == 120_000


def test_a_live_row_is_reused_only_while_what_it_shows_is_unchanged():
    from datetime import UTC, datetime, timedelta

    from monitor_app.runs import Run
    from opsconsole.templatetags.live_rows import live_row
    from wrapper.formats import new_session_id

    run = Run(
        session_id=new_session_id(),
        script_tag="row-tag",
        platform="linux",
        host="host-r",
        attempt=1,
        retry_of=None,
        status="live",
        started_at=datetime.now(UTC) - timedelta(seconds=90),
        last_tool_call="Bash: make test",
        live=True,
        listed_figures=(1.5, 2_000_000),
    )
    first = live_row(run)
    assert "Bash: make test" in first and "1.5%" in first and "2.0 MB" in first
    assert ">1m 30s<" in first or ">1m 31s<" in first
    assert live_row(run) == first or ">1m 31s<" in live_row(run)
    # What a row shows changes: the row says so at once (no stale copy), escaped.
    run.last_tool_call = "Read: <live-age/> <live-cpu/> & more"
    run.listed_figures = (7.0, 2_000_000)
    second = live_row(run)
    assert "Read: &lt;live-age/&gt; &lt;live-cpu/&gt; &amp; more" in second
    assert ">7.0%<" in second and ">2.0 MB<" in second
    assert "Bash: make test" not in second and "1.5%" not in second
    # Figures move with every sample; each render shows the sample's own.
    run.listed_figures = (12.5, 3_500_000_000)
    third = live_row(run)
    assert ">12.5%<" in third and ">3.5 GB<" in third and "7.0%" not in third
    run.started_at -= timedelta(hours=2)
    assert ">2h 01m<" in live_row(run)
