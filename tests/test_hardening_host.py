"""Issue 21, the host engine: signals only to Claude Code, the console's own host name
never reports, and thousands of dead runs drained a batch per sample.

Real processes, real registry files and sidecars, the real database; the sample loop
is driven with a fixed clock (`tick(now)`)."""

from __future__ import annotations

import logging
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from fleet.report import MAX_COMPLETIONS_PER_REPORT, Reporter
from fleet.reporting import reporting_monitor
from jobs_app.models import AuditEntry
from monitor_app import monitor as monitor_module
from monitor_app.admin import HostTokenForm
from monitor_app.models import Event, EventKind, HostToken, hash_host_token
from monitor_app.monitor import RECORDS_PER_SAMPLE, Monitor
from monitor_app.sampler import DEAD_SIDECAR_READS_PER_SAMPLE, sidecar_for_unwrapped
from monitor_app.snapshot import LiveSession
from monitor_app.stopping import stop_session
from sessions_app.models import Session, Status
from sessions_app.trust import claude_code_problem, is_claude_code
from tests.live_helpers import start_fake_run, wait_until, write_dead_sidecars
from tests.test_fleet import client_transport
from tests.test_monitor import registry_file_for
from tests.test_real_cli import STREAM
from wrapper.formats import new_session_id, read_registry_entry

pytestmark = pytest.mark.django_db(transaction=True)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.fixture
def bash_tree():
    """A root-owned (the tests' user) `bash` with two `sleep`s: not Claude Code."""
    shell = subprocess.Popen(["bash", "-c", "sleep 60 & sleep 60"], start_new_session=True)
    parent = psutil.Process(shell.pid)
    children = wait_until(lambda: len(parent.children()) == 2 and parent.children())
    yield [parent, *children]
    for proc in [parent, *children]:
        if alive(proc):
            proc.kill()
    shell.wait(timeout=10)


# ----------------------------------------------------------------------------- finding 5


def test_finding5_registry_file_naming_a_non_claude_process_is_never_signalled(
    console_state, settings, bash_tree, caplog
):
    """A same-user `sessions/<pid>.json` naming a bash tree (its procStart right, its run
    long past any limit) is not a session: the watchdog, the leftover rule and a stop
    leave the tree alone, and the refusal is logged once, however many rounds."""
    settings.OPSCONSOLE_DEFAULT_MAX_RUNTIME_MINUTES = 1
    settings.OPSCONSOLE_STOP_GRACE_SECONDS = 0
    settings.OPSCONSOLE_LEFTOVER_GRACE_SECONDS = 0
    shell = bash_tree[0]
    session_id = new_session_id()
    registry = registry_file_for(console_state.config_dir, shell.pid, session_id, "/srv/x")
    monitor = Monitor(paths=console_state.paths, publish=False)
    caplog.set_level(logging.WARNING, logger="monitor_app.sampler")

    for round_number in range(4):
        now = T0 + timedelta(hours=2, seconds=31 * round_number)  # the watchdog is due
        snapshot = monitor.tick(now)
        if monitor.watchdog_thread is not None:
            monitor.watchdog_thread.join(timeout=30)
        assert snapshot.sessions == []
        (skipped,) = [s for s in snapshot.skipped if s.name.startswith("sessions/")]
        assert "not Claude Code" in skipped.reason and str(shell.pid) in skipped.reason

    refusals = [r for r in caplog.records if "not believed" in r.getMessage()]
    assert len(refusals) == 1, [r.getMessage() for r in refusals]
    assert all(alive(proc) for proc in bash_tree)
    assert not AuditEntry.objects.exists()
    assert not Session.objects.filter(session_id=session_id).exists()
    assert not Event.objects.filter(session_id=session_id).exists()

    # A stop handed a session made from the file (a sample published before this check)
    # still signals nothing: the agent is checked again at the moment of the signal.
    entry = read_registry_entry(registry)
    forged = sidecar_for_unwrapped(
        console_state.config_dir, entry, shell.create_time(), settings.OPSCONSOLE_HOST
    )
    outcome = stop_session(
        LiveSession(forged, Status.UNWRAPPED, [], wrapped=False),
        actor="ops",
        reason="stopped by ops",
        grace=0,
    )
    assert outcome.terminated == [] and outcome.killed == []
    assert any("not Claude Code" in error for error in outcome.errors)
    assert all(alive(proc) for proc in bash_tree)

    # Once the tree is gone the file is not a killed session either: it never was one.
    for proc in bash_tree:
        proc.kill()
    psutil.wait_procs(bash_tree, timeout=10)
    monitor.tick(T0 + timedelta(hours=3))
    assert not Session.objects.filter(session_id=session_id).exists()


def test_finding5_claude_code_is_told_by_its_executable_and_command_line(tmp_path):
    """The npm binary, the native installer's versions/<v>, node running the package's
    cli.js: Claude Code. A process that only calls itself claude, or a bash, is not."""
    npm = "/usr/lib/node_modules/@anthropic-ai/claude-code/bin/claude.exe"
    assert is_claude_code(npm, [npm, "-p", "hi"])
    assert is_claude_code(npm, ["/home/u/.npm/bin/claude", "-p"])
    native = "/home/u/.local/share/claude/versions/2.1.197"
    assert is_claude_code(native, ["claude", "--resume"])
    assert is_claude_code(native + " (deleted)", ["claude"])  # upgraded while it runs
    script = "/usr/lib/node_modules/@anthropic-ai/claude-code/cli.js"
    assert is_claude_code("/usr/bin/node", ["node", "--no-warnings", script, "-p"])
    assert not is_claude_code("/usr/bin/bash", ["claude", "-c", "sleep 60"])
    assert not is_claude_code("/usr/bin/python3.11", ["python3", "claude", "cli.js"])
    assert not is_claude_code("/usr/bin/node", ["node", "/srv/app/cli.js"])
    assert not is_claude_code("/opt/claude/bin/bash", ["bash"])
    assert not is_claude_code("", ["claude"])

    # The same judgement on live processes: a bash started under the name `claude` is not
    # Claude Code; node running a claude-code package's cli.js is.
    disguised = subprocess.Popen(["bash", "-c", "exec -a claude sleep 60"])
    package = tmp_path / "node_modules" / "@anthropic-ai" / "claude-code"
    package.mkdir(parents=True)
    (package / "cli.js").write_text("setTimeout(() => {}, 60000)\n")
    node = shutil.which("node")
    runner = subprocess.Popen([node, str(package / "cli.js")]) if node else None
    try:
        wait_until(lambda: psutil.Process(disguised.pid).cmdline()[:1] == ["claude"])
        assert "not Claude Code" in claude_code_problem(disguised.pid)
        if runner is not None:
            # Popen returns once exec began; the new command line is in place a moment later.
            wait_until(lambda: len(psutil.Process(runner.pid).cmdline()) == 2)
            problem = claude_code_problem(runner.pid)
            assert problem is None, problem
    finally:
        for proc in (disguised, runner):
            if proc is not None:
                proc.kill()
                proc.wait(timeout=10)


def test_finding5_a_real_claude_code_session_is_still_recognised_and_stopped(
    state, console_state, real_claude, settings
):
    """The real CLI, no wrapper, waiting on the Messages API: listed as unwrapped from its
    own registry file, and a stop still reaches it."""
    real_claude.script("wait forever", {"kind": "stall", "seconds": 120, "text": "late"})
    session_id = new_session_id()
    agent = subprocess.Popen(
        [
            state.env["OPSCONSOLE_CLAUDE_BIN"],
            *("-p", "wait forever please", "--session-id", session_id),
            *STREAM,
        ],
        env=state.env,
        cwd=state.workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        monitor = Monitor(paths=console_state.paths, cadences=False, publish=False)
        live = wait_until(lambda: monitor.tick().get(session_id))
        assert (live.state, live.sidecar.claude_pid) == (Status.UNWRAPPED, agent.pid)
        assert claude_code_problem(agent.pid) is None
        outcome = stop_session(live, actor="ops", reason="stopped by ops", grace=5)
        assert agent.pid in outcome.terminated + outcome.killed, outcome.errors
        agent.wait(timeout=30)
    finally:
        if agent.poll() is None:
            agent.kill()


def test_finding5_console_host_name_cannot_get_a_host_token(settings):
    own = settings.OPSCONSOLE_HOST
    for name in (own, own.upper(), f" {own} "):
        with pytest.raises(CommandError, match="this console's own host name"):
            call_command("create_host_token", name)
        with pytest.raises(ValueError, match="own host name"):
            HostToken.issue(name)
    form = HostTokenForm(data={"host": own})
    assert not form.is_valid() and "own host name" in str(form.errors["host"])
    assert not HostToken.objects.exists()
    assert HostTokenForm(data={"host": f"{own}-worker"}).is_valid()


def test_finding5_a_token_bound_to_the_console_s_own_name_cannot_touch_its_local_runs(
    console_state, settings
):
    """A token for the console's own host name made before the refusal: its empty sample
    does not mark the console's local live run lost, and its reports are refused."""
    own = settings.OPSCONSOLE_HOST
    plain = "oc_host_" + "x" * 43
    HostToken.objects.create(host=own, key_prefix=plain[:14], token_hash=hash_host_token(plain))
    local = Session.objects.create(
        session_id=new_session_id(),
        script_tag="local-nightly",
        host=own,
        status=Status.LIVE,
        started_at=datetime.now(UTC) - timedelta(hours=1),
    )
    impostor = reporting_monitor(
        Reporter("http://127.0.0.1:1", plain, transport=client_transport(Client())),
        host=own,
        interval=1.0,
    )
    impostor.tick()  # an empty sample: no live run at all
    assert "own host name" in str(impostor.reporting.last_error)
    local.refresh_from_db()
    assert (local.status, local.end_reason) == (Status.LIVE, "")


# ----------------------------------------------------------------------------- finding 7


def test_finding7_ten_thousand_dead_sidecars_do_not_stall_the_sample(console_state, runs):
    """Ten thousand dead runs found at once are read and put on record a batch per sample
    (sidecars validated, rows, events), not all inside one sample; a live run is seen at
    once all the same, and a run whose turn has not come is not "lost"."""
    count = 10_000
    live = start_fake_run(console_state, tag="alive-meanwhile")
    runs.append(live)
    dead = write_dead_sidecars(
        console_state.paths,
        count=count,
        cwd=str(console_state.workdir),
        config_dir=console_state.config_dir,
    )
    last = dead[-1]  # sorted last by file name: its turn comes last
    Session.objects.create(
        session_id=last.session_id,
        script_tag=last.script_tag,
        host=last.host,
        status=Status.LIVE,
        started_at=T0 - timedelta(hours=1),
    )
    monitor = Monitor(paths=console_state.paths, cadences=False, publish=False)
    for round_number in range(1, 4):
        snapshot = monitor.tick(T0 + timedelta(seconds=2 * round_number))
        assert [s.session_id for s in snapshot.sessions] == [live.session_id]
        assert monitor.sampler.unread_sidecars == (
            count - DEAD_SIDECAR_READS_PER_SAMPLE * round_number
        )
        assert Session.objects.exclude(status=Status.LIVE).count() == (
            RECORDS_PER_SAMPLE * round_number
        )
        assert Event.objects.filter(kind=EventKind.RUN_VANISHED).count() == (
            RECORDS_PER_SAMPLE * round_number
        )
        assert monitor.records_waiting == count - RECORDS_PER_SAMPLE * round_number
        left = sum(1 for _ in console_state.paths.active.glob("*.json"))
        assert left == 1 + count - RECORDS_PER_SAMPLE * round_number
    waiting = Session.objects.get(session_id=last.session_id)
    assert (waiting.status, waiting.end_reason) == (Status.LIVE, "")


def test_finding7_every_dead_run_is_recorded_once_its_batch_comes(console_state, monkeypatch):
    """Drained to the end, a small batch at a time: every run recorded once, as vanished
    (the one with a live row too), and nothing marked lost."""
    monkeypatch.setattr(monitor_module, "RECORDS_PER_SAMPLE", 2)
    dead = write_dead_sidecars(
        console_state.paths, count=5, cwd=str(console_state.workdir), config_dir=Path("/x")
    )
    Session.objects.create(
        session_id=dead[-1].session_id,
        script_tag=dead[-1].script_tag,
        host=dead[-1].host,
        status=Status.LIVE,
        started_at=T0 - timedelta(hours=1),
    )
    monitor = Monitor(paths=console_state.paths, cadences=False, publish=False)
    for round_number in range(1, 5):
        monitor.tick(T0 + timedelta(seconds=2 * round_number))
    rows = Session.objects.filter(session_id__in=[s.session_id for s in dead])
    assert sorted(rows.values_list("end_reason", flat=True)) == ["vanished"] * 5
    assert Event.objects.filter(kind=EventKind.RUN_VANISHED).count() == 5
    assert monitor.records_waiting == 0


def test_finding7_a_reporting_host_ships_dead_runs_a_batch_per_report(console_state):
    """A reporting host's dead runs go to the console a batch per report, so no report
    grows past what the console takes, and each batch's sidecars go once it is on record."""
    _row, token = HostToken.issue("host-a")
    host = reporting_monitor(
        Reporter("http://127.0.0.1:1", token, transport=client_transport(Client())),
        host="host-a",
        interval=1.0,
    )
    count = 2 * MAX_COMPLETIONS_PER_REPORT + 50
    write_dead_sidecars(
        console_state.paths,
        count=count,
        cwd=str(console_state.workdir),
        config_dir=console_state.config_dir,
        host="host-a",
    )
    for round_number, expected in enumerate(
        (MAX_COMPLETIONS_PER_REPORT, 2 * MAX_COMPLETIONS_PER_REPORT, count), start=1
    ):
        host.tick(T0 + timedelta(seconds=2 * round_number))
        assert host.reporting.last_error is None, host.reporting.last_error
        assert Session.objects.filter(host="host-a", end_reason="vanished").count() == expected
    assert not list(console_state.paths.active.glob("*.json"))
