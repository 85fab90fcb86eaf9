"""A database blip loses no alert: the `deliver_alerts` loop talks to PostgreSQL through
a TCP relay the test cuts and restores; the run that ended meanwhile is told once."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time

import pytest

from tests.alert_receivers import webhook  # noqa: F401 - a fixture
from tests.conftest import PYTHON, REPO_ROOT
from tests.server_fixtures import manage

DATABASE = "opsconsole_alerts_blip_test"


def postgres_server() -> dict:
    """The server of DATABASE_URL when it is PostgreSQL, else a local default one."""
    import dj_database_url

    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        url = "postgres://postgres@127.0.0.1:5432/postgres"
    parsed = dj_database_url.parse(url)
    return {
        "host": parsed["HOST"] or "127.0.0.1",
        "port": int(parsed["PORT"] or 5432),
        "user": parsed["USER"] or "postgres",
        "password": parsed["PASSWORD"] or "",
    }


SERVER = postgres_server()
POSTGRES = (SERVER["host"], SERVER["port"])

RECORD_A_FAILED_RUN = """
import uuid
from datetime import UTC, datetime
from django.conf import settings
from monitor_app.models import Event
from sessions_app.models import Session
now = datetime.now(UTC)
run = Session.objects.create(session_id=uuid.uuid4(), script_tag="blip", status="failed",
    host=settings.OPSCONSOLE_HOST, exit_code=5, started_at=now, ended_at=now)
Event.objects.create(at=now, host=run.host, kind="run_ended", session_id=run.session_id,
    script_tag="blip", status="failed", message="blip failed", dedupe_key="blip-1")
"""


class Relay:
    """Forwards loopback TCP to PostgreSQL until cut; a cut drops every connection."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = threading.Event()
        self.open.set()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(POSTGRES, timeout=5)
            except OSError:
                client.close()
                continue
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self.pump, args=(a, b), daemon=True).start()

    @staticmethod
    def pump(source, dest):
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                dest.sendall(data)
        for sock in (source, dest):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self):
        self.open.clear()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.sockets.clear()

    def restore(self):
        self.open.set()

    def close(self):
        self.cut()
        self.listener.close()


def postgres_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(**SERVER, dbname="postgres", autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture
def blip_database():
    try:
        with socket.create_connection(POSTGRES, timeout=2):
            pass
        postgres_admin(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        postgres_admin(f"CREATE DATABASE {DATABASE}")
    except Exception as exc:
        pytest.skip(f"needs PostgreSQL on {POSTGRES[0]}:{POSTGRES[1]}: {exc}")
    yield
    postgres_admin(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")


def test_a_run_that_ended_while_the_database_was_away_is_told_once(
    state,
    blip_database,
    webhook,  # noqa: F811
):
    receiver = webhook()
    relay = Relay()
    base = dict(
        state.env,
        DJANGO_SETTINGS_MODULE="opsconsole.settings",
        OPSCONSOLE_ALERT_URLS=f"json://127.0.0.1:{receiver.port}/blip",
    )
    login = SERVER["user"] + (f":{SERVER['password']}" if SERVER["password"] else "")
    direct = dict(base, DATABASE_URL=f"postgres://{login}@{POSTGRES[0]}:{POSTGRES[1]}/{DATABASE}")
    relayed = dict(
        base,
        DATABASE_URL=f"postgres://{login}@127.0.0.1:{relay.port}/{DATABASE}?connect_timeout=2",
    )
    manage(direct, "migrate", "--noinput")
    loop = subprocess.Popen(
        [PYTHON, "-m", "opsconsole.cli", "deliver_alerts", "--every", "0.2", "--no-live"],
        env=relayed,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        time.sleep(2)  # the loop is up and idle, connected through the relay
        relay.cut()
        manage(direct, "shell", "--no-imports", "-c", RECORD_A_FAILED_RUN)
        time.sleep(2)  # rounds fail on the database meanwhile
        assert receiver.received == []
        assert loop.poll() is None, "the loop must outlive the blip"
        relay.restore()
        [post] = receiver.wait_for(1, timeout=30)
        assert "blip failed" in post.json["title"]
        time.sleep(1)
        assert len(receiver.received) == 1, "told once"
    finally:
        os.killpg(loop.pid, signal.SIGTERM)
        try:
            _, err = loop.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(loop.pid, signal.SIGKILL)
            _, err = loop.communicate()
        relay.close()
    assert b"alert round failed on the database" in err
