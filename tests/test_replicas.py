"""Replicas: several `opsconsole serve` on one PostgreSQL behind a load balancer.

The fleet-wide duties (alert rules and their outbox, the hosts' silence and expiring
requests, retention) run on one console at a time under advisory locks; a request for
a host is handed out once whichever console its report reaches; two consoles answer
the same body and ETag for the same state. The first tests drive the pieces on the
Django test database; the last runs two real consoles, a reporting host whose reports
go through a round-robin proxy to both, and SIGKILLs the console holding the duties.

The real-process test runs on the PostgreSQL server of DATABASE_URL (if it is one),
else of OPSCONSOLE_TEST_PG (default postgres://postgres@127.0.0.1:5432), in a database
of its own (dropped at the next run's start); without a server it skips, unless
OPSCONSOLE_REQUIRE_POSTGRES=1 (CI sets it).

One piece: the replicas' guarantees and the two-console deployment that shows them
together, with the consoles, the database and the lock queries they share.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from django.db import connection, transaction

from fleet.host_requests import deliver_actions, finish_action
from jobs_app.models import AuditEntry
from monitor_app.duties import ALERTS, FLEET, RETENTION, DutyLocks, lock_key
from monitor_app.models import Event, EventKind, RemoteAction
from tests.alert_receivers import start_webhook
from tests.conftest import PYTHON, REPO_ROOT
from tests.console_processes import Console, answers
from tests.live_helpers import wait_until
from tests.round_robin_proxy import RoundRobinProxy
from tests.server_fixtures import free_port

SAMPLE_SECONDS = 1


# ----------------------------------------------------------------------------- the locks


def holder_pids(duty: str) -> list[int]:
    """Backends holding the duty's advisory lock in the test database."""
    classid, objid = lock_key(duty)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND classid::bigint = %s AND objid::bigint = %s",
            [classid % (1 << 32), objid % (1 << 32)],
        )
        return [row[0] for row in cursor.fetchall()]


@pytest.mark.django_db(transaction=True)
def test_one_console_holds_each_duty_and_a_survivor_takes_it_when_the_holder_dies():
    first, second = DutyLocks(name="console-1"), DutyLocks(name="console-2")
    try:
        if connection.vendor != "postgresql":
            # SQLite: one console's process tree by definition; every duty is its own.
            assert first.held(ALERTS) and second.held(ALERTS)
            assert first._db is None, "no lock connection is opened"
            return
        assert first.held(ALERTS, round_id=1)
        assert not second.held(ALERTS, round_id=1), "one holder at a time"
        assert second.held(FLEET, round_id=1), "each duty is locked on its own"
        assert not first.held(FLEET, round_id=2)
        assert first.held(ALERTS, round_id=2), "held from one round to the next"
        assert len(holder_pids(ALERTS)) == 1 and len(holder_pids(FLEET)) == 1

        # The holder dies (its connection ends, as a SIGKILLed console's does): the
        # survivor's next ask takes the duty; the dead one's next ask finds it lost.
        [pid] = holder_pids(ALERTS)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
        wait_until(lambda: not holder_pids(ALERTS), timeout=10)
        assert second.held(ALERTS, round_id=3)
        assert not first.held(ALERTS, round_id=3), "its locks went with its connection"
        assert first.held(RETENTION, round_id=4), "and it asks again: a new connection"

        # A clean stop gives every duty up at once.
        second.release()
        assert first.held(ALERTS, round_id=5) and first.held(FLEET, round_id=5)
        assert not second.held(FLEET, round_id=6)
    finally:
        first.release()
        second.release()


@pytest.mark.django_db(transaction=True)
def test_a_request_is_handed_out_once_when_two_reports_of_its_host_arrive_at_once():
    action = RemoteAction.objects.create(
        host="h1", kind=RemoteAction.Kind.STOP, session_id=None, requested_by="ops"
    )
    if connection.vendor != "postgresql":
        pytest.skip("SQLite has one writer at a time: two reports never overlap")
    from django.utils import timezone

    handed: dict[str, list] = {}
    first_holds, second_done = threading.Event(), threading.Event()

    def first_report():
        try:
            with transaction.atomic():
                handed["first"] = deliver_actions("h1", timezone.now())
                first_holds.set()
                second_done.wait(20)  # its transaction stays open meanwhile
        finally:
            connection.close()

    def second_report():
        try:
            first_holds.wait(20)
            began = time.monotonic()
            with transaction.atomic():
                handed["second"] = deliver_actions("h1", timezone.now())
            handed["second_seconds"] = [time.monotonic() - began]
        finally:
            second_done.set()
            connection.close()

    threads = [threading.Thread(target=first_report), threading.Thread(target=second_report)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert "second" in handed, "the other console's report waited for the first one's"
    assert [a["id"] for a in handed["first"]] == [action.pk]
    assert handed["second"] == [], "the other console's report skips it"
    assert handed["second_seconds"][0] < 5, "and does not wait for that report"
    assert deliver_actions("h1", timezone.now()) == [], "sent: never handed out again"

    # The host's answer may reach both consoles (sent again until acknowledged): once.
    answer = {"id": action.pk, "ok": True, "message": "stopped", "terminated": [1]}
    finish_action(answer, "h1", timezone.now())
    finish_action(answer, "h1", timezone.now())
    assert RemoteAction.objects.get(pk=action.pk).state == RemoteAction.State.DONE
    assert AuditEntry.objects.filter(action="stop", detail__remote_action=action.pk).count() == 1
    assert Event.objects.filter(kind=EventKind.REMOTE_ACTION).count() == 1


# ----------------------------------------------------------------------------- two consoles


def server_url() -> str:
    """The PostgreSQL server the real-process test makes its database on."""
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith(("postgres://", "postgresql://")):
        parts = urlsplit(url)
        return urlunsplit((parts.scheme, parts.netloc, "", "", ""))
    return os.environ.get("OPSCONSOLE_TEST_PG", "postgres://postgres@127.0.0.1:5432")


def database_name() -> str:
    path = urlsplit(os.environ.get("DATABASE_URL", "")).path.strip("/")
    base = path if path and os.environ.get("DATABASE_URL", "").startswith("postgres") else ""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return f"{base or 'opsconsole'}_replicas_{worker}"


def admin(sql: str) -> None:
    with psycopg.connect(server_url() + "/postgres", autocommit=True, connect_timeout=5) as db:
        db.execute(sql)


def postgres_problem() -> str | None:
    try:
        admin("SELECT 1")
    except psycopg.Error as exc:
        return f"no PostgreSQL at {server_url()}: {exc}"
    return None


@pytest.fixture
def replicas(state, fake_claude, tmp_path):
    """Two consoles on one PostgreSQL database, a round-robin proxy in front of them, a
    webhook both alert to, and host h1's `opsconsole monitor --report-to` the proxy."""
    problem = postgres_problem()
    if problem:
        required = os.environ.get("OPSCONSOLE_REQUIRE_POSTGRES") == "1"
        if required or os.environ.get("DATABASE_URL", "").startswith("postgres"):
            pytest.fail(problem)
        pytest.skip(problem)
    name = database_name()
    admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin(f'CREATE DATABASE "{name}"')
    receiver = start_webhook()
    base = {k: v for k, v in state.env.items() if not k.startswith(("OPSCONSOLE_", "FAKE_"))}
    base.pop("DATABASE_URL", None)
    consoles = []
    for letter in ("a", "b"):
        root = tmp_path / f"console-{letter}"
        (root / "claude").mkdir(parents=True, mode=0o700)
        env = dict(
            base,
            DATABASE_URL=f"{server_url()}/{name}",
            OPSCONSOLE_HOME=str(root / "home"),
            OPSCONSOLE_HOST_NAME=f"console-{letter}",
            CLAUDE_CONFIG_DIR=str(root / "claude"),
            OPSCONSOLE_CLAUDE_CONFIG_DIRS=str(root / "claude"),
            OPSCONSOLE_SAMPLE_SECONDS=str(SAMPLE_SECONDS),
            OPSCONSOLE_SCHEDULERS="cron",
            OPSCONSOLE_ALERT_URLS=f"json://127.0.0.1:{receiver.port}/replicas",
            OPSCONSOLE_BASE_URL="https://ops.example.com",
            # The telemetry receiver's port is one per machine: these two share one.
            OPSCONSOLE_TELEMETRY_RECEIVER="0",
            DJANGO_SETTINGS_MODULE="opsconsole.settings",
        )
        consoles.append(Console(f"console-{letter}", env, free_port(), root / "console.log"))
    first = consoles[0]
    token = first.set_up()
    host_token = first.manage("create_host_token", "h1").strip().splitlines()[-1]
    proxy = RoundRobinProxy([("127.0.0.1", c.port) for c in consoles])
    host_env = dict(
        state.env,
        OPSCONSOLE_HOST_NAME="h1",
        OPSCONSOLE_CLAUDE_CONFIG_DIRS=str(state.config_dir),
        OPSCONSOLE_SAMPLE_SECONDS=str(SAMPLE_SECONDS),
        # Idle, the host reports this often: silent 5 + 3 x 1 s after its last report.
        OPSCONSOLE_HEARTBEAT_SECONDS="5",
        OPSCONSOLE_STOP_GRACE_SECONDS="2",
        OPSCONSOLE_SCHEDULERS="cron",
        OPSCONSOLE_TELEMETRY_RECEIVER="0",
        OPSCONSOLE_REPORT_TOKEN=host_token,
        DJANGO_SETTINGS_MODULE="opsconsole.settings",
    )
    host_env.pop("DATABASE_URL", None)
    monitor = None
    try:
        for console in consoles:
            console.token = token
            console.start()
        for console in consoles:
            console.wait_answering()
        with (tmp_path / "h1-monitor.log").open("ab") as log:
            monitor = subprocess.Popen(
                [
                    PYTHON,
                    "-m",
                    "opsconsole.cli",
                    "monitor",
                    "--report-to",
                    f"http://127.0.0.1:{proxy.port}",
                ],
                env=host_env,
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        yield consoles, proxy, receiver, host_env, monitor, name
    finally:
        if monitor is not None and monitor.poll() is None:
            os.killpg(monitor.pid, signal.SIGKILL)
            monitor.wait(timeout=10)
        for console in consoles:
            console.kill()
        proxy.close()
        receiver.server.shutdown()
        # The database stays until the next run (dropped at its start): a failure's to read.


def duty_holders(database: str) -> dict[str, list[str]]:
    """Each duty's holders, by the console (application_name) whose connection holds it."""
    holders: dict[str, list[str]] = {}
    with psycopg.connect(f"{server_url()}/{database}", autocommit=True) as db:
        for duty in (ALERTS, FLEET, RETENTION):
            classid, objid = lock_key(duty)
            rows = db.execute(
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a "
                "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
                "AND l.database = (SELECT oid FROM pg_database WHERE datname = %s) "
                "AND l.classid::bigint = %s AND l.objid::bigint = %s",
                [database, classid % (1 << 32), objid % (1 << 32)],
            ).fetchall()
            holders[duty] = [row[0] for row in rows]
    return holders


def run_on_host(env: dict, tag: str, behaviour: str) -> subprocess.Popen:
    return subprocess.Popen(
        [PYTHON, "-m", "wrapper", "--tag", tag, "--", "-p", "x"],
        env=dict(env, FAKE_CLAUDE_BEHAVIOUR=behaviour),
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def titles(receiver) -> list[str]:
    return [r.json["title"] for r in receiver.accepted]


def same_answer(consoles, path: str) -> int:
    """How many times the two consoles were seen answering one state: A, then B, then A
    again with A's ETag unchanged (so the state did not move in between). Whenever that
    is so, B's ETag and body must be A's."""
    a, b = consoles
    seen = 0
    deadline = time.monotonic() + 30
    while seen < 3 and time.monotonic() < deadline:
        _, head_a, body_a = a.request(path)
        _, head_b, body_b = b.request(path)
        _, head_a2, _ = a.request(path)
        if head_a["ETag"] == head_a2["ETag"]:
            assert head_b["ETag"] == head_a["ETag"], (path, body_a[:300], body_b[:300])
            assert body_b == body_a, path
            seen += 1
    return seen


def test_two_consoles_on_one_postgresql_share_the_fleet_duties_and_survive_a_sigkill(
    replicas, state
):
    consoles, proxy, receiver, host_env, monitor, database = replicas
    by_name = {c.name: c for c in consoles}

    # The host's reports reach both consoles, and both show it.
    for console in consoles:
        wait_until(
            answers(lambda c=console: "h1" in {h["host"] for h in c.json("/api/hosts")["hosts"]}),
            timeout=60,
            interval=0.3,
        )
    wait_until(lambda: len(proxy.forwarded) == 2 and min(proxy.forwarded.values()) >= 2, 90)

    # Each fleet duty is held by exactly one console's lock connection.
    holders = wait_until(
        lambda: (
            (h := duty_holders(database))
            and all(len(h[d]) == 1 for d in (ALERTS, FLEET, RETENTION))
            and h
        ),
        timeout=90,
    )
    assert {n for names in holders.values() for n in names} <= {
        "opsconsole console-a",
        "opsconsole console-b",
    }, holders

    # Same state, same answer, from either console.
    assert same_answer(consoles, "/api/claude-active?host=all") >= 1
    assert same_answer(consoles, "/api/claude-active?host=h1") >= 1
    # From here on every alert is the test's doing. (Before, a console's supervisor
    # may restart its monitor under load while it sends an alert: that one alert is
    # sent again after its lease, as docs/scale.md says; not this test's subject.)
    settled_at, posts_before = datetime.now(UTC), len(receiver.received)

    # Runs on h1: two fail (an alert each), one succeeds, one runs until it is stopped.
    long_run = run_on_host(host_env, "replica-long", "sleep:120")
    first_runs = [
        run_on_host(host_env, "replica-fail-1", "exit:3"),
        run_on_host(host_env, "replica-fail-2", "exit:4"),
        run_on_host(host_env, "replica-ok-1", "succeed"),
    ]
    for run in first_runs:
        assert run.wait(timeout=60) in (3, 4, 0)
    wait_until(lambda: len(receiver.accepted) >= 2, timeout=60)

    # A stop asked on console B reaches h1 through whichever console its report hits.
    live = wait_until(
        answers(
            lambda: [
                s
                for s in by_name["console-b"].json("/api/claude-active?host=h1")["sessions"]
                if s["script_tag"] == "replica-long"
            ]
        ),
        timeout=90,
    )
    target = live[0]["session_id"]
    status, _, body = by_name["console-b"].request(f"/api/sessions/{target}/stop", b"")
    assert status == 202, body
    action_url = json.loads(body)["url"]
    assert long_run.wait(timeout=30) is not None
    done = wait_until(
        answers(
            lambda: (
                (a := by_name["console-a"].json(action_url))["state"] in ("done", "failed") and a
            )
        ),
        timeout=90,
    )
    assert done["state"] == "done", done

    # SIGKILL the console running the alert rules; the other takes the duties over at
    # its next round, and the host's reports go on to it.
    holder = duty_holders(database)[ALERTS][0].removeprefix("opsconsole ")
    dead, survivor = by_name[holder], next(c for c in consoles if c.name != holder)
    dead.kill()
    seq_at_kill = survivor.json(f"/api/claude-active?host={survivor.name}")["seq"]
    taken = wait_until(
        lambda: (
            (h := duty_holders(database))[ALERTS] == [f"opsconsole {survivor.name}"]
            and h[FLEET] == [f"opsconsole {survivor.name}"]
            and survivor.json(f"/api/claude-active?host={survivor.name}")["seq"]
        ),
        timeout=90,
        interval=0.05,
    )
    # Counted in the survivor's samples (a loaded machine slows both): the round in
    # progress when the holder died, then the next one.
    assert taken - seq_at_kill <= 2, (seq_at_kill, taken)

    second_runs = [
        run_on_host(host_env, "replica-fail-3", "exit:5"),
        run_on_host(host_env, "replica-ok-2", "succeed"),
    ]
    for run in second_runs:
        assert run.wait(timeout=60) in (5, 0)
    wait_until(lambda: any("replica-fail-3" in t for t in titles(receiver)), timeout=60)

    # Every run is on record once, and ended once.
    tags = {
        "replica-long",
        "replica-fail-1",
        "replica-fail-2",
        "replica-ok-1",
        "replica-fail-3",
        "replica-ok-2",
    }
    sessions = wait_until(
        answers(
            lambda: (
                (
                    rows := [
                        s
                        for s in survivor.json("/api/sessions?host=h1")["sessions"]
                        if s["script_tag"] in tags and s["status"] not in ("live", "orphaned")
                    ]
                )
                and len(rows) == len(tags)
                and rows
            )
        ),
        timeout=60,
    )
    assert sorted(s["script_tag"] for s in sessions) == sorted(tags)
    ended = survivor.json("/api/events?kind=run_ended&host=h1&limit=200")["events"]
    for session in sessions:
        assert [e["session_id"] for e in ended].count(session["session_id"]) == 1, session

    # The fleet round goes on on the survivor: it finds the dead console's own machine
    # silent, then h1 once its monitor stops.
    def silences(host: str) -> int:
        return len(survivor.json(f"/api/events?kind=monitor_silent&host={host}")["events"])

    wait_until(answers(lambda: silences(dead.name) >= 1), timeout=90)
    before = silences("h1")
    os.killpg(monitor.pid, signal.SIGTERM)
    monitor.wait(timeout=90)
    wait_until(answers(lambda: silences("h1") > before), timeout=90)
    wait_until(lambda: any("silent" in t and t.endswith(" on h1") for t in titles(receiver)), 90)

    # Every alert sent once: what the webhook received is what the outbox says it
    # delivered, one post per delivery (a duplicate send would be a post too many).
    def sent_once():
        outbox = outbox_delivered(database, settled_at)
        if outbox is None:
            return None
        delivered, earlier = outbox
        posts = [
            r.json["title"]
            for r, status in zip(
                receiver.received[posts_before:], receiver.answered[posts_before:], strict=True
            )
            if status < 300 and r.json["title"] not in earlier
        ]
        delivered = [t for t in delivered if t not in earlier]
        return Counter(posts) == Counter(delivered) and delivered

    delivered = wait_until(sent_once, timeout=90)
    for tag in ("replica-fail-1", "replica-fail-2", "replica-fail-3"):
        assert sum(tag in t for t in delivered) == 1, delivered
    assert not any("replica-long" in t or "replica-ok" in t for t in titles(receiver))


def outbox_delivered(database: str, since: datetime) -> tuple[list[str], set[str]] | None:
    """The titles of the alerts raised since `since` the outbox delivered, one per
    delivery, and the titles of those raised before; None while a delivery is due."""
    with psycopg.connect(f"{server_url()}/{database}", autocommit=True) as db:
        waiting = db.execute(
            "SELECT count(*) FROM alerts_app_delivery "
            "WHERE delivered_at IS NULL AND given_up_at IS NULL"
        ).fetchone()[0]
        if waiting:
            return None
        rows = db.execute(
            "SELECT a.title FROM alerts_app_delivery d JOIN alerts_app_alert a "
            "ON a.id = d.alert_id WHERE d.delivered_at IS NOT NULL AND a.created_at >= %s",
            [since],
        ).fetchall()
        earlier = db.execute(
            "SELECT title FROM alerts_app_alert WHERE created_at < %s", [since]
        ).fetchall()
    return [row[0] for row in rows], {row[0] for row in earlier}
