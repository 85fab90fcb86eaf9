"""Pages that lead somewhere: a job's runs, links between runs, who stopped one,
rate limits as their own outcome, unknown costs, platforms from the runs."""

from __future__ import annotations

import csv
import io
import re
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from jobs_app.models import Job
from sessions_app.charts import colour_of
from sessions_app.costs import cost_report
from sessions_app.models import Session, Status
from wrapper.formats import host_name

pytestmark = pytest.mark.django_db

RESET = "2026-11-24T14:05:00Z"
LIMIT_ERROR = (
    f"Claude AI usage limit reached — usage limit hit; every wrapper skips (exit 79) until {RESET}"
)


def run(job=None, tag="nightly", minutes_ago=10, status=Status.SUCCEEDED, cost="0.0100", **extra):
    started = timezone.now() - timedelta(minutes=minutes_ago)
    return Session.objects.create(
        session_id=uuid.uuid4(),
        script_tag=tag,
        status=status,
        started_at=started,
        ended_at=started + timedelta(seconds=30),
        duration_ms=extra.pop("duration_ms", 30_000),
        cost_usd=None if cost is None else Decimal(cost),
        host=extra.pop("host", host_name()),
        job=job,
        **extra,
    )


def nightly(**fields) -> Job:
    values = {"scheduler": "cron", "label": "nightly report", "host": host_name()}
    values.update(tags=["nightly"], schedule_raw="15 2 * * *", schedule_text="At 02:15")
    values.update(fields)
    return Job.objects.create(**values)


@pytest.fixture
def logged_in(client, console_state, settings):
    settings.OPSCONSOLE_SCHEDULERS = ["none"]  # no collector touches the jobs made here
    client.force_login(get_user_model().objects.create_user("ops"))
    return client


def test_job_page_shows_its_last_50_runs_as_marks_and_charts(logged_in):
    job = nightly()
    statuses = [Status.SUCCEEDED, Status.FAILED, Status.KILLED, Status.REFUSED]
    runs = [
        run(job, minutes_ago=600 - index * 10, status=statuses[index % 4], exit_code=1)
        for index in range(60)
    ]
    run(job, minutes_ago=1, cost=None)  # unknown cost: a "?" in the chart, never a $0 bar

    page = logged_in.get(f"/jobs/{job.pk}/").content.decode()

    strip = page[page.index('id="run-strip"') : page.index("</ol>", page.index('id="run-strip"'))]
    marks = re.findall(r'<a class="mark mark--(\w+)" href="/sessions/([0-9a-f-]+)/"', strip)
    assert len(marks) == 50
    assert marks[-1][1] != str(runs[-1].session_id)  # the newest (unknown cost) is last
    assert marks[-2] == ("refused", str(runs[-1].session_id))  # 59 % 4 == 3
    assert str(runs[10].session_id) not in strip  # older than the last 50
    assert "failed (exit 1)" in strip and "30s" in strip and "$0.0100" in strip  # hover titles
    assert 'class="chart chart--runs chart--duration"' in page
    assert 'class="chart chart--runs chart--cost"' in page
    assert 'class="unknown"' in page  # the unknown-cost run
    assert "Audit log" in page


def test_session_page_links_to_its_job_and_to_the_previous_and_next_run(logged_in):
    job = nightly()
    first, middle, last = (run(job, minutes_ago=m) for m in (30, 20, 10))
    run(tag="other", minutes_ago=15)  # another job's run is not a neighbour

    page = logged_in.get(f"/sessions/{middle.session_id}/").content.decode()

    assert f'href="/jobs/{job.pk}/"' in page
    assert f'href="/sessions/{first.session_id}/" rel="prev"' in page
    assert f'href="/sessions/{last.session_id}/" rel="next"' in page
    newest = logged_in.get(f"/sessions/{last.session_id}/").content.decode()
    assert "latest run" in newest and f'href="/sessions/{middle.session_id}/" rel="prev"' in newest


def test_a_run_not_yet_linked_finds_its_job_by_tag(logged_in):
    job = nightly()
    orphan = run(None, minutes_ago=5)
    page = logged_in.get(f"/sessions/{orphan.session_id}/").content.decode()
    assert f'href="/jobs/{job.pk}/"' in page


def test_jobs_are_grouped_under_the_platform_their_runs_pass(logged_in, console_state):
    job = nightly()
    run(job, platform="demo")

    page = logged_in.get("/jobs/").content.decode()

    assert "<h2>demo</h2>" in page and "(no platform)" not in page
    token_user = get_user_model().objects.get(username="ops")
    logged_in.force_login(token_user)
    status = logged_in.get("/api/status").json()
    assert status["jobs"][0]["platform"] == "demo"


def test_who_stopped_a_run_is_on_the_session_page_and_in_the_api(logged_in):
    by_person = run(status=Status.KILLED, stopped_by="alice", end_reason="stopped")
    by_watchdog = run(status=Status.KILLED, stopped_by="watchdog", end_reason="watchdog")

    page = logged_in.get(f"/sessions/{by_person.session_id}/").content.decode()
    assert "Stopped by" in page and "alice (a person" in page
    page = logged_in.get(f"/sessions/{by_watchdog.session_id}/").content.decode()
    assert "the watchdog" in page

    assert logged_in.get(f"/api/sessions/{by_person.session_id}").json()["stopped_by"] == "alice"
    listed = logged_in.get("/api/sessions").json()["sessions"]
    assert {s["stopped_by"] for s in listed} == {"alice", "watchdog"}


def test_a_429_is_rate_limited_with_its_reset_time_in_history_jobs_and_exports(logged_in):
    job = nightly()
    limited = run(
        job, status=Status.FAILED, exit_code=1, api_error_status=429, error=LIMIT_ERROR, cost=None
    )

    history = logged_in.get("/history/").content.decode()
    assert "badge--rate_limited" in history and "rate-limited until" in history
    assert "failed (exit 1)" not in history
    jobs = logged_in.get("/jobs/").content.decode()
    assert "badge--rate_limited" in jobs and "failed (exit 1)" not in jobs

    rows = list(
        csv.DictReader(io.StringIO(b"".join(logged_in.get("/history/export.csv")).decode()))
    )
    assert rows[0]["outcome"] == "rate_limited"
    assert rows[0]["rate_limit_reset_at"].startswith("2026-11-24T14:05:00")
    assert rows[0]["error"] == LIMIT_ERROR
    exported = b"".join(logged_in.get("/api/history/export.json").streaming_content)
    assert b'"outcome": "rate_limited"' in exported
    run(job, status=Status.FAILED, exit_code=2, minutes_ago=30)
    filtered = logged_in.get("/history/?status=rate_limited").content.decode()
    assert "rate-limited until" in filtered and "failed (exit 2)" not in filtered
    unfiltered = logged_in.get("/history/").content.decode()
    assert "failed (exit 2)" in unfiltered
    detail = logged_in.get(f"/api/sessions/{limited.session_id}").json()
    assert detail["outcome"] == "rate_limited" and detail["rate_limit_reset_at"]


def test_costs_of_a_job_whose_runs_all_had_unknown_cost_say_unknown_not_zero(logged_in):
    run(tag="plain-text", cost=None)
    run(tag="plain-text", cost=None, minutes_ago=20)
    run(tag="priced", cost="0.5000")

    page = logged_in.get("/costs/").content.decode()

    row = re.search(r'<tr><td data-label="Tag"><a[^>]*>plain-text</a></td>(.*?)</tr>', page)
    assert row is not None
    assert "unknown" in row.group(1) and "$0.00" not in row.group(1)
    assert cost_report(30).total.known_cost_runs == 1


def test_a_job_keeps_its_chart_colour_across_loads_and_ranges(logged_in):
    run(tag="alpha", cost="1.0")
    run(tag="beta", cost="2.0")
    first = logged_in.get("/costs/?days=7").content.decode()
    run(tag="gamma", cost="9.0")  # a new, costlier job must not repaint the others
    second = logged_in.get("/costs/?days=30").content.decode()
    for tag in ("alpha", "beta"):
        swatch = f'fill="{colour_of(tag)}"></rect></svg>{tag}'
        assert swatch in first and swatch in second


def test_a_disabled_job_shows_no_next_run_and_a_schedule_shows_once(logged_in):
    job = nightly(
        scheduler_enabled=False,
        next_run_at=timezone.now() + timedelta(hours=3),
        schedule_raw="@hourly",
        schedule_text="Every hour",
    )
    page = logged_in.get(f"/jobs/{job.pk}/").content.decode()
    assert "none (disabled)" in page
    assert page.count("@hourly") == 1  # the words, then the scheduler's own, once
    assert logged_in.get("/api/status").json()["jobs"][0]["next_run"] is None
    same = nightly(label="same words", schedule_raw="@hourly", schedule_text="@hourly")
    assert "@hourly @hourly" not in logged_in.get(f"/jobs/{same.pk}/").content.decode()


def test_stop_and_disable_ask_for_confirmation(logged_in):
    staff = get_user_model().objects.create_user("boss", is_staff=True)
    logged_in.force_login(staff)
    job = nightly()
    page = logged_in.get(f"/jobs/{job.pk}/").content.decode()
    assert re.search(r"action=\"/jobs/\d+/stop\" data-confirm=\"Stop every live run", page)
    assert re.search(r"action=\"/jobs/\d+/disable\" data-confirm=\"Disable", page)
    assert "opsconsole/console.js" in page


def test_favicon_ico_is_served(client):
    answer = client.get("/favicon.ico", follow=True)
    assert answer.status_code == 200
    assert b"".join(answer.streaming_content)[:4] == b"\x00\x00\x01\x00"
