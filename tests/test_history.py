"""History, costs and export against a real database."""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from jobs_app.models import Job
from monitor_app.monitor import Monitor
from sessions_app.costs import cost_report
from sessions_app.history import HistoryFilters, history_page
from sessions_app.models import Session, Status

pytestmark = pytest.mark.django_db


def make(tag="nightly", status=Status.SUCCEEDED, minutes_ago=10, cost="0.0100", **extra):
    return Session.objects.create(
        session_id=extra.pop("session_id", uuid.uuid4()),
        script_tag=tag,
        status=status,
        started_at=timezone.now() - timedelta(minutes=minutes_ago),
        ended_at=timezone.now() - timedelta(minutes=minutes_ago - 1),
        cost_usd=None if cost is None else Decimal(cost),
        host=extra.pop("host", "h1"),
        **extra,
    )


@pytest.fixture
def logged_in(client):
    client.force_login(get_user_model().objects.create_user("ops"))
    return client


def test_history_needs_login(client):
    assert client.get("/history/").status_code == 302
    assert client.get("/history/export.csv").status_code == 302
    assert client.get("/api/history/export.json").status_code == 401


def test_history_query_count_does_not_grow_with_rows(
    logged_in, console_state, django_assert_max_num_queries
):
    job = Job.objects.create(scheduler="cron", label="nightly-job", host="h1", tags=["nightly"])
    for index in range(150):  # 300 runs: 150 refused first attempts, each retried
        first = make(minutes_ago=1000 - index, status=Status.REFUSED, job=job)
        make(minutes_ago=1000 - index, attempt=2, retry_of=first.session_id, job=job)
    Monitor(paths=console_state.paths).tick()  # a monitor is publishing, as under `serve`

    # session + user lookups, the published sample's head, the jobs for the filter, one
    # page of sessions with their job; the navigation's counts (open incidents; silent
    # hosts: samples and tokens)
    with django_assert_max_num_queries(8) as captured:
        response = logged_in.get("/history/")
    assert response.status_code == 200
    assert response.content.count(b"<tr>") == 51  # header + 50 rows
    assert b"nightly-job" in response.content
    print(f"history page: {len(captured.captured_queries)} queries for 300 sessions")


def test_keyset_pages_walk_every_row_once():
    created = {str(make(minutes_ago=i).session_id) for i in range(1, 8)}
    seen, cursor = [], None
    while True:
        page = history_page(HistoryFilters(), before=cursor, page_size=3)
        seen += [str(r.session_id) for r in page.rows]
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    assert len(seen) == 7 and set(seen) == created


def test_filters_and_session_id_search(logged_in):
    target = make(tag="inbox", session_id=uuid.UUID("abcdef01-2345-4678-9abc-def012345678"))
    make(tag="inbox", status=Status.FAILED, exit_code=2)
    make(tag="report", minutes_ago=60 * 24 * 3)

    def tags(query):
        return [r.script_tag for r in history_page(HistoryFilters.from_query(query)).rows]

    assert tags({"tag": "inbox"}) == ["inbox", "inbox"]
    assert tags({"status": "failed"}) == ["inbox"]
    # From the day the inbox runs started (yesterday, for a test run just after midnight).
    since = timezone.localtime(target.started_at).date().isoformat()
    assert sorted(tags({"date_from": since})) == ["inbox", "inbox"]
    assert tags({"q": "abcdef01"}) == ["inbox"]
    assert tags({"q": str(target.session_id)}) == ["inbox"]
    page = logged_in.get("/history/?status=failed")
    assert b"failed (exit 2)" in page.content
    bad = HistoryFilters.from_query({"status": "nope", "date_from": "yesterday", "q": "zz'"})
    assert len(bad.errors) == 3


def test_a_retry_whose_first_attempt_is_unknown_still_renders(logged_in):
    make(attempt=2)  # e.g. imported, or its first attempt was pruned
    page = logged_in.get("/history/")
    assert page.status_code == 200 and b"attempt 2" in page.content


def test_unknown_cost_is_unknown_not_zero(logged_in):
    make(cost=None)
    page = logged_in.get("/history/")
    assert b"unknown" in page.content
    assert b"$0.00" not in page.content


def test_csv_export_is_streamed_and_safe_from_formulas(logged_in):
    make(tag='=HYPERLINK("http://x")', cost=None)
    make(tag="ok", cost="0.5")

    response = logged_in.get("/history/export.csv")

    assert response.streaming
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    by_tag = {r["script_tag"]: r for r in rows}
    assert '\'=HYPERLINK("http://x")' in by_tag
    assert by_tag['\'=HYPERLINK("http://x")']["cost_usd"] == ""
    assert by_tag["ok"]["cost_usd"] == "0.500000"


def test_json_export_honours_filters(logged_in):
    make(tag="a")
    make(tag="b", cost=None)

    response = logged_in.get("/api/history/export.json?tag=b")

    body = json.loads(b"".join(response.streaming_content))
    assert [(s["script_tag"], s["cost_usd"]) for s in body["sessions"]] == [("b", None)]
    assert logged_in.get("/api/history/export.json?status=bogus").status_code == 400


def test_cost_report_sums_known_costs_and_counts_unknown(logged_in):
    make(tag="a", cost="1.25", input_tokens=100, output_tokens=20)
    make(tag="a", cost=None)
    make(tag="b", cost="0.75", minutes_ago=60 * 24 * 2)
    make(tag="live", status=Status.LIVE, cost=None)  # not finished: not in the report

    report = cost_report(days=7)

    by_tag = {line.key: line for line in report.by_tag}
    assert (by_tag["a"].cost_usd, by_tag["a"].runs, by_tag["a"].unknown_cost_runs) == (
        Decimal("1.25"),
        2,
        1,
    )
    assert by_tag["a"].tokens == 120
    assert report.total.cost_usd == Decimal("2.00")
    assert report.total.unknown_cost_runs == 1
    assert "live" not in by_tag
    assert len(report.by_day) == 7
    assert sum(line.cost_usd for line in report.by_day) == Decimal("2.00")

    page = logged_in.get("/costs/?days=7")
    assert page.status_code == 200
    assert b"<svg" in page.content and b"1 run of unknown cost" in page.content


def test_costs_and_jobs_filter_by_host_and_total_every_host(logged_in):
    """Many hosts, one console: a host filter on Costs and Jobs, with per-host totals
    that cover the whole fleet whatever the filter."""
    for host, cost in (("mac-mini", "1.50"), ("mac-mini", "0.50"), ("ci-runner", "4.00")):
        Session.objects.create(
            session_id=uuid.uuid4(),
            script_tag=f"report-{host}",
            host=host,
            status=Status.SUCCEEDED,
            started_at=timezone.now() - timedelta(hours=1),
            cost_usd=Decimal(cost),
        )
    Job.objects.create(scheduler="cron", label="on-mac", host="mac-mini", tags=["x"])
    Job.objects.create(scheduler="cron", label="on-ci", host="ci-runner", tags=["y"])

    page = logged_in.get("/costs/?days=7&host=mac-mini").content.decode()
    by_host = page[page.index('id="costs-by-host"') :]
    assert "$4.00" in by_host and "$2.00" in by_host  # both hosts, filter or not
    by_tag = page[page.index('id="costs-by-tag"') :]
    assert "report-mac-mini" in by_tag and "report-ci-runner" not in by_tag
    assert cost_report(7, host="ci-runner").total.cost_usd == Decimal("4.00")
    assert cost_report(7).total.cost_usd == Decimal("6.00")

    jobs = logged_in.get("/jobs/?host=ci-runner").content.decode()
    assert "on-ci" in jobs and "on-mac" not in jobs
    assert "mac-mini (1)" in jobs and "ci-runner (1)" in jobs
