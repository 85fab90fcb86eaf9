"""The console as its users run it: `opsconsole serve` in its own process, on loopback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO_ROOT, State

ADMIN_PASSWORD = "e2e-password-for-tests"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Console:
    url: str
    token: str
    username: str
    password: str
    process: subprocess.Popen
    log: Path
    env: dict | None = None  # what it runs with (for commands against its database)

    def get(self, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
        request = urllib.request.Request(
            self.url + path, headers={"Authorization": f"Bearer {self.token}", **(headers or {})}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def json(self, path: str) -> dict:
        status, _, body = self.get(path)
        assert status == 200, (status, body[:300])
        return json.loads(body)


def manage(env: dict, *args: str) -> str:
    result = subprocess.run(
        [PYTHON, "-m", "opsconsole.cli", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="session")
def console_database(tmp_path_factory) -> tuple[Path, str]:
    """A migrated console database with the admin user and an API token, made once per
    test process; each console_server starts from a copy of it."""
    folder = tmp_path_factory.mktemp("console-database")
    env = dict(
        os.environ,
        OPSCONSOLE_HOME=str(folder / "home"),
        DATABASE_URL=f"sqlite:///{folder / 'console.sqlite3'}",
        DJANGO_SETTINGS_MODULE="opsconsole.settings",
    )
    env.pop("OPSCONSOLE_DEBUG", None)
    manage(env, "migrate", "--noinput")
    manage(
        env,
        "shell",
        "--no-imports",
        "-c",
        "from django.contrib.auth import get_user_model; "
        f"get_user_model().objects.create_superuser('ops', password='{ADMIN_PASSWORD}')",
    )
    token = manage(env, "create_api_token", "ops").strip().splitlines()[-1]
    return folder / "console.sqlite3", token


def serve_console(
    state: State, tmp_path: Path, console_database: tuple[Path, str], *, monitor: bool
):
    """Start `opsconsole serve` on a free port, on a copy of the template database, and
    return once it answers (with its monitor: once the monitor's own sample answers)."""
    port = free_port()
    template, token = console_database
    shutil.copyfile(template, tmp_path / "console.sqlite3")
    env = dict(
        state.env,
        DATABASE_URL=f"sqlite:///{tmp_path / 'console.sqlite3'}",
        OPSCONSOLE_CLAUDE_CONFIG_DIRS=str(state.config_dir),
        OPSCONSOLE_SNAPSHOT_SECONDS="1",
        OPSCONSOLE_SAMPLE_SECONDS="1",
        OPSCONSOLE_POLL_SECONDS="1",
        OPSCONSOLE_SCHEDULERS="cron",
        DJANGO_SETTINGS_MODULE="opsconsole.settings",
    )
    env.pop("OPSCONSOLE_DEBUG", None)
    log = tmp_path / "console.log"
    argv = [PYTHON, "-m", "opsconsole.cli", "serve", "--bind", f"127.0.0.1:{port}"]
    with log.open("wb") as handle:
        process = subprocess.Popen(
            argv if monitor else [*argv, "--no-monitor"],
            env=env,
            cwd=REPO_ROOT,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    console = Console(f"http://127.0.0.1:{port}", token, "ops", ADMIN_PASSWORD, process, log, env)
    # A page served from a web worker's own on-demand sample is not what the test is
    # about: with a monitor, wait until the monitor's published sample answers.
    source = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            status, headers, _body = console.get("/api/claude-active")
            source = headers.get("X-Sample-Source")
            if status == 200 and (source == "monitor" or not monitor):
                return console
        except OSError:
            pass
        if process.poll() is not None:
            pytest.fail(f"the console exited:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    stop_console(console)
    pytest.fail(f"the console did not answer (last source {source}):\n{log.read_text()[-3000:]}")


def stop_console(console: Console) -> None:
    os.killpg(console.process.pid, signal.SIGTERM)
    try:
        console.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(console.process.pid, signal.SIGKILL)


@pytest.fixture
def console_server(state: State, tmp_path: Path, console_database: tuple[Path, str]):
    """`opsconsole serve` (gunicorn and its monitor) reading this test's state dirs."""
    console = serve_console(state, tmp_path, console_database, monitor=True)
    yield console
    stop_console(console)


@pytest.fixture
def console_without_monitor(state: State, tmp_path: Path, console_database: tuple[Path, str]):
    """`opsconsole serve --no-monitor`: for a test that drives the alert rounds itself on a
    fixed clock, which a monitor ticking on the real clock would race."""
    console = serve_console(state, tmp_path, console_database, monitor=False)
    yield console
    stop_console(console)
