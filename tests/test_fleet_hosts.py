"""Three hosts on this machine, one console on PostgreSQL.

Each host is a PID namespace of its own (`unshare --pid --fork --mount-proc`, as
root) with its own OPSCONSOLE_HOME, Claude config dir and host name; its monitor
and its runs are started inside it with `nsenter`, so the host sees only its
own processes, as a separate machine would. Every monitor reports to one
`opsconsole serve` over loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from tests.conftest import PYTHON
from tests.console_processes import Console
from tests.scheduler_tools import own_crontab
from tests.server_fixtures import free_port

PG_URL = os.environ.get("OPSCONSOLE_TEST_PG", "postgres://postgres@127.0.0.1:5432")
# One database per xdist worker: two workers never drop each other's.
DATABASE = f"opsconsole_fleet_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
STREAM = ("--output-format", "stream-json", "--verbose", "--allowedTools", "Bash")


def can_run() -> str | None:
    if os.geteuid() != 0:
        return "PID namespaces need root"
    if not shutil.which("unshare") or not shutil.which("nsenter") or not shutil.which("psql"):
        return "unshare, nsenter and psql are needed"
    probe = subprocess.run(
        ["psql", PG_URL + "/postgres", "-c", "select 1"], capture_output=True, timeout=10
    )
    if probe.returncode != 0:
        return f"no PostgreSQL at {PG_URL}"
    return None


pytestmark = pytest.mark.skipif(can_run() is not None, reason=str(can_run()))


def psql(sql: str) -> None:
    subprocess.run(["psql", PG_URL + "/postgres", "-q", "-c", sql], check=True, timeout=60)


def eventually(fetch, check, timeout=40.0, every=0.3):
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        try:
            value = fetch()
            if check(value):
                return value
        except (OSError, KeyError, ValueError, IndexError, AssertionError, psutil.Error):
            pass
        time.sleep(every)
    raise AssertionError(f"not reached in {timeout} s; last value: {str(value)[:1500]}")


@dataclass
class Host:
    name: str
    root: Path
    env: dict
    token: str
    holder: subprocess.Popen | None = None
    monitor: subprocess.Popen | None = None
    runs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def inner_pid(self) -> int:
        """The namespace's PID 1, seen from outside: what nsenter joins."""
        children = psutil.Process(self.holder.pid).children()
        return children[0].pid

    def enter(self, argv: list[str], env: dict, log: Path) -> subprocess.Popen:
        command = ["nsenter", "-t", str(self.inner_pid), "-p", "-m", "--", *argv]
        with log.open("ab") as handle:
            return subprocess.Popen(
                command,
                env=env,
                cwd=self.env["WORKDIR"],
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start(self, console_url: str) -> None:
        self.holder = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", "sleep", "100000"],
            start_new_session=True,
        )
        eventually(lambda: self.inner_pid, lambda pid: pid > 0, timeout=10)
        self.start_monitor(console_url)

    def start_monitor(self, console_url: str) -> None:
        self.monitor = self.enter(
            [PYTHON, "-m", "opsconsole.cli", "monitor", "--report-to", console_url],
            dict(self.env, OPSCONSOLE_REPORT_TOKEN=self.token),
            self.root / "monitor.log",
        )

    def run(self, tag: str, *claude_args: str, **env) -> subprocess.Popen:
        proc = self.enter(
            [PYTHON, "-m", "wrapper", "--tag", tag, "--", *claude_args],
            dict(self.env, **env),
            self.root / f"run-{tag}.log",
        )
        self.runs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in [self.monitor, *self.runs, self.holder]:
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@pytest.fixture
def fleet(tmp_path: Path, real_claude, real_claude_bin, fake_claude, state):
    psql(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    psql(f"CREATE DATABASE {DATABASE}")
    base = {k: v for k, v in state.env.items() if not k.startswith("OPSCONSOLE_")}
    base.pop("DATABASE_URL", None)
    base.pop("FAKE_CLAUDE_STATE", None)
    console_home = tmp_path / "console"
    console_home.mkdir(mode=0o700)
    (tmp_path / "console-claude").mkdir()
    console = Console(
        name="console",
        env=dict(
            base,
            DATABASE_URL=f"{PG_URL}/{DATABASE}",
            OPSCONSOLE_HOME=str(console_home),
            OPSCONSOLE_HOST_NAME="console",
            CLAUDE_CONFIG_DIR=str(tmp_path / "console-claude"),
            OPSCONSOLE_CLAUDE_CONFIG_DIRS=str(tmp_path / "console-claude"),
            OPSCONSOLE_SAMPLE_SECONDS="1",
            OPSCONSOLE_SCHEDULERS="cron",
            DJANGO_SETTINGS_MODULE="opsconsole.settings",
        ),
        port=free_port(),
        log=tmp_path / "console.log",
    )
    console.set_up()
    hosts = []
    for name in ("h1", "h2", "h3"):
        root = tmp_path / name
        home, config, work = root / "home", root / "claude", root / "work"
        for folder in (home, config, work):
            folder.mkdir(parents=True, mode=0o700)
        token = console.manage("create_host_token", name).strip().splitlines()[-1]
        env = dict(
            base,
            OPSCONSOLE_HOME=str(home),
            OPSCONSOLE_ACTIVE_DIR=str(home / "active"),
            OPSCONSOLE_HOST_NAME=name,
            CLAUDE_CONFIG_DIR=str(config),
            OPSCONSOLE_CLAUDE_CONFIG_DIRS=str(config),
            OPSCONSOLE_CLAUDE_BIN=str(real_claude_bin),
            OPSCONSOLE_SAMPLE_SECONDS="1",
            # Idle, a host reports this often: silent 5 + 3 x 1 s after its last report.
            OPSCONSOLE_HEARTBEAT_SECONDS="5",
            OPSCONSOLE_STOP_GRACE_SECONDS="2",
            OPSCONSOLE_SCHEDULERS="cron",
            DJANGO_SETTINGS_MODULE="opsconsole.settings",
            WORKDIR=str(work),
        )
        env["PATH"] = f"{own_crontab(root, env, tmp_path / 'bin' / 'claude')}:{env['PATH']}"
        hosts.append(Host(name, root, env, token))
    try:  # whatever fails while starting, nothing is left running
        console.start()
        console.wait_answering()
        for host in hosts:
            host.start(console.url)
        yield console, hosts, state
    finally:
        for host in hosts:
            host.stop()
        console.kill()


def test_three_hosts_report_to_one_console(fleet, real_claude, fake_claude, tmp_path):
    console, (h1, h2, h3), _state = fleet
    fake_bin = str(tmp_path / "bin" / "claude")
    real_bin = h1.env["OPSCONSOLE_CLAUDE_BIN"]
    assert real_bin != fake_bin, "h1 and h2 run the real CLI"
    real_claude.script("fleet-h1", {"kind": "bash", "command": "sleep 61", "text": "done"})
    real_claude.script("fleet-h2", {"kind": "bash", "command": "sleep 62", "text": "done"})
    h1.run("long-h1", "-p", "fleet-h1 work", *STREAM)
    h2.run("long-h2", "-p", "fleet-h2 work", *STREAM)
    h3.run("long-h3", "-p", "x", OPSCONSOLE_CLAUDE_BIN=fake_bin, FAKE_CLAUDE_BEHAVIOUR="sleep:60")

    # Live on the console, each under its own host, with its process tree.
    fleet_now = eventually(
        lambda: console.json("/api/claude-active?host=all"),
        lambda d: {s["host"] for s in d["sessions"]} == {"h1", "h2", "h3"},
        timeout=60,
    )
    by_host = {s["host"]: s for s in fleet_now["sessions"]}
    for name in ("h1", "h2"):
        detail = eventually(
            lambda n=name: console.json(f"/api/sessions/{by_host[n]['session_id']}"),
            lambda d, n=name: any(
                f"sleep 6{n[-1]}" in p["cmdline"] for p in d.get("processes", [])
            ),
        )
        assert detail["host"] == name and detail["live"] is True
        # Its transcript, shipped with the reports, followed through the console.
        eventually(
            lambda n=name: console.request(f"/api/claude-jsonl/{by_host[n]['session_id']}"),
            lambda r, n=name: r[0] == 200 and f"sleep 6{n[-1]}".encode() in r[2],
        )
    assert console.json("/api/claude-active?host=h3")["sessions"][0]["script_tag"] == "long-h3"

    # A token for h1 cannot write h2's rows.
    report = json.dumps({"format": 1, "host": "h2", "sample": {}}).encode()
    assert console.request("/api/hosts/report", report, token=h1.token)[0] == 403

    # A stop requested on the console kills the run on its host.
    target = by_host["h1"]["session_id"]
    status, _, body = console.request(f"/api/sessions/{target}/stop", b"")
    assert status == 202, body
    action = json.loads(body)
    eventually(lambda: h1.runs[0].poll(), lambda code: code is not None, timeout=30)
    done = eventually(
        lambda: console.json(action["url"]), lambda a: a["state"] in ("done", "failed")
    )
    assert done["state"] == "done", done
    stopped = eventually(
        lambda: console.json(f"/api/sessions/{target}"), lambda d: d["status"] == "killed"
    )
    assert stopped["end_reason"] == "stopped"

    # Run now, asked on the console, is carried out by h1's monitor on h1's own cron
    # entry; the run it starts is seen there and reaches the console under h1.
    jobs = eventually(
        lambda: console.json("/api/status")["jobs"],
        lambda jobs: any(j["host"] == "h1" and j["label"] == "nightly-h1" for j in jobs),
    )
    nightly = next(j for j in jobs if j["host"] == "h1" and j["label"] == "nightly-h1")
    status, _, body = console.request(f"/api/jobs/{nightly['id']}/run", b"")
    assert status == 202, body
    ran = eventually(
        lambda: console.json(json.loads(body)["url"]),
        lambda a: a["state"] in ("done", "failed"),
        timeout=60,
    )
    assert ran["state"] == "done" and "run seen" in ran["message"], ran
    eventually(
        lambda: console.json("/api/sessions?host=h1&tag=nightly-h1")["sessions"],
        lambda sessions: len(sessions) == 1,
    )

    # The console is SIGKILLed while hosts finish runs; restarted, it has every run once.
    def refusals(host) -> int:
        return (host.root / "monitor.log").read_text(errors="replace").count("report not taken")

    refused_before = {host.name: refusals(host) for host in (h2, h3)}
    console.kill()
    short = [
        host.run(
            f"short-{host.name}-{i}",
            "-p",
            "x",
            OPSCONSOLE_CLAUDE_BIN=fake_bin,
            FAKE_CLAUDE_BEHAVIOUR="sleep:1",
        )
        for host in (h2, h3)
        for i in range(2)
    ]
    for proc in short:
        assert proc.wait(timeout=60) == 0
    for host in (h2, h3):  # the monitors try, and fail, to report meanwhile
        eventually(
            lambda h=host: refusals(h),
            lambda count, h=host: count > refused_before[h.name],
            timeout=60,
        )
    console.start()
    console.wait_answering()
    for host in (h2, h3):
        ended = eventually(
            lambda h=host: console.json(f"/api/sessions?host={h.name}&status=succeeded"),
            lambda d: len(d["sessions"]) == 2,
        )
        ids = [s["session_id"] for s in ended["sessions"]]
        assert len(set(ids)) == 2
        for session_id in ids:
            events = console.json(f"/api/events?kind=run_ended&host={host.name}&limit=200")
            assert [e["session_id"] for e in events["events"]].count(session_id) == 1
        # The console has them on record before the host has read its answer.
        eventually(  # all acknowledged: the spool is empty
            lambda h=host: list((h.root / "home" / "spool").glob("*.json")),
            lambda pending: not pending,
            timeout=30,
        )

    # A host whose monitor is stopped turns silent.
    os.killpg(h3.monitor.pid, signal.SIGTERM)
    h3.monitor.wait(timeout=30)
    eventually(
        lambda: {h["host"]: h for h in console.json("/api/hosts")["hosts"]},
        lambda hosts: hosts["h3"]["silent"] and not hosts["h2"]["silent"],
        timeout=20,
    )
    eventually(
        lambda: console.json("/api/events?kind=monitor_silent&host=h3")["events"],
        lambda events: len(events) == 1,
        timeout=20,
    )
