"""Alerts end to end through `opsconsole monitor` (the monitor calls the alert engine
once per sample) with the real Claude Code CLI under the real wrapper, delivering to a
webhook on loopback. Skipped where the monitor is not installed."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import time

import pytest

from tests.alert_receivers import webhook  # noqa: F401 - a fixture
from tests.conftest import PYTHON, REPO_ROOT, wrapper_command
from tests.live_helpers import monitor_sample, start_monitor, wait_for_samples, wait_until
from tests.server_fixtures import manage

# Skipped only where the monitor is not there at all; once it is, an import error fails.
if importlib.util.find_spec("monitor_app.monitor") is None:
    pytest.skip("needs the monitor (issue 10)", allow_module_level=True)

pytestmark = [pytest.mark.real_cli]

STREAM = ("--output-format", "stream-json", "--verbose")
SAMPLE_SECONDS = 2.0  # the default interval


@pytest.fixture
def monitored(state, real_claude, tmp_path, webhook):  # noqa: F811
    """`opsconsole monitor` on its own database, alerting to a loopback webhook."""
    receiver = webhook()
    env = dict(
        state.env,
        DATABASE_URL=f"sqlite:///{tmp_path / 'monitored.sqlite3'}",
        DJANGO_SETTINGS_MODULE="opsconsole.settings",
        OPSCONSOLE_CLAUDE_CONFIG_DIRS=str(state.config_dir),
        OPSCONSOLE_SAMPLE_SECONDS=str(SAMPLE_SECONDS),
        OPSCONSOLE_ALERT_URLS=f"json://127.0.0.1:{receiver.port}/alerts",
        OPSCONSOLE_BASE_URL="https://ops.example.com",
    )
    monitor = start_monitor(env)
    wait_until(lambda: monitor_sample(state), timeout=60)  # its first sample
    receiver.env = env
    yield receiver
    monitor.terminate()
    try:
        monitor.wait(timeout=15)
    except subprocess.TimeoutExpired:
        monitor.kill()
        monitor.wait()


def run_wrapped(state, tag: str, prompt: str) -> int:
    return subprocess.run(
        wrapper_command(tag, "-p", prompt, *STREAM),
        env=state.env,
        cwd=state.workdir,
        capture_output=True,
        timeout=120,
    ).returncode


def about(receiver, tag: str) -> list[str]:
    """Messages about one tag (a test host may also report, say, a collector error)."""
    return [
        r.json["title"] + "\n" + r.json["message"]
        for r in receiver.accepted
        if r.json["title"].startswith(f"[opsconsole] {tag} ")
        or ("Quota" in r.json["title"] and tag == "quota")
    ]


def wait_for(predicate, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_a_run_refused_on_every_attempt_is_told_within_one_sample_interval(
    state, real_claude, monitored
):
    real_claude.script("draft the memo", {"kind": "refuse"})
    assert run_wrapped(state, "memo", "draft the memo") == 1
    ended_at_seq = monitor_sample(state)[0].seq
    # The monitor's seq read in the same poll that first sees the message.
    told_at_seq, [text] = wait_for(
        lambda: (told := about(monitored, "memo")) and (monitor_sample(state)[0].seq, told),
        timeout=60,
    )
    # Within one sample interval, counted in samples (a loaded machine slows both): the
    # sample that sees the record, its alert round, and the delivery thread.
    assert told_at_seq - ended_at_seq <= 2, (ended_at_seq, told_at_seq)
    assert "memo was refused" in text and "on all 3 attempts" in text
    assert "https://ops.example.com/sessions/" in text
    wait_for_samples(state, 2)  # two more samples: nothing more is told
    assert len(about(monitored, "memo")) == 1


def test_a_429_then_two_skips_give_one_quota_alert_and_one_cleared(state, real_claude, monitored):
    real_claude.script("summarize", {"kind": "429"})
    assert run_wrapped(state, "summary", "summarize the inbox") == 1
    wait_for(lambda: about(monitored, "quota"), timeout=30)
    for _ in range(2):
        assert run_wrapped(state, "summary", "summarize the inbox") == 79
    wait_for_samples(state, 2)  # two more samples: nothing more is told
    assert len(about(monitored, "quota")) == 1
    clear = subprocess.run(
        [PYTHON, "-m", "wrapper", "--clear-quota-stamp"], env=state.env, capture_output=True
    )
    assert clear.returncode == 0
    messages = wait_for(
        lambda: len(about(monitored, "quota")) == 2 and about(monitored, "quota"), 30
    )
    assert "Quota hit" in messages[0] and "Quota cleared" in messages[1]
    assert about(monitored, "summary") == [], "the 429 is the quota alert's, not a failure"


def test_a_fixed_job_gives_one_recovery(state, real_claude, monitored):
    real_claude.script("nightly digest", {"kind": "refuse", "times": 3})
    assert run_wrapped(state, "digest", "nightly digest") == 1
    wait_for(lambda: about(monitored, "digest"), timeout=30)
    for _ in range(2):
        assert run_wrapped(state, "digest", "nightly digest") == 0
    titles = wait_for(
        lambda: len(about(monitored, "digest")) >= 2 and about(monitored, "digest"), 30
    )
    wait_for_samples(state, 2)  # two more samples: nothing more is told
    titles = [t.split("\n")[0] for t in about(monitored, "digest")]
    assert len(titles) == 2, titles
    assert "digest was refused" in titles[0] and "digest recovered" in titles[1]


STALL_JOB = """
from django.conf import settings
from alerts_app.models import JobAlertSettings
from jobs_app.models import Job
job = Job.objects.create(scheduler="cron", label="waiting agent", host=settings.OPSCONSOLE_HOST,
    tags=["waiter"], max_runtime_minutes=45)
JobAlertSettings.objects.create(job=job, stall_minutes=15)
"""

# One alert round on a fixed clock: 15 minutes and a second after the monitor last saw
# the run grow or use CPU, with the sample in which the monitor saw it idle.
STALL_ROUND = """
import json, sys
from datetime import timedelta
from alerts_app import engine
from monitor_app.published import snapshot_from_state
snapshot = snapshot_from_state(json.loads(sys.stdin.read()), seq=0, source="monitor")
[live] = [s for s in snapshot.sessions if s.sidecar.script_tag == "waiter"]
engine.tick(live.idle_since + timedelta(minutes=15, seconds=1), snapshot,
    background_delivery=False)
"""


def test_a_run_waiting_on_a_stream_that_never_answers_is_told_before_the_watchdog(
    state, real_claude, monitored
):
    """What only a real process shows, the monitor seeing the real CLI idle while it
    waits on a stream, is waited for; the rule's 15 minutes are a fixed clock's."""
    manage(monitored.env, "shell", "--no-imports", "-c", STALL_JOB)
    real_claude.script("wait forever", {"kind": "stall", "seconds": 120, "text": "late"})
    run = subprocess.Popen(
        wrapper_command("waiter", "-p", "wait forever", *STREAM),
        env=state.env,
        cwd=state.workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        idle_sample = wait_until(lambda: sample_with_idle_waiter(state), timeout=120)
        subprocess.run(
            [PYTHON, "-m", "opsconsole.cli", "shell", "--no-imports", "-c", STALL_ROUND],
            env=monitored.env,
            cwd=REPO_ROOT,
            input=json.dumps(idle_sample),
            text=True,
            check=True,
            capture_output=True,
            timeout=120,
        )
        told = [t for t in about(monitored, "waiting agent") if " is stalled" in t]
        assert len(told) == 1, about(monitored, "waiting agent")
        assert "waiting agent is stalled: no transcript growth and no CPU for 15" in told[0]
        assert run.poll() is None, "told while the run is still live"
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=10)


def sample_with_idle_waiter(state) -> dict | None:
    """The monitor's published state document once it shows the waiter idle."""
    sample = monitor_sample(state)
    if sample is None:
        return None
    for live in sample[1]["sessions"]:
        if live["sidecar"]["script_tag"] == "waiter" and live["idle_since"]:
            return sample[1]
    return None
