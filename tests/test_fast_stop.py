"""A stop in a second: requests pushed to a reporting host through its held poll.

The first tests drive the console's side (fleet.action_push, the endpoint, the bell)
on the test database; the last start real consoles and a real reporting host, ask for
stops and time each from the request to the run's wrapper gone: on SQLite (the bell's
fallback, a short query) and on two consoles sharing PostgreSQL, the host polling one
and the stop asked on the other (LISTEN/NOTIFY across replicas).
"""

from __future__ import annotations

import signal
import statistics
import threading
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.utils import timezone

from fleet.action_poll import ActionPoller
from fleet.action_push import HeldPolls, wait_for_actions
from fleet.host_requests import finish_action
from jobs_app.models import AuditEntry
from monitor_app import action_bell
from monitor_app.action_bell import Bell
from monitor_app.models import HostToken, RemoteAction
from monitor_app.remote_actions import request_action
from opsconsole import auth
from opsconsole.api import host_actions
from opsconsole.models import ApiToken
from sessions_app.models import Session
from tests.fast_stop_fleet import fleet, hops
from tests.held_polls import (
    Polls,
    console_serving,
    hosts_with_tokens,
    live_runs_on,
    median_ms,
    stop_and_time,
    tokens_checked,
)
from tests.live_helpers import wait_until
from tests.test_fleet import host_a  # noqa: F401 - a fixture
from tests.test_replicas import admin, database_name, postgres_problem, server_url

# Within 1 s, the issue says. A stop measured here is ~0.2-0.4 s on an idle 2-core
# machine; the margin is for the other tests and helpers sharing it.
STOP_WITHIN_SECONDS = 1.0
# The host reports every 2 s, as deployed: a stop riding a report would take 1-2 s, so
# under 1 s is the push's doing. PUSHED_AT_LEAST: a report that reaches the console
# between the request and the poll's look hands the request out itself (once, either
# way: via "report"), so not every stop need be pushed; two of three must.
HOST_SAMPLE = "2"


def live_session(host: str = "h1") -> Session:
    return Session.objects.create(
        session_id=uuid.uuid4(),
        host=host,
        script_tag="long",
        status="live",
        started_at=timezone.now(),
    )


@pytest.fixture
def doorbell(monkeypatch):
    """A bell of this test's own, rung by request_action as the process's bell is."""
    own = Bell()
    monkeypatch.setattr(action_bell, "bell", own)
    yield own
    own.close()  # its thread ends


def held(doorbell: Bell, host: str = "h1") -> None:
    wait_until(lambda: host in doorbell.waiting_hosts(), timeout=10, interval=0.01)


def queued(host: str = "h1") -> RemoteAction:
    """A request as another console queues it: a row, with no ring in this process."""
    return RemoteAction.objects.create(host=host, kind="stop", session_id=uuid.uuid4())


# ----------------------------------------------------------------------------- the console


@pytest.mark.django_db(transaction=True)
def test_a_pending_request_is_handed_out_at_once_and_only_once():
    action = queued()
    actions = wait_for_actions("h1", 0)  # no wait at all: found at the first look
    assert [a["id"] for a in actions] == [action.pk]
    action.refresh_from_db()
    assert action.state == RemoteAction.State.SENT and action.sent_at is not None
    # Handed out: neither a second poll nor a report gets it again.
    assert wait_for_actions("h1", 0) == []


@pytest.mark.django_db(transaction=True)
def test_a_held_poll_answers_when_a_request_is_asked_and_not_before(monkeypatch):
    # The bell's fallback looks once, then not for an hour: only the ring wakes the poll.
    doorbell = Bell(check_seconds=3600)
    monkeypatch.setattr(action_bell, "bell", doorbell)
    session = live_session()
    answered: list = []
    poll = threading.Thread(
        target=lambda: answered.append(wait_for_actions("h1", 120, doorbell=doorbell))
    )
    try:
        poll.start()
        held(doorbell)
        if connection.vendor == "sqlite":  # its one fallback look is behind it
            wait_until(lambda: doorbell.checks >= 1, timeout=10, interval=0.01)
        assert answered == [] and poll.is_alive()
        action = request_action("stop", session, "alice")
        poll.join(timeout=10)  # a bound well under the poll's own wait (25 s)
        assert [a["id"] for a in answered[0]] == [action.pk], answered
        assert answered[0][0]["requested_by"] == "alice"
    finally:
        doorbell.close()


@pytest.mark.django_db(transaction=True)
def test_a_request_queued_by_another_console_is_found_by_the_fallback_check(doorbell):
    """SQLite: no NOTIFY; the bell's short query finds a row it was not rung for."""
    if connection.vendor != "sqlite":
        pytest.skip("on PostgreSQL every console's request rings (NOTIFY): no fallback look")
    answered: list = []
    poll = threading.Thread(
        target=lambda: answered.append(wait_for_actions("h1", 120, doorbell=doorbell))
    )
    poll.start()
    held(doorbell)
    action = queued()
    poll.join(timeout=10)  # a bound well under the poll's own wait (25 s)
    assert [a["id"] for a in answered[0]] == [action.pk]


@pytest.mark.django_db(transaction=True)
def test_two_polls_of_one_host_share_a_request_out_once_and_an_empty_poll_ends_on_time(
    doorbell,
):
    answered: list = []
    polls = [
        threading.Thread(
            target=lambda: answered.append(wait_for_actions("h1", 1.5, doorbell=doorbell))
        )
        for _ in range(2)
    ]
    began = time.monotonic()
    for poll in polls:
        poll.start()
    wait_until(lambda: len(doorbell.waiters.get("h1", ())) == 2, timeout=10, interval=0.01)
    action = request_action("stop", live_session(), "alice")
    for poll in polls:
        poll.join(timeout=60)
    assert sorted(len(a) for a in answered) == [0, 1], answered
    assert [a["id"] for answer in answered for a in answer] == [action.pk]
    # The other one had nothing and answered empty when its wait ran out, not before.
    assert time.monotonic() - began >= 1.5


@pytest.mark.django_db(transaction=True)
def test_a_closing_bell_lets_every_held_poll_go_at_once():
    doorbell = Bell()
    answered: list = []
    poll = threading.Thread(
        target=lambda: answered.append(wait_for_actions("h1", 120, doorbell=doorbell))
    )
    poll.start()
    held(doorbell)
    assert poll.is_alive()
    doorbell.close()
    poll.join(timeout=10)  # a bound well under the poll's own wait (25 s)
    assert answered == [[]]
    # A poll that comes after the close is not held either.
    assert wait_for_actions("h1", 20, doorbell=doorbell) == []


@pytest.mark.django_db(transaction=True)
def test_the_poll_endpoint_wants_a_host_token_and_bounds_the_polls_it_holds(monkeypatch):
    client = Client()
    assert client.get("/api/hosts/actions/wait").status_code == 401
    _row, token = HostToken.issue("h1")
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    assert client.get("/api/hosts/actions/wait?wait=99", **auth).status_code == 400
    assert client.get("/api/hosts/actions/wait?wait=x", **auth).status_code == 400
    action = queued()
    answer = client.get("/api/hosts/actions/wait?wait=5", **auth)
    assert answer.status_code == 200
    assert [a["id"] for a in answer.json()["actions"]] == [action.pk]
    # Every slot taken: turned away at once, told when to come back.
    monkeypatch.setattr(host_actions, "held_polls", HeldPolls(0))
    began = time.monotonic()
    full = client.get("/api/hosts/actions/wait?wait=25", **auth)
    assert full.status_code == 503 and time.monotonic() - began < 10  # not held 25 s
    assert 10 <= int(full["Retry-After"]) <= 30
    # A slot given back is taken again.
    slots = HeldPolls(1)
    assert slots.take() and not slots.take()
    slots.give_back()
    assert slots.take()


@pytest.mark.django_db(transaction=True)
def test_the_audit_says_when_the_request_landed_on_the_host_and_how():
    session = live_session()
    action = request_action("stop", session, "alice")
    wait_for_actions("h1", 0)
    landed = datetime(2026, 12, 7, 12, 0, 0, 250000, tzinfo=UTC)
    result = {
        "id": action.pk,
        "ok": True,
        "message": "stopped",
        "terminated": [42],
        "killed": [],
        "via": "push",
        "landed_at": landed.isoformat(),
    }
    finish_action(result, "h1", timezone.now())
    action.refresh_from_db()
    assert action.state == RemoteAction.State.DONE
    assert action.detail["landed_at"] == landed.isoformat()
    assert action.detail["via"] == "push"
    entry = AuditEntry.objects.get(action="stop", detail__remote_action=action.pk)
    assert entry.actor == "alice"
    assert entry.detail["landed_at"] == landed.isoformat() and entry.detail["via"] == "push"
    # An older host's answer (no landing) or a bad time is on record without it.
    other = request_action("stop", live_session(), "bob")
    finish_action({"id": other.pk, "ok": True, "landed_at": "not a time"}, "h1", timezone.now())
    other.refresh_from_db()
    assert "landed_at" not in other.detail and "via" not in other.detail


@pytest.mark.django_db(transaction=True)
def test_who_asked_is_the_token_s_user_when_another_worker_checked_the_token():
    """A token checked by another worker comes from the shared cache: the user read back
    must be the user (it came back named "True", a staff user as superuser)."""
    user = get_user_model().objects.create_user("carol", password="x-test", is_staff=True)
    _row, plain = ApiToken.issue(user)
    assert auth.authenticate_token(plain).get_username() == "carol"
    auth._token_cache.clear()  # this worker forgets; the host's shared cache remembers
    recalled = auth.authenticate_token(plain)
    assert recalled.pk == user.pk and recalled.get_username() == "carol"
    assert recalled.is_active and recalled.is_staff and not recalled.is_superuser


@pytest.mark.django_db(transaction=True)
def test_the_host_s_poll_carries_a_request_out_and_its_next_report_says_how_it_came(host_a):  # noqa: F811
    """The host's side in process: its poll through the console's real view, the request
    carried out by the report state, the outcome on record with the report after."""
    token = host_a.reporting.reporter.token
    client = Client()

    def fetch(wait: float):
        answer = client.get(
            f"/api/hosts/actions/wait?wait={wait:g}", HTTP_AUTHORIZATION=f"Bearer {token}"
        )
        return answer.status_code, dict(answer.headers), answer.content

    poller = ActionPoller(host_a.reporting.reporter, host_a.reporting, fetch=fetch)
    host_a.tick()  # a first report: the sample requests act on
    action = request_action("stop", live_session("host-a"), "alice")
    began = time.monotonic()
    assert poller.poll_once() is None and poller.brought == 1
    assert time.monotonic() - began < 10  # pending: answered at once, not after 25 s
    for thread in host_a.reporting.threads:
        thread.join(timeout=10)
    host_a.tick()  # the outcome goes with the next report
    action.refresh_from_db()
    assert action.state == RemoteAction.State.DONE, action.message
    assert "nothing to stop" in action.message  # that run was never live on this host
    assert action.detail["via"] == "push" and action.detail["landed_at"]
    assert AuditEntry.objects.get(action="stop", detail__remote_action=action.pk).actor == "alice"
    # An older console has no such endpoint: asked again in ten minutes.
    poller.fetch = lambda wait: (404, {}, b"")
    assert poller.poll_once() == 600


# ----------------------------------------------------------------------------- real processes


def report(figures: list[float], where: str) -> None:
    each = ", ".join(f"{s * 1000:.0f}" for s in figures)
    median, most = statistics.median(figures) * 1000, max(figures) * 1000
    print(f"\nstop latency ({where}): {each} ms; median {median:.0f} ms, max {most:.0f} ms")


def test_a_stop_asked_on_the_console_ends_the_remote_run_within_a_second(
    state, fake_claude, tmp_path
):
    env = dict(state.env, OPSCONSOLE_CLAUDE_CONFIG_DIRS=str(state.config_dir))
    database = f"sqlite:///{tmp_path / 'console.sqlite3'}"
    with fleet(tmp_path, env, database, OPSCONSOLE_SAMPLE_SECONDS=HOST_SAMPLE) as running:
        figures, vias = [], []
        for n in range(3):
            latency, action = running.stop_latency(f"fast-stop-{n}")
            assert action["state"] == "done", action
            assert action["requested_by"] == "ops"
            vias.append(action["detail"]["via"])
            assert action["detail"]["landed_at"] >= action["requested_at"][:19]
            print(f"stop {n + 1}: {latency * 1000:.0f} ms ({hops(action)})")
            figures.append(latency)
        report(figures, "SQLite console")
        assert max(figures) < STOP_WITHIN_SECONDS, figures
        assert vias.count("push") >= 2, vias  # see PUSHED_AT_LEAST

        # Held polls cannot starve ordinary requests: they wait parked, no thread each
        # (opsconsole.web_worker), so more than the 2 workers x 8 threads would allow
        # are held to their end, answered with nothing.
        console = running.consoles[0]
        token = running.host_env["OPSCONSOLE_REPORT_TOKEN"]
        statuses: list = []

        def extra_poll() -> None:
            request = urllib.request.Request(
                f"{console.url}/api/hosts/actions/wait?wait=25",
                headers={"Authorization": f"Bearer {token}"},
            )
            try:
                with urllib.request.urlopen(request, timeout=60) as answer:
                    statuses.append(answer.status)
            except urllib.error.HTTPError as error:
                statuses.append(error.code)

        polls = [threading.Thread(target=extra_poll) for _ in range(8 * 2 + 1)]
        for poll in polls:
            poll.start()
        time.sleep(0.5)
        for _ in range(5):  # meanwhile, pages and the API answer as ever
            began = time.monotonic()
            assert console.json("/api/hosts")["hosts"]
            assert time.monotonic() - began < 10  # not queued behind the held polls (25 s)
        for poll in polls:
            poll.join(timeout=60)
        assert statuses == [200] * (8 * 2 + 1), statuses

        # A console that stops answers its held polls at once, and so stops at once.
        poll = urllib.request.Request(
            f"{console.url}/api/hosts/actions/wait?wait=25",
            headers={"Authorization": f"Bearer {token}"},
        )
        answered: list = []

        def hold() -> None:
            status = urllib.request.urlopen(poll, timeout=40).status
            answered.append((status, time.monotonic()))

        held = threading.Thread(target=hold)
        held.start()
        time.sleep(1)  # held by now (a pending request would have been answered at once)
        assert answered == []
        began = time.monotonic()
        console.process.send_signal(signal.SIGTERM)
        held.join(timeout=30)
        console.process.wait(timeout=30)
        # Held to its end (25 s), the poll would keep its worker until serve kills it
        # (10 s), and be cut, not answered.
        assert answered and answered[0][0] == 200, answered
        assert answered[0][1] - began < 3, answered[0][1] - began


@pytest.fixture
def pg_database():
    problem = postgres_problem()
    if problem:
        pytest.skip(problem)
    name = f"{database_name()}_fast_stop"  # of DATABASE_URL's name: runs side by side
    admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin(f'CREATE DATABASE "{name}"')
    yield f"{server_url()}/{name}"
    admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_stop_asked_on_another_console_reaches_the_host_within_a_second(
    state, fake_claude, tmp_path, pg_database
):
    """The host's poll is held by console A; the stop is asked on console B: B's NOTIFY
    wakes A's poll through PostgreSQL."""
    env = dict(state.env, OPSCONSOLE_CLAUDE_CONFIG_DIRS=str(state.config_dir))
    consoles, host = ("console-a", "console-b"), {"OPSCONSOLE_SAMPLE_SECONDS": HOST_SAMPLE}
    with fleet(tmp_path, env, pg_database, consoles, **host) as running:
        figures, vias = [], []
        for n in range(3):
            latency, action = running.stop_latency(f"fast-stop-pg-{n}")
            assert action["state"] == "done", action
            vias.append(action["detail"]["via"])
            print(f"stop {n + 1}: {latency * 1000:.0f} ms ({hops(action)})")
            figures.append(latency)
        report(figures, "PostgreSQL, asked on the other console")
        assert max(figures) < STOP_WITHIN_SECONDS, figures
        assert vias.count("push") >= 2, vias  # see PUSHED_AT_LEAST


# Far more held polls than a console has threads (2 workers x 8): each waits parked in
# its worker's event loop (opsconsole.web_worker), a socket and no thread.
PARKED_POLLS = 200
PARKED_WAIT_SECONDS = 8


def test_hundreds_of_held_polls_wait_parked_and_a_request_for_one_host_reaches_it_at_once(
    state, tmp_path
):
    with console_serving(tmp_path / "console", state.env) as console:
        tokens = hosts_with_tokens(console, PARKED_POLLS)
        session_id = live_runs_on(console, ["p7"])["p7"]
        opened = time.monotonic()
        polls = Polls(console, tokens, wait=PARKED_WAIT_SECONDS)
        try:
            # Every poll has been looked at (its token checked) and is held, not turned
            # away: threads holding them, all but 4 would have been answered 503 by now.
            wait_until(lambda: tokens_checked(console) == PARKED_POLLS, timeout=60, interval=0.5)
            assert polls.answered() == []
            active = median_ms(console, "/api/claude-active", 20)
            took = stop_and_time(console, polls, "p7", session_id)
            print(
                f"\n{PARKED_POLLS} held polls: /api/claude-active median {active:.0f} ms; "
                f"a stop to its host's poll {took * 1000:.0f} ms"
            )
            assert took < STOP_WITHIN_SECONDS, took
            assert active < 1000, active
            # The others are answered at their deadline, with nothing, not before.
            for host in list(polls.sockets):
                status, answer = polls.answer(host, timeout=30)
                assert (status, answer) == (200, {"actions": []}), (host, status, answer)
            assert time.monotonic() - opened >= PARKED_WAIT_SECONDS
        finally:
            polls.close()
