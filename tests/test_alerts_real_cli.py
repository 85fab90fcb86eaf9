"""Alerts end to end with the real Claude Code CLI (offline, tests/messages_api.py)
under the real wrapper, and the `deliver_alerts` round delivering to a webhook on
loopback. `monitor_sample()` stands in for the monitor: it ingests the spool and
writes the events the monitor writes (run ended, quota stamp set / cleared).
When the monitor lands, these run through it instead."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from datetime import datetime, timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from alerts_app import engine
from alerts_app.models import Channel
from monitor_app.live import take_snapshot
from monitor_app.models import Event, EventKind
from sessions_app.ingest import ingest_spool
from sessions_app.models import Session
from tests.alert_receivers import webhook  # noqa: F401 - a fixture
from tests.conftest import PYTHON, wrapper_command
from wrapper.formats import EXIT_QUOTA_SKIP, read_quota_stamp

pytestmark = [pytest.mark.real_cli, pytest.mark.django_db]

STREAM = ("--output-format", "stream-json", "--verbose")
SAMPLE_SECONDS = 2.0  # the monitor's default interval


def run_wrapped(state, tag: str, prompt: str, timeout=120) -> int:
    return subprocess.run(
        wrapper_command(tag, "-p", prompt, *STREAM),
        env=state.env,
        cwd=state.workdir,
        capture_output=True,
        timeout=timeout,
    ).returncode


def monitor_sample(state) -> None:
    """What the monitor does per sample, as far as alerts read it."""
    now = timezone.now()
    ingest_spool(state.paths)
    for session in Session.objects.exclude(status__in=("live", "orphaned", "unwrapped")):
        Event.objects.get_or_create(
            dedupe_key=f"run_ended:{session.session_id}",
            defaults=dict(
                at=now,
                host=session.host,
                kind=EventKind.RUN_ENDED,
                session_id=session.session_id,
                job=session.job,
                script_tag=session.script_tag,
                status=session.status,
                message=f"{session.script_tag} ended: {session.status}",
                detail={"exit_code": session.exit_code, "attempt": session.attempt},
            ),
        )
    stamp = read_quota_stamp(state.paths)
    last = Event.objects.filter(kind__in=[EventKind.QUOTA_SET, EventKind.QUOTA_CLEARED]).first()
    was_set = last is not None and last.kind == EventKind.QUOTA_SET
    if stamp is not None and not was_set:
        Event.objects.create(
            at=now,
            host=Session.objects.first().host,
            kind=EventKind.QUOTA_SET,
            message=f"quota stamp set until {stamp.until}",
            detail={"until": stamp.until, "reason": stamp.reason, "session_id": stamp.session_id},
            dedupe_key=f"quota_set:{stamp.set_at}",
        )
    elif stamp is None and was_set:
        Event.objects.create(
            at=now,
            host=last.host,
            kind=EventKind.QUOTA_CLEARED,
            message="quota stamp cleared",
            dedupe_key=f"quota_cleared:{now.isoformat()}",
        )


def texts(receiver) -> list[str]:
    return [r.json["title"] + "\n" + r.json["message"] for r in receiver.accepted]


@pytest.fixture
def hook(webhook, console_state, settings):  # noqa: F811
    settings.OPSCONSOLE_BASE_URL = "http://127.0.0.1:8000"
    settings.OPSCONSOLE_ALERT_DELIVER_IN_BACKGROUND = False
    engine._env_synced_at = None
    receiver = webhook()
    Channel(name="on-call", url=f"json://127.0.0.1:{receiver.port}/hook").save()
    return receiver


def test_a_run_refused_on_every_attempt_reaches_the_webhook_within_one_interval(
    state, real_claude, hook
):
    real_claude.script("draft the memo", {"kind": "refuse"})
    assert run_wrapped(state, "memo", "draft the memo") == 1
    monitor_sample(state)
    call_command("deliver_alerts", "--once", "--no-live")
    # Within one interval: the one round after the sample delivers it (in line).
    assert len(hook.accepted) == 1
    [text] = texts(hook)
    assert "memo was refused" in text and "attempt 3" in text
    last = Session.objects.get(attempt=3)
    assert f"http://127.0.0.1:8000/sessions/{last.session_id}/" in text
    assert Session.objects.filter(status="refused").count() == 3  # every attempt on record
    call_command("deliver_alerts", "--once", "--no-live")
    assert len(hook.received) == 1


def test_a_429_then_two_skipped_runs_give_one_quota_alert_and_one_cleared(state, real_claude, hook):
    real_claude.script("summarize", {"kind": "429"})
    assert run_wrapped(state, "summary", "summarize the inbox") == 1
    monitor_sample(state)
    call_command("deliver_alerts", "--once", "--no-live")
    for _ in range(2):
        assert run_wrapped(state, "summary", "summarize the inbox") == EXIT_QUOTA_SKIP
        monitor_sample(state)
        call_command("deliver_alerts", "--once", "--no-live")
    clear = subprocess.run(
        [PYTHON, "-m", "wrapper", "--clear-quota-stamp"], env=state.env, capture_output=True
    )
    assert clear.returncode == 0, clear.stderr
    monitor_sample(state)
    call_command("deliver_alerts", "--once", "--no-live")
    messages = texts(hook)
    assert len(messages) == 2, messages
    assert "Quota hit" in messages[0] and "429" in messages[0]
    assert "Quota cleared" in messages[1]


def test_a_fixed_job_gives_one_recovery(state, real_claude, hook):
    real_claude.script("nightly digest", {"kind": "refuse", "times": 3})  # one whole run
    assert run_wrapped(state, "digest", "nightly digest") == 1
    monitor_sample(state)
    call_command("deliver_alerts", "--once", "--no-live")
    for _ in range(2):
        assert run_wrapped(state, "digest", "nightly digest") == 0
        monitor_sample(state)
        call_command("deliver_alerts", "--once", "--no-live")
    titles = [t.split("\n")[0] for t in texts(hook)]
    assert len(titles) == 2, titles
    assert "digest was refused" in titles[0] and "digest recovered" in titles[1]


def test_a_stalled_run_is_alerted_before_the_watchdog_limit(
    state, console_state, real_claude, hook
):
    """claude waits on a stream that never answers: no transcript growth, no CPU."""
    real_claude.script("wait forever", {"kind": "stall", "seconds": 120, "text": "late"})
    proc = subprocess.Popen(
        wrapper_command("waiter", "-p", "wait forever", *STREAM),
        env=state.env,
        cwd=state.workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        live = None
        while time.monotonic() < deadline and live is None:
            snapshot = take_snapshot(state.paths)
            live = next(iter(snapshot.sessions), None)
            time.sleep(0.2)
        assert live is not None and live.sidecar.claude_pid
        # The monitor marks it idle from the transcript's last growth; here, its start.
        idle_since = datetime.fromisoformat(live.sidecar.started_at.replace("Z", "+00:00"))
        live.idle_since = idle_since
        later = idle_since + timedelta(minutes=10, seconds=1)  # default stall: 10 min < 45
        result = engine.tick(later, snapshot)
        assert result.delivered == 1
        [text] = texts(hook)
        assert "waiter is stalled" in text and "10m 01s" in text
        assert proc.poll() is None, "alerted while the run is still live"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
