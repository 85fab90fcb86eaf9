"""Many hosts, one console: a monitor in report mode, the console's side, host tokens.

The reporting monitor here runs in-process and posts through Django's test client
(the console's real view and ingest); tests/test_fleet_hosts.py runs the same with
real processes, PID namespaces and PostgreSQL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from jobs_app.models import AuditEntry
from monitor_app.fleet import check_silent_hosts, expire_actions, fleet
from monitor_app.models import Event, EventKind, HostSample, HostToken, RemoteAction
from monitor_app.monitor import Monitor
from monitor_app.report import Reporter, check_report_url
from sessions_app.models import Session, Status
from sessions_app.runs import live_runs
from tests.conftest import PYTHON, REPO_ROOT
from tests.live_helpers import start_fake_run
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
    monitor = Monitor(
        host="host-a",
        interval=1.0,
        reporter=Reporter("http://127.0.0.1:1", token, transport=client_transport(Client())),
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
    page = staff.get("/?host=host-a").content.decode()
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
    host_a.reporter.token = token
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
    payload = host_a.reporting.payload(latest, datetime.now(UTC))
    payload["completions"] = [asdict(record)]
    events_before = Event.objects.count()
    for _ in range(2):
        host_a.reporter.send(payload)
    assert Session.objects.filter(session_id=record.session_id).count() == 1
    assert Event.objects.count() == events_before
    assert Event.objects.filter(kind=EventKind.RUN_ENDED, session_id=record.session_id).count() == 1

    # An old report retried never takes the sample back; a restarted monitor's always counts.
    current = HostSample.objects.get(host="host-a").seq
    host_a.reporter.send(dict(payload, sample=dict(payload["sample"], seq=1)))
    assert HostSample.objects.get(host="host-a").seq == current
    restarted = dict(payload["sample"], seq=1, monitor_pid=payload["sample"]["monitor_pid"] + 1)
    host_a.reporter.send(dict(payload, sample=restarted))
    assert HostSample.objects.get(host="host-a").seq == 1


def test_token_for_host_a_cannot_write_host_b_and_a_revoked_token_is_refused(host_a, console_state):
    client = Client()
    _row, token_b = HostToken.issue("host-b")
    snapshot = host_a.tick()
    payload = host_a.reporting.payload(snapshot, datetime.now(UTC))

    def post(body: dict, token: str) -> int:
        return client.post(
            "/api/hosts/report",
            json.dumps(body),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {token}",
        ).status_code

    assert post(payload, token_b) == 403, "host-a's sample with host-b's token"
    token_a = host_a.reporter.token
    foreign = dict(payload, completions=[asdict(spool_record(console_state.paths, "host-b"))])
    assert post(foreign, token_a) == 403, "a record naming host-b in host-a's report"
    assert not Session.objects.filter(host="host-b").exists()
    # A run host-b has on record cannot be rewritten by host-a, whatever the record says.
    b_record = spool_record(console_state.paths, "host-b")
    (console_state.paths.spool_path(b_record.session_id)).unlink()
    assert post(dict(payload, host="host-b", completions=[asdict(b_record)]), token_b) == 403
    # A live session of host-b slipped into host-a's sample is refused too.
    state = json.loads(payload["sample"]["state_document"])
    smuggled = start_fake_run(host_a_state(host_a), "smuggled")
    try:
        sidecar = dict(smuggled.sidecar.to_dict(), host="host-b")
        state["sessions"] = [{"sidecar": sidecar, "state": "live", "processes": []}]
        sample = dict(payload["sample"], state_document=json.dumps(state))
        assert post(dict(payload, sample=sample), token_a) == 403
    finally:
        smuggled.kill_all()
    assert not Session.objects.filter(session_id=smuggled.session_id).exists()
    assert post(payload, "oc_host_not-a-token") == 401
    assert post(payload, token_a) == 200
    HostToken.objects.get(host="host-b").revoke()
    assert post(dict(payload, host="host-b"), token_b) == 401
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
    assert 'host-c <strong class="silent">(silent)</strong>' in staff.get("/").content.decode()
    hosts = {h["host"]: h for h in staff.get("/api/hosts").json()["hosts"]}
    assert hosts["host-c"]["silent"] is True
    anonymous = Client()
    assert anonymous.get("/hosts/").status_code == 302
    assert anonymous.get("/api/hosts").status_code == 401


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


def test_a_remote_run_s_transcript_is_followed_through_the_console(host_a, runs, staff):
    from monitor_app import remote_transcripts

    first = b'{"type":"user","message":{"role":"user","content":"audit the remote logs"}}\n'
    run = start_fake_run(host_a_state(host_a), "remote-transcript", transcript_lines=[first])
    runs.append(run)
    report_once(host_a)
    tail = staff.get(f"/api/claude-jsonl/{run.session_id}")
    assert tail.status_code == 200 and b"audit the remote logs" in b"".join(tail)
    assert "audit the remote logs" in staff.get(f"/sessions/{run.session_id}/").content.decode()
    stored = remote_transcripts.local_path("host-a", run.session_id)
    assert stored and Path(stored).read_bytes() == first

    # New bytes follow from the acknowledged offset; a follower's Range gets only them.
    second = b'{"type":"user","message":{"role":"user","content":"second line"}}\n'
    with run.transcript.open("ab") as handle:
        handle.write(second)
    latest = report_once(host_a)
    follow = staff.get(f"/api/claude-jsonl/{run.session_id}", HTTP_RANGE=f"bytes={len(first)}-")
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
    assert b"008999" in b"".join(staff.get(f"/api/claude-jsonl/{run.session_id}"))


def test_the_fleet_live_page_lists_the_most_recent_runs_up_to_its_cap(
    host_a, runs, staff, settings
):
    settings.OPSCONSOLE_FLEET_LIVE_ROWS = 1
    for tag in ("older-run", "newer-run"):
        runs.append(start_fake_run(host_a_state(host_a), tag))
        time.sleep(1.1)  # started_at has second resolution
    report_once(host_a)
    page = staff.get("/?host=all").content.decode()
    assert "Showing the 1 most recent of 2 live runs" in page
    assert "newer-run" in page and "older-run" not in page
    host_page = staff.get("/?host=host-a").content.decode()
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
    assert "second-run" in staff.get("/?host=all").content.decode()
    # Listed from the API documents, the rows say what the full snapshots say.
    shown = ("session_id", "script_tag", "platform", "host", "attempt", "status")
    shown += ("started_at", "last_tool_call", "cpu_percent", "rss", "html_url")
    listed = [[getattr(r, name) for name in shown] for r in fleet.live(10).runs]
    rebuilt = [[getattr(r, name) for name in shown] for r in live_runs(fleet.snapshot())]
    assert len(listed) == 2 and listed == rebuilt

    long_ago = datetime.now(UTC) - timedelta(seconds=60)
    HostSample.objects.filter(host="host-a").update(taken_at=long_ago, received_at=long_ago)
    page = staff.get("/?host=all").content.decode()
    assert 'host-a <strong class="silent">(silent)</strong>' in page
    assert "first-run" in page and "second-run" in page


def test_a_reporting_host_s_scheduler_jobs_are_recorded_under_it(
    host_a, staff, settings, tmp_path, monkeypatch
):
    from jobs_app.models import Job

    fake_bin = tmp_path / "fake-bin"
    fake_bin.mkdir()
    (fake_bin / "crontab").write_text(
        "#!/bin/sh\necho '*/5 * * * * /usr/bin/python3 -m wrapper --tag remote-cron -- -p hello'\n"
    )
    (fake_bin / "crontab").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")
    settings.OPSCONSOLE_SCHEDULERS = ["cron"]
    report_once(host_a)
    job = Job.objects.get(host="host-a", command__contains="remote-cron")
    assert job.scheduler == "cron" and job.present
    hosts = {h["host"]: h for h in staff.get("/api/hosts").json()["hosts"]}
    assert hosts["host-a"]["jobs"] >= 1
    assert host_a.reporting.jobs is None, "the collection was acknowledged"


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
    restarted = Monitor(host="host-a", interval=1.0, reporter=host_a.reporter)
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


def test_stop_on_a_remote_job_requests_a_stop_of_its_runs_and_refuses_the_rest(host_a, runs, staff):
    from jobs_app.models import Job

    job = Job.objects.create(
        scheduler="cron", label="remote-nightly", host="host-a", tags=["remote-nightly"]
    )
    run = start_fake_run(host_a_state(host_a), "remote-nightly")
    runs.append(run)
    report_once(host_a)
    answer = staff.post(f"/api/jobs/{job.pk}/stop").json()
    assert answer["ok"] and "stop requested from host-a" in answer["message"]
    action = RemoteAction.objects.get(session_id=run.session_id)
    assert (action.kind, action.state) == ("stop", "pending")
    refused = staff.post(f"/api/jobs/{job.pk}/run")
    assert refused.json()["ok"] is False and "another host (host-a)" in refused.json()["message"]
    assert AuditEntry.objects.filter(action="run", job=job, ok=False).exists()
