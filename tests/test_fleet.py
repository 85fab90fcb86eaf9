"""Many hosts, one console: a monitor in report mode, the console's side, host tokens.

The reporting monitor here runs in-process and posts through Django's test client
(the console's real view and ingest); tests/test_fleet_hosts.py runs the same with
real processes, PID namespaces and PostgreSQL.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.core.files.storage import InMemoryStorage
from django.test import Client

from fleet.hosts import ACTION_TTL, check_silent_hosts, expire_actions
from fleet.report import Reporter, ReportError, check_report_url
from fleet.reporting import JOBS_RESENT_AFTER, reporting_monitor
from jobs_app.models import AuditEntry
from monitor_app.fleet_reader import fleet
from monitor_app.live import live_runs
from monitor_app.models import (
    Event,
    EventKind,
    HostSample,
    HostToken,
    RefusedItem,
    RemoteAction,
)
from monitor_app.monitor import Monitor
from sessions_app.models import Session, Status
from tests.conftest import PYTHON, REPO_ROOT
from tests.live_helpers import claude_lookalike, start_fake_run, wait_until
from tests.server_fixtures import free_port
from wrapper.formats import SpoolRecord, new_session_id, utc_now_iso, write_json_atomic

pytestmark = pytest.mark.django_db(transaction=True)


def client_transport(client: Client):
    """Post a report through the console's real view (no network needed)."""

    def post(body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        extra = {"HTTP_AUTHORIZATION": headers["Authorization"]}
        if "Content-Encoding" in headers:
            extra["HTTP_CONTENT_ENCODING"] = headers["Content-Encoding"]
        response = client.generic(
            "POST", "/api/hosts/report", body, content_type="application/json", **extra
        )
        return response.status_code, response.content

    return post


@pytest.fixture
def host_a(console_state, monkeypatch):
    """A monitor reporting as host-a (its runs carry that host name) and its token."""
    monkeypatch.setenv("OPSCONSOLE_HOST_NAME", "host-a")
    _row, token = HostToken.issue("host-a")
    monitor = reporting_monitor(
        Reporter("http://127.0.0.1:1", token, transport=client_transport(Client())),
        host="host-a",
        interval=1.0,
    )
    return monitor


@pytest.fixture
def staff(client):
    client.force_login(get_user_model().objects.create_user("ops", is_staff=True))
    return client


def spool_record(paths, host: str, tag: str = "nightly") -> SpoolRecord:
    now = utc_now_iso()
    record = SpoolRecord(
        session_id=new_session_id(),
        script_tag=tag,
        platform="linux-test",
        host=host,
        attempt=1,
        started_at=now,
        ended_at=now,
        end_reason="succeeded",
        exit_code=0,
        cost_usd=0.25,
    )
    paths.spool.mkdir(parents=True, exist_ok=True)
    write_json_atomic(paths.spool_path(record.session_id), asdict(record))
    return record


def report_once(monitor: Monitor):
    snapshot = monitor.tick()
    assert monitor.reporting.last_error is None, monitor.reporting.last_error
    return snapshot


def test_a_reporting_host_s_runs_appear_live_and_vanish_on_record(host_a, runs, staff):
    run = start_fake_run(host_a_state(host_a), "remote-nightly")
    runs.append(run)
    report_once(host_a)
    row = Session.objects.get(session_id=run.session_id)
    assert (row.host, row.status) == ("host-a", Status.LIVE)
    assert Event.objects.filter(kind=EventKind.RUN_STARTED, session_id=run.session_id).count() == 1
    sample = HostSample.objects.get(host="host-a")
    assert sample.reported and sample.received_at is not None
    assert abs(sample.clock_skew_seconds) < 5

    body = staff.get("/api/claude-active?host=host-a").json()
    assert [s["session_id"] for s in body["sessions"]] == [run.session_id]
    fleet = staff.get("/api/claude-active?host=all").json()
    assert run.session_id in {s["session_id"] for s in fleet["sessions"]}
    page = staff.get("/live/?host=host-a").content.decode()
    assert run.session_id[:8] in page and "remote-nightly" in page
    assert "remote-nightly" in staff.get(f"/sessions/{run.session_id}/").content.decode()
    hosts = staff.get("/hosts/").content.decode()
    assert 'data-host="host-a"' in hosts

    run.kill_all()
    report_once(host_a)
    row.refresh_from_db()
    assert (row.status, row.end_reason) == (Status.KILLED, "vanished")
    assert not run.sidecar_file.exists(), "acknowledged: the sidecar leaves the host"
    report_once(host_a)
    assert Event.objects.filter(kind=EventKind.RUN_VANISHED, session_id=run.session_id).count() == 1


def host_a_state(monitor: Monitor):
    """The test's State (the monitor shares its paths)."""
    from tests.conftest import State

    paths = monitor.paths
    config_dir = monitor.config_dirs[0]
    return State(paths=paths, config_dir=config_dir, workdir=paths.home.parent / "work", env={})


def test_a_completion_leaves_the_spool_only_once_the_console_has_it(host_a, console_state, staff):
    record = spool_record(console_state.paths, "host-a")
    spool_file = console_state.paths.spool_path(record.session_id)
    HostToken.objects.filter(host="host-a").update(revoked_at=datetime.now(UTC))
    host_a.tick()
    assert host_a.reporting.last_error is not None and host_a.reporting.last_error.status == 401
    assert spool_file.exists(), "refused: the record stays in the spool"
    assert not Session.objects.filter(session_id=record.session_id).exists()
    pending_before = len(host_a.events.pending)
    assert pending_before >= 0

    _row, token = HostToken.issue("host-a")
    host_a.reporting.reporter.token = token
    latest = report_once(host_a)
    assert not spool_file.exists()
    ingested = list((console_state.paths.spool / "ingested").rglob(f"{record.session_id}.json"))
    assert len(ingested) == 1
    session = Session.objects.get(session_id=record.session_id)
    assert (session.status, session.host) == (Status.SUCCEEDED, "host-a")
    hosts = {h["host"]: h for h in staff.get("/api/hosts").json()["hosts"]}
    assert (hosts["host-a"]["runs_30d"], hosts["host-a"]["cost_usd_30d"]) == (1, 0.25)
    assert "$0.25" in staff.get("/hosts/").content.decode()
    assert host_a.events.pending == [], "every event acknowledged"

    # The same report twice (an answer lost on the way back) changes nothing.
    host_a.reporting.base = None  # a full report, as a monitor that holds no base sends
    payload = host_a.reporting.payload(latest, datetime.now(UTC))
    payload["completions"] = [asdict(record)]
    events_before = Event.objects.count()
    for _ in range(2):
        host_a.reporting.reporter.send(payload)
    assert Session.objects.filter(session_id=record.session_id).count() == 1
    assert Event.objects.count() == events_before
    assert Event.objects.filter(kind=EventKind.RUN_ENDED, session_id=record.session_id).count() == 1

    # An old report retried never takes the sample back; a restarted monitor's always counts.
    current = HostSample.objects.get(host="host-a").seq
    host_a.reporting.reporter.send(dict(payload, sample=dict(payload["sample"], seq=1)))
    assert HostSample.objects.get(host="host-a").seq == current
    restarted = dict(payload["sample"], seq=1, monitor_pid=payload["sample"]["monitor_pid"] + 1)
    host_a.reporting.reporter.send(dict(payload, sample=restarted))
    assert HostSample.objects.get(host="host-a").seq == 1


@pytest.mark.django_db
def test_a_host_token_names_its_host_until_revoked_and_its_last_use_is_kept_once_a_minute():
    row, token = HostToken.issue("host-a")
    at = datetime(2026, 12, 8, 2, 0, tzinfo=UTC)

    def last_used():
        return HostToken.objects.get(pk=row.pk).last_used_at

    with time_machine.travel(at, tick=False):
        assert HostToken.authenticate(token).host == "host-a"
        assert last_used() == at
    with time_machine.travel(at + timedelta(seconds=59), tick=False):
        assert HostToken.authenticate(token).pk == row.pk
        assert last_used() == at, "not written again within the minute"
    with time_machine.travel(at + timedelta(seconds=61), tick=False):
        HostToken.authenticate(token)
        assert last_used() == at + timedelta(seconds=61)
    assert HostToken.authenticate(token[:-1]) is None
    assert HostToken.authenticate("oc_api_" + token) is None
    row.revoke()
    assert HostToken.authenticate(token) is None


def test_token_for_host_a_cannot_write_host_b_and_a_revoked_token_is_refused(host_a, console_state):
    client = Client()
    _row, token_b = HostToken.issue("host-b")
    snapshot = host_a.tick()
    host_a.reporting.base = None  # a full report, as a monitor that holds no base sends
    payload = host_a.reporting.payload(snapshot, datetime.now(UTC))

    def post(body: dict, token: str):
        return client.post(
            "/api/hosts/report",
            json.dumps(body),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {token}",
        )

    def refused(response) -> dict[str, str]:
        assert response.status_code == 200, response.content
        return {r["key"]: r["reason"] for r in response.json()["ack"]["refused"]}

    assert post(payload, token_b).status_code == 403, "host-a's report with host-b's token"
    token_a = host_a.reporting.reporter.token
    # An item naming host-b in host-a's report is refused; the report is taken.
    record_b = spool_record(console_state.paths, "host-b")
    answer = post(dict(payload, completions=[asdict(record_b)]), token_a)
    assert "names host 'host-b'" in refused(answer)[record_b.session_id]
    assert answer.json()["ack"]["rejected"] == [record_b.session_id]
    assert not Session.objects.filter(host="host-b").exists()
    # A run host-b has on record cannot be rewritten by host-a, whatever the record says.
    (console_state.paths.spool_path(record_b.session_id)).unlink()
    post(dict(payload, host="host-b", sample=None, completions=[asdict(record_b)]), token_b)
    assert Session.objects.get(session_id=record_b.session_id).host == "host-b"
    record_a = dict(asdict(record_b), host="host-a", exit_code=1, end_reason="failed")
    reason = refused(post(dict(payload, completions=[record_a]), token_a))[record_b.session_id]
    assert "on record for host 'host-b'" in reason
    assert Session.objects.get(session_id=record_b.session_id).exit_code == 0
    # A live session of host-b slipped into host-a's sample is refused, the sample kept.
    state = json.loads(payload["sample"]["state_document"])
    smuggled = start_fake_run(host_a_state(host_a), "smuggled")
    try:
        sidecar = dict(smuggled.sidecar.to_dict(), host="host-b")
        state["sessions"] = [{"sidecar": sidecar, "state": "live", "processes": []}]
        sample = dict(payload["sample"], state_document=json.dumps(state))
        assert smuggled.session_id in refused(post(dict(payload, sample=sample), token_a))
    finally:
        smuggled.kill_all()
    assert not Session.objects.filter(session_id=smuggled.session_id).exists()
    assert RefusedItem.objects.filter(host="host-a", kind="live").exists()
    assert post(payload, "oc_host_not-a-token").status_code == 401
    assert post(payload, token_a).status_code == 200
    HostToken.objects.get(host="host-b").revoke()
    assert post(dict(payload, host="host-b"), token_b).status_code == 401
    anonymous = client.post("/api/hosts/report", "{}", content_type="application/json")
    assert anonymous.status_code == 401


def test_a_stop_requested_on_the_console_kills_the_run_on_its_host(host_a, runs, staff, settings):
    settings.OPSCONSOLE_STOP_GRACE_SECONDS = 1.0
    run = start_fake_run(host_a_state(host_a), "remote-stop")
    runs.append(run)
    report_once(host_a)
    page = staff.get(f"/sessions/{run.session_id}/").content.decode()
    assert "Stop this run (on host-a)" in page
    response = staff.post(f"/api/sessions/{run.session_id}/stop")
    assert response.status_code == 202, response.content
    action_id = response.json()["id"]
    assert response.json()["state"] == "pending"

    report_once(host_a)  # the answer hands the request over; the host acts on it
    assert RemoteAction.objects.get(pk=action_id).state == RemoteAction.State.SENT
    for thread in host_a.reporting.threads:
        thread.join(timeout=10)
    assert run.wrapper.wait(timeout=5) is not None
    report_once(host_a)  # the outcome goes back with the next report
    action = RemoteAction.objects.get(pk=action_id)
    assert action.state == RemoteAction.State.DONE, action.message
    assert "TERM" in action.message
    assert staff.get(f"/api/hosts/actions/{action_id}").json()["state"] == "done"
    page = staff.get(f"/sessions/{run.session_id}/").content.decode()
    assert 'data-state="done"' in page and "TERM" in page
    assert AuditEntry.objects.filter(action="stop", actor="ops", target=run.session_id).exists()
    run.kill_all()
    report_once(host_a)
    session = Session.objects.get(session_id=run.session_id)
    assert (session.status, session.stopped_by) == (Status.KILLED, "ops")


def store_sample(host, seq, sessions, leftovers=(), *, interval=2.0, etag=None):
    """A HostSample row as the console keeps it, with the API document given."""
    now = datetime.now(UTC)
    document = {
        "host": host,
        "seq": seq,
        "taken_at": now.isoformat(),
        "interval_seconds": interval,
        "sessions": list(sessions),
        "leftovers": list(leftovers),
    }
    HostSample.objects.update_or_create(
        host=host,
        defaults={
            "seq": seq,
            "taken_at": now,
            "received_at": now,
            "interval_seconds": interval,
            "sample_ms": 1.0,
            "etag": etag or f'"{host}-{seq}"',
            "api_document": json.dumps(document),
            "state_document": json.dumps({"taken_at": now.isoformat(), "sessions": []}),
            "reported": True,
        },
    )


def test_the_fleet_document_holds_every_host_s_runs_and_follows_silence(staff):
    tricky = 'quote " backslash \\ </script> \u2028 ünïcode'
    store_sample(
        "host-a",
        1,
        [{"session_id": "a1"}, {"session_id": "a2", "note": tricky}],
        leftovers=[{"session_id": "a0"}],
    )
    store_sample("host-b", 1, [])
    store_sample("host-c", 4, [{"session_id": "c1", "nested": {"list": [1, 2.5, None]}}])
    first = staff.get("/api/claude-active?host=all")
    body = first.json()
    assert [s["session_id"] for s in body["sessions"]] == ["a1", "a2", "c1"]
    assert body["sessions"][1]["note"] == tricky
    assert body["sessions"][2]["nested"] == {"list": [1, 2.5, None]}
    assert body["leftovers"] == [{"session_id": "a0"}]
    assert [(h["host"], h["live"], h["silent"]) for h in body["hosts"]] == [
        ("host-a", 2, False),
        ("host-b", 0, False),
        ("host-c", 1, False),
    ]
    etag = first["ETag"]
    assert staff.get("/api/claude-active?host=all", HTTP_IF_NONE_MATCH=etag).status_code == 304

    # A restarted monitor may send the same seq again: its document is still read anew.
    store_sample("host-c", 4, [{"session_id": "c2"}], etag='"host-c-restarted"')
    second = staff.get("/api/claude-active?host=all", HTTP_IF_NONE_MATCH=etag)
    assert second.status_code == 200 and second["ETag"] != etag
    assert [s["session_id"] for s in second.json()["sessions"]] == ["a1", "a2", "c2"]

    # host-a falls silent with no new sample: the fleet's body says so, under a new ETag.
    # (host-b and host-c report again, at a slower pace: still heard from)
    store_sample("host-b", 2, [], interval=10.0)
    store_sample("host-c", 5, [{"session_id": "c2"}], interval=10.0)
    with time_machine.travel(datetime.now(UTC) + timedelta(seconds=6.5), tick=False):
        third = staff.get("/api/claude-active?host=all", HTTP_IF_NONE_MATCH=second["ETag"])
    assert third.status_code == 200
    silent = {h["host"]: h["silent"] for h in third.json()["hosts"]}
    assert silent == {"host-a": True, "host-b": False, "host-c": False}


def test_a_silent_host_is_shown_alerted_once_and_its_requests_expire(staff):
    now = datetime.now(UTC)
    HostSample.objects.create(
        host="host-c",
        seq=7,
        taken_at=now - timedelta(seconds=60),
        received_at=now - timedelta(seconds=60),
        interval_seconds=2.0,
        sample_ms=1.0,
        etag='"x"',
        api_document=json.dumps({"host": "host-c", "sessions": [], "leftovers": []}),
        state_document=json.dumps({"taken_at": now.isoformat(), "sessions": []}),
        reported=True,
    )
    session = Session.objects.create(
        session_id=new_session_id(),
        script_tag="quiet",
        platform="linux",
        host="host-c",
        attempt=1,
        status=Status.LIVE,
        started_at=now,
    )
    response = staff.post(f"/api/sessions/{session.session_id}/stop")
    assert response.status_code == 202
    page = staff.post(f"/sessions/{session.session_id}/stop/", follow=True).content.decode()
    assert "stop requested from host-c" in page and 'data-state="pending"' in page
    viewer = Client()
    viewer.force_login(get_user_model().objects.create_user("viewer"))
    assert viewer.post(f"/sessions/{session.session_id}/stop/").status_code == 403
    assert viewer.post(f"/api/sessions/{session.session_id}/stop").status_code == 403
    assert check_silent_hosts(now) == ["host-c"]
    check_silent_hosts(now + timedelta(seconds=5))
    assert Event.objects.filter(kind=EventKind.MONITOR_SILENT, host="host-c").count() == 1
    assert expire_actions(now) == 2
    action = RemoteAction.objects.first()
    assert action.state == RemoteAction.State.EXPIRED
    assert "silent" in action.message and "never delivered" in action.message
    page = staff.get("/hosts/").content.decode()
    assert "silent" in page and "never delivered" in page
    assert (
        'host-c <span class="badge badge--silent">silent</span>'
        in staff.get("/live/").content.decode()
    )
    hosts = {h["host"]: h for h in staff.get("/api/hosts").json()["hosts"]}
    assert hosts["host-c"]["silent"] is True
    anonymous = Client()
    assert anonymous.get("/hosts/").status_code == 302
    assert anonymous.get(f"/hosts/requests/?session={session.session_id}").status_code == 302
    fragment = staff.get(f"/hosts/requests/?session={session.session_id}").content.decode()
    assert 'data-state="expired"' in fragment
    assert staff.get("/hosts/requests/?session=../../etc").status_code == 400
    assert anonymous.get("/api/hosts").status_code == 401


@pytest.mark.django_db
def test_the_hosts_page_of_a_large_fleet_is_paged_and_finds_a_host_by_name_or_silence(
    staff, settings
):
    """230 reporting hosts, every tenth silent for an hour: a page shows 100, the totals
    count all of them, a part of a name or `silent only` narrows the list, and the
    pager keeps the filter."""
    now = datetime.now(UTC)
    HostSample.objects.bulk_create(
        HostSample(
            host=f"node-{n:03d}",
            seq=1,
            taken_at=now - timedelta(hours=1 if n % 10 == 0 else 0),
            received_at=now - timedelta(hours=1 if n % 10 == 0 else 0),
            interval_seconds=2.0,
            sample_ms=1.0,
            etag='"x"',
            api_document=json.dumps({"sessions": [{}] * (n % 3), "leftovers": []}),
            state_document="{}",
            reported=True,
        )
        for n in range(230)
    )

    def shown(query: str = "") -> tuple[list[str], str]:
        page = staff.get(f"/hosts/{query}").content.decode()
        return re.findall(r'data-host="([^"]+)"', page), page

    first, page = shown()
    assert len(first) == 100 and first == sorted(first)
    total = sum(n % 3 for n in range(230))
    assert re.search(rf'<td data-label="Live runs">{total}</td>', page)  # all hosts' total
    count = re.search(r'<p id="hosts-count">(.*?)</p>', page).group(1)
    # this console's own host too; it has no sample here, so it is silent
    assert count == '231 hosts, <a href="?state=silent">24 silent</a>.', count
    assert "hosts 1\u2013100 of 231" in page and "page=2" in page
    last, page = shown("?page=3")
    assert len(last) == 31 and "hosts 201\u2013231 of 231" in page
    assert not set(first) & set(last)
    named, _ = shown("?q=NODE-12")
    assert named == [f"node-{n}" for n in range(120, 130)]
    silent, page = shown("?state=silent")
    own = settings.OPSCONSOLE_HOST  # no sample here: silent too
    assert silent == sorted([f"node-{n:03d}" for n in range(0, 230, 10)] + [own])
    assert "page=" not in page, "24 fit on one page"
    both, _ = shown("?state=silent&q=node-1")
    assert both == [f"node-{n}" for n in range(100, 200, 10)]
    none, page = shown("?q=%3Cscript%3E")
    assert none == [] and "<script>" not in page and "&lt;script&gt;" in page


def test_report_to_plain_http_is_refused_unless_loopback_or_insecure(state):
    assert check_report_url("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
    assert check_report_url("https://console.example")
    with pytest.raises(ValueError, match="clear text"):
        check_report_url("http://console.example")
    assert check_report_url("http://console.example", insecure=True)
    result = subprocess.run(
        [PYTHON, "-m", "opsconsole.cli", "monitor", "--once", "--report-to", "http://10.1.2.3"],
        env=dict(state.env, OPSCONSOLE_REPORT_TOKEN="oc_host_x"),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "clear text" in result.stderr


def test_monitor_once_exits_non_zero_when_the_console_refuses(console_server, state):
    """The real command against `opsconsole serve`: a bad token is a failed health check."""
    args = [PYTHON, "-m", "opsconsole.cli", "monitor", "--once", "--report-to", console_server.url]
    env = dict(state.env, OPSCONSOLE_HOST_NAME="host-d", OPSCONSOLE_REPORT_TOKEN="oc_host_nope")
    refused = subprocess.run(args, env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    assert refused.returncode != 0 and "401" in refused.stderr
    token = (
        subprocess.run(
            [PYTHON, "-m", "opsconsole.cli", "create_host_token", "host-d"],
            env=console_server.env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    env["OPSCONSOLE_REPORT_TOKEN"] = token
    taken = subprocess.run(args, env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    assert taken.returncode == 0, taken.stderr
    hosts = {h["host"] for h in console_server.json("/api/hosts")["hosts"]}
    assert "host-d" in hosts


def test_a_remote_run_s_transcript_is_followed_through_the_console(
    host_a, runs, staff, settings, tmp_path
):
    from sessions_app import remote_transcripts

    console = BlindConsole(staff, settings, tmp_path / "console-claude")

    first = b'{"type":"user","message":{"role":"user","content":"audit the remote logs"}}\n'
    run = start_fake_run(host_a_state(host_a), "remote-transcript", transcript_lines=[first])
    runs.append(run)
    report_once(host_a)
    tail = console.get(f"/api/claude-jsonl/{run.session_id}")
    assert tail.status_code == 200 and b"audit the remote logs" in b"".join(tail)
    assert "audit the remote logs" in console.get(f"/sessions/{run.session_id}/").content.decode()
    stored = remote_transcripts.local_path("host-a", run.session_id)
    assert stored and Path(stored).read_bytes() == first

    # New bytes follow from the acknowledged offset; a follower's Range gets only them.
    second = b'{"type":"user","message":{"role":"user","content":"second line"}}\n'
    with run.transcript.open("ab") as handle:
        handle.write(second)
    latest = report_once(host_a)
    follow = console.get(f"/api/claude-jsonl/{run.session_id}", HTTP_RANGE=f"bytes={len(first)}-")
    assert follow.status_code == 206 and b"".join(follow) == second

    # Bounded per post: a large transcript arrives over several reports, byte for byte.
    big = b"".join(
        b'{"type":"user","message":{"role":"user","content":"%06d"}}\n' % i for i in range(9000)
    )
    with run.transcript.open("ab") as handle:
        handle.write(big)
    payload = host_a.reporting.payload(latest, datetime.now(UTC))
    assert sum(len(c["data"]) for c in payload["transcripts"]) <= 4 * 256 * 1024 // 3 + 8
    for _ in range(6):
        report_once(host_a)
    assert Path(stored).read_bytes() == run.transcript.read_bytes()

    # A monitor restarted from offset 0 makes no duplicate: the console says what it holds.
    host_a.reporting.transcripts[run.session_id][1] = 0
    report_once(host_a)
    report_once(host_a)
    assert Path(stored).read_bytes() == run.transcript.read_bytes()
    run.kill_all()
    report_once(host_a)
    session = Session.objects.get(session_id=run.session_id)
    assert session.archive_path == stored
    assert b"008999" in b"".join(console.get(f"/api/claude-jsonl/{run.session_id}"))


def test_the_fleet_live_page_lists_the_most_recent_runs_up_to_its_cap(
    host_a, runs, staff, settings
):
    settings.OPSCONSOLE_FLEET_LIVE_ROWS = 1
    for tag in ("older-run", "newer-run"):
        runs.append(start_fake_run(host_a_state(host_a), tag))
        time.sleep(1.1)  # started_at has second resolution
    report_once(host_a)
    page = staff.get("/live/?host=all").content.decode()
    assert "Showing the 1 most recent of 2 live runs" in page
    assert "newer-run" in page and "older-run" not in page
    host_page = staff.get("/live/?host=host-a").content.decode()
    assert "newer-run" in host_page and "older-run" in host_page


def test_the_fleet_live_page_shows_a_new_report_s_run_by_the_next_poll(host_a, runs, staff):
    """The all-hosts section is rendered once a second for everyone who polls: a run a
    new report names is listed by the first request after that second (polls are 2 s
    apart), and a host fallen silent keeps its last runs listed and is named silent."""
    runs.append(start_fake_run(host_a_state(host_a), "first-run"))
    report_once(host_a)
    rows = staff.get("/live/rows/?host=all").content.decode()
    assert "first-run" in rows and "second-run" not in rows
    runs.append(start_fake_run(host_a_state(host_a), "second-run"))
    report_once(host_a)
    second = int(time.time())
    while int(time.time()) == second:
        time.sleep(0.02)
    rows = staff.get("/live/rows/?host=all").content.decode()
    assert "first-run" in rows and "second-run" in rows
    assert "second-run" in staff.get("/live/?host=all").content.decode()
    # Listed from the API documents, the rows say what the full snapshots say.
    shown = ("session_id", "script_tag", "platform", "host", "attempt", "status")
    shown += ("started_at", "last_tool_call", "cpu_percent", "rss", "html_url")
    listed = [[getattr(r, name) for name in shown] for r in fleet.live(10).runs]
    rebuilt = [[getattr(r, name) for name in shown] for r in live_runs(fleet.snapshot())]
    assert len(listed) == 2 and listed == rebuilt

    long_ago = datetime.now(UTC) - timedelta(seconds=60)
    HostSample.objects.filter(host="host-a").update(taken_at=long_ago, received_at=long_ago)
    page = staff.get("/live/?host=all").content.decode()
    assert 'host-a <span class="badge badge--silent">silent</span>' in page
    assert "first-run" in page and "second-run" in page


def test_a_reporting_host_s_scheduler_jobs_are_recorded_under_it(
    host_a, staff, settings, tmp_path, monkeypatch
):
    from jobs_app.models import Job

    fake_bin = tmp_path / "fake-bin"
    fake_bin.mkdir()
    # Daily, twelve hours from now: its next and previous fire stay put while the test runs.
    hour = (datetime.now(UTC).hour + 12) % 24

    def crontab(*tags: str) -> None:
        lines = "".join(
            f"echo '0 {hour} * * * /usr/bin/python3 -m wrapper --tag {tag} -- -p hello'\n"
            for tag in tags
        )
        (fake_bin / "crontab").write_text("#!/bin/sh\n" + lines)
        (fake_bin / "crontab").chmod(0o755)

    crontab("remote-cron")
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")
    settings.OPSCONSOLE_SCHEDULERS = ["cron"]
    report_once(host_a)
    job = Job.objects.get(host="host-a", command__contains="remote-cron")
    assert job.scheduler == "cron" and job.present
    hosts = {h["host"]: h for h in staff.get("/api/hosts").json()["hosts"]}
    assert hosts["host-a"]["jobs"] >= 1
    reporting = host_a.reporting
    assert reporting.jobs is None, "the collection was acknowledged"
    # Collected again unchanged, it is not sent (an idle host's heartbeat stays one) ...
    acknowledged_at = reporting.jobs_acknowledged[1]
    reporting.collect_jobs(acknowledged_at + timedelta(minutes=1))
    assert reporting.jobs is None
    # ... until it changes, or a while has passed (a console restored from a backup).
    reporting.collect_jobs(acknowledged_at + JOBS_RESENT_AFTER)
    assert reporting.jobs == reporting.jobs_acknowledged[0]
    crontab("remote-cron", "remote-cron-2")
    reporting.collect_jobs(acknowledged_at + timedelta(minutes=1))
    report_once(host_a)
    assert Job.objects.filter(host="host-a", command__contains="remote-cron-2").exists()
    assert reporting.jobs is None


def test_the_console_s_limits_stop_a_remote_run_and_its_leftover_rule_kills_what_it_left(
    host_a, runs, staff, settings
):
    settings.OPSCONSOLE_DEFAULT_MAX_RUNTIME_MINUTES = 0  # every run is over its limit
    settings.OPSCONSOLE_STOP_GRACE_SECONDS = 1.0
    settings.OPSCONSOLE_LEFTOVER_GRACE_SECONDS = 0
    run = start_fake_run(host_a_state(host_a), "overdue-remote")
    runs.append(run)
    report_once(host_a)  # the answer carries the console's rules for this host
    assert host_a.reporting.policy["default_max_runtime_minutes"] == 0
    report_once(host_a)  # the host's watchdog stops the run
    for thread in host_a.reporting.threads:
        thread.join(timeout=15)
    assert run.wrapper.wait(timeout=5) is not None
    report_once(host_a)
    report_once(host_a)
    session = Session.objects.get(session_id=run.session_id)
    assert (session.status, session.stopped_by, session.end_reason) == (
        Status.KILLED,
        "watchdog",
        "watchdog",
    )
    entry = AuditEntry.objects.get(actor="watchdog", action="stop", target=run.session_id)
    assert entry.ok and entry.detail["host"] == "host-a"

    # A run that left a process behind: the leftover rule (the console's) kills it there.
    settings.OPSCONSOLE_DEFAULT_MAX_RUNTIME_MINUTES = 45
    leaver = start_fake_run(host_a_state(host_a), "leaves-a-sleep", with_agent=False)
    runs.append(leaver)
    deadline = time.monotonic() + 10
    while not psutil.Process(leaver.wrapper.pid).children() and time.monotonic() < deadline:
        time.sleep(0.05)
    tool = psutil.Process(leaver.wrapper.pid).children()[0]
    report_once(host_a)
    report_once(host_a)  # the new policy (45 min) is known before the run ends
    os.kill(leaver.wrapper.pid, signal.SIGKILL)
    leaver.wrapper.wait()
    report_once(host_a)  # leftovers seen
    fleet_rows = staff.get("/live/rows/?host=all").content.decode()
    assert f'<tr data-session-id="{leaver.session_id}" class="leftover-row">' in fleet_rows
    restarted = reporting_monitor(host_a.reporting.reporter, host="host-a", interval=1.0)
    assert [p for p, _ in restarted.leftovers[leaver.session_id].members] == [tool.pid], (
        "a restarted reporting monitor follows the leftovers it knew"
    )
    report_once(host_a)  # the rule: TERM
    deadline = time.monotonic() + 10
    while tool.is_running() and tool.status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the leftover was not killed"
        time.sleep(0.05)
    report_once(host_a)
    report_once(host_a)
    entry = AuditEntry.objects.get(actor="watchdog", action="kill_leftovers")
    assert entry.target == leaver.session_id and tool.pid in entry.detail["signalled"]
    assert Event.objects.filter(
        kind=EventKind.LEFTOVERS_KILLED, session_id=leaver.session_id
    ).exists()


def test_stop_on_a_remote_job_requests_a_stop_of_each_of_its_live_runs(host_a, runs, staff):
    from jobs_app.models import Job

    job = Job.objects.create(
        scheduler="cron", label="remote-nightly", host="host-a", tags=["remote-nightly"]
    )
    run = start_fake_run(host_a_state(host_a), "remote-nightly")
    runs.append(run)
    report_once(host_a)
    answer = staff.post(f"/api/jobs/{job.pk}/stop")
    assert answer.status_code == 202
    assert "stop requested from host-a" in answer.json()["message"]
    action = RemoteAction.objects.get(session_id=run.session_id)
    assert (action.kind, action.state) == ("stop", "pending")
    assert answer.json()["detail"]["remote_actions"] == [action.pk]


def test_a_remote_job_is_run_disabled_and_rescheduled_through_its_host_s_monitor(
    host_a, console_state, tools, fake_claude, staff
):
    """Run now and disable for a job on host-a: requests its monitor carries out with the
    code the console uses for its own jobs, answered with the report after; the job page
    and the audit log show pending, then what the host answered."""
    from jobs_app.models import Job
    from tests.test_collectors import stand_in

    bin_dir = tools["dir"] / "job-bin"
    stand_in(bin_dir, "opsconsole-run", f'exec "{PYTHON}" -m wrapper "$@"\n')
    env = console_state.env
    tools["crontab"].write_text(
        "\n".join(
            [
                f"PATH={bin_dir}:/usr/bin:/bin",
                f"PYTHONPATH={env['PYTHONPATH']}",
                f"OPSCONSOLE_HOME={env['OPSCONSOLE_HOME']}",
                "OPSCONSOLE_HOST_NAME=host-a",
                f"CLAUDE_CONFIG_DIR={env['CLAUDE_CONFIG_DIR']}",
                f"OPSCONSOLE_CLAUDE_BIN={env['OPSCONSOLE_CLAUDE_BIN']}",
                f"FAKE_CLAUDE_STATE={env['FAKE_CLAUDE_STATE']}",
                "# opsconsole: nightly",
                "15 2 * * * opsconsole-run --tag nightly -- -p x --output-format json",
                "",
            ]
        )
    )
    report_once(host_a)  # the host's collection reaches the console
    job = Job.objects.get(host="host-a", scheduler="cron", label="nightly")

    def carried_out():
        report_once(host_a)  # the answer hands the request over; the host acts on it
        for thread in host_a.reporting.threads:
            thread.join(timeout=30)
        report_once(host_a)  # the outcome goes back with the next report

    asked = staff.post(f"/api/jobs/{job.pk}/run")
    assert asked.status_code == 202, asked.content
    assert asked.json()["state"] == "pending"
    action_url = asked.json()["url"]
    assert staff.get(action_url).json()["state"] == "pending"
    page = staff.get(f"/jobs/{job.pk}/").content.decode()
    assert 'data-state="pending"' in page and "Requests to host-a" in page
    assert AuditEntry.objects.filter(action="request_run", job=job).exists()

    carried_out()
    answer = staff.get(action_url).json()
    assert answer["state"] == "done", answer["message"]
    assert "run seen" in answer["message"]
    audit = AuditEntry.objects.get(action="run", job=job)
    assert audit.ok and audit.actor == "ops" and "host-a answered" in audit.detail["message"]
    fragment = staff.get(f"/hosts/requests/?job={job.pk}").content.decode()
    assert 'data-state="done"' in fragment and "hx-get" not in fragment, "nothing open: no poll"
    on_record = Session.objects.filter(host="host-a", script_tag="nightly")
    for _ in range(40):
        if on_record.exclude(status=Status.LIVE).exists():
            break
        time.sleep(0.25)
        report_once(host_a)
    assert on_record.count() == 1, "the run it started is on record, once"

    asked = staff.post(f"/api/jobs/{job.pk}/disable")
    assert asked.status_code == 202, asked.content
    carried_out()
    assert staff.get(asked.json()["url"]).json()["state"] == "done"
    assert "#15 2 * * * opsconsole-run" in tools["crontab"].read_text().replace("# 15", "#15")
    job.refresh_from_db()
    assert job.scheduler_enabled is False
    assert AuditEntry.objects.get(action="disable", job=job).ok

    # What the console can check is refused at once; nothing is asked of the host.
    refused = staff.post(f"/api/jobs/{job.pk}/schedule", {"schedule": "0 3 * * *"})
    assert refused.status_code == 400 and "crontab" in refused.json()["error"]
    assert not RemoteAction.objects.filter(kind="schedule").exists()

    # The host acts only on jobs its own collector found, never on what it is sent.
    ghost = Job.objects.create(
        host="host-a", scheduler="cron", label="ghost", source="/etc/evil", tags=["x"]
    )
    asked = staff.post(f"/api/jobs/{ghost.pk}/run")
    assert asked.status_code == 202
    carried_out()
    answer = staff.get(asked.json()["url"]).json()
    assert answer["state"] == "failed" and "no cron job 'ghost' on host-a" in answer["message"]
    assert not AuditEntry.objects.get(action="run", job=ghost).ok
    hosts_page = staff.get("/hosts/").content.decode()
    assert "ghost" in hosts_page and "failed" in hosts_page


# ------------------------------------------------- remote transcripts in object storage


class CountingStorage:
    """What the console asks of its transcript storage: each save (with what it wrote)
    and each listing. Nothing stored is ever to be deleted."""

    def __init__(self, **options):
        super().__init__(**options)
        self.saved: dict[str, bytes] = {}
        self.saves = 0
        self.listings = 0
        self.opened = 0

    def _save(self, name, content):
        data = content.read()
        content.seek(0)
        self.saves += 1
        name = super()._save(name, content)
        assert name not in self.saved, f"{name} was written twice"
        self.saved[name] = data
        return name

    def _open(self, name, mode="rb"):
        self.opened += 1
        return super()._open(name, mode)

    def listdir(self, path):
        self.listings += 1
        return super().listdir(path)

    def delete(self, name):
        raise AssertionError(f"a stored transcript piece was deleted: {name}")


class CountingMemoryStorage(CountingStorage, InMemoryStorage):
    pass


try:
    from storages.backends.s3 import S3Storage

    class CountingS3Storage(CountingStorage, S3Storage):
        def versions(self) -> dict[str, int]:
            """How many versions each key has (the bucket keeps every version)."""
            pages = self.connection.meta.client.get_paginator("list_object_versions")
            counts: dict[str, int] = {}
            for page in pages.paginate(Bucket=self.bucket_name):
                for version in page.get("Versions", []):
                    counts[version["Key"]] = counts.get(version["Key"], 0) + 1
            return counts

except ImportError:  # the test extra brings django-storages; without it, memory only
    S3Storage = None


S3_KEYS = {"access_key": "testing", "secret_key": "testing", "region_name": "us-east-1"}


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server as its own process on loopback: a real S3 API to talk to."""
    if S3Storage is None:
        pytest.skip("django-storages[s3] and moto[server] come with the test extra")
    port = free_port()
    log = open(os.environ.get("MOTO_LOG", os.devnull), "wb")  # noqa: SIM115
    server = subprocess.Popen(
        [PYTHON, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=log,
        start_new_session=True,
        # Not a test's agent: without its CLAUDE_CONFIG_DIR, the state fixture's sweep
        # of what a test's agents left running passes it by.
        env={k: v for k, v in os.environ.items() if not k.startswith(("CLAUDE", "OPSCONSOLE"))},
    )

    def answers():
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return True
        return server.poll() is not None

    wait_until(answers, timeout=30)
    assert server.poll() is None, "moto_server did not start"
    yield f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait(10)
    log.close()


@pytest.fixture(params=["memory", "s3"])
def object_storage(request, settings):
    """STORAGES["opsconsole_transcripts"] an object storage: Django's InMemoryStorage, or
    django-storages' S3 backend against moto's S3 server, in a versioned bucket."""
    from sessions_app import remote_transcripts

    if request.param == "memory":
        backend, options = "tests.test_fleet.CountingMemoryStorage", {}
    else:
        import boto3

        endpoint = request.getfixturevalue("s3_server")
        bucket = f"transcripts-{new_session_id()[:8]}"
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=S3_KEYS["access_key"],
            aws_secret_access_key=S3_KEYS["secret_key"],
            region_name=S3_KEYS["region_name"],
        )
        client.create_bucket(Bucket=bucket)
        client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        backend = "tests.test_fleet.CountingS3Storage"
        options = {"bucket_name": bucket, "endpoint_url": endpoint, **S3_KEYS}
    settings.STORAGES = {
        **settings.STORAGES,
        remote_transcripts.STORAGE_ALIAS: {"BACKEND": backend, "OPTIONS": options},
    }
    store = remote_transcripts.storage()
    assert type(store).__name__ == backend.rsplit(".", 1)[1]
    return store


class BlindConsole:
    """The console's pages, asked as on a machine of its own. Here the reporting host
    runs in-process with the same Claude config dir; while the console answers it sees
    none of the host's files, so what it shows comes from the storage or nowhere."""

    def __init__(self, client, settings, elsewhere: Path) -> None:
        self.client, self.settings, self.elsewhere = client, settings, elsewhere

    def get(self, url: str, **extra):
        host_dirs = self.settings.OPSCONSOLE_CLAUDE_CONFIG_DIRS
        self.settings.OPSCONSOLE_CLAUDE_CONFIG_DIRS = [self.elsewhere]
        try:
            return self.client.get(url, **extra)
        finally:
            self.settings.OPSCONSOLE_CLAUDE_CONFIG_DIRS = host_dirs


def user_line(text: str) -> bytes:
    return json.dumps({"type": "user", "message": {"role": "user", "content": text}}).encode() + (
        b"\n"
    )


def test_a_remote_run_s_transcript_in_object_storage_is_read_through_the_console(
    host_a, runs, staff, object_storage, console_state, settings, tmp_path
):
    from sessions_app import remote_transcripts

    store = object_storage
    console = BlindConsole(staff, settings, tmp_path / "console-claude")
    first = user_line("check <b>the</b> remote & logs")
    run = start_fake_run(host_a_state(host_a), "remote-objects", transcript_lines=[first])
    runs.append(run)
    sid = run.session_id
    report_once(host_a)
    page = console.get(f"/sessions/{sid}/").content.decode()
    assert "check &lt;b&gt;the&lt;/b&gt; remote &amp; logs" in page
    assert "<b>the</b>" not in page
    tail = console.get(f"/api/claude-jsonl/{sid}")
    assert tail.status_code == 200 and b"".join(tail) == first
    assert store.saves == 1

    # The next report's piece: the follower's Range gets only it, the pages show it.
    second = user_line("second line, from the second report")
    with run.transcript.open("ab") as handle:
        handle.write(second)
    latest = report_once(host_a)
    follow = console.get(f"/api/claude-jsonl/{sid}", HTTP_RANGE=f"bytes={len(first)}-")
    assert follow.status_code == 206 and b"".join(follow) == second
    assert follow["Content-Range"] == f"bytes {len(first)}-{len(first + second) - 1}/" + str(
        len(first + second)
    )
    follower = console.get(f"/sessions/{sid}/transcript/?after={len(first)}").content.decode()
    assert "second line, from the second report" in follower
    assert "check &lt;b&gt;" not in follower
    assert "second line" in console.get(f"/sessions/{sid}/").content.decode()
    assert store.saves == 2

    # Sent again from 0 (a monitor restarted): nothing is written, nothing changes.
    host_a.reporting.transcripts[sid][1] = 0
    report_once(host_a)
    report_once(host_a)
    assert store.saves == 2
    assert host_a.reporting.transcripts[sid][1] == len(first + second)
    # A gap is not written; the answer says where the console's copy ends.
    held = len(first + second)
    assert remote_transcripts.append_chunk("host-a", sid, held + 10, b"late\n") == held
    assert remote_transcripts.append_chunk("host-a", sid, 0, first) == held
    assert store.saves == 2

    # Over a MiB, in pieces of at most 256 KB: a report lists two folders, whatever the
    # transcript's length, and the pages read every byte of it.
    big = b"".join(user_line(f"line {i:06d}") for i in range(24000))
    with run.transcript.open("ab") as handle:
        handle.write(big)
    payload = host_a.reporting.payload(latest, datetime.now(UTC))
    assert payload["transcripts"]
    for _ in range(8):
        listed = store.listings
        report_once(host_a)
        assert store.listings - listed <= 2
    whole = run.transcript.read_bytes()
    assert len(whole) > remote_transcripts.FOLDER_BYTES
    assert host_a.reporting.transcripts[sid][1] == len(whole)
    middle = whole.index(user_line("line 020000"))
    follow = console.get(f"/api/claude-jsonl/{sid}", HTTP_RANGE=f"bytes={middle}-")
    body = b"".join(follow)
    assert follow.status_code == 206 and body.startswith(user_line("line 020000"))
    assert body == whole[middle : middle + len(body)]
    assert b"".join(console.get(f"/api/claude-jsonl/{sid}")).endswith(user_line("line 023999"))

    # What this console stored went into its copy as it came: no read fetched a piece.
    assert store.opened == 0
    # Without that copy (another console's pieces, or a deleted copy) a read fetches
    # them from the storage, each once.
    copy = remote_transcripts.cache_path("host-a", sid)
    copy.unlink()
    follow = console.get(f"/api/claude-jsonl/{sid}", HTTP_RANGE=f"bytes={middle}-")
    assert follow.status_code == 206 and b"".join(follow) == body
    assert copy.read_bytes() == whole and store.opened == len(store.saved)

    # Every object was written once and is as it was written; no whole-file object.
    name = remote_transcripts.name_for("host-a", sid)
    assert not store.exists(name)
    assert sorted(store.saved) == sorted(
        remote_transcripts.piece_name(name, offset, length)
        for offset, length in pieces_of(store, name)
    )
    for piece, data in store.saved.items():
        with store.open(piece, "rb") as handle:
            assert handle.read() == data
    assert b"".join(store.saved[p] for p in sorted(store.saved)) == whole
    if hasattr(store, "versions"):
        assert set(store.versions().values()) == {1}

    # The pages read a private copy, named from the host and the session id only.
    assert copy.read_bytes() == whole
    assert copy.is_relative_to(console_state.home / "cache" / "transcripts")
    assert (copy.stat().st_mode & 0o777, copy.parent.stat().st_mode & 0o777) == (0o600, 0o700)
    assert Session.objects.get(session_id=sid).archive_path == str(copy)

    # Ended: the page still reads it, and reading again fetches nothing more.
    run.kill_all()
    report_once(host_a)
    saves, listed, opened = store.saves, store.listings, store.opened
    assert "line 023999" in console.get(f"/sessions/{sid}/").content.decode()
    assert (store.saves, store.opened) == (saves, opened) and store.listings - listed <= 4


def pieces_of(store, name: str) -> list[tuple[int, int]]:
    """Every (offset, length) piece in the storage, by listing (the test's own reading)."""
    found = []
    folders, _ = store.listdir(f"{name}.d")
    for folder in folders:
        for file_name in store.listdir(f"{name}.d/{folder}")[1]:
            offset, length = file_name.split("-")
            found.append((int(offset), int(length)))
    return sorted(found)


def test_a_whole_object_from_before_the_pieces_is_read_and_continued(object_storage, console_state):
    from django.core.files.base import ContentFile

    from sessions_app import remote_transcripts

    store = object_storage
    sid = new_session_id()
    name = remote_transcripts.name_for("host-b", sid)
    old = user_line("kept whole, by an older console")
    store.save(name, ContentFile(old))
    new = user_line("and then in pieces")
    assert remote_transcripts.append_chunk("host-b", sid, 0, old + new) == len(old + new)
    assert remote_transcripts.append_chunk("host-b", sid, len(old), new) == len(old + new)
    copy = remote_transcripts.readable_copy("host-b", sid)
    assert copy is not None and copy.read_bytes() == old + new
    with store.open(name, "rb") as handle:
        assert handle.read() == old

    # A host name is never a path: the copy stays under the console's cache.
    odd = remote_transcripts.cache_path("../../etc", sid)
    assert odd.resolve().is_relative_to(remote_transcripts.cache_root().resolve())
    assert remote_transcripts.readable_copy("../../etc", sid) is None


def test_a_request_a_live_host_never_answers_expires_after_its_ttl(db):
    """The host keeps reporting but never says how the request ended: after ACTION_TTL
    the request expires, decided on the clock handed to expire_actions."""
    t0 = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)
    action = RemoteAction.objects.create(
        host="host-a",
        kind=RemoteAction.Kind.STOP,
        session_id=uuid.uuid4(),
        requested_by="ops",
        requested_at=t0,
        state=RemoteAction.State.SENT,
        sent_at=t0,
    )

    def heard_at(moment):
        HostSample.objects.update_or_create(
            host="host-a",
            defaults={
                "seq": int(moment.timestamp()),
                "taken_at": moment,
                "received_at": moment,
                "interval_seconds": 2.0,
                "sample_ms": 1.0,
                "etag": f'"{moment.timestamp()}"',
                "api_document": "{}",
                "state_document": "{}",
                "reported": True,
            },
        )

    heard_at(t0 + ACTION_TTL - timedelta(seconds=2))
    assert expire_actions(t0 + ACTION_TTL - timedelta(seconds=1)) == 0
    heard_at(t0 + ACTION_TTL)
    assert expire_actions(t0 + ACTION_TTL + timedelta(seconds=1)) == 1
    action.refresh_from_db()
    assert action.state == RemoteAction.State.EXPIRED
    assert "never reported an outcome" in action.message


def test_a_remote_run_s_reason_travels_to_the_console_within_the_limits(host_a, console_state):
    """Why a run ended (format 2's reason fields) reaches the console with its completion
    record; a tail past the limits (another wrapper's) is clipped and redacted there, by
    the same formats module, not refused."""
    record = spool_record(console_state.paths, "host-a")
    written = dict(
        asdict(record),
        end_reason="failed",
        exit_code=1,
        stderr_tail="\n".join(f"line {i} sk-ant-api03-leakedKEY{i}" for i in range(100)),
        result_text="Invalid API key · Please run /login",
        last_api_error="authentication_failed (HTTP 401), retry 10 of 10",
        claude_started=True,
        transcript_written=False,
    )
    write_json_atomic(console_state.paths.spool_path(record.session_id), written)
    report_once(host_a)
    session = Session.objects.get(session_id=record.session_id)
    details = session.end_details
    assert details["result_text"] == "Invalid API key · Please run /login"
    assert details["last_api_error"].startswith("authentication_failed (HTTP 401)")
    assert (details["claude_started"], details["transcript_written"]) == (True, False)
    lines = details["stderr_tail"].splitlines()
    assert len(lines) == 40 and lines[-1] == "line 99 sk-ant-[redacted]"
    assert "leakedKEY" not in details["stderr_tail"]


# A web worker of its own, on the database named by DATABASE_URL: each line it reads is a
# command ("store HOST SEQ SESSION": a host's sample; "read": the fleet's body), each line
# it prints the answer (a read: the ETag, the sessions listed, this worker's builds so far).
FLEET_WORKER = """
import json, sys
from datetime import UTC, datetime
import django
django.setup()
from monitor_app.fleet_reader import fleet
from monitor_app.models import HostSample
for line in sys.stdin:
    command, *args = line.split()
    if command == "store":
        host, seq, session = args[0], int(args[1]), args[2]
        now = datetime.now(UTC)
        document = {"host": host, "seq": seq, "taken_at": now.isoformat(),
                    "sessions": [{"session_id": session}], "leftovers": []}
        HostSample.objects.update_or_create(host=host, defaults=dict(
            seq=seq, taken_at=now, received_at=now, interval_seconds=60.0, sample_ms=1.0,
            etag=f'"{host}-{seq}"', api_document=json.dumps(document),
            state_document="{}", reported=True))
        print("stored", flush=True)
    else:
        body, etag = fleet.api_document()
        sessions = [s["session_id"] for s in json.loads(body)["sessions"]]
        print(json.dumps([etag, sessions, fleet.builds]), flush=True)
"""


def test_the_fleet_listing_is_built_once_per_state_however_many_workers_ask(tmp_path):
    """Two web worker processes of one console, each asked for the fleet's body at the
    same moment after every new sample: one builds it, the other reads what it built."""
    env = dict(
        os.environ,
        DATABASE_URL=f"sqlite:///{tmp_path / 'console.sqlite3'}",
        OPSCONSOLE_HOME=str(tmp_path / "home"),
        DJANGO_SETTINGS_MODULE="opsconsole.settings",
        PYTHONPATH=str(REPO_ROOT),
    )
    subprocess.run(
        [PYTHON, "-m", "opsconsole.cli", "migrate", "-v0"], env=env, check=True, timeout=300
    )
    workers = [
        subprocess.Popen(
            [PYTHON, "-c", FLEET_WORKER],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]

    def ask(worker, line: str) -> str:
        worker.stdin.write(line + "\n")
        worker.stdin.flush()
        return worker.stdout.readline()

    try:
        assert ask(workers[0], "store host-b 1 b1") == "stored\n"
        for state in range(1, 6):
            assert ask(workers[0], f"store host-a {state} a{state}") == "stored\n"
            for worker in workers:  # both asked before either answers
                worker.stdin.write("read\n")
                worker.stdin.flush()
            answers = [json.loads(worker.stdout.readline()) for worker in workers]
            assert answers[0][:2] == answers[1][:2]  # the same ETag and body
            assert answers[0][1] == [f"a{state}", "b1"]
            assert answers[0][2] + answers[1][2] == state  # one build per state, all told
        # Nothing new: nobody builds.
        again = [json.loads(ask(worker, "read")) for worker in workers]
        assert sum(answer[2] for answer in again) == 5
    finally:
        for worker in workers:
            worker.stdin.close()
            worker.wait(30)


# ------------------------------------------------- the join on a reporting host


def claude_below(parent: int, program: Path) -> int | None:
    """The pid of the lookalike claude the process `parent` started (its shell may exec it)."""
    try:
        for child in psutil.Process(parent).children(recursive=True):
            if child.exe() == str(program):
                return child.pid
    except psutil.Error:
        return None
    return None


def test_a_reporting_host_s_unwrapped_runs_are_tied_to_their_jobs(
    host_a, console_state, staff, tools, settings
):
    """Issue 24's zero-config join for a host in report mode: the host reads each run's
    origin (a crontab line run as cron runs it; a CI job's environment) and sends it in
    its report; the console ties the run to the host's job (the collected entry; a CI job
    made by its first run, not wrapped): live on the job's page, on record with the job
    when it ends, seen by late detection."""
    from jobs_app.models import Job
    from tests.test_job_join_real import late_badges
    from tests.test_monitor import registry_file_for

    settings.OPSCONSOLE_SCHEDULERS = ["cron"]
    state = host_a_state(host_a)
    claude = claude_lookalike(tools["dir"])
    report_once(host_a)  # collected before the entry exists: the run makes it collect again
    tools["crontab"].write_text(f"# opsconsole: nightly-agent\n0 3 * * * {claude} 300\n")
    cron = subprocess.Popen(
        [PYTHON, "-m", "tests.cron_standin", "nightly-agent"],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        start_new_session=True,
    )
    ci_env = {
        **os.environ,
        "GITHUB_ACTIONS": "true",
        "GITHUB_REPOSITORY": "acme/site",
        "GITHUB_WORKFLOW": "nightly",
        "GITHUB_JOB": "agent",
        "GITHUB_RUN_ID": "4242",
    }
    ci = subprocess.Popen([claude, "300"], env=ci_env, start_new_session=True)
    cron_run, ci_run = new_session_id(), new_session_id()
    try:
        agent = wait_until(lambda: claude_below(cron.pid, claude))
        registry = {
            sid: registry_file_for(state.config_dir, pid, sid, str(state.workdir))
            for sid, pid in ((cron_run, agent), (ci_run, ci.pid))
        }
        report_once(host_a)
        entry = Job.objects.get(host="host-a", scheduler="cron", label="nightly-agent")
        found = Job.objects.get(host="host-a", scheduler="ci")
        assert (found.label, found.wrapped, entry.wrapped) == (
            "acme/site/nightly/agent",
            False,
            False,
        )
        rows = {str(s.session_id): s for s in Session.objects.filter(host="host-a")}
        assert (rows[cron_run].job_id, rows[ci_run].job_id) == (entry.pk, found.pk)
        assert (rows[cron_run].status, rows[cron_run].wrapped) == (Status.UNWRAPPED, False)
        assert set(host_a.reporting.origins.values()) == {None}, "acknowledged: sent once"
        # Live on the job's page, through the sample the console published for host-a.
        live = {s.session_id: s for s in fleet.snapshot(["host-a"]).sessions}
        assert (live[cron_run].job_id, live[ci_run].job_id) == (entry.pk, found.pk)
        assert live[cron_run].origin == f"cron: {claude} 300"
        assert cron_run[:8] in staff.get(f"/jobs/{entry.pk}/").content.decode()
        report_once(host_a)  # a later report sends no origin and keeps the link
        assert fleet.snapshot(["host-a"]).get(cron_run).job_id == entry.pk

        # Known for a while, its 03:00 run due: late until a run of it is on record.
        Job.objects.filter(pk=entry.pk).update(
            first_seen_at=entry.previous_run_at - timedelta(days=1)
        )
        entry.refresh_from_db()
        later = datetime.now(UTC) + timedelta(hours=1)
        assert late_badges(entry, later)[1] == ["late"]
        for sid, process in ((cron_run, agent), (ci_run, ci.pid)):
            registry[sid].unlink()  # Claude Code removes it on a normal exit
            os.kill(process, signal.SIGKILL)
        cron.wait(timeout=30)
        ci.wait(timeout=30)
        report_once(host_a)
    finally:
        for process in (cron, ci):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    ended = Session.objects.get(session_id=cron_run)
    assert (ended.status, ended.job_id) == (Status.EXITED, entry.pk)
    assert Session.objects.get(session_id=ci_run).job_id == found.pk
    events = Event.objects.filter(session_id=cron_run)
    assert {(e.kind, e.job_id) for e in events} == {
        (EventKind.RUN_STARTED, entry.pk),
        (EventKind.RUN_ENDED, entry.pk),
    }
    status, late = late_badges(entry, later)
    assert late == [] and status.last_session == ended


def test_an_unwrapped_run_that_starts_and_ends_while_the_console_is_down_is_tied_to_its_job(
    host_a, console_state, tools
):
    """The console is unreachable for the whole of a CI job's unwrapped claude run on
    host-a: the host keeps the run's origin with its ending, and once the console answers
    again the run is on record, ended, tied to its CI job, and its origin acknowledged."""
    from jobs_app.models import Job
    from tests.test_monitor import registry_file_for

    state = host_a_state(host_a)
    claude = claude_lookalike(tools["dir"])
    report_once(host_a)
    reporter = host_a.reporting.reporter
    up = reporter.transport

    def down(body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        raise ReportError("console unreachable: connection refused")

    reporter.transport = down
    ci_env = {
        **os.environ,
        "GITHUB_ACTIONS": "true",
        "GITHUB_REPOSITORY": "acme/site",
        "GITHUB_WORKFLOW": "nightly",
        "GITHUB_JOB": "agent",
        "GITHUB_RUN_ID": "4343",
    }
    ci = subprocess.Popen([claude, "300"], env=ci_env, start_new_session=True)
    run = new_session_id()
    try:
        registry = registry_file_for(state.config_dir, ci.pid, run, str(state.workdir))
        host_a.tick()
        assert run in {s.session_id for s in host_a.reporting.latest.sessions}
        assert host_a.reporting.last_error is not None, "the console is down"
        registry.unlink()  # Claude Code removes it on a normal exit
        os.killpg(ci.pid, signal.SIGKILL)
        ci.wait(timeout=30)
        host_a.tick()
        assert not Session.objects.filter(session_id=run).exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(ci.pid, signal.SIGKILL)
    reporter.transport = up
    report_once(host_a)
    report_once(host_a)
    job = Job.objects.get(host="host-a", scheduler="ci")
    assert (job.label, job.wrapped) == ("acme/site/nightly/agent", False)
    ended = Session.objects.get(session_id=run)
    assert (ended.host, ended.status, ended.job_id) == ("host-a", Status.EXITED, job.pk)
    assert run not in host_a.reporting.origins, "acknowledged, and the run is over"


# ------------------------------------------------- catch-up on a reporting host


def test_a_reporting_host_s_job_is_caught_up_by_run_now_requests_never_twice_or_on_a_live_run(
    host_a, console_state, tools, fake_claude, settings
):
    """A quota stamp on host-a skips two fires of a job with catch-up `all missed`; once
    the stamp has cleared (host-a's sample says so), the console asks host-a's monitor to
    run the job, audited as actor catch-up: one request while it is unanswered (a pending
    run now counts as a live run), none while the run it started is live, the next miss
    only once it has ended, and nothing after the last."""
    from jobs_app.models import CatchUp, Job
    from monitor_app.catchup import CATCH_UP_ACTOR, remote_catchup_round
    from monitor_app.snapshot import Snapshot
    from tests.conftest import wrapper_command
    from tests.test_collectors import stand_in
    from wrapper.formats import EXIT_QUOTA_SKIP, QuotaStamp

    settings.OPSCONSOLE_CATCHUP_SECONDS = 0
    settings.OPSCONSOLE_RUN_NOW_WAIT_SECONDS = 30
    bin_dir = tools["dir"] / "job-bin"
    stand_in(bin_dir, "opsconsole-run", f'exec "{PYTHON}" -m wrapper "$@"\n')
    env = dict(console_state.env, OPSCONSOLE_HOST_NAME="host-a")
    tools["crontab"].write_text(
        "\n".join(
            [
                f"PATH={bin_dir}:/usr/bin:/bin",
                f"PYTHONPATH={env['PYTHONPATH']}",
                f"OPSCONSOLE_HOME={env['OPSCONSOLE_HOME']}",
                "OPSCONSOLE_HOST_NAME=host-a",
                f"CLAUDE_CONFIG_DIR={env['CLAUDE_CONFIG_DIR']}",
                f"OPSCONSOLE_CLAUDE_BIN={env['OPSCONSOLE_CLAUDE_BIN']}",
                f"FAKE_CLAUDE_STATE={env['FAKE_CLAUDE_STATE']}",
                "FAKE_CLAUDE_BEHAVIOUR=sleep:4",
                "# opsconsole: nightly",
                "15 2 * * * opsconsole-run --tag nightly -- -p x --output-format json",
                "",
            ]
        )
    )
    report_once(host_a)  # the host's collection reaches the console
    job = Job.objects.get(host="host-a", scheduler="cron", label="nightly")
    Job.objects.filter(pk=job.pk).update(catchup_policy=CatchUp.ALL_MISSED)

    def stamp_until(until: datetime) -> None:
        stamp = QuotaStamp(until=until.isoformat(), set_at=utc_now_iso(), reason="usage limit")
        write_json_atomic(console_state.paths.quota_stamp, stamp.to_dict())

    console = Monitor(paths=console_state.paths, publish=False)  # the console's own

    def catch_up_round() -> list[RemoteAction]:
        now = datetime.now(UTC)
        remote_catchup_round(console, Snapshot(taken_at=now), now)
        return list(RemoteAction.objects.filter(job=job, requested_by=CATCH_UP_ACTOR))

    stamp_until(datetime.now(UTC) + timedelta(hours=1))
    for _ in range(2):  # two fires the stamp skips
        fire = subprocess.run(
            wrapper_command("nightly", "-p", "x"), env=env, cwd=console_state.workdir
        )
        assert fire.returncode == EXIT_QUOTA_SKIP
    report_once(host_a)
    misses = Session.objects.filter(job=job, status=Status.QUOTA_SKIP).order_by("started_at")
    assert misses.count() == 2
    assert catch_up_round() == [], "never while host-a's stamp holds"

    stamp_until(datetime.now(UTC) - timedelta(seconds=1))  # its reset time has come
    report_once(host_a)  # host-a's sample no longer names a stamp
    [first] = catch_up_round()
    assert (first.kind, first.state, first.host) == ("run", "pending", "host-a")
    asked = AuditEntry.objects.get(actor=CATCH_UP_ACTOR, action="request_run")
    assert (asked.job, asked.detail["misses"], asked.detail["catch_up"]) == (job, 1, "all_missed")
    assert len(catch_up_round()) == 1, "an unanswered run now is a live run: never twice"

    report_once(host_a)  # the answer hands the request over; the host starts the run
    for thread in host_a.reporting.threads:
        thread.join(timeout=60)
    report_once(host_a)  # the outcome, with a sample taken after it: the run is live
    first.refresh_from_db()
    assert first.state == "done", first.message
    run = Session.objects.get(session_id=first.detail["session_id"])
    assert run.status == Status.LIVE
    assert len(catch_up_round()) == 1, "never on top of a live run"

    def ended(run: Session):
        report_once(host_a)
        run.refresh_from_db()
        return run.status == Status.SUCCEEDED or None

    wait_until(lambda: ended(run), timeout=60)
    second = next(a for a in catch_up_round() if a.pk != first.pk)  # the next miss, now
    report_once(host_a)
    for thread in host_a.reporting.threads:
        thread.join(timeout=60)
    report_once(host_a)
    second.refresh_from_db()
    assert second.state == "done", second.message
    assert len(catch_up_round()) == 2, "both misses answered: nothing more"
    # "done" means the host started the run; its claude is counted once the run has ended
    second_run = Session.objects.get(session_id=second.detail["session_id"])
    wait_until(lambda: ended(second_run), timeout=60)
    runs = AuditEntry.objects.filter(actor=CATCH_UP_ACTOR, action="run", job=job)
    assert [(a.ok, a.detail["misses"]) for a in runs] == [(True, 1), (True, 1)]
    assert {a.detail["through"] for a in runs} == {m.started_at.isoformat() for m in misses}
    assert len((fake_claude / "calls").read_text().split()) == 2  # claude ran twice
    job.refresh_from_db()
    assert job.caught_up_through == misses.last().started_at
    assert Event.objects.filter(kind=EventKind.CATCH_UP, host="host-a", job=job).count() == 2
