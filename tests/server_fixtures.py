"""The console as its users run it: `opsconsole serve` in its own process, on loopback."""

from __future__ import annotations

import json
import os
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


@pytest.fixture
def console_server(state: State, tmp_path: Path):
    """`opsconsole serve` (gunicorn) on a free port, reading this test's state dirs."""
    port = free_port()
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
    log = tmp_path / "console.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [PYTHON, "-m", "opsconsole.cli", "serve", "--bind", f"127.0.0.1:{port}"],
            env=env,
            cwd=REPO_ROOT,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    console = Console(f"http://127.0.0.1:{port}", token, "ops", ADMIN_PASSWORD, process, log, env)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if console.get("/api/claude-active")[0] == 200:
                break
        except OSError:
            pass
        if process.poll() is not None:
            pytest.fail(f"the console exited:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    else:
        pytest.fail(f"the console did not answer:\n{log.read_text()[-3000:]}")
    yield console
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
