"""With the database down the live view still works, and nothing is lost."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from monitor_app.live import take_snapshot
from sessions_app.models import Session, Status
from tests.conftest import REPO_ROOT
from tests.live_helpers import start_fake_run

# Prints what a console process sees when its database cannot be reached.
SNAPSHOT_SCRIPT = """
import json, django
django.setup()
from django.conf import settings
from monitor_app.live import take_snapshot
snap = take_snapshot(settings.OPSCONSOLE_STATE)
print(json.dumps({
    "live": [s.session_id for s in snap.sessions],
    "database_error": snap.database_error,
}))
"""


def snapshot_with_database_down(state) -> dict:
    env = dict(state.env)
    env["DATABASE_URL"] = "postgres://nobody@127.0.0.1:9/unreachable?connect_timeout=2"
    env["DJANGO_SETTINGS_MODULE"] = "opsconsole.settings"
    result = subprocess.run(
        [sys.executable, "-c", SNAPSHOT_SCRIPT],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.django_db(transaction=True)
def test_database_down_keeps_live_view_and_loses_nothing(console_state):
    alive = start_fake_run(console_state, tag="still-running")
    vanished = start_fake_run(console_state, tag="died-while-db-down")
    try:
        vanished.kill_all()

        seen = snapshot_with_database_down(console_state)

        assert seen["live"] == [alive.session_id]
        assert "OperationalError" in seen["database_error"]
        assert vanished.sidecar_file.exists(), "kept until it can be recorded"

        take_snapshot(console_state.paths)  # the database is back

        assert Session.objects.get(session_id=vanished.session_id).status == Status.KILLED
        assert not vanished.sidecar_file.exists()
    finally:
        alive.kill_all()
        vanished.kill_all()


# ----------------------------------------------------------------------------- through gunicorn


@pytest.fixture
def silent_database():
    """A TCP listener that accepts every connection and never answers: a database host
    whose server process hangs."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    held = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    for connection in held:
        connection.close()
    listener.close()


def closed_port() -> int:
    from tests.server_fixtures import free_port

    return free_port()  # bound and released: nothing listens there


@pytest.fixture
def console_on(state, tmp_path):
    """Start gunicorn (as `opsconsole serve` runs it, without its migrate step) on a
    database URL; yields a function that returns the base URL."""
    import os
    import signal
    import time
    import urllib.request

    from tests.server_fixtures import free_port

    started = []

    def start(database_url: str) -> str:
        port = free_port()
        env = dict(
            state.env,
            DATABASE_URL=database_url,
            DJANGO_SETTINGS_MODULE="opsconsole.settings",
            OPSCONSOLE_SCHEDULERS="cron",
        )
        log = (tmp_path / f"gunicorn-{port}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "opsconsole.wsgi:application",
             "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "8",
             "--timeout", "60"],
            env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        started.append(process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                urllib.request.urlopen(url + "/login/", timeout=5).read()
                return url
            except OSError:
                time.sleep(0.2)
        pytest.fail((tmp_path / f"gunicorn-{port}.log").read_text()[-3000:])

    yield start
    for process in started:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)


def fetch(url: str, headers: dict | None = None) -> tuple[int, str, bytes, float]:
    import time
    import urllib.error
    import urllib.request

    started = time.monotonic()
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, content_type, body = response.status, response.headers["Content-Type"], b""
            body = response.read()
    except urllib.error.HTTPError as error:
        status, content_type, body = error.code, error.headers["Content-Type"], error.read()
    return status, content_type or "", body, time.monotonic() - started


def assert_clear_503s_and_login_answers(base: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    session = {"Cookie": "sessionid=abcdefghijklmnopqrstuvwxyz012345"}
    token = {"Authorization": "Bearer oc_not-a-real-token"}
    requests = [(base + "/", session), (base + "/history/", session)] * 6 + [
        (base + "/api/sessions", token),
        (base + "/api/claude-active", session),
    ] * 6
    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        answers = list(pool.map(lambda args: fetch(*args), requests))
    for (url, _), (status, content_type, body, seconds) in zip(requests, answers, strict=True):
        assert status == 503, (url, status, body[:300])
        assert seconds < 10, (url, seconds)
        if "/api/" in url:
            assert content_type.startswith("application/json")
            assert json.loads(body)["error"].startswith("Database unreachable")
        else:
            assert b"Database unreachable" in body
    status, _, body, seconds = fetch(base + "/login/")
    assert status == 200 and b"Log in" in body and seconds < 5


@pytest.mark.django_db
def test_database_refusing_connections_gives_a_clear_503_not_a_bare_500(console_on):
    """Before: every logged-in page and API answered a bare HTML 500 (sessions and tokens
    are read before any view can fall back)."""
    base = console_on(f"postgres://nobody@127.0.0.1:{closed_port()}/opsconsole")
    assert_clear_503s_and_login_answers(base)


@pytest.mark.django_db
def test_database_accepting_but_silent_answers_503_within_seconds(console_on, silent_database):
    """Before: requests hung past 45 s, and 8 stuck threads froze even /login/."""
    base = console_on(f"postgres://nobody@127.0.0.1:{silent_database}/opsconsole")
    assert_clear_503s_and_login_answers(base)
