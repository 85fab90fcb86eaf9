"""Start `opsconsole serve` (gunicorn) on loopback in a throwaway state root, for the
benchmarks that measure the console as it is deployed. Loopback only; the server is
stopped when the `with` block ends."""

from __future__ import annotations

import contextlib
import http.client
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "bench-password-not-secret"  # noqa: S105


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Served:
    host: str
    port: int
    token: str
    env: dict[str, str]
    work: Path

    def get(self, path: str, *, timeout: float = 30.0) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            connection.request("GET", path, headers={"Authorization": f"Bearer {self.token}"})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()


def manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "opsconsole.cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return done.stdout


@contextlib.contextmanager
def serve(
    *, threads: int = 8, extra_env: dict[str, str] | None = None, work: Path | None = None
) -> Iterator[Served]:
    work = work or Path(tempfile.mkdtemp(prefix="opsconsole-serve-"))
    home = work / "home"
    home.mkdir(mode=0o700, exist_ok=True)
    config = work / "claude"
    config.mkdir(mode=0o700, exist_ok=True)
    env = dict(os.environ)
    env.pop("DATABASE_URL", None)
    env.update(
        OPSCONSOLE_HOME=str(home),
        CLAUDE_CONFIG_DIR=str(config),
        OPSCONSOLE_CLAUDE_CONFIG_DIRS=str(config),
        OPSCONSOLE_SCHEDULERS="cron",
        OPSCONSOLE_LOG_LEVEL="WARNING",
        DJANGO_SETTINGS_MODULE="opsconsole.settings",
        PYTHONPATH=str(REPO),
        **(extra_env or {}),
    )
    manage(env, "migrate", "--noinput")
    manage(
        env,
        "shell",
        "--no-imports",
        "-c",
        "from django.contrib.auth import get_user_model; "
        f"get_user_model().objects.create_superuser('ops', password='{PASSWORD}')",
    )
    token = manage(env, "create_api_token", "ops").strip().splitlines()[-1]
    port = free_port()
    log = (work / "serve.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "opsconsole.cli",
            "serve",
            "--bind",
            f"127.0.0.1:{port}",
            "--threads",
            str(threads),
        ],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    served = Served("127.0.0.1", port, token, env, work)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if served.get("/api/claude-active", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"opsconsole serve did not start; see {work / 'serve.log'}")
            time.sleep(0.2)
        yield served
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def wsgi_environ(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> dict:
    """A WSGI request as a threaded server hands it to the app, from loopback; `headers`
    in WSGI's names (HTTP_AUTHORIZATION, CONTENT_TYPE)."""
    return {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "CONTENT_LENGTH": str(len(body)),
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1",
        **headers,
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.url_scheme": "http",
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }


def percentile(samples: list[float], fraction: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def console_in_process(database: str | None, home_prefix: str) -> None:
    """Django set up in this process on a fresh PostgreSQL database of the benchmark's
    own (dropped and made again, then migrated), with a throwaway state root. With
    `database` None, the SQLite file in that state root instead."""
    os.environ.update(
        DJANGO_SETTINGS_MODULE="opsconsole.settings",
        OPSCONSOLE_HOME=tempfile.mkdtemp(prefix=home_prefix),
    )
    os.environ.pop("DATABASE_URL", None)
    if database is not None:
        pg = os.environ.get("OPSCONSOLE_BENCH_PG", "postgres://postgres@127.0.0.1:5432")
        for sql in (
            f"DROP DATABASE IF EXISTS {database} WITH (FORCE)",
            f"CREATE DATABASE {database}",
        ):
            subprocess.run(["psql", f"{pg}/postgres", "-q", "-c", sql], check=True)
        os.environ["DATABASE_URL"] = f"{pg}/{database}"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
