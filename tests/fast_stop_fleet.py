"""A console (or several on one database) and a reporting host, as real processes, and
the time a stop asked on a console takes to end a run on that host: for
tests/test_fast_stop.py and benchmarks/bench_fast_stop.py.

The host is this machine with a home, a Claude config dir and a host name of its own
(`opsconsole monitor --report-to` the first console, as tests/test_replicas.py runs
it); its runs are the wrapper around tests/fake_claude.py. Each console has its own
home too, so no console takes the host's runs for its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.console_processes import Console, answers
from tests.live_helpers import wait_until
from tests.server_fixtures import free_port
from wrapper.formats import parse_iso

REPO_ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
HOST = "h1"


@dataclass
class Fleet:
    consoles: list[Console]
    host_env: dict
    monitor: subprocess.Popen
    root: Path

    def start_run(self, tag: str) -> tuple[subprocess.Popen, str]:
        """A long run on the host, once the console that will be asked knows it live."""
        run = subprocess.Popen(
            [PYTHON, "-m", "wrapper", "--tag", tag, "--", "-p", "x"],
            env=dict(self.host_env, FAKE_CLAUDE_BEHAVIOUR="sleep:120"),
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        asker = self.consoles[-1]

        def live_on_record() -> str | None:
            sessions = asker.json(f"/api/claude-active?host={HOST}")["sessions"]
            found = [s["session_id"] for s in sessions if s["script_tag"] == tag]
            if found and asker.json(f"/api/sessions/{found[0]}")["status"] == "live":
                return found[0]
            return None

        return run, wait_until(answers(live_on_record), timeout=60, interval=0.1)

    def stop_latency(self, tag: str) -> tuple[float, dict]:
        """Seconds from asking the last console to stop a live run to its wrapper gone,
        and the request as the console has it once the host's answer came back."""
        run, session_id = self.start_run(tag)
        asker = self.consoles[-1]
        try:
            began = time.monotonic()
            status, _, body = asker.request(f"/api/sessions/{session_id}/stop", b"")
            assert status == 202, (status, body[:300])
            while run.poll() is None and time.monotonic() - began < 30:
                time.sleep(0.002)
            latency = time.monotonic() - began
        finally:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
                run.wait(timeout=10)
        url = json.loads(body)["url"]
        action = wait_until(
            answers(lambda: (a := asker.json(url))["state"] in ("done", "failed") and a),
            timeout=30,
        )
        return latency, action


def hops(action: dict) -> str:
    """Where a stop's time went, from the request's times: queued to handed out (the
    console), handed out to landed on the host (the answer's way), in ms."""
    requested, sent = parse_iso(action["requested_at"]), parse_iso(action["sent_at"])
    landed = parse_iso(action["detail"]["landed_at"])
    return (
        f"handed out +{(sent - requested).total_seconds() * 1000:.0f}, "
        f"landed +{(landed - sent).total_seconds() * 1000:.0f}"
    )


def make_console(name: str, root: Path, base: dict, database_url: str) -> Console:
    folder = root / name
    (folder / "claude").mkdir(parents=True, mode=0o700)
    env = dict(
        base,
        DATABASE_URL=database_url,
        OPSCONSOLE_HOME=str(folder / "home"),
        OPSCONSOLE_HOST_NAME=name,
        CLAUDE_CONFIG_DIR=str(folder / "claude"),
        OPSCONSOLE_CLAUDE_CONFIG_DIRS=str(folder / "claude"),
        OPSCONSOLE_SAMPLE_SECONDS="1",
        OPSCONSOLE_SCHEDULERS="cron",
        OPSCONSOLE_TELEMETRY_RECEIVER="0",
        DJANGO_SETTINGS_MODULE="opsconsole.settings",
    )
    return Console(name, env, free_port(), folder / "console.log")


@contextlib.contextmanager
def fleet(
    root: Path, env: dict, database_url: str, console_names=("console-a",), **host_settings
) -> Iterator[Fleet]:
    """Consoles on `database_url` and host h1 reporting to the first of them. `env` is
    the environment of the host's runs (its OPSCONSOLE_CLAUDE_BIN the fake claude);
    `host_settings` override the host monitor's (it samples every 1 s unless told)."""
    base = {k: v for k, v in env.items() if not k.startswith(("OPSCONSOLE_", "FAKE_"))}
    base.pop("DATABASE_URL", None)
    consoles = [make_console(name, root, base, database_url) for name in console_names]
    first = consoles[0]
    token = first.set_up()
    host_token = first.manage("create_host_token", HOST).strip().splitlines()[-1]
    host_env = dict(
        env,
        OPSCONSOLE_HOST_NAME=HOST,
        OPSCONSOLE_SAMPLE_SECONDS="1",
        OPSCONSOLE_SCHEDULERS="cron",
        OPSCONSOLE_TELEMETRY_RECEIVER="0",
        OPSCONSOLE_REPORT_TOKEN=host_token,
        DJANGO_SETTINGS_MODULE="opsconsole.settings",
    )
    host_env.update(host_settings)
    host_env.pop("DATABASE_URL", None)
    monitor = None
    try:
        for console in consoles:
            console.token = token
            console.start()
        for console in consoles:
            console.wait_answering()
        with (root / "h1-monitor.log").open("ab") as log:
            monitor = subprocess.Popen(
                [PYTHON, "-m", "opsconsole.cli", "monitor", "--report-to", first.url],
                env=host_env,
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        yield Fleet(consoles, host_env, monitor, root)
    finally:
        if monitor is not None and monitor.poll() is None:
            os.killpg(monitor.pid, signal.SIGKILL)
            monitor.wait(timeout=10)
        for console in consoles:
            console.kill()
