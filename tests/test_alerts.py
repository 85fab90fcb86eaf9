"""Alert rules and delivery: events written the way the monitor writes them, the
engine's tick with a fixed clock, and real receivers on loopback (an HTTP webhook
for json:// and a Mattermost/Slack-style incoming webhook, aiosmtpd for mailto://)."""

from __future__ import annotations

import logging
import time as time_module
import uuid
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.utils import timezone

from alerts_app import engine, incidents, live_rules
from alerts_app.channel_urls import redact_url
from alerts_app.delivery import deliver_due, send, send_test
from alerts_app.models import (
    Alert,
    AlertPolicy,
    Channel,
    Delivery,
    Incident,
    JobAlertSettings,
    Rule,
)
from jobs_app.models import AuditEntry, Job
from monitor_app.models import Event, EventKind, HostSample
from monitor_app.snapshot import LiveSession, Snapshot
from sessions_app.human_time import human_time
from sessions_app.ingest import record_completion
from sessions_app.models import Session, Status
from sessions_app.otlp import Event as OtlpEvent
from sessions_app.telemetry import Rollup
from sessions_app.telemetry_records import write_rollups
from wrapper.formats import Sidecar, SpoolRecord, new_session_id

pytest_plugins = ["tests.alert_receivers"]
pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


class Monitor:
    """Does what the monitor does: ingest the completion record, then write the Event."""

    def __init__(self):
        self.host = settings.OPSCONSOLE_HOST
        self.wrapper_pid = 40000

    def event(self, kind, at, *, session=None, job=None, status="", message="", detail=None):
        return Event.objects.create(
            at=at,
            host=self.host,
            kind=kind,
            session_id=session.session_id if session else None,
            job=job or (session.job if session else None),
            script_tag=session.script_tag if session else "",
            status=status or (session.status if session else ""),
            message=message or str(kind),
            detail=detail or {},
            dedupe_key=f"{kind}:{uuid.uuid4()}",
        )

    def run(
        self,
        tag: str,
        at: datetime,
        end_reason: str,
        *,
        exit_code: int,
        attempt: int = 1,
        retry_of: str | None = None,
        seconds: float = 60,
        cost: float | None = 0.01,
        new_wrapper: bool = True,
        **result,
    ) -> Session:
        if new_wrapper:
            self.wrapper_pid += 1
        record = SpoolRecord(
            session_id=new_session_id(),
            script_tag=tag,
            platform="cron",
            host=self.host,
            attempt=attempt,
            started_at=iso(at - timedelta(seconds=seconds)),
            ended_at=iso(at),
            end_reason=end_reason,
            exit_code=exit_code,
            retry_of=retry_of,
            wrapper_pid=self.wrapper_pid,
            duration_ms=int(seconds * 1000),
            cost_usd=cost,
            **result,
        )
        session = record_completion(record)
        self.event(
            EventKind.RUN_ENDED,
            at,
            session=session,
            detail={
                "exit_code": session.exit_code,
                "end_reason": session.end_reason,
                "is_error": session.is_error,
                "api_error_status": session.api_error_status,
                "duration_ms": session.duration_ms,
                "cost_usd": cost,
                "error": session.error,
                "attempt": attempt,
                "retry_of": retry_of,
            },
        )
        return session


def live_run(session_id: str, wrapper_pid: int, tag: str, **figures) -> LiveSession:
    sidecar = Sidecar(
        session_id=session_id,
        script_tag=tag,
        wrapper_pid=wrapper_pid,
        wrapper_started=1.0,
        started_at=iso(T0 - timedelta(minutes=30)),
        attempt=1,
        platform="cron",
        host=settings.OPSCONSOLE_HOST,
        cwd="/srv",
        claude_config_dir="/nonexistent",
        transcript_path="/nonexistent/t.jsonl",
    )
    live = LiveSession(sidecar=sidecar, state="live", processes=[])
    for name, value in figures.items():
        setattr(live, name, value)
    return live


def snapshot(now: datetime, *sessions: LiveSession) -> Snapshot:
    return Snapshot(taken_at=now, sessions=list(sessions))


@pytest.fixture(autouse=True)
def alert_settings(settings, console_state):
    settings.OPSCONSOLE_BASE_URL = "https://ops.example.com"
    settings.OPSCONSOLE_ALERT_URLS = []
    settings.OPSCONSOLE_ALERT_RETRY_SECONDS = 5
    settings.OPSCONSOLE_ALERT_FLAP_SECONDS = 600
    # Delivery in line, so a test reads what was sent right after its tick (the
    # background thread the monitor uses has a test of its own).
    settings.OPSCONSOLE_ALERT_DELIVER_IN_BACKGROUND = False
    engine._env_synced_at = None
    engine._pruned_at = None
    incidents._usual_runtime.clear()
    yield settings
    engine._env_synced_at = None


@pytest.fixture
def monitor():
    return Monitor()


@pytest.fixture
def job():
    return Job.objects.create(
        scheduler="cron", label="nightly report", host=settings.OPSCONSOLE_HOST, tags=["nightly"]
    )


def channel(url: str, name: str = "ops") -> Channel:
    row = Channel(name=name, url=url)
    row.save()
    return row


def json_channel(receiver, name: str = "ops webhook") -> Channel:
    return channel(f"json://127.0.0.1:{receiver.port}/hook", name)


def messages_of(receiver) -> list[str]:
    return [r.json["title"] + "\n" + r.json["message"] for r in receiver.accepted]


# ----------------------------------------------------------------------------- run failures


def test_run_refused_on_every_attempt_reaches_the_webhook_once(webhook, monitor, job):
    receiver = webhook()
    json_channel(receiver)
    first = monitor.run("nightly", T0, "refused", exit_code=1, stop_reason="refusal", is_error=True)
    # The wrapper is still alive (its sidecar is in the sample): a retry may follow.
    alive = live_run(new_session_id(), first.wrapper_pid, "nightly")
    assert not engine.tick(T0, snapshot(T0, alive)).alerts
    second = monitor.run(
        "nightly",
        T0 + timedelta(seconds=5),
        "refused",
        exit_code=1,
        attempt=2,
        retry_of=str(first.session_id),
        new_wrapper=False,
        stop_reason="refusal",
        is_error=True,
    )
    engine.tick(T0 + timedelta(seconds=5), snapshot(T0, alive))
    third = monitor.run(
        "nightly",
        T0 + timedelta(seconds=10),
        "refused",
        exit_code=1,
        attempt=3,
        retry_of=str(second.session_id),
        new_wrapper=False,
        stop_reason="refusal",
        is_error=True,
    )
    assert receiver.received == []
    # The wrapper has exited: the last attempt decided the run.
    result = engine.tick(T0 + timedelta(seconds=12), snapshot(T0 + timedelta(seconds=12)))
    assert result.alerts == 1 and result.delivered == 1
    [text] = messages_of(receiver)
    assert "nightly report was refused on" in text
    assert settings.OPSCONSOLE_HOST in text
    assert f"https://ops.example.com/sessions/{third.session_id}/" in text
    assert "attempt 3" in text and "Cost: $0.0100" in text
    assert engine.tick(T0 + timedelta(seconds=20), snapshot(T0)).alerts == 0
    assert len(receiver.received) == 1


def test_a_refusal_retried_then_succeeded_is_not_an_alert(webhook, monitor, job):
    receiver = webhook()
    json_channel(receiver)
    first = monitor.run("nightly", T0, "refused", exit_code=1, stop_reason="refusal", is_error=True)
    monitor.run(
        "nightly",
        T0 + timedelta(seconds=3),
        "succeeded",
        exit_code=0,
        attempt=2,
        retry_of=str(first.session_id),
        new_wrapper=False,
        is_error=False,
        num_turns=2,
    )
    engine.tick(T0 + timedelta(seconds=4), snapshot(T0))
    engine.tick(T0 + timedelta(minutes=5), snapshot(T0))
    assert Alert.objects.count() == 0
    assert receiver.received == []


def test_a_fixed_job_gives_one_alert_and_one_recovery(webhook, monitor, job):
    receiver = webhook()
    json_channel(receiver)
    now = T0
    for _ in range(3):
        monitor.run("nightly", now, "failed", exit_code=2, error="Traceback: disk full")
        engine.tick(now, snapshot(now))
        now += timedelta(hours=1)
    for _ in range(2):
        monitor.run("nightly", now, "succeeded", exit_code=0, is_error=False, num_turns=3)
        engine.tick(now, snapshot(now))
        now += timedelta(hours=1)
    texts = messages_of(receiver)
    assert len(texts) == 2, texts
    assert "nightly report failed on" in texts[0] and "exit 2" in texts[0]
    assert "disk full" in texts[0]  # the last lines of its error
    assert "nightly report recovered" in texts[1]


def test_n_consecutive_failures_before_an_alert(webhook, monitor, job):
    JobAlertSettings.objects.create(job=job, consecutive_failures=3)
    receiver = webhook()
    json_channel(receiver)
    now = T0
    for expected in (0, 0, 1, 1):
        monitor.run("nightly", now, "failed", exit_code=1)
        engine.tick(now, snapshot(now))
        assert len(receiver.accepted) == expected
        now += timedelta(hours=1)
    assert "3 runs in a row" in messages_of(receiver)[0]


def test_flapping_is_damped(webhook, monitor, job):
    receiver = webhook()
    json_channel(receiver)
    now = T0
    outcomes = ["failed", "succeeded", "failed", "succeeded", "failed"]
    for outcome in outcomes:  # every two minutes, well inside the 10-minute window
        monitor.run("nightly", now, outcome, exit_code=0 if outcome == "succeeded" else 1)
        engine.tick(now, snapshot(now))
        now += timedelta(minutes=2)
    # Told when it went bad and when it recovered; the flaps after that are held back.
    assert [t.split("\n")[0] for t in messages_of(receiver)] == [
        f"[opsconsole] nightly report failed on {settings.OPSCONSOLE_HOST}",
        f"[opsconsole] nightly report recovered on {settings.OPSCONSOLE_HOST}",
    ]
    # Still failing when the window is over: now it is told, once.
    engine.tick(T0 + timedelta(minutes=13), snapshot(now))
    engine.tick(T0 + timedelta(minutes=14), snapshot(now))
    assert len(receiver.accepted) == 3
    assert "failed" in messages_of(receiver)[2]


def test_false_success_is_flagged_everywhere_and_alerted(client, webhook, monitor, job):
    receiver = webhook()
    json_channel(receiver)
    # Exit 0, but the result event said is_error: the wrapper's record, as it writes it.
    run = monitor.run(
        "nightly", T0, "failed", exit_code=0, is_error=True, subtype="success", num_turns=1
    )
    assert run.status == Status.FALSE_SUCCESS
    engine.tick(T0, snapshot(T0))
    [text] = messages_of(receiver)
    assert "exited 0 but did not succeed" in text and "is_error" in text
    user = get_user_model().objects.create_user("viewer", password="pw")
    client.force_login(user)
    history = client.get("/history/").content.decode()
    assert "badge--false_success" in history and "false success" in history
    assert "badge--false_success" in client.get(f"/sessions/{run.session_id}/").content.decode()
    jobs = client.get("/jobs/").content.decode()
    assert "badge--false_success" in jobs


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"end_reason": "failed", "is_error": True, "subtype": "success"}, "is_error"),
        ({"end_reason": "succeeded", "is_error": False, "num_turns": 0}, "no turn"),
        (
            {"end_reason": "succeeded", "error": "API Error: Connection error."},
            "API Error",
        ),
        ({"end_reason": "succeeded", "model": "claude-sonnet-4"}, "without a result"),
    ],
)
def test_false_success_is_decided_at_ingest(monitor, fields, reason):
    end_reason = fields.pop("end_reason")
    run = monitor.run("adhoc", T0, end_reason, exit_code=0, **fields)
    assert run.status == Status.FALSE_SUCCESS
    assert reason in run.error


def test_exit_0_with_a_good_result_or_plain_text_output_is_a_success(monitor):
    good = monitor.run("adhoc", T0, "succeeded", exit_code=0, is_error=False, num_turns=4)
    text_output = monitor.run("adhoc", T0, "succeeded", exit_code=0)  # no result event at all
    assert good.status == text_output.status == Status.SUCCEEDED


# ----------------------------------------------------------------------------- delivery


def test_receiver_failing_three_times_gets_the_alert_once_and_the_page_shows_the_retries(
    client, webhook, monitor, job
):
    receiver = webhook([500, 500, 500])
    json_channel(receiver)
    monitor.run("nightly", T0, "failed", exit_code=1)
    now = T0
    engine.tick(now, snapshot(now))
    delivery = Delivery.objects.get()
    assert delivery.attempts == 1 and delivery.delivered_at is None
    assert "500" in delivery.last_error
    # Backoff: 5 s, then 10 s, then 20 s. Ticks before each is due send nothing.
    for wait in (5, 10, 20):
        engine.tick(now + timedelta(seconds=wait - 1), snapshot(now))
        assert len(receiver.received) == Delivery.objects.get().attempts
        now += timedelta(seconds=wait)
        engine.tick(now, snapshot(now))
    delivery.refresh_from_db()
    assert delivery.attempts == 4 and delivery.delivered_at == now
    assert receiver.answered == [500, 500, 500, 200]
    assert len(receiver.accepted) == 1
    client.force_login(get_user_model().objects.create_user("viewer", password="pw"))
    page = client.get("/alerts/").content.decode()
    assert "4 attempts (3 retries)" in page
    assert 'data-state="delivered"' in page
    assert "error=500" in page or "500" in page


def test_outbox_survives_a_restart(webhook, monitor, job):
    """An alert written while the receiver is down is delivered by a later process."""
    receiver = webhook([503])
    json_channel(receiver)
    monitor.run("nightly", T0, "signalled", exit_code=143)
    engine.tick(T0, snapshot(T0))
    engine._env_synced_at = None  # a new process: nothing in memory
    engine.tick(T0 + timedelta(seconds=6), None)
    assert len(receiver.accepted) == 1
    assert "was killed" in messages_of(receiver)[0]
    assert "ended by signal 15" in messages_of(receiver)[0]


def test_slack_style_webhook_and_email(webhook, smtp_server, monitor, job):
    receiver = webhook()
    channel(f"mmost://127.0.0.1:{receiver.port}/t0ken5ecret", "mattermost")
    port, mailbox = smtp_server
    channel(
        f"mailto://127.0.0.1:{port}?from=ops@example.com&to=oncall@example.com&mode=insecure",
        "email",
    )
    monitor.run("nightly", T0, "failed", exit_code=3)
    result = engine.tick(T0, snapshot(T0))
    assert result.delivered == 2, list(Delivery.objects.values("last_error"))
    [post] = receiver.accepted
    assert post.path == "/hooks/t0ken5ecret"
    assert "nightly report failed" in post.json["text"]
    [(sender, recipients, message)] = mailbox.messages
    assert sender == "ops@example.com" and recipients == ["oncall@example.com"]
    assert "nightly report failed" in message["Subject"]
    assert "exit 3" in message.get_body(("plain", "html")).get_content()


def test_channel_secrets_are_never_shown_back_nor_kept_in_errors(admin_client, webhook, caplog):
    caplog.set_level("DEBUG")
    receiver = webhook([500] * 20)
    secret = "Xk2p9secretTOKENvalue"
    url = f"mmost://127.0.0.1:{receiver.port}/{secret}"
    row = channel(url, "team chat")
    assert secret not in row.redacted and "mmost://127.0.0.1" in row.redacted
    assert secret not in redact_url(url)
    result = send(url, "title", "body")
    assert not result.ok and secret not in result.error
    assert "500" in result.error
    # Apprise's lines stay out of the console's log (they go to the scrubbed capture only);
    # nothing else that logs during a send (urllib3 prints request lines) names the secret.
    assert logging.getLogger("apprise").propagate is False
    send_test(row, T0, "tester")  # through the outbox, which logs the failure
    ours = [r for r in caplog.records if not r.name.startswith("apprise")]
    assert any("attempt 1 failed" in r.getMessage() for r in ours)
    assert not [r for r in ours if secret in r.getMessage()]
    page = admin_client.get(f"/admin/alerts_app/channel/{row.pk}/change/").content.decode()
    assert secret not in page
    assert secret not in admin_client.get("/alerts/").content.decode()
    # Saving the form with the URL field left empty keeps the stored URL.
    admin_client.post(
        f"/admin/alerts_app/channel/{row.pk}/change/",
        {"name": "team chat 2", "url": "", "enabled": "on", "is_default": "on"},
    )
    row.refresh_from_db()
    assert row.name == "team chat 2" and row.url == url


def test_send_test_button_is_staff_only_csrf_checked_and_audited(client, webhook):
    receiver = webhook()
    row = json_channel(receiver)
    viewer = get_user_model().objects.create_user("viewer", password="pw")
    client.force_login(viewer)
    assert client.post(f"/alerts/channels/{row.pk}/test").status_code == 403
    staff = get_user_model().objects.create_user("ops", password="pw", is_staff=True)
    client.force_login(staff)
    response = client.post(f"/alerts/channels/{row.pk}/test", follow=True)
    assert "Test message delivered to ops webhook" in response.content.decode()
    [post] = receiver.accepted
    assert "Test message" in post.json["title"]
    audit = AuditEntry.objects.get(action="alert_test")
    assert audit.actor == "ops" and audit.ok
    row.refresh_from_db()
    assert row.last_test_ok
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(staff)
    assert strict.post(f"/alerts/channels/{row.pk}/test").status_code == 403


def test_environment_urls_are_default_channels(settings, webhook, monitor, job):
    receiver = webhook()
    settings.OPSCONSOLE_ALERT_URLS = [f"json://127.0.0.1:{receiver.port}/env"]
    monitor.run("nightly", T0, "failed", exit_code=1)
    engine.tick(T0, snapshot(T0))
    assert receiver.accepted[0].path == "/env"
    assert Channel.objects.get().from_environment


def test_routing_mutes_and_quiet_hours(webhook, monitor, job):
    default_hook, job_hook = webhook(), webhook()
    json_channel(default_hook, "default")
    own = json_channel(job_hook, "job team")
    own.is_default = False
    own.save()
    rules = JobAlertSettings.objects.create(job=job, use_default_channels=False)
    rules.channels.add(own)
    monitor.run("nightly", T0, "failed", exit_code=1)
    engine.tick(T0, snapshot(T0))
    assert len(job_hook.accepted) == 1 and default_hook.received == []
    # Muted job: recorded, not sent.
    rules.muted_until = T0 + timedelta(days=1)
    rules.save()
    monitor.run("nightly", T0 + timedelta(hours=1), "succeeded", exit_code=0)
    engine.tick(T0 + timedelta(hours=1), snapshot(T0))
    assert Alert.objects.latest("id").suppressed.startswith("job muted")
    assert len(job_hook.accepted) == 1
    # Quiet hours 01:00-06:00 UTC: held until they end, then sent.
    rules.muted_until = None
    rules.save()
    policy = AlertPolicy.current()
    policy.quiet_hours_start, policy.quiet_hours_end = time(1, 0), time(6, 0)
    policy.save()
    late = T0 + timedelta(hours=2)  # 04:00
    monitor.run("nightly", late, "failed", exit_code=1)
    engine.tick(late, snapshot(late))
    assert len(job_hook.accepted) == 1
    engine.tick(T0.replace(hour=6, minute=0, second=1), snapshot(late))
    assert len(job_hook.accepted) == 2


# ----------------------------------------------------------------------------- other rules


def test_one_quota_alert_for_a_429_and_two_skips_and_one_cleared(webhook, monitor, job):
    receiver = webhook()
    json_channel(receiver)
    until = T0 + timedelta(hours=3)
    hit = monitor.run(
        "nightly",
        T0,
        "failed",
        exit_code=1,
        is_error=True,
        api_error_status=429,
        error="API Error: Request rejected (429)",
        cost=0.0,
    )
    monitor.event(
        EventKind.QUOTA_SET,
        T0,
        detail={
            "until": iso(until),
            "reason": "Request rejected (429)",
            "session_id": str(hit.session_id),
        },
    )
    engine.tick(T0, snapshot(T0))
    for hours in (1, 2):
        at = T0 + timedelta(hours=hours)
        monitor.run("nightly", at, "quota_skip", exit_code=79, seconds=0.1, cost=None)
        engine.tick(at, snapshot(at))
    monitor.event(EventKind.QUOTA_CLEARED, until, message="the quota stamp expired")
    engine.tick(until, snapshot(until))
    texts = messages_of(receiver)
    assert len(texts) == 2, texts
    assert "Quota hit" in texts[0] and human_time(until) in texts[0]  # "... 05:00:00 UTC"
    assert "Quota cleared" in texts[1]


def test_late_job_alerted_once_and_resolved_when_it_runs(webhook, monitor, job):
    receiver = webhook()
    json_channel(receiver)
    for minutes in (0, 1, 2):  # the collector says so at every collection
        monitor.event(
            EventKind.JOB_LATE,
            T0 + timedelta(minutes=minutes),
            job=None,  # as the monitor writes it when no tag links it: detail.job_id names it
            detail={"expected_at": "2026-11-24T01:30:00Z", "job_id": job.pk},
        )
    engine.tick(T0 + timedelta(minutes=3), snapshot(T0))
    started = Session.objects.create(
        session_id=uuid.uuid4(),
        script_tag="nightly",
        host=monitor.host,
        status="live",
        started_at=T0 + timedelta(minutes=4),
        job=job,
    )
    monitor.event(EventKind.RUN_STARTED, T0 + timedelta(minutes=4), session=started)
    engine.tick(T0 + timedelta(minutes=4), snapshot(T0))
    texts = messages_of(receiver)
    assert len(texts) == 2
    assert "nightly report is late" in texts[0] and "01:30" in texts[0]
    assert "nightly report ran again" in texts[1]


def test_stalled_run_is_alerted_before_the_watchdog_limit(webhook, monitor, job):
    receiver = webhook()
    json_channel(receiver)
    session = Session.objects.create(
        session_id=uuid.uuid4(),
        script_tag="nightly",
        host=monitor.host,
        status="live",
        started_at=T0 - timedelta(minutes=30),
        job=job,
    )
    sid = str(session.session_id)
    idle_since = T0 - timedelta(minutes=5)
    busy = live_run(sid, 4242, "nightly", idle_since=None)
    engine.tick(T0, snapshot(T0, busy))
    idle = live_run(sid, 4242, "nightly", idle_since=idle_since)
    engine.tick(T0 + timedelta(minutes=4), snapshot(T0, idle))
    assert receiver.received == []  # idle 9 minutes: not yet
    engine.tick(T0 + timedelta(minutes=5), snapshot(T0, idle))
    engine.tick(T0 + timedelta(minutes=6), snapshot(T0, idle))
    [text] = messages_of(receiver)
    assert "nightly report is stalled" in text and "10m 00s" in text
    engine.tick(T0 + timedelta(minutes=7), snapshot(T0, busy))
    assert "active again" in messages_of(receiver)[1]
    # Told before the watchdog's hard limit (45 min by default), whatever the setting says.
    JobAlertSettings.objects.create(job=job, stall_minutes=120)
    engine.tick(T0 + timedelta(minutes=50), snapshot(T0, idle))
    assert "is stalled" in messages_of(receiver)[2]


def test_an_idle_terminal_session_is_not_a_stalled_run(webhook):
    """A person's own claude (unwrapped) waits on them; only wrapped runs stall."""
    receiver = webhook()
    json_channel(receiver)
    terminal = live_run(new_session_id(), 999, "", idle_since=T0 - timedelta(hours=2))
    terminal.state = "unwrapped"
    engine.tick(T0, snapshot(T0, terminal))
    assert receiver.received == [] and not Incident.objects.exists()


def test_runtime_outside_the_usual(webhook, monitor, job):
    JobAlertSettings.objects.create(job=job, runtime_floor_seconds=30)
    receiver = webhook()
    json_channel(receiver)
    now = T0
    for _ in range(6):
        monitor.run("nightly", now, "succeeded", exit_code=0, seconds=60)
        now += timedelta(hours=1)
    engine.tick(now, snapshot(now))
    monitor.run("nightly", now, "succeeded", exit_code=0, seconds=600)  # 10x the median
    engine.tick(now, snapshot(now))
    monitor.run("nightly", now + timedelta(hours=1), "succeeded", exit_code=0, seconds=60)
    monitor.run("nightly", now + timedelta(hours=2), "succeeded", exit_code=0, seconds=5)
    engine.tick(now + timedelta(hours=2), snapshot(now))
    texts = messages_of(receiver)
    assert len(texts) == 2
    assert "took 10m 00s, over 3x its median of 1m 00s" in texts[0]
    assert "under its floor of 30s" in texts[1]


def test_a_live_run_far_past_its_usual_time_is_told_while_it_runs(webhook, monitor, job):
    receiver = webhook()
    json_channel(receiver)
    now = T0 - timedelta(days=1)
    for _ in range(5):
        monitor.run("nightly", now, "succeeded", exit_code=0, seconds=300)
        now += timedelta(hours=1)
    engine.tick(T0, snapshot(T0))
    session = Session.objects.create(
        session_id=uuid.uuid4(),
        script_tag="nightly",
        host=monitor.host,
        status="live",
        started_at=T0 - timedelta(minutes=30),
        job=job,
    )
    running = live_run(str(session.session_id), 777, "nightly")  # started 30 min before T0
    engine.tick(T0 - timedelta(minutes=16), snapshot(T0, running))  # 14 min: under 3 x 5
    assert receiver.received == []
    engine.tick(T0, snapshot(T0, running))
    [text] = messages_of(receiver)
    assert "still running after 30m 00s, over 3x its median of 5m 00s" in text


def test_cost_over_budget_per_run_and_per_day(webhook, monitor, job):
    JobAlertSettings.objects.create(
        job=job, cost_per_run_usd=Decimal("1.00"), cost_per_day_usd=Decimal("2.50")
    )
    receiver = webhook()
    json_channel(receiver)
    for hour, cost in ((0, 0.9), (1, 1.2), (2, 0.5), (3, 0.5)):
        at = T0 + timedelta(hours=hour)
        monitor.run("nightly", at, "succeeded", exit_code=0, cost=cost)
        engine.tick(at, snapshot(at))
    texts = messages_of(receiver)
    assert len(texts) == 2, texts
    assert "cost $1.2000, over its run budget of $1.0000" in texts[0]
    assert "spent $2.6000 today, over its daily budget of $2.5000" in texts[1]


@pytest.mark.django_db(transaction=True)  # the stop runs on a thread of its own
def test_stop_on_cost_cap_stops_the_run(webhook, job, console_state, runs, settings):
    from tests.live_helpers import start_fake_run

    settings.OPSCONSOLE_STOP_GRACE_SECONDS = 1
    JobAlertSettings.objects.create(job=job, cost_per_run_usd=Decimal("1"), stop_on_cost_cap=True)
    receiver = webhook()
    json_channel(receiver)
    run = start_fake_run(console_state, tag="nightly")
    runs.append(run)
    Session.objects.create(
        session_id=run.session_id,
        script_tag="nightly",
        host=run.sidecar.host,
        status="live",
        started_at=T0,
        job=job,
        wrapper_pid=run.sidecar.wrapper_pid,
    )
    live = LiveSession(sidecar=run.sidecar, state="live", processes=[])
    live.running_cost_usd = 0.5
    engine.tick(T0, snapshot(T0, live))
    assert run.wrapper.poll() is None
    live.running_cost_usd = 1.7
    started = time_module.monotonic()
    engine.tick(T0 + timedelta(seconds=2), snapshot(T0, live))
    assert time_module.monotonic() - started < 1.0, "the tick waited for the stop"
    for thread in live_rules._stop_threads:
        thread.join(timeout=15)
    assert run.wrapper.wait(timeout=10) is not None
    assert run.agent.wait(timeout=10) is not None
    row = Session.objects.get(session_id=run.session_id)
    assert row.stopped_by == "cost-cap" and row.end_reason == "cost_cap"
    assert AuditEntry.objects.get(actor="cost-cap").target == run.session_id
    [text] = messages_of(receiver)
    assert "over its cost cap" in text and "Stopping it now" in text
    engine.tick(T0 + timedelta(seconds=4), snapshot(T0, live))  # once per run
    assert len(receiver.accepted) == 1


def test_leftovers_collector_error_and_monitor_silent(webhook, monitor, job):
    receiver = webhook()
    json_channel(receiver)
    run = monitor.run("nightly", T0, "signalled", exit_code=137)
    monitor.event(EventKind.LEFTOVERS_SEEN, T0, session=run, detail={"pids": [5151, 5152]})
    monitor.event(
        EventKind.COLLECTOR_ERROR,
        T0,
        detail={"scheduler": "cron", "errors": ["crontab: not found"]},
    )
    monitor.event(
        EventKind.COLLECTOR_ERROR, T0 + timedelta(seconds=30), detail={"scheduler": "cron"}
    )
    engine.tick(T0 + timedelta(seconds=30), snapshot(T0))
    monitor.event(EventKind.LEFTOVERS_KILLED, T0 + timedelta(minutes=1), session=run)
    engine.tick(T0 + timedelta(minutes=1), snapshot(T0))
    engine.tick(T0 + timedelta(minutes=4), snapshot(T0))  # quiet, but nothing collected since
    assert "works again" not in messages_of(receiver)[-1]
    # The next collection records the job again, without an error: the collector works.
    Job.objects.filter(pk=job.pk).update(collected_at=T0 + timedelta(minutes=4))
    engine.tick(T0 + timedelta(minutes=5), snapshot(T0))
    titles = [t.split("\n")[0] for t in messages_of(receiver)]
    host = settings.OPSCONSOLE_HOST
    assert titles == [
        f"[opsconsole] nightly report was killed on {host}",
        f"[opsconsole] nightly report: 2 leftover process(es) after its run on {host}",
        f"[opsconsole] The cron collector fails on {host}",
        f"[opsconsole] nightly report: leftover processes killed on {host}",
        f"[opsconsole] The cron collector works again on {host}",
    ]
    # serve's supervisor: no sample for three intervals. Delivered at once.
    alert = engine.monitor_silent("db-host", T0, T0 + timedelta(minutes=6))
    assert alert is not None and "The monitor is silent" in messages_of(receiver)[-1]
    assert engine.monitor_silent("db-host", T0, T0 + timedelta(minutes=7)) is None
    HostSample.objects.create(
        host="db-host",
        seq=1,
        taken_at=T0 + timedelta(minutes=8),
        interval_seconds=2,
        sample_ms=12,
        etag="x",
        api_document="{}",
        state_document="{}",
    )
    engine.tick(T0 + timedelta(minutes=8), snapshot(T0))
    assert "sampling again" in messages_of(receiver)[-1]
    still_open = Incident.objects.filter(resolved_at__isnull=True)
    assert [i.rule for i in still_open] == [Rule.RUN_FAILED]  # the killed run, until one succeeds


def test_deliver_alerts_command_runs_one_round(webhook, monitor, job, capsys):
    receiver = webhook()
    json_channel(receiver)
    monitor.run("nightly", T0, "failed", exit_code=1)
    call_command("deliver_alerts", "--once", "--no-live")
    assert len(receiver.accepted) == 1
    assert "alerts 1, delivered 1" in capsys.readouterr().out


def test_rules_can_be_switched_off_per_job(webhook, monitor, job):
    JobAlertSettings.objects.create(job=job, alert_on_failure=False)
    receiver = webhook()
    json_channel(receiver)
    monitor.run("nightly", T0, "failed", exit_code=1)
    engine.tick(T0, snapshot(T0))
    assert receiver.received == [] and not Incident.objects.filter(rule=Rule.RUN_FAILED).exists()


def test_events_read_in_one_batch_see_each_run_as_of_its_end(webhook, monitor, job):
    """Two failures then a success, all read in one tick: the streak of two is still told."""
    JobAlertSettings.objects.create(job=job, consecutive_failures=2)
    receiver = webhook()
    json_channel(receiver)
    monitor.run("nightly", T0, "failed", exit_code=1)
    monitor.run("nightly", T0 + timedelta(minutes=1), "failed", exit_code=1)
    monitor.run("nightly", T0 + timedelta(minutes=2), "succeeded", exit_code=0)
    engine.tick(T0 + timedelta(minutes=3), snapshot(T0))
    titles = [t.split("\n")[0] for t in messages_of(receiver)]
    assert len(titles) == 2 and "failed (2 runs in a row)" in titles[0]
    assert "recovered" in titles[1]


def test_delivery_errors_keep_the_host_and_lose_the_secrets():
    from alerts_app.channel_urls import scrub

    url = "mailto://ops:hunter2pass@smtp.example.com:2525?to=oncall@example.com&pass=zz9secretq"
    text = "Connection error to smtp.example.com:2525 as ops with hunter2pass and zz9secretq"
    scrubbed = scrub(text, url)
    assert "smtp.example.com:2525" in scrubbed
    assert "hunter2pass" not in scrubbed and "zz9secretq" not in scrubbed


LOOP_SETUP = """
import uuid
from datetime import UTC, datetime
from django.conf import settings
from monitor_app.models import Event
from sessions_app.models import Session
now = datetime.now(UTC)
host = settings.OPSCONSOLE_HOST
run = Session.objects.create(session_id=uuid.uuid4(), script_tag="loop", host=host,
    status="failed", exit_code=4, started_at=now, ended_at=now, duration_ms=1000)
Event.objects.create(at=now, host=run.host, kind="run_ended", session_id=run.session_id,
    script_tag="loop", status="failed", message="loop failed", dedupe_key="e1")
"""


def test_deliver_alerts_loop_delivers_and_stops_on_sigterm(state, tmp_path, webhook):
    import signal
    import subprocess

    from tests.conftest import PYTHON, REPO_ROOT
    from tests.server_fixtures import manage

    receiver = webhook()
    env = dict(
        state.env,
        DATABASE_URL=f"sqlite:///{tmp_path / 'loop.sqlite3'}",
        DJANGO_SETTINGS_MODULE="opsconsole.settings",
        OPSCONSOLE_ALERT_URLS=f"json://127.0.0.1:{receiver.port}/loop",
    )
    manage(env, "migrate", "--noinput")
    manage(env, "shell", "--no-imports", "-c", LOOP_SETUP)
    loop = subprocess.Popen(
        [PYTHON, "-m", "opsconsole.cli", "deliver_alerts", "--every", "0.2", "--no-live"],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        [post] = receiver.wait_for(1, timeout=60)
        assert post.path == "/loop" and "loop failed" in post.json["title"]
        loop.send_signal(signal.SIGTERM)
        assert loop.wait(timeout=10) == 0
    finally:
        if loop.poll() is None:
            loop.kill()
            loop.wait()


def test_job_admin_page_edits_alert_settings_inline(admin_client, job):
    page = admin_client.get(f"/admin/jobs_app/job/{job.pk}/change/").content.decode()
    assert "Consecutive failures" in page and "Stop on cost cap" in page
    page = admin_client.get("/admin/alerts_app/jobalertsettings/add/")
    assert page.status_code == 200


def test_quiet_hours_across_midnight(settings):
    from alerts_app.delivery import in_quiet_hours

    settings.TIME_ZONE = "UTC"
    policy = AlertPolicy(quiet_hours_start=time(22, 0), quiet_hours_end=time(7, 0))
    assert in_quiet_hours(policy, T0.replace(hour=12)) is None
    assert in_quiet_hours(policy, T0.replace(hour=23)) == (T0 + timedelta(days=1)).replace(hour=7)
    assert in_quiet_hours(policy, T0.replace(hour=2)) == T0.replace(hour=7)


def test_a_late_job_whose_next_run_ended_between_samples_is_resolved(webhook, monitor, job):
    receiver = webhook()
    json_channel(receiver)
    monitor.event(EventKind.JOB_LATE, T0, job=job, detail={"expected_at": "01:30"})
    engine.tick(T0, snapshot(T0))
    monitor.run("nightly", T0 + timedelta(minutes=5), "succeeded", exit_code=0, seconds=1)
    engine.tick(T0 + timedelta(minutes=5), snapshot(T0))
    titles = [t.split("\n")[0] for t in messages_of(receiver)]
    assert len(titles) == 2 and "ran again" in titles[1]


@pytest.mark.django_db(transaction=True)
def test_the_monitors_tick_delivers_on_a_thread_while_a_receiver_hangs(
    settings, webhook, monitor, job
):
    """A receiver that does not answer holds up a delivery thread, never the sample."""
    import threading
    import time as clock
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    release = threading.Event()

    class Hanging(BaseHTTPRequestHandler):
        def do_POST(self):
            release.wait(10)

        def log_message(self, *args):
            pass

    hanging = ThreadingHTTPServer(("127.0.0.1", 0), Hanging)
    threading.Thread(target=hanging.serve_forever, daemon=True).start()
    settings.OPSCONSOLE_ALERT_DELIVER_IN_BACKGROUND = True
    settings.OPSCONSOLE_ALERT_READ_TIMEOUT = 3
    receiver = webhook()
    json_channel(receiver)  # "ops webhook" is sent first (channels go by name)
    channel(f"json://127.0.0.1:{hanging.server_address[1]}/slow", "slow")
    try:
        monitor.run("nightly", T0, "failed", exit_code=1)
        started = clock.monotonic()
        result = engine.tick(T0, snapshot(T0))
        # Waiting for the hanging receiver would take its read timeout, 3 s.
        took = clock.monotonic() - started
        assert took < settings.OPSCONSOLE_ALERT_READ_TIMEOUT, "the tick waited for delivery"
        assert result.alerts == 1
        engine._delivery_thread.join(timeout=15)
        states = {d.channel.name: d.state for d in Delivery.objects.select_related("channel")}
        assert states == {"slow": "retrying", "ops webhook": "delivered"}
        assert len(receiver.accepted) == 1
    finally:
        release.set()
        hanging.shutdown()
        hanging.server_close()


def test_a_run_stopped_by_a_person_is_not_an_alert_but_a_watchdog_stop_is(webhook, monitor, job):
    receiver = webhook()
    json_channel(receiver)
    for at, actor in ((T0, "alice"), (T0 + timedelta(hours=1), "watchdog")):
        run = monitor.run("nightly", at, "signalled", exit_code=143)
        Session.objects.filter(pk=run.pk).update(stopped_by=actor, end_reason=actor)
        engine.tick(at, snapshot(at))
    [text] = messages_of(receiver)
    assert "was killed" in text and "stopped by watchdog" in text


def test_a_given_up_delivery_can_be_retried_by_staff(client, settings, webhook, monitor, job):
    settings.OPSCONSOLE_ALERT_MAX_ATTEMPTS = 2
    receiver = webhook([500, 500])
    json_channel(receiver)
    monitor.run("nightly", T0, "failed", exit_code=1)
    engine.tick(T0, snapshot(T0))
    engine.tick(T0 + timedelta(seconds=5), snapshot(T0))
    item = Delivery.objects.get()
    assert item.state == "failed" and item.attempts == 2
    staff = get_user_model().objects.create_user("ops", password="pw", is_staff=True)
    client.force_login(staff)
    page = client.get("/alerts/").content.decode()
    assert f"/alerts/deliveries/{item.pk}/retry" in page
    client.post(f"/alerts/deliveries/{item.pk}/retry")
    engine.tick(timezone.now(), snapshot(T0))
    item.refresh_from_db()
    assert item.state == "delivered" and len(receiver.accepted) == 1
    assert AuditEntry.objects.get(action="alert_retry").actor == "ops"


def test_a_usage_limit_result_is_the_quota_alerts_not_a_failure(webhook, monitor, job):
    receiver = webhook()
    json_channel(receiver)
    monitor.run(
        "nightly",
        T0,
        "failed",
        exit_code=1,
        is_error=True,
        error="Claude AI usage limit reached|1795532400 — usage limit hit; every wrapper "
        "skips (exit 79) until 2026-11-24T05:00:00Z",
    )
    engine.tick(T0, snapshot(T0))
    assert receiver.received == [] and not Incident.objects.exists()


def test_old_alerts_and_resolved_incidents_are_pruned(webhook, monitor, job):
    receiver = webhook()
    json_channel(receiver)
    monitor.run("nightly", T0, "failed", exit_code=1)
    monitor.run("nightly", T0 + timedelta(hours=1), "succeeded", exit_code=0)
    engine.tick(T0 + timedelta(hours=1), snapshot(T0))
    assert Alert.objects.count() == 2 and Delivery.objects.count() == 2
    monitor.run("nightly", T0 + timedelta(days=89), "failed", exit_code=1)  # still open
    engine.tick(T0 + timedelta(days=91), snapshot(T0))
    assert Alert.objects.count() == 1 and Delivery.objects.count() == 1
    assert list(Incident.objects.values_list("resolved_at", flat=True)) == [None]


def test_a_delivery_round_slowed_before_it_sent_anything_still_sends_one(webhook, monitor, job):
    """The round's budget is real time; a loaded host or a locked database used to spend
    it before the first attempt, and then a fixed-clock round sent nothing at all."""
    receiver = webhook([500, 500])  # the first attempt of each alert fails
    json_channel(receiver)
    monitor.run("nightly", T0, "failed", exit_code=1)
    monitor.run("weekly", T0, "failed", exit_code=2)
    engine.tick(T0 + timedelta(seconds=1), snapshot(T0), background_delivery=False)
    assert Delivery.objects.filter(delivered_at__isnull=True).count() == 2
    ticks = iter(range(0, 1000, 3))  # every look at the clock: 3 s later

    sent = deliver_due(T0 + timedelta(minutes=5), budget_seconds=2.0, clock=lambda: next(ticks))
    assert (sent.attempted, sent.delivered) == (1, 1)
    assert Delivery.objects.filter(delivered_at__isnull=True).count() == 1


def test_a_run_whose_costs_disagree_alerts_once_when_asked_to(webhook, monitor, job, settings):
    receiver = webhook()
    json_channel(receiver)
    for hour, (alert_on, telemetry_cost) in enumerate(((False, 0.5), (True, 0.9), (True, 0.5))):
        settings.OPSCONSOLE_COST_DRIFT_ALERT = alert_on
        at = T0 + timedelta(hours=hour)
        session = monitor.run("nightly", at, "succeeded", exit_code=0, cost=0.9)
        rollup = Rollup(str(session.session_id))
        rollup.take_event(OtlpEvent("claude_code.api_request", 1, {"cost_usd": telemetry_cost}))
        write_rollups([rollup], session.host)
        engine.tick(at, snapshot(at))
        engine.tick(at + timedelta(minutes=1), snapshot(at))
    # Off: nothing; agreeing: nothing; reported $0.90 against telemetry's $0.50: once.
    (text,) = messages_of(receiver)
    assert "cost drift: telemetry is 44% under reported" in text
