"""The monitor: samples published for every request, events, unwrapped sessions, leftovers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest
from django.contrib.auth import get_user_model

from jobs_app.models import AuditEntry
from monitor_app.live import get_snapshot
from monitor_app.models import Event, EventKind, HostSample
from monitor_app.monitor import Cadence, Monitor
from monitor_app.published import read_local_sample
from sessions_app.models import Session, Status
from tests.live_helpers import claude_lookalike, start_fake_run, start_monitor, wait_until
from wrapper.formats import ensure_private_dir, new_session_id, write_json_atomic

pytestmark = pytest.mark.django_db


@pytest.fixture
def logged_in(client):
    client.force_login(get_user_model().objects.create_user("ops"))
    return client


def registry_file_for(config_dir: Path, pid: int, session_id: str, cwd: str) -> Path:
    """What Claude Code writes for a live session: sessions/<pid>.json."""
    with open(f"/proc/{pid}/stat") as handle:
        raw = handle.read()
    ticks = raw[raw.rfind(")") + 2 :].split()[19]
    folder = config_dir / "sessions"
    ensure_private_dir(folder)
    path = folder / f"{pid}.json"
    write_json_atomic(
        path,
        {
            "pid": pid,
            "sessionId": session_id,
            "cwd": cwd,
            "startedAt": int(time.time() * 1000),
            "procStart": ticks,
            "version": "2.1.197",
            "peerProtocol": 1,
            "kind": "interactive",
            "entrypoint": "cli",
            "name": "terminal-session",
        },
        mode=0o644,
    )
    return path


def events(kind: str, session_id: str | None = None) -> list[Event]:
    rows = Event.objects.filter(kind=kind)
    if session_id:
        rows = rows.filter(session_id=session_id)
    return list(rows)


# ----------------------------------------------------------------------------- publishing


def test_requests_serve_the_published_sample_without_sampling(console_state, logged_in, runs):
    monitor = Monitor(paths=console_state.paths)
    first = start_fake_run(console_state, tag="published-first")
    runs.append(first)
    monitor.tick()
    later = start_fake_run(console_state, tag="started-after-the-sample")
    runs.append(later)

    response = logged_in.get("/api/claude-active")
    assert response.status_code == 200
    assert response["X-Sample-Source"] == "monitor"
    listed = {s["session_id"] for s in json.loads(response.content)["sessions"]}
    # The request read the monitor's document: a run started since is not in it.
    assert listed == {first.session_id}
    assert (
        logged_in.get("/api/claude-active", HTTP_IF_NONE_MATCH=response["ETag"]).status_code == 304
    )

    monitor.tick()
    again = logged_in.get("/api/claude-active", HTTP_IF_NONE_MATCH=response["ETag"])
    assert again.status_code == 200 and again["ETag"] != response["ETag"]
    assert {s["session_id"] for s in json.loads(again.content)["sessions"]} == {
        first.session_id,
        later.session_id,
    }
    assert HostSample.objects.get().seq == json.loads(again.content)["seq"]


def test_live_page_says_when_the_sample_was_taken_and_when_the_monitor_is_silent(
    console_state, logged_in
):
    page = logged_in.get("/live/rows/").content.decode()
    assert "The monitor is not running" in page  # nothing published: sampled on demand

    monitor = Monitor(paths=console_state.paths, interval=2.0)
    monitor.tick()
    page = logged_in.get("/live/rows/").content.decode()
    assert "Monitor sample at" in page and "monitor-banner" not in page

    monitor.tick(now=datetime.now(UTC) - timedelta(seconds=7))  # then it fell silent
    assert "The monitor is not running" in logged_in.get("/live/rows/").content.decode()
    # A stale sample is not served as current: the page sampled on demand instead.
    assert get_snapshot().source == "on-demand"
    assert get_snapshot().monitor_last_seen is not None


# ----------------------------------------------------------------------------- events


def test_a_run_is_started_then_vanished_on_the_event_stream_once(console_state, runs):
    monitor = Monitor(paths=console_state.paths)
    run = start_fake_run(console_state, tag="evented", with_agent=False)
    runs.append(run)
    monitor.tick()
    assert [e.status for e in events(EventKind.RUN_STARTED, run.session_id)] == [Status.LIVE]

    run.kill_all()
    monitor.tick()
    monitor.tick()
    monitor.tick()
    (ended,) = events(EventKind.RUN_VANISHED, run.session_id)
    assert ended.status == Status.KILLED and ended.script_tag == "evented"
    assert Event.objects.filter(session_id=run.session_id).count() == 2
    assert Session.objects.get(session_id=run.session_id).status == Status.KILLED


def test_completion_records_become_run_ended_events(console_state):
    monitor = Monitor(paths=console_state.paths)
    session_id = new_session_id()
    ensure_private_dir(console_state.paths.spool)
    write_json_atomic(
        console_state.paths.spool_path(session_id),
        {
            "session_id": session_id,
            "script_tag": "nightly",
            "platform": "cron",
            "host": "h",
            "attempt": 1,
            "started_at": "2026-11-24T01:00:00Z",
            "ended_at": "2026-11-24T01:02:00Z",
            "end_reason": "failed",
            "exit_code": 3,
            "error": "tool failed",
        },
    )
    monitor.tick()
    (ended,) = events(EventKind.RUN_ENDED, session_id)
    assert ended.status == Status.FAILED
    assert ended.detail["exit_code"] == 3 and "failed (exit 3)" in ended.message


def test_quota_stamp_set_and_cleared_are_one_event_each(console_state):
    monitor = Monitor(paths=console_state.paths)
    monitor.tick()
    stamp = {
        "until": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
        "set_at": datetime.now(UTC).isoformat(),
        "reason": "API Error: Request rejected (429)",
    }
    write_json_atomic(console_state.paths.quota_stamp, stamp)
    for _ in range(3):
        monitor.tick()
    console_state.paths.quota_stamp.unlink()
    monitor.tick()
    monitor.tick()
    assert len(events(EventKind.QUOTA_SET)) == 1
    assert len(events(EventKind.QUOTA_CLEARED)) == 1


# ----------------------------------------------------------------------------- unwrapped


def sleeper(folder: Path, seconds: int = 300) -> subprocess.Popen:
    """A terminal's Claude Code session, as far as the registry check can tell."""
    return subprocess.Popen([claude_lookalike(folder), str(seconds)], start_new_session=True)


def test_an_unwrapped_session_is_live_then_recorded_as_exited(console_state):
    monitor = Monitor(paths=console_state.paths)
    agent = sleeper(console_state.workdir.parent)
    session_id = new_session_id()
    try:
        registry = registry_file_for(
            console_state.config_dir, agent.pid, session_id, str(console_state.workdir)
        )
        snapshot = monitor.tick()
        (live,) = snapshot.sessions
        assert (live.session_id, live.state, live.wrapped) == (session_id, "unwrapped", False)
        assert live.processes[0].pid == agent.pid
        row = Session.objects.get(session_id=session_id)
        assert (row.status, row.wrapped, row.recorded_from) == ("unwrapped", False, "registry")

        registry.unlink()  # Claude Code removes it on a normal exit
        agent.kill()
        agent.wait()
        monitor.tick()
    finally:
        agent.kill()
    row = Session.objects.get(session_id=session_id)
    assert row.status == Status.EXITED and row.ended_at is not None
    assert events(EventKind.RUN_ENDED, session_id)[0].status == Status.EXITED


def test_a_stale_registry_file_means_killed_and_a_wrapped_run_is_never_shown_twice(
    console_state, runs
):
    monitor = Monitor(paths=console_state.paths)
    wrapped = start_fake_run(console_state, tag="wrapped-run")
    runs.append(wrapped)
    # Claude Code's registry names the wrapped run's agent too: the same session.
    registry_file_for(
        console_state.config_dir, wrapped.agent.pid, wrapped.session_id, str(console_state.workdir)
    )
    killed = sleeper(console_state.workdir.parent)
    killed_id = new_session_id()
    registry_file_for(console_state.config_dir, killed.pid, killed_id, "/srv/ide-project")
    snapshot = monitor.tick()
    assert sorted(s.state for s in snapshot.sessions) == ["live", "unwrapped"]

    os.kill(killed.pid, signal.SIGKILL)  # its registry file is left behind
    killed.wait()
    snapshot = monitor.tick()
    assert [s.session_id for s in snapshot.sessions] == [wrapped.session_id]
    row = Session.objects.get(session_id=killed_id)
    assert (row.status, row.end_reason, row.wrapped) == (Status.KILLED, "vanished", False)
    monitor.tick()
    assert len(events(EventKind.RUN_VANISHED, killed_id)) == 1


def test_registry_files_are_read_as_strictly_as_sidecars(console_state):
    folder = console_state.config_dir / "sessions"
    ensure_private_dir(folder)
    (folder / "4242.json").write_text('{"pid": 4243, "sessionId": "x"}')
    (folder / "4244.json").symlink_to("/etc/passwd")
    (folder / "4245.json").write_bytes(b"\xff" * 70_000)
    snapshot = Monitor(paths=console_state.paths).tick()
    assert snapshot.sessions == []
    reasons = " | ".join(s.reason for s in snapshot.skipped)
    assert "sessionId" in reasons or "pid" in reasons
    assert "symlink" in reasons and "too large" in reasons


# ----------------------------------------------------------------------------- leftovers


def test_leftovers_of_a_killed_run_are_listed_recorded_and_killed_by_the_rule(
    console_state, runs, settings, logged_in
):
    settings.OPSCONSOLE_LEFTOVER_GRACE_SECONDS = 0
    settings.OPSCONSOLE_STOP_GRACE_SECONDS = 0
    monitor = Monitor(paths=console_state.paths)
    run = start_fake_run(console_state, tag="leaves-a-sleep", with_agent=False)
    runs.append(run)
    tool = wait_until(lambda: psutil.Process(run.wrapper.pid).children())[0]
    monitor.tick()

    os.kill(run.wrapper.pid, signal.SIGKILL)  # the agent dies; its tool lives on
    run.wrapper.wait()
    monitor.cadences = False
    snapshot = monitor.tick()
    (left,) = snapshot.leftovers
    assert left.session_id == run.session_id
    assert [p.pid for p in left.processes] == [tool.pid] and "sleep" in left.processes[0].cmdline
    row = Session.objects.get(session_id=run.session_id)
    assert row.status == Status.KILLED and row.leftovers[0]["pid"] == tool.pid
    assert events(EventKind.LEFTOVERS_SEEN, run.session_id)
    monitor.publish_sample(snapshot)
    api = json.loads(logged_in.get(f"/api/sessions/{run.session_id}").content)
    assert [p["pid"] for p in api["leftovers"]] == [tool.pid]
    assert b"leftover-row" in logged_in.get("/live/rows/").content

    monitor.cadences = True
    monitor.tick()  # the leftover rule: TERM now
    wait_until(lambda: not tool.is_running() or tool.status() == psutil.STATUS_ZOMBIE)
    snapshot = monitor.tick()
    assert snapshot.leftovers == []
    assert events(EventKind.LEFTOVERS_KILLED, run.session_id)
    assert AuditEntry.objects.filter(action="kill_leftovers", actor="watchdog").exists()
    assert Session.objects.get(session_id=run.session_id).leftovers == []


def test_staff_kill_leftovers_from_the_session_page(console_state, runs, client, settings):
    settings.OPSCONSOLE_STOP_GRACE_SECONDS = 1
    monitor = Monitor(paths=console_state.paths, cadences=False)
    run = start_fake_run(console_state, tag="leaves-a-sleep", with_agent=False)
    runs.append(run)
    tool = wait_until(lambda: psutil.Process(run.wrapper.pid).children())[0]
    monitor.tick()
    os.kill(run.wrapper.pid, signal.SIGKILL)
    run.wrapper.wait()
    monitor.tick()

    viewer = get_user_model().objects.create_user("viewer")
    client.force_login(viewer)
    url = f"/sessions/{run.session_id}/kill-leftovers/"
    assert client.post(url).status_code == 403
    assert tool.is_running()
    client.force_login(get_user_model().objects.create_user("boss", is_staff=True))
    assert b"Kill leftover processes" in client.get(f"/sessions/{run.session_id}/").content
    assert client.post(url).status_code == 302
    wait_until(lambda: not tool.is_running() or tool.status() == psutil.STATUS_ZOMBIE)
    entry = AuditEntry.objects.get(action="kill_leftovers")
    assert entry.actor == "boss" and tool.pid in entry.detail["terminated"]


# ----------------------------------------------------------------------------- database down


LOCK_SCRIPT = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
"""


@pytest.mark.django_db(transaction=True)
def test_the_monitor_keeps_sampling_through_a_locked_database_and_loses_nothing(
    console_state, tmp_path, runs
):

    database = tmp_path / "monitor.sqlite3"
    env = dict(
        console_state.env,
        DATABASE_URL=f"sqlite:///{database}",
        OPSCONSOLE_CLAUDE_CONFIG_DIRS=str(console_state.config_dir),
        OPSCONSOLE_SAMPLE_SECONDS="0.5",
        DJANGO_SETTINGS_MODULE="opsconsole.settings",
    )
    monitor = start_monitor(env)
    doomed = start_fake_run(console_state, tag="dies-while-locked", with_agent=False)
    runs.append(doomed)
    lock = None
    try:

        def published_ids():
            local = read_local_sample()
            if local is None:
                return set()
            return {s["session_id"] for s in json.loads(local.api_document)["sessions"]}

        wait_until(lambda: doomed.session_id in published_ids())
        lock = subprocess.Popen(
            [sys.executable, "-c", LOCK_SCRIPT, str(database)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert lock.stdout.readline().strip() == "locked"

        doomed.kill_all()
        born = start_fake_run(console_state, tag="born-while-locked", with_agent=False)
        runs.append(born)
        # The live view goes on from the local copy while nothing can be written.
        wait_until(lambda: published_ids() == {born.session_id}, timeout=20)
        assert "locked" in json.loads(read_local_sample().api_document)["database_error"]
        assert doomed.sidecar_file.exists(), "kept until the run can be recorded"

        lock.stdin.write("\n")
        lock.stdin.flush()
        lock.wait(timeout=10)

        def recorded():
            import sqlite3

            with sqlite3.connect(database) as db:
                statuses = dict(db.execute("SELECT session_id, status FROM sessions_app_session"))
                kinds = [
                    (row[0], row[1])
                    for row in db.execute("SELECT kind, session_id FROM monitor_app_event")
                ]
            return statuses, kinds

        def caught_up():
            statuses, kinds = recorded()
            return (
                statuses.get(doomed.session_id.replace("-", "")) == "killed"
                and statuses.get(born.session_id.replace("-", "")) == "live"
                and (EventKind.RUN_STARTED, born.session_id.replace("-", "")) in kinds
            )

        wait_until(caught_up, timeout=30)
        _, kinds = recorded()
        assert kinds.count((EventKind.RUN_VANISHED, doomed.session_id.replace("-", ""))) == 1
        assert not doomed.sidecar_file.exists()
    finally:
        if lock is not None and lock.poll() is None:
            lock.kill()
        monitor.send_signal(signal.SIGTERM)
        monitor.wait(timeout=20)
    assert monitor.returncode == 0, monitor.stderr.read()[-2000:]


def test_the_local_sample_is_what_pages_read_when_the_database_cannot_be(console_state):
    Monitor(paths=console_state.paths).tick()
    local = read_local_sample()
    assert local is not None and local.host
    assert oct(Path(console_state.home / "monitor" / "sample.json").stat().st_mode)[-3:] == "600"


def test_the_event_stream_is_followed_by_id_without_gaps_or_repeats(console_state, client, runs):
    from opsconsole.models import ApiToken

    token = ApiToken.issue(get_user_model().objects.create_user("script"))[1]
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    assert client.get("/api/events").status_code == 401
    monitor = Monitor(paths=console_state.paths)
    monitor.started()
    run = start_fake_run(console_state, tag="followed", with_agent=False)
    runs.append(run)
    monitor.tick()
    first = json.loads(client.get("/api/events?limit=1", **auth).content)
    assert [e["kind"] for e in first["events"]] == [EventKind.MONITOR_STARTED]
    rest = json.loads(client.get(f"/api/events?after={first['next_after']}", **auth).content)
    assert [e["kind"] for e in rest["events"]] == [EventKind.RUN_STARTED]
    assert rest["events"][0]["session_id"] == run.session_id
    assert client.get("/api/events?after=x", **auth).status_code == 400
    assert client.get("/api/events?kind=nope", **auth).status_code == 400


def test_runs_are_not_recorded_killed_while_the_sidecar_directory_is_untrusted(console_state, runs):
    """Hardening: a chmod 777 by mistake must not write every live run into history
    as killed; the runs stay live on record until the directory is trusted again."""
    monitor = Monitor(paths=console_state.paths)
    run = start_fake_run(console_state, tag="still-alive")
    runs.append(run)
    monitor.tick()
    console_state.active.chmod(0o777)
    later = datetime.now(UTC) + timedelta(minutes=5)
    snapshot = monitor.tick(now=later)
    assert snapshot.active_dir_error and "world-writable" in snapshot.active_dir_error
    assert snapshot.leftovers == []  # its tree is alive: nothing "left over" either
    assert Session.objects.get(session_id=run.session_id).status == Status.LIVE
    console_state.active.chmod(0o700)
    assert monitor.tick().get(run.session_id) is not None


def test_a_live_row_nobody_accounts_for_is_unknown_not_killed(console_state):
    """No sidecar, no registry entry, no completion record: the console lost sight of
    the run; it says so instead of guessing "killed"."""
    session_id = new_session_id()
    Session.objects.create(
        session_id=session_id,
        script_tag="lost",
        status=Status.LIVE,
        host=Monitor(paths=console_state.paths).host,
        started_at=datetime.now(UTC) - timedelta(minutes=10),
    )
    Monitor(paths=console_state.paths).tick()
    row = Session.objects.get(session_id=session_id)
    assert (row.status, row.end_reason) == (Status.UNKNOWN, "lost")
    assert events(EventKind.RUN_ENDED, session_id)[0].status == Status.UNKNOWN


def test_the_monitor_samples_on_when_the_database_accepts_but_never_answers(console_state, runs):
    """A PostgreSQL address that accepts TCP and then says nothing: connect timeouts keep
    every sample short, and the live view goes on from the local file."""
    import socket
    import threading

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    held = []
    stop = threading.Event()

    def accept_and_say_nothing():
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(silent.accept()[0])
            except OSError:
                continue

    threading.Thread(target=accept_and_say_nothing, daemon=True).start()
    port = silent.getsockname()[1]
    env = dict(
        console_state.env,
        DATABASE_URL=f"postgres://nobody@127.0.0.1:{port}/silent",
        OPSCONSOLE_CLAUDE_CONFIG_DIRS=str(console_state.config_dir),
        OPSCONSOLE_SAMPLE_SECONDS="0.5",
        DJANGO_SETTINGS_MODULE="opsconsole.settings",
    )
    run = start_fake_run(console_state, tag="seen-without-a-database", with_agent=False)
    runs.append(run)
    monitor = start_monitor(env, migrate=False, stderr=subprocess.DEVNULL)
    try:
        first = wait_until(read_local_sample, timeout=30)
        later = wait_until(
            lambda: (s := read_local_sample()) and s.seq >= first.seq + 2 and s, timeout=30
        )
        document = json.loads(later.api_document)
        assert [s["session_id"] for s in document["sessions"]] == [run.session_id]
        assert "timeout" in document["database_error"].lower()
        # Each sample waited at most the connect timeout, not forever.
        assert (later.taken_at - first.taken_at).total_seconds() < 15
    finally:
        monitor.send_signal(signal.SIGTERM)
        monitor.wait(timeout=30)
        stop.set()
        silent.close()
        for conn in held:
            conn.close()


def test_what_a_persons_own_session_left_running_is_not_killed(console_state, settings):
    """A terminal session that exited normally and left a dev server running: listed as
    leftovers, but the rule does not kill what a person started on purpose."""
    settings.OPSCONSOLE_LEFTOVER_GRACE_SECONDS = 0
    monitor = Monitor(paths=console_state.paths)
    agent = subprocess.Popen(
        [claude_lookalike(console_state.workdir.parent, "bash"), "-c", "sleep 300 & wait"],
        start_new_session=True,
    )
    session_id = new_session_id()
    try:
        server = wait_until(lambda: psutil.Process(agent.pid).children())[0]
        registry = registry_file_for(
            console_state.config_dir, agent.pid, session_id, str(console_state.workdir)
        )
        monitor.tick()
        registry.unlink()  # a normal exit
        agent.kill()
        agent.wait()
        assert monitor.tick().leftover_run(session_id) is not None
        monitor.tick()
        monitor.tick()
        assert server.is_running() and server.status() != psutil.STATUS_ZOMBIE
        assert not AuditEntry.objects.filter(action="kill_leftovers").exists()
    finally:
        agent.kill()
        psutil.Process(server.pid).kill() if psutil.pid_exists(server.pid) else None


def test_a_live_run_has_its_running_cost_from_its_transcript(console_state, runs, logged_in):
    """Priced as it goes (the cost cap and the live list read it), from the usage in the
    transcript: only what was appended is read on each sample."""

    def reply(number: int) -> bytes:
        return (
            json.dumps(
                {
                    "type": "assistant",
                    "uuid": f"u{number}",
                    "requestId": f"req_{number}",
                    "message": {
                        "id": f"msg_{number}",
                        "model": "claude-haiku-4-5-20251001",
                        "role": "assistant",
                        "content": [{"type": "text", "text": "working"}],
                        "usage": {"input_tokens": 100_000, "output_tokens": 10_000},
                    },
                }
            ).encode()
            + b"\n"
        )

    run = start_fake_run(console_state, tag="priced-live", transcript_lines=[reply(1)])
    runs.append(run)
    monitor = Monitor(paths=console_state.paths)
    first = monitor.tick().get(run.session_id).running_cost_usd
    assert first is not None and first > 0
    with run.transcript.open("ab") as handle:
        handle.write(reply(2))
    second = monitor.tick().get(run.session_id).running_cost_usd
    assert second == pytest.approx(2 * first)
    listed = json.loads(logged_in.get("/api/claude-active").content)["sessions"]
    assert listed[0]["running_cost_usd"] == pytest.approx(second)


def test_a_cadence_is_decided_on_the_clock_it_is_handed():
    cadence = Cadence()
    t0 = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)
    assert cadence.due(t0, 60)  # the first call
    assert not cadence.due(t0 + timedelta(seconds=59), 60)
    assert cadence.due(t0 + timedelta(seconds=60), 60)
    # A clock set back by more than the interval does not stall the work.
    assert cadence.due(t0 - timedelta(hours=1), 60)
    assert not cadence.due(t0 - timedelta(hours=1) + timedelta(seconds=1), 60)
    cadence.reset()
    assert cadence.due(t0 - timedelta(hours=1) + timedelta(seconds=2), 60)


def test_a_quota_stamp_expires_on_the_clock_the_monitor_is_handed(console_state):
    """The stamp's file stays; at its `until` the monitor says the quota cleared."""
    monitor = Monitor(paths=console_state.paths)
    t0 = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)
    write_json_atomic(
        console_state.paths.quota_stamp,
        {
            "until": (t0 + timedelta(hours=1)).isoformat(),
            "set_at": t0.isoformat(),
            "reason": "API Error: Request rejected (429)",
        },
    )
    assert monitor.tick(t0).quota_until is not None
    assert monitor.tick(t0 + timedelta(minutes=59)).quota_until is not None
    assert monitor.tick(t0 + timedelta(minutes=61)).quota_until is None
    assert len(events(EventKind.QUOTA_SET)) == 1
    assert len(events(EventKind.QUOTA_CLEARED)) == 1
    assert console_state.paths.quota_stamp.exists()
