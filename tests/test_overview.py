"""The overview at `/` and the navigation's counts: what is wrong right now, from the
real database, the on-demand sample of this host and a second host's real report."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from alerts_app.incidents import acknowledge
from alerts_app.models import Incident, JobAlertSettings, Rule
from alerts_app.outcome_rules import budget_day_start
from fleet.report import Reporter
from fleet.reporting import reporting_monitor
from jobs_app.models import Job
from monitor_app.live import get_snapshot
from monitor_app.models import HostToken
from opsconsole.overview import overview
from sessions_app.models import Session, Status
from tests.conftest import State
from tests.live_helpers import start_fake_run
from tests.test_fleet import client_transport, report_once
from wrapper.formats import QuotaStamp, StatePaths, new_session_id, write_json_atomic

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def viewer(client):
    client.force_login(get_user_model().objects.create_user("viewer"))
    return client


def open_incident(rule: str, summary: str, age: timedelta, **fields) -> Incident:
    return Incident.objects.create(
        key=f"{rule}:{summary}",
        rule=rule,
        summary=summary,
        opened_at=timezone.now() - age,
        **fields,
    )


def failed_job(label: str = "nightly report", tag: str = "nightly") -> Job:
    job = Job.objects.create(
        scheduler="cron", label=label, host=settings.OPSCONSOLE_HOST, tags=[tag]
    )
    now = timezone.now()
    # Earlier today, even a minute after midnight: today's spend counts it.
    started = max(now - timedelta(minutes=5), budget_day_start(now))
    Session.objects.create(
        session_id=new_session_id(),
        script_tag=tag,
        platform="cron",
        host=settings.OPSCONSOLE_HOST,
        attempt=1,
        status=Status.FAILED,
        exit_code=2,
        started_at=started,
        ended_at=min(started + timedelta(minutes=1), now),
        cost_usd=Decimal("0.40"),
        job=job,
    )
    return job


@pytest.fixture
def host_b(console_state, tmp_path, monkeypatch):
    """A second host with state of its own, reporting through the console's real view;
    yields a function that starts a live run there and reports it."""
    home = tmp_path / "host-b" / "home"
    config = tmp_path / "host-b" / "claude"
    for folder in (home, config):
        folder.mkdir(parents=True, mode=0o700)
    paths = StatePaths(home=home, active=home / "active")
    _row, token = HostToken.issue("host-b")
    monitor = reporting_monitor(
        Reporter("http://127.0.0.1:1", token, transport=client_transport(Client())),
        host="host-b",
        paths=paths,
        config_dirs=[config],
        interval=1.0,
    )
    state = State(paths=paths, config_dir=config, workdir=tmp_path / "host-b", env={})

    def live_run(runs, tag: str):
        with monkeypatch.context() as patch:
            patch.setenv("OPSCONSOLE_HOST_NAME", "host-b")
            runs.append(start_fake_run(state, tag))
        report_once(monitor)

    return live_run


def test_overview_says_what_is_wrong_now_and_links_to_where_it_is_fixed(
    console_state, viewer, runs, host_b
):
    """Before: `/` listed this host's live agents only; with a run live on a second host
    it said 'No agents running.' and nothing of incidents, failing jobs or silent hosts."""
    job = failed_job()
    open_incident(Rule.RUN_FAILED, "nightly report failed (exit 2)", timedelta(minutes=3), job=job)
    open_incident(Rule.MONITOR_SILENT, "host-quiet is silent", timedelta(hours=2), host="host-q")
    HostToken.issue("host-q")  # given a token, never reported: silent
    JobAlertSettings.objects.create(job=job, cost_per_day_usd=Decimal("0.25"))
    runs.append(start_fake_run(console_state, "here-run"))
    host_b(runs, "there-run")

    page = viewer.get("/").content.decode()

    # Oldest incident first.
    assert page.index("host-quiet is silent") < page.index("nightly report failed (exit 2)")
    assert f'href="/jobs/{job.pk}/"' in page and "failed (exit 2)" in page
    assert 'id="overview-silent"' in page and 'data-host="host-q"' in page
    assert 'href="/hosts/#host-host-q"' in page
    # Live runs on both hosts, each a link to its own live table.
    assert 'href="/live/?host=host-b">host-b</a>' in page
    live = overview(get_snapshot())
    counts = {h.host: h.live_runs for h in live.hosts_live}
    assert counts[settings.OPSCONSOLE_HOST] == 1 and counts["host-b"] == 1
    assert live.live_total == 2
    # Today's spend against the job's daily budget, linked to its alert settings.
    assert f'href="/jobs/{job.pk}/alerts/"' in page and "over budget" in page
    assert [(b.spent, b.budget, b.percent) for b in live.budgets] == [
        (Decimal("0.40"), Decimal("0.25"), 160)
    ]
    assert 'id="all-clear"' not in page


def test_an_all_clear_overview_says_so(console_state, viewer):
    page = viewer.get("/").content.decode()
    assert 'id="all-clear"' in page and "None open." in page


def test_the_navigation_counts_open_incidents_and_silent_hosts_on_every_page(console_state, viewer):
    for path in ("/", "/history/", "/jobs/", "/hosts/"):
        assert 'id="nav-incidents"' not in viewer.get(path).content.decode(), path
    open_incident(Rule.RUN_FAILED, "a failed", timedelta(minutes=1))
    open_incident(Rule.STALLED, "b stalled", timedelta(minutes=2))
    Incident.objects.create(  # resolved: not counted
        key="old", rule=Rule.LATE, opened_at=timezone.now(), resolved_at=timezone.now()
    )
    HostToken.issue("host-q")
    for path in ("/", "/live/", "/history/", "/jobs/", "/costs/", "/alerts/", "/hosts/"):
        page = viewer.get(path).content.decode()
        assert 'id="nav-incidents" title="open incidents">2<' in page, path
        assert 'id="nav-silent" title="silent hosts">1<' in page, path
    # A polled fragment does not pay for the counts.
    assert "nav-incidents" not in viewer.get("/live/rows/").content.decode()


def test_the_live_page_moved_to_live_and_old_host_links_still_land_there(console_state, viewer):
    assert viewer.get("/live/").status_code == 200
    moved = viewer.get("/?host=all")
    assert moved.status_code == 302 and moved["Location"] == "/live/?host=all"
    assert Client().get("/").status_code == 302  # login first, as everywhere


def test_a_failing_late_or_skipped_job_is_listed_worst_first(console_state, viewer):
    failed_job("zz failing", "zz")
    skipped = Job.objects.create(
        scheduler="cron", label="aa skipped", host=settings.OPSCONSOLE_HOST, tags=["aa"]
    )
    Session.objects.create(
        session_id=new_session_id(),
        script_tag="aa",
        platform="cron",
        host=settings.OPSCONSOLE_HOST,
        attempt=1,
        status=Status.QUOTA_SKIP,
        exit_code=79,
        started_at=timezone.now() - timedelta(minutes=1),
        ended_at=timezone.now(),
        job=skipped,
    )
    Job.objects.create(scheduler="cron", label="fine", host=settings.OPSCONSOLE_HOST, tags=["ok"])
    jobs = overview(get_snapshot()).jobs
    assert [item.status.job.label for item in jobs] == ["zz failing", "aa skipped"]
    assert [badge.kind for badge in jobs[1].badges] == ["quota_skip"]


def test_a_quota_stamp_in_force_is_on_the_overview(console_state, viewer):
    now = datetime.now(UTC)
    until = (now + timedelta(hours=1)).isoformat(timespec="seconds")
    write_json_atomic(
        console_state.paths.quota_stamp,
        QuotaStamp(
            until=until, set_at=now.isoformat(timespec="seconds"), reason="usage limit"
        ).to_dict(),
    )
    page = viewer.get("/").content.decode()
    assert f'data-quota-host="{settings.OPSCONSOLE_HOST}"' in page
    assert until in page and "usage limit" in page
    assert 'id="all-clear"' not in page


def test_the_overview_names_who_is_on_each_incident(console_state, viewer):
    owned = open_incident(Rule.RUN_FAILED, "nightly failed", timedelta(minutes=9))
    open_incident(Rule.RUN_FAILED, "backup failed", timedelta(minutes=3))
    acknowledge(owned, "alice", timezone.now())
    page = viewer.get("/").content.decode()
    rows = page.split('id="overview-incidents"')[1].split("</table>")[0].split("<tr data-incident")
    (nightly,) = [row for row in rows if "nightly failed" in row]
    (backup,) = [row for row in rows if "backup failed" in row]
    assert "alice" in nightly and "nobody yet" in backup
