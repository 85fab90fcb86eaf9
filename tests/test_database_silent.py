"""A database that accepts connections and never answers, mid-load (issue 21, finding 6).

`opsconsole serve` (gunicorn and its monitor) talks to PostgreSQL through a TCP proxy
that the test switches to silent while pages, the API and a logged-in person are
polling, with connections already pooled. Before: every thread hung on its pooled
connection (/login/ and the token API included), the monitor and its supervisor hung
with it, and the person's live view worked for the first request only.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import psycopg
import pytest
from django.db import OperationalError

from tests.conftest import PYTHON, REPO_ROOT, wrapper_command
from tests.live_helpers import monitor_sample, wait_until
from tests.server_fixtures import ADMIN_PASSWORD, free_port, manage
from tests.silent_proxy import SilentProxy
from tests.test_alerts_db_blip import POSTGRES, SERVER, postgres_admin

DATABASE = "opsconsole_finding6_silent"
# Client-side bounds the console runs with here (seconds): each wait for an answer, and
# each connection attempt. Every request must be answered well within BOUND.
ANSWER_TIMEOUT = 4
CONNECT_TIMEOUT = 2
BOUND = 12.0
SAMPLE_SECONDS = 2.0
# The silence lasts at least this many monitor samples: longer than BOUND, so a request
# that hangs until the database answers again is seen to.
SILENT_SAMPLES = 9


@pytest.fixture
def silent_database_proxy():
    try:
        postgres_admin(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        postgres_admin(f"CREATE DATABASE {DATABASE}")
    except Exception as exc:
        pytest.skip(f"needs PostgreSQL on {POSTGRES[0]}:{POSTGRES[1]}: {exc}")
    proxy = SilentProxy(POSTGRES)
    yield proxy
    proxy.close()
    postgres_admin(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")


def database_url(host: str, port: int) -> str:
    login = SERVER["user"] + (f":{SERVER['password']}" if SERVER["password"] else "")
    return f"postgres://{login}@{host}:{port}/{DATABASE}"


def direct_query(sql: str, *params) -> list[tuple]:
    with psycopg.connect(**SERVER, dbname=DATABASE, connect_timeout=5) as conn:
        return conn.execute(sql, params).fetchall()


@dataclass
class Answer:
    who: str
    path: str
    status: int
    seconds: float
    body: bytes


@dataclass
class Load:
    """Clients polling the console until stopped, every answer kept."""

    base: str
    person: urllib.request.OpenerDirector
    token: str
    answers: list[Answer] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def fetch(self, who: str, path: str) -> Answer:
        if who == "person":
            opener, headers = self.person, {}
        else:
            opener = urllib.request.build_opener()
            headers = {"Authorization": f"Bearer {self.token}"} if who == "token" else {}
        started = time.monotonic()
        try:
            request = urllib.request.Request(self.base + path, headers=headers)
            with opener.open(request, timeout=60) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, body = error.code, error.read()
        except OSError as error:  # a timeout or a reset: recorded, asserted on below
            status, body = 0, str(error).encode()
        answer = Answer(who, path, status, time.monotonic() - started, body)
        self.answers.append(answer)
        return answer

    def poll(self, who: str, paths: list[str]) -> None:
        while not self.stop.is_set():
            for path in paths:
                self.fetch(who, path)

    def since(self, mark: int) -> list[Answer]:
        return self.answers[mark:]


def log_in(base: str, username: str, password: str) -> urllib.request.OpenerDirector:
    """A person's browser: a cookie jar holding the session of a real login."""
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )
    form = opener.open(base + "/login/", timeout=30).read().decode()
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form).group(1)
    data = urllib.parse.urlencode(
        {"username": username, "password": password, "csrfmiddlewaretoken": csrf}
    ).encode()
    request = urllib.request.Request(base + "/login/", data=data, headers={"Referer": base})
    with opener.open(request, timeout=30) as response:
        assert response.url.rstrip("/") == base, response.url  # sent on to the live page
    return opener


def start_run(state, tag: str, seconds: float) -> subprocess.Popen:
    return subprocess.Popen(
        wrapper_command(tag, "-p", "hello"),
        env=dict(state.env, FAKE_CLAUDE_BEHAVIOUR=f"sleep:{seconds}"),
        cwd=state.workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def runs_on_record(tag: str) -> list[tuple]:
    return direct_query(
        "select session_id, status from sessions_app_session where script_tag = %s", tag
    )


def end_events(tag: str) -> int:
    [(count,)] = direct_query(
        "select count(*) from monitor_app_event where script_tag = %s and kind = 'run_ended'",
        tag,
    )
    return count


def test_finding6_silent_database_a_pooled_connection_gives_up_at_its_deadline(
    silent_database_proxy, django_db_blocker, monkeypatch
):
    """The backend alone: a persistent connection whose server falls silent ends its
    wait at the client-side deadline, is then found unusable at once, and a new one
    works when the server answers again. A wait that ended leaves nothing armed."""
    # A browser test earlier in this worker leaves Playwright's event loop set on this
    # thread (its browser lives for the session), and Django then refuses to open a
    # connection here; this test's connections are plain synchronous ones.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from django.db.utils import ConnectionHandler

    from opsconsole.postgresql.base import deadlines

    proxy = silent_database_proxy
    handler = ConnectionHandler(
        {
            "default": {
                "ENGINE": "opsconsole.postgresql",
                "NAME": DATABASE,
                "USER": SERVER["user"],
                "PASSWORD": SERVER["password"],
                "HOST": "127.0.0.1",
                "PORT": proxy.port,
                "CONN_MAX_AGE": 60,
                "CONN_HEALTH_CHECKS": True,
                "OPTIONS": {"connect_timeout": CONNECT_TIMEOUT},
                "CLIENT_TIMEOUT": 1.0,
            }
        }
    )
    connection = handler["default"]
    try:
        django_db_blocker.unblock()  # a database of its own, not the test database
        with connection.cursor() as cursor:
            cursor.execute("select 1")
            assert cursor.fetchone() == (1,)
        assert deadlines.pending() == 0

        proxy.go_silent()

        errors = []

        def query_the_silent_server():
            try:
                with connection.cursor() as cursor:
                    cursor.execute("select 2")
            except OperationalError as exc:
                errors.append(exc)

        # In a thread of its own, so that a wait without a deadline fails the test
        # (closing the proxy then ends it) instead of hanging it.
        connection.inc_thread_sharing()
        waiting = threading.Thread(target=query_the_silent_server, daemon=True)
        waiting.start()
        waiting.join(timeout=BOUND)
        connection.dec_thread_sharing()
        assert not waiting.is_alive(), "still waiting for the silent server"
        assert "did not answer within 1 s" in str(errors[0])
        assert deadlines.pending() == 0
        assert not connection.is_usable()  # the socket is shut: no second wait

        proxy.forward_again()
        connection.close()
        with connection.cursor() as cursor:
            cursor.execute("select 3")
            assert cursor.fetchone() == (3,)
    finally:
        connection.close()
        django_db_blocker.restore()


# The supervisor's report of a silent monitor, against a database that never answers.
REPORT_SILENT_MONITOR = """
import json, time, django
django.setup()
from opsconsole.supervise import Supervisor
supervisor = Supervisor(web=[], monitor=None)
supervisor.report_silent()
waiting = supervisor.reporter.is_alive()
supervisor.reporter.join(60)
print(json.dumps({"waiting_after_return": waiting, "ended": not supervisor.reporter.is_alive()}))
"""


def test_finding6_silent_database_the_supervisor_never_waits_for_it(state):
    """Before: the supervisor wrote the alert about a silent monitor itself, and with the
    database silent it stopped supervising (the web server and the monitor) for good."""
    proxy = SilentProxy(("127.0.0.1", 9))
    proxy.go_silent()  # accepts, never answers
    try:
        result = subprocess.run(
            [PYTHON, "-c", REPORT_SILENT_MONITOR],
            env=dict(
                state.env,
                DJANGO_SETTINGS_MODULE="opsconsole.settings",
                DATABASE_URL=f"postgres://nobody@127.0.0.1:{proxy.port}/opsconsole",
                OPSCONSOLE_DB_CONNECT_TIMEOUT=str(CONNECT_TIMEOUT),
            ),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        proxy.close()
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    # report_silent() returned while the report still waited for the database, which
    # then gave up (logged) within its connect timeout.
    assert outcome == {"waiting_after_return": True, "ended": True}, result.stderr
    assert "could not report the silent monitor" in result.stderr


def test_finding6_silent_database_mid_load_bounded_answers_monitor_samples_runs_kept(
    state, fake_claude, tmp_path, silent_database_proxy
):
    proxy = silent_database_proxy
    direct = dict(
        state.env,
        DATABASE_URL=database_url(*POSTGRES),
        DJANGO_SETTINGS_MODULE="opsconsole.settings",
    )
    direct.pop("OPSCONSOLE_DEBUG", None)
    manage(direct, "migrate", "--noinput")
    manage(
        direct,
        "shell",
        "--no-imports",
        "-c",
        "from django.contrib.auth import get_user_model; "
        f"get_user_model().objects.create_superuser('ops', password='{ADMIN_PASSWORD}')",
    )
    token = manage(direct, "create_api_token", "ops").strip().splitlines()[-1]

    port = free_port()
    env = dict(
        direct,
        DATABASE_URL=database_url("127.0.0.1", proxy.port),
        OPSCONSOLE_DB_TIMEOUT_SECONDS=str(ANSWER_TIMEOUT),
        OPSCONSOLE_DB_STATEMENT_TIMEOUT=str(ANSWER_TIMEOUT - 1),
        OPSCONSOLE_DB_CONNECT_TIMEOUT=str(CONNECT_TIMEOUT),
        OPSCONSOLE_DB_RETRY_SECONDS="3",
        OPSCONSOLE_SAMPLE_SECONDS=str(SAMPLE_SECONDS),
        OPSCONSOLE_SNAPSHOT_SECONDS="1",
        OPSCONSOLE_POLL_SECONDS="1",
        OPSCONSOLE_SCHEDULERS="cron",
        OPSCONSOLE_CLAUDE_CONFIG_DIRS=str(state.config_dir),
    )
    log = tmp_path / "console.log"
    with log.open("wb") as handle:
        console = subprocess.Popen(
            [PYTHON, "-m", "opsconsole.cli", "serve", "--bind", f"127.0.0.1:{port}"],
            env=env,
            cwd=REPO_ROOT,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    runs: list[subprocess.Popen] = []
    load = None
    pool = ThreadPoolExecutor(max_workers=6)  # two clients of each kind
    try:
        wait_until(lambda: console.poll() is None and monitor_sample(state), timeout=90)
        wait_until(lambda: Load(base, None, token).fetch("anonymous", "/login/").status == 200)
        person = log_in(base, "ops", ADMIN_PASSWORD)
        load = Load(base, person, token)
        assert load.fetch("person", "/").status == 200
        assert load.fetch("token", "/api/claude-active").status == 200

        # A run the console has on record as live before the silence, ending during it.
        runs.append(start_run(state, "before-silence", 10))
        wait_until(lambda: runs_on_record("before-silence"), timeout=60)

        # Load first, so that every server thread holds a pooled connection.
        clients = {
            "person": ["/", "/live/rows/", "/history/", "/jobs/"],
            "token": ["/api/claude-active", "/api/sessions"],
            "anonymous": ["/login/"],
        }
        for who, paths in [*clients.items(), *clients.items()]:
            pool.submit(load.poll, who, paths)
        wait_until(lambda: len(load.answers) > 60, timeout=60)
        assert {a.status for a in load.answers} == {200}, [
            (a.path, a.status) for a in load.answers if a.status != 200
        ]

        # ------------------------------------------------------------ silence
        first = monitor_sample(state)[0]
        mark = len(load.answers)
        proxy.go_silent()
        runs.append(start_run(state, "during-silence", 1))
        for run in runs:
            run.wait(timeout=60)
        silent_sample = wait_until(
            lambda: (
                (s := monitor_sample(state))
                and s[0].seq >= first.seq + SILENT_SAMPLES
                and s[1]["database_error"]
                and s
            ),
            timeout=120,
        )
        assert "OperationalError" in silent_sample[1]["database_error"]
        assert silent_sample[0].monitor_pid == first.monitor_pid, "the monitor was not restarted"
        during = load.since(mark)
        proxy.forward_again()

        # Every answer bounded; the logged-in person kept the live view all along.
        slowest = max(during, key=lambda a: a.seconds)
        assert slowest.seconds < BOUND, (slowest.who, slowest.path, slowest.seconds)
        person_live = [a for a in during if a.who == "person" and a.path in ("/", "/live/rows/")]
        assert len(person_live) >= 5
        assert all(a.status == 200 for a in person_live), [
            (a.path, a.status, a.body[:200]) for a in person_live if a.status != 200
        ]
        assert any(b"Database unreachable" in a.body for a in person_live)
        for answer in during:
            if answer.path == "/login/":
                assert answer.status == 200, answer
            else:
                assert answer.status in (200, 503), (answer.who, answer.path, answer.status)

        # ------------------------------------------------------------ the database is back
        for tag in ("before-silence", "during-silence"):
            wait_until(
                lambda tag=tag: (
                    [status for _, status in runs_on_record(tag)] == ["succeeded"]
                    and end_events(tag) == 1
                ),
                timeout=60,
            )
        back = wait_until(lambda: (a := load.fetch("person", "/history/")).status == 200 and a)
        assert b"during-silence" in back.body
    finally:
        if load is not None:
            load.stop.set()
        for run in runs:
            if run.poll() is None:
                run.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        os.killpg(console.pid, signal.SIGTERM)
        try:
            console.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(console.pid, signal.SIGKILL)
    for tag in ("before-silence", "during-silence"):
        assert len(runs_on_record(tag)) == 1 and end_events(tag) == 1, "on record once"
    print(json.dumps({"slowest_during_silence_s": round(slowest.seconds, 2)}))
