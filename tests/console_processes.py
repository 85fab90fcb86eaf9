"""A console (`opsconsole serve`) as a real process, for the tests that run several
processes against one database: two consoles on one PostgreSQL (test_replicas), three
hosts reporting to one (test_fleet_hosts), a stop pushed to a host (fast_stop_fleet)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import PYTHON, REPO_ROOT
from tests.live_helpers import wait_until


@dataclass
class Console:
    name: str
    env: dict
    port: int
    log: Path
    token: str = ""
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [PYTHON, "-m", "opsconsole.cli", *args],
            env=self.env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def start(self, *serve_args: str) -> None:
        with self.log.open("ab") as handle:
            self.process = subprocess.Popen(
                [
                    PYTHON,
                    "-m",
                    "opsconsole.cli",
                    "serve",
                    "--bind",
                    f"127.0.0.1:{self.port}",
                    *serve_args,
                ],
                env=self.env,
                cwd=REPO_ROOT,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def set_up(self) -> str:
        """A fresh database migrated, a superuser `ops`, and an API token for it (the
        console's own from now on): returned, for other consoles on the same database."""
        self.manage("migrate", "--noinput")
        self.manage(
            "shell",
            "--no-imports",
            "-c",
            "from django.contrib.auth import get_user_model; "
            "get_user_model().objects.create_superuser('ops', password='x-test-password')",
        )
        self.token = self.manage("create_api_token", "ops").strip().splitlines()[-1]
        return self.token

    def wait_answering(self, timeout: float = 60) -> None:
        wait_until(
            answers(lambda: self.request("/api/hosts")[0] == 200), timeout=timeout, interval=0.3
        )

    def kill(self) -> None:
        """SIGKILL to the whole console: its supervisor, web workers and monitor."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=20)

    def request(
        self, path: str, data: bytes | None = None, token: str | None = None
    ) -> tuple[int, dict, bytes]:
        """(status, headers, body), as the console's API user, or as `token`'s owner."""
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method="POST" if data is not None else "GET",
            headers={
                "Authorization": f"Bearer {token or self.token}",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def json(self, path: str):
        status, _headers, body = self.request(path)
        assert status == 200, (self.name, path, status, body[:300])
        return json.loads(body)


def answers(fetch):
    """fetch(), or None while the console is not answering yet."""

    def ask():
        try:
            return fetch()
        except (OSError, AssertionError, ValueError):
            return None

    return ask
