"""The Alerts pages in a real browser against `opsconsole serve`: the Alerts page with
a delivery that needed retries, a job's alert settings, and a channel's test result.
Screenshots land in test-artifacts/."""

from __future__ import annotations

import contextlib
import textwrap

import pytest

from tests.alert_receivers import webhook  # noqa: F401 - a fixture
from tests.server_fixtures import manage
from tests.test_browser import logged_in_page, shot

with contextlib.suppress(ImportError):  # main has it in tests/browser_fixtures.py, a plugin
    from tests.test_browser import browser  # noqa: F401

pytestmark = pytest.mark.browser

SETUP = """
import uuid
from datetime import UTC, datetime, timedelta
from django.conf import settings
from alerts_app import engine
from alerts_app.models import Channel, JobAlertSettings
from jobs_app.models import Job
from monitor_app.models import Event
from sessions_app.ingest import record_completion
from monitor_app.snapshot import Snapshot
from wrapper.formats import SpoolRecord, new_session_id

host = settings.OPSCONSOLE_HOST
t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
job = Job.objects.create(scheduler="cron", label="nightly report", host=host, tags=["nightly"])
# The job's own channel: whatever else the console's monitor reports on this test host
# (a collector without a crontab, say) goes to the default channels, of which there is none.
oncall = Channel(name="on-call webhook", url="json://127.0.0.1:{port}/hook", is_default=False)
oncall.save()
rules = JobAlertSettings.objects.create(job=job, consecutive_failures=2, stall_minutes=15)
rules.channels.add(oncall)
mail = "mailto://127.0.0.1:9?from=ops@example.com&to=team@example.com&mode=insecure"
Channel(name="team email", url=mail, is_default=False).save()

def run(at, end_reason, exit_code, **fields):
    record = SpoolRecord(session_id=new_session_id(), script_tag="nightly", platform="cron",
        host=host, attempt=1, started_at=(at - timedelta(seconds=90)).isoformat(),
        ended_at=at.isoformat(), end_reason=end_reason, exit_code=exit_code,
        duration_ms=90000, cost_usd=0.042, **fields)
    session = record_completion(record)
    Event.objects.create(at=at, host=host, kind="run_ended", session_id=session.session_id,
        job=session.job, script_tag="nightly", status=session.status, message="run ended",
        dedupe_key=f"end:{{session.session_id}}")

run(t0, "failed", 2, error="Traceback: database is locked")
run(t0 + timedelta(seconds=1), "refused", 1, stop_reason="refusal", is_error=True)
for seconds in (3, 8, 18, 38):  # 500, 500, 500, then 200: one alert, three retries
    engine.tick(t0 + timedelta(seconds=seconds), Snapshot(taken_at=t0), background_delivery=False)
run(t0 + timedelta(seconds=40), "failed", 0, is_error=True, subtype="success", num_turns=1)
engine.tick(t0 + timedelta(seconds=41), Snapshot(taken_at=t0), background_delivery=False)
print("job", job.pk)
"""


@pytest.fixture
def quiet_page(browser, console_without_monitor):
    """No monitor behind the pages: SETUP drives the alert rounds on its own fixed clock,
    and a monitor ticking the same outbox on the real clock took its retries over."""
    yield from logged_in_page(browser, console_without_monitor)


def test_alerts_pages(quiet_page, console_without_monitor, state, tmp_path, webhook):  # noqa: F811
    page, console_server = quiet_page, console_without_monitor
    receiver = webhook([500, 500, 500])
    env = dict(
        state.env,
        DATABASE_URL=f"sqlite:///{tmp_path / 'console.sqlite3'}",
        OPSCONSOLE_CLAUDE_CONFIG_DIRS=str(state.config_dir),
        DJANGO_SETTINGS_MODULE="opsconsole.settings",
    )
    out = manage(
        env, "shell", "--no-imports", "-c", textwrap.dedent(SETUP.format(port=receiver.port))
    )
    job_id = out.strip().split()[-1]
    titles = [r.json["title"] for r in receiver.received]
    assert receiver.answered[:5] == [500, 500, 500, 200, 200], titles

    page.goto(console_server.url + "/alerts/")
    row = page.locator("#alerts-table tbody tr").first
    row.wait_for()
    assert "4 attempts (3 retries)" in page.locator("#alerts-table").inner_text()
    assert page.locator("#alerts-table tbody tr").count() >= 2
    assert "database is locked" not in page.locator("#channels-table").inner_text()
    shot(page, "alerts")

    # Send a test to each channel: the webhook answers; the mail server does not exist.
    page.locator("tr[data-channel='on-call webhook'] button", has_text="Send test").click()
    page.locator("[data-flash]", has_text="Test message delivered to on-call webhook").wait_for()
    page.locator("tr[data-channel='team email'] button", has_text="Send test").click()
    page.locator("[data-flash]", has_text="Test message to team email failed").wait_for()
    assert page.locator("tr[data-channel='on-call webhook'] .badge--succeeded").count() == 1
    assert page.locator("tr[data-channel='team email'] .badge--failed").count() == 1
    shot(page, "alerts-channel-test")
    assert any("Test message" in r.json["title"] for r in receiver.accepted)

    page.goto(f"{console_server.url}/jobs/{job_id}/alerts/")
    page.locator("#job-alert-settings").wait_for()
    assert page.locator("#id_consecutive_failures").input_value() == "2"
    page.fill("#id_stall_minutes", "20")
    page.get_by_role("button", name="Save alert settings").click()
    page.get_by_text("Alert settings saved.").wait_for()
    assert float(page.locator("#id_stall_minutes").input_value()) == 20
    shot(page, "job-alert-settings")

    page.goto(f"{console_server.url}/history/")
    page.locator(".badge--false_success").first.wait_for()
    shot(page, "history-false-success")
