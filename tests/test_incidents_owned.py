"""Incidents a person owns, and links and times that work in a message.

Acknowledge, snooze and resolve through the Alerts page (logged in, CSRF) and the
API (bearer token), each audited; repeats that respect them, on a fixed clock; a
reporting host that falls silent (one alert, one recovery, through a real webhook);
no "late" for a run due before the console first saw its job; the warning `serve`
and `doctor` give when alert links would be bare paths.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from alerts_app import engine, incidents
from alerts_app.incidents import IncidentActionError, next_repeat_at, snooze_until
from alerts_app.models import Alert, Incident, Rule
from fleet.hosts import check_silent_hosts
from fleet.report import Reporter
from fleet.reporting import reporting_monitor
from jobs_app.models import AuditEntry, Job
from monitor_app.models import Event, EventKind, HostSample, HostToken
from monitor_app.monitor import Monitor
from monitor_app.snapshot import Snapshot
from opsconsole.models import ApiToken
from sessions_app.human_time import human_time
from tests.server_fixtures import serve_console, stop_console
from tests.test_collectors import stand_in
from tests.test_fleet import client_transport

pytest_plugins = ["tests.alert_receivers"]
pytestmark = pytest.mark.django_db

T0 = datetime(2026, 12, 7, 2, 14, 5, tzinfo=UTC)
HUMAN = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC")


@pytest.fixture(autouse=True)
def alert_settings(settings, console_state):
    settings.OPSCONSOLE_BASE_URL = "https://ops.example.com"
    settings.OPSCONSOLE_ALERT_URLS = []
    settings.OPSCONSOLE_ALERT_FLAP_SECONDS = 600
    settings.OPSCONSOLE_ALERT_REPEAT_MINUTES = 0
    settings.OPSCONSOLE_ALERT_DELIVER_IN_BACKGROUND = False
    engine._env_synced_at = None
    engine._pruned_at = None
    yield settings
    engine._env_synced_at = None


def json_channel(receiver):
    from alerts_app.models import Channel

    row = Channel(name="ops webhook", url=f"json://127.0.0.1:{receiver.port}/hook")
    row.save()
    return row


def texts(receiver) -> list[str]:
    return [r.json["title"] + "\n" + r.json["message"] for r in receiver.accepted]


def quota_event(at: datetime, until: str = "2026-12-07T09:00:00Z") -> Event:
    """A quota stamp on this host, as the monitor records it: one incident, one alert."""
    return Event.objects.create(
        at=at,
        host=settings.OPSCONSOLE_HOST,
        kind=EventKind.QUOTA_SET,
        message="quota stamp set",
        detail={"until": until, "reason": "monthly usage limit"},
        dedupe_key=f"quota:{uuid.uuid4()}",
    )


def open_quota_incident(at: datetime = T0) -> Incident:
    quota_event(at)
    engine.tick(at, Snapshot(taken_at=at, sessions=[]))
    return Incident.objects.get(key=f"quota:{settings.OPSCONSOLE_HOST}", resolved_at=None)


def login(username: str, *, staff: bool = True) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(get_user_model().objects.create_user(username, is_staff=staff))
    return client


def post_form(client: Client, path: str, data: dict):
    """As a browser does: the page sets the CSRF cookie, the form sends it back."""
    assert client.get("/alerts/").status_code == 200
    token = client.cookies["csrftoken"].value
    return client.post(path, {**data, "csrfmiddlewaretoken": token})


# ----------------------------------------------------------------------------- the page


def test_acknowledge_snooze_and_resolve_on_the_alerts_page_are_audited(webhook):
    receiver = webhook()
    json_channel(receiver)
    incident = open_quota_incident(timezone.now())
    alice = login("alice")
    page = alice.get("/alerts/").content.decode()
    assert f'data-incident="{incident.pk}"' in page and "nobody yet" in page
    assert "I&#x27;m on it" in page or "I'm on it" in page

    # No CSRF token: refused, nothing changes.
    assert alice.post(f"/alerts/incidents/{incident.pk}/acknowledge").status_code == 403
    incident.refresh_from_db()
    assert incident.acknowledged_at is None

    response = post_form(alice, f"/alerts/incidents/{incident.pk}/acknowledge", {})
    assert response.status_code == 302 and response["Location"] == "/alerts/"
    incident.refresh_from_db()
    assert incident.acknowledged_by == "alice" and incident.acknowledged_at is not None
    page = alice.get("/alerts/").content.decode()
    assert "acknowledged by <strong>alice</strong> at " + human_time(incident.acknowledged_at) in (
        page
    )

    before = timezone.now()
    post_form(alice, f"/alerts/incidents/{incident.pk}/snooze", {"minutes": "60"})
    incident.refresh_from_db()
    assert incident.snoozed_by == "alice"
    assert timedelta(minutes=59) < incident.snoozed_until - before < timedelta(minutes=61)

    # A resolution needs a note: said on the page, nothing resolved.
    post_form(alice, f"/alerts/incidents/{incident.pk}/resolve", {"note": "  "})
    incident.refresh_from_db()
    assert incident.resolved_at is None
    assert "Say in a note why" in alice.get("/alerts/").content.decode()

    post_form(alice, f"/alerts/incidents/{incident.pk}/resolve", {"note": "raised the limit"})
    incident.refresh_from_db()
    assert incident.resolved_by == "alice" and incident.resolution_note == "raised the limit"
    page = alice.get("/alerts/").content.decode()
    assert "Nothing open." in page and "raised the limit" in page

    audit = list(
        AuditEntry.objects.filter(action__startswith="incident_")
        .order_by("id")
        .values_list("actor", "action")
    )
    assert audit == [
        ("alice", "incident_ack"),
        ("alice", "incident_snooze"),
        ("alice", "incident_resolve"),
    ]
    assert AuditEntry.objects.get(action="incident_resolve").detail["note"] == "raised the limit"

    # Whoever heard it opened hears who closed it, and why.
    engine.tick(timezone.now())
    opened, resolved = texts(receiver)
    assert "Quota hit" in opened
    assert "Resolved by alice" in resolved and "Note: raised the limit" in resolved
    assert "https://ops.example.com/alerts/" in resolved


def test_only_staff_act_on_incidents_and_only_logged_in_people_see_them():
    incident = open_quota_incident(timezone.now())
    viewer = login("viewer", staff=False)
    assert "I&#x27;m on it" not in viewer.get("/alerts/").content.decode()
    assert post_form(viewer, f"/alerts/incidents/{incident.pk}/acknowledge", {}).status_code == 403
    assert Client().get("/alerts/").status_code == 302  # to the login page
    assert Client().post(f"/alerts/incidents/{incident.pk}/acknowledge").status_code in (302, 403)
    incident.refresh_from_db()
    assert incident.acknowledged_at is None
    assert not AuditEntry.objects.filter(action__startswith="incident_").exists()


# ----------------------------------------------------------------------------- the API


def test_acknowledge_snooze_and_resolve_through_the_api_with_a_bearer_token():
    incident = open_quota_incident(timezone.now())
    user = get_user_model().objects.create_user("bob", is_staff=True)
    _row, token = ApiToken.issue(user, "on-call bot")
    api = Client(HTTP_AUTHORIZATION=f"Bearer {token}")

    assert Client().get("/api/incidents").status_code == 401
    [row] = api.get("/api/incidents").json()["incidents"]
    assert row["id"] == incident.pk and row["rule"] == Rule.QUOTA
    for name in ("acknowledged_at", "acknowledged_by", "snoozed_until", "resolved_by"):
        assert row[name] is None
    assert row["resolution_note"] == ""

    answer = api.post(f"/api/incidents/{incident.pk}/acknowledge")
    assert answer.status_code == 200, answer.content
    assert answer.json()["incident"]["acknowledged_by"] == "bob"

    assert api.post(f"/api/incidents/{incident.pk}/snooze", {"minutes": "soon"}).status_code == 400
    answer = api.post(f"/api/incidents/{incident.pk}/snooze", {"until": "2999-01-01T00:00"})
    assert answer.status_code == 400 and "30 days" in answer.json()["error"]
    until = (timezone.now() + timedelta(hours=2)).replace(microsecond=0)
    answer = api.post(f"/api/incidents/{incident.pk}/snooze", {"until": until.isoformat()})
    assert answer.status_code == 200, answer.content
    assert answer.json()["incident"]["snoozed_until"] == until.isoformat()

    answer = api.post(f"/api/incidents/{incident.pk}/resolve", {"note": "stamp cleared by hand"})
    assert answer.status_code == 200, answer.content
    body = answer.json()["incident"]
    assert (body["resolved_by"], body["resolution_note"]) == ("bob", "stamp cleared by hand")
    assert api.get("/api/incidents").json()["incidents"] == []
    [closed] = api.get("/api/incidents?state=resolved").json()["incidents"]
    assert closed["resolved_by"] == "bob"

    again = api.post(f"/api/incidents/{incident.pk}/acknowledge")
    assert again.status_code == 409 and "already resolved by bob" in again.json()["error"]
    assert api.post("/api/incidents/999999/acknowledge").status_code == 404
    assert api.post(f"/api/incidents/{incident.pk}/delete").status_code == 404
    assert api.get("/api/incidents?state=maybe").status_code == 400

    actions = AuditEntry.objects.filter(actor="bob").order_by("id").values_list("action", flat=True)
    assert list(actions) == ["incident_ack", "incident_snooze", "incident_resolve"]

    viewer = get_user_model().objects.create_user("viewer")
    _row, viewer_token = ApiToken.issue(viewer)
    other = open_quota_incident(timezone.now() + timedelta(hours=1))
    refused = Client(HTTP_AUTHORIZATION=f"Bearer {viewer_token}").post(
        f"/api/incidents/{other.pk}/acknowledge"
    )
    assert refused.status_code == 403


# ----------------------------------------------------------------------------- repeats


def test_repeats_stop_when_acknowledged_and_wait_out_a_snooze(webhook, settings):
    settings.OPSCONSOLE_ALERT_REPEAT_MINUTES = 30
    receiver = webhook()
    json_channel(receiver)
    incident = open_quota_incident(T0)
    every = timedelta(minutes=30)
    assert next_repeat_at(incident, every) == T0 + every

    def tick(minutes: float) -> int:
        now = T0 + timedelta(minutes=minutes)
        return engine.tick(now, Snapshot(taken_at=now, sessions=[])).alerts

    assert tick(29) == 0
    assert tick(30) == 1  # nobody owns it: told again
    assert tick(31) == 0 and tick(59) == 0
    [_, repeat] = texts(receiver)
    assert repeat.startswith("[opsconsole] Still open: Quota hit")
    assert f"Still open since {human_time(T0)}" in repeat
    assert "https://ops.example.com/alerts/" in repeat

    incident.refresh_from_db()
    incidents.snooze(incident, "carol", T0 + timedelta(hours=3), T0 + timedelta(minutes=40))
    assert tick(60) == 0 and tick(120) == 0 and tick(179) == 0
    assert tick(180) == 1  # the snooze is over and it is still open
    assert tick(209) == 0
    assert tick(210) == 1  # repeats resume at their pace

    incident.refresh_from_db()
    incidents.acknowledge(incident, "carol", T0 + timedelta(minutes=211))
    for minutes in (240, 600, 24 * 60):
        assert tick(minutes) == 0
    assert Alert.objects.filter(incident=incident, phase=Alert.Phase.REPEATED).count() == 3
    assert len(receiver.accepted) == 4


def test_next_repeat_at_is_a_function_of_the_incident_alone():
    every = timedelta(minutes=10)
    incident = Incident(key="k", rule=Rule.QUOTA, opened_at=T0, notified=True, last_told_at=T0)
    assert next_repeat_at(incident, None) is None  # repeats off (the default)
    assert next_repeat_at(incident, every) == T0 + every
    incident.snoozed_until = T0 + timedelta(hours=1)
    assert next_repeat_at(incident, every) == T0 + timedelta(hours=1)
    incident.last_told_at = T0 + timedelta(hours=1)  # told when the snooze ended
    assert next_repeat_at(incident, every) == T0 + timedelta(hours=1) + every
    incident.acknowledged_at = T0
    assert next_repeat_at(incident, every) is None
    assert next_repeat_at(Incident(opened_at=T0, notified=False), every) is None
    with pytest.raises(IncidentActionError):
        snooze_until(T0)
    assert snooze_until(T0, minutes="90") == T0 + timedelta(minutes=90)
    assert snooze_until(T0, until="2026-12-07T09:00:00Z") == datetime(2026, 12, 7, 9, tzinfo=UTC)


def test_a_person_resolves_it_and_the_condition_coming_back_opens_a_new_one(webhook):
    receiver = webhook()
    json_channel(receiver)
    first = open_quota_incident(T0)
    incidents.resolve_by_person(first, "dave", "cleared the stamp", T0 + timedelta(minutes=5))
    # The rule's own recovery later finds nothing open: no second recovery message.
    cleared = T0 + timedelta(minutes=6)
    Event.objects.create(
        at=cleared,
        host=settings.OPSCONSOLE_HOST,
        kind=EventKind.QUOTA_CLEARED,
        message="quota stamp cleared",
        dedupe_key=f"cleared:{uuid.uuid4()}",
    )
    engine.tick(cleared, Snapshot(taken_at=cleared, sessions=[]))
    # The quota is hit again the next day: a new incident, told again.
    second = open_quota_incident(T0 + timedelta(days=1))
    assert second.pk != first.pk and second.resolved_by == ""
    titles = [r.json["title"] for r in receiver.accepted]
    assert len(titles) == 3, titles
    assert "Quota hit" in titles[0] and "Resolved by dave" in titles[1]
    assert "Quota hit" in titles[2]


# ----------------------------------------------------------------------------- a silent host


@pytest.mark.django_db(transaction=True)
def test_a_silent_reporting_host_alerts_once_and_recovers_once(webhook, monkeypatch):
    receiver = webhook()
    json_channel(receiver)
    monkeypatch.setenv("OPSCONSOLE_HOST_NAME", "host-a")
    _row, token = HostToken.issue("host-a")
    host_a = reporting_monitor(
        Reporter("http://127.0.0.1:1", token, transport=client_transport(Client())),
        host="host-a",
        interval=1.0,
    )
    host_a.tick()
    assert host_a.reporting.last_error is None, host_a.reporting.last_error
    heard = HostSample.objects.get(host="host-a").last_heard

    # Its monitor stops. Idle, it declared a heartbeat (30 s): forty seconds on (the
    # heartbeat and three intervals of one second) it is silent.
    with time_machine.travel(heard + timedelta(seconds=40)):
        for _ in range(3):  # each round of the console's monitor
            now = timezone.now()
            assert check_silent_hosts(now) == ["host-a"]
            engine.tick(now, Snapshot(taken_at=now, sessions=[]))
        [alert] = texts(receiver)
        assert alert.startswith("[opsconsole] Host silent: its monitor has not reported")
        assert "on host-a" in alert
        assert f"Last report: {human_time(heard)}" in alert and HUMAN.search(alert)
        assert Incident.objects.get(resolved_at=None).rule == Rule.MONITOR_SILENT

        # It reports again (through the console's real report view): one recovery.
        host_a.tick()
        assert host_a.reporting.last_error is None, host_a.reporting.last_error
        for _ in range(3):
            now = timezone.now()
            check_silent_hosts(now)
            engine.tick(now, Snapshot(taken_at=now, sessions=[]))
    opened, recovered = texts(receiver)
    assert "Host silent" in opened
    assert "The monitor is sampling again on host-a" in recovered
    assert not Incident.objects.filter(resolved_at=None).exists()


def test_a_silence_handled_after_the_host_is_back_tells_nobody(webhook):
    receiver = webhook()
    json_channel(receiver)
    HostSample.objects.create(
        host="host-b",
        seq=3,
        taken_at=T0,
        received_at=T0 + timedelta(seconds=30),
        interval_seconds=2.0,
        sample_ms=1.0,
        etag='"b"',
        api_document="{}",
        state_document="{}",
        reported=True,
    )
    Event.objects.create(
        at=T0 + timedelta(seconds=10),
        host="host-b",
        kind=EventKind.MONITOR_SILENT,
        message="monitor on host-b silent",
        detail={"last_seq": 2, "last_heard": T0.isoformat()},
        dedupe_key="host-b:monitor_silent:2",
    )
    engine.tick(T0 + timedelta(seconds=40))
    assert receiver.received == [] and not Incident.objects.exists()


# ----------------------------------------------------------------------------- late


def test_no_late_alert_for_a_run_due_before_the_job_was_first_seen(
    webhook, tmp_path, monkeypatch, settings
):
    """First start at 17:00; the crontab says 02:15 daily. Today's 02:15 was nobody's to
    watch; tomorrow's, missed, is late."""
    settings.OPSCONSOLE_SCHEDULERS = ["cron"]
    settings.OPSCONSOLE_LATE_GRACE_SECONDS = 600
    receiver = webhook()
    json_channel(receiver)
    crontab = tmp_path / "crontab.txt"
    crontab.write_text("# opsconsole: nightly\n15 2 * * * opsconsole-run --tag nightly -- -p x\n")
    stand_in(tmp_path / "tools", "crontab", f'[ "$1" = "-l" ] && cat {crontab}\n')
    monkeypatch.setenv("PATH", f"{tmp_path / 'tools'}:/usr/bin:/bin")
    monkeypatch.setenv("TZ", "UTC")

    first_start = datetime(2026, 12, 7, 17, 0, tzinfo=UTC)
    monitor = Monitor(paths=settings.OPSCONSOLE_STATE)
    monitor.tick(first_start)
    monitor.events.flush()  # what the next sample writes first
    job = Job.objects.get(label="nightly")
    assert job.first_seen_at == first_start
    assert job.previous_run_at == datetime(2026, 12, 7, 2, 15, tzinfo=UTC)
    engine.tick(first_start, Snapshot(taken_at=first_start, sessions=[]))
    assert not Event.objects.filter(kind=EventKind.JOB_LATE).exists()
    assert receiver.received == []

    next_day = first_start + timedelta(days=1)
    monitor.tick(next_day)
    monitor.events.flush()
    engine.tick(next_day, Snapshot(taken_at=next_day, sessions=[]))
    [late] = texts(receiver)
    assert "nightly is late" in late
    assert "did not run at 2026-12-08 02:15:00 UTC" in late


# ----------------------------------------------------------------------------- links


def doctor(capsys) -> str:
    """`opsconsole doctor`'s report (it exits 1 here: no claude on this PATH)."""
    with contextlib.suppress(SystemExit):
        call_command("doctor")
    return capsys.readouterr().out


def test_doctor_warns_when_alerts_go_out_without_a_base_url(settings, capsys):
    settings.OPSCONSOLE_SCHEDULERS = []
    settings.OPSCONSOLE_BASE_URL = ""
    assert "OPSCONSOLE_BASE_URL" not in doctor(capsys)  # no channel: nothing to warn of

    settings.OPSCONSOLE_ALERT_URLS = ["json://127.0.0.1:9/hook"]
    out = doctor(capsys)
    assert "WARNING  links in alerts: OPSCONSOLE_BASE_URL is not set" in out
    assert "1 in OPSCONSOLE_ALERT_URLS" in out and "fix: set OPSCONSOLE_BASE_URL" in out

    settings.OPSCONSOLE_BASE_URL = "https://ops.example.com"
    assert "OPSCONSOLE_BASE_URL" not in doctor(capsys)


@pytest.mark.django_db(transaction=True)
def test_serve_warns_when_alerts_go_out_without_a_base_url(state, tmp_path, console_database):
    state.env["OPSCONSOLE_ALERT_URLS"] = "json://127.0.0.1:9/hook"
    state.env.pop("OPSCONSOLE_BASE_URL", None)
    console = serve_console(state, tmp_path, console_database, monitor=False)
    try:
        log = console.log.read_text()
    finally:
        stop_console(console)
    assert "WARNING: OPSCONSOLE_BASE_URL is not set, but alerts are sent" in log
    assert "paths (/sessions/...) a phone cannot open" in log


# ----------------------------------------------------------------------------- one time format


def test_every_time_on_the_alerts_page_and_in_messages_has_one_format_with_its_zone(
    webhook, settings
):
    settings.TIME_ZONE = "Europe/Berlin"
    receiver = webhook()
    json_channel(receiver)
    incident = open_quota_incident(T0)
    assert human_time(T0) == "2026-12-07 03:14:05 CET"
    page = login("erin").get("/alerts/").content.decode()
    assert "2026-12-07 03:14:05 CET" in page  # the incident's and the alert's time
    assert incident.opened_at == T0
    incidents.resolve_by_person(incident, "erin", "done", T0 + timedelta(minutes=1))
    engine.tick(T0 + timedelta(minutes=1))
    assert "Resolved by erin at 2026-12-07 03:15:05 CET" in texts(receiver)[-1]
