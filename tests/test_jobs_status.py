"""Jobs joined to runs: the collect_jobs command, badges, and the live join with a
shell standing in for the scheduler and the real wrapper under it."""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.utils import timezone

from jobs_app.models import Job
from monitor_app.job_status import badges_for, expected_run, job_statuses
from monitor_app.live import take_snapshot
from opsconsole.models import ApiToken
from sessions_app.models import Session, Status
from tests.conftest import wrapper_command
from tests.test_collectors import stand_in

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def scheduler_tools(tmp_path, monkeypatch, settings):
    """A stand-in crontab and launchctl on PATH whose output tests can rewrite."""
    bin_dir = tmp_path / "sched-bin"
    crontab_file = tmp_path / "crontab.txt"
    launchctl_file = tmp_path / "launchctl.txt"
    crontab_file.write_text("")
    launchctl_file.write_text("PID\tStatus\tLabel\n")
    stand_in(bin_dir, "crontab", f"exec cat {crontab_file}\n")
    stand_in(bin_dir, "launchctl", f"exec cat {launchctl_file}\n")
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path('/usr/bin')}:/bin")
    settings.OPSCONSOLE_SCHEDULERS = ["cron"]
    settings.OPSCONSOLE_LAUNCHD_PLIST_DIRS = [str(tmp_path / "LaunchAgents")]
    return {"crontab": crontab_file, "launchctl": launchctl_file, "dir": tmp_path}


def session(tag, status, minutes_ago=5, **extra):
    return Session.objects.create(
        session_id=uuid.uuid4(),
        script_tag=tag,
        host=extra.pop("host", socket.gethostname()),
        status=status,
        started_at=timezone.now() - timedelta(minutes=minutes_ago),
        ended_at=timezone.now() - timedelta(minutes=minutes_ago - 1),
        **extra,
    )


def test_collect_jobs_records_and_keeps_human_fields(console_state, scheduler_tools, capsys):
    scheduler_tools["crontab"].write_text(
        "# opsconsole: nightly\n15 2 * * * opsconsole-run --tag nightly -- -p go\n"
        "*/5 * * * * opsconsole-run --tag poller -- -p poll\n"
    )
    call_command("collect_jobs")
    assert "cron: 2 job(s)" in capsys.readouterr().out

    job = Job.objects.get(label="nightly")
    assert (job.tags, job.schedule_raw, job.present) == (["nightly"], "15 2 * * *", True)
    job.description, job.owner, job.max_runtime_minutes = "The report", "ops", 20
    job.save()

    scheduler_tools["crontab"].write_text(
        "# opsconsole: nightly\n30 3 * * * opsconsole-run --tag nightly -- -p go\n"
    )
    call_command("collect_jobs")

    job.refresh_from_db()
    assert job.schedule_raw == "30 3 * * *"
    assert (job.description, job.owner, job.max_runtime_minutes) == ("The report", "ops", 20)
    assert Job.objects.get(label="poller").present is False  # kept, marked gone


def test_sessions_are_linked_to_their_job(console_state, scheduler_tools):
    earlier = session("nightly", Status.SUCCEEDED)
    scheduler_tools["crontab"].write_text("0 2 * * * opsconsole-run --tag nightly -- -p x\n")
    call_command("collect_jobs")

    earlier.refresh_from_db()
    assert earlier.job == Job.objects.get(label="nightly")


def job(**fields) -> Job:
    values = {"scheduler": "cron", "label": "j", "host": socket.gethostname(), "tags": ["t"]}
    values.update(fields)
    return Job.objects.create(**values)


def kinds(badges) -> list[str]:
    return [b.kind for b in badges]


def test_outcome_badges(console_state):
    now = timezone.now()
    quota = job(label="q", tags=["q"])
    assert kinds(
        badges_for(quota, [], session("q", Status.QUOTA_SKIP, exit_code=79), None, now)
    ) == ["quota_skip"]
    failed = job(label="f", tags=["f"])
    last = session("f", Status.FAILED, exit_code=2)
    assert [b.label for b in badges_for(failed, [], last, None, now)] == ["failed (exit 2)"]
    assert kinds(
        badges_for(job(label="k", tags=["k"]), [], session("k", Status.KILLED), None, now)
    ) == ["killed"]
    # No run on record: the scheduler's own exit status speaks.
    assert kinds(badges_for(job(label="s", last_exit_status=-9), [], None, None, now)) == ["killed"]
    assert kinds(badges_for(job(label="s2", last_exit_status=79), [], None, None, now)) == [
        "quota_skip"
    ]
    off = job(label="off", enabled=False)
    assert kinds(badges_for(off, [], None, None, now)) == ["disabled"]
    broken = job(label="err", collector_error="no plist")
    assert kinds(badges_for(broken, [], None, None, now)) == ["error"]


def test_late_when_the_expected_run_did_not_happen(console_state, settings):
    settings.OPSCONSOLE_LATE_GRACE_SECONDS = 600
    now = timezone.now()
    due = job(label="due", previous_run_at=now - timedelta(hours=1))
    assert "late" in kinds(
        badges_for(due, [], session("t", Status.SUCCEEDED, 300), now - timedelta(hours=1), now)
    )
    ran = session("t", Status.SUCCEEDED, 59)
    assert "late" not in kinds(badges_for(due, [], ran, expected_run(due, ran, now), now))
    soon = job(label="grace", previous_run_at=now - timedelta(minutes=5))
    assert "late" not in kinds(badges_for(soon, [], None, soon.previous_run_at, now))
    interval = job(label="every15", interval_seconds=900)
    old = session("t", Status.SUCCEEDED, 60)
    assert expected_run(interval, old, now) == old.started_at + timedelta(seconds=900)


def start_under_scheduler(state, tag, behaviour="sleep:30"):
    """`bash` standing in for cron/launchd, running the real wrapper as its job."""
    env = dict(state.env, FAKE_CLAUDE_BEHAVIOUR=behaviour)
    command = " ".join(
        wrapper_command(tag, "-p", "go", "--output-format", "stream-json", "--verbose")
    )
    return subprocess.Popen(
        ["bash", "-c", f"{command}; echo done"], env=env, cwd=state.workdir, start_new_session=True
    )


def wait_for_live(state, predicate, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        snapshot = take_snapshot(state.paths)
        if predicate(snapshot):
            return snapshot
        time.sleep(0.1)
    raise AssertionError("no live session appeared")


def test_live_join_by_tag_and_by_ancestry(
    console_state, fake_claude, scheduler_tools, settings, client
):
    settings.OPSCONSOLE_SCHEDULERS = ["cron", "launchd"]
    scheduler_tools["crontab"].write_text("0 2 * * * opsconsole-run --tag by-tag -- -p x\n")
    agents = scheduler_tools["dir"] / "LaunchAgents"
    agents.mkdir()
    by_tag = start_under_scheduler(console_state, "by-tag")
    # The launchd job's own tag differs from the run's: only ancestry can join them.
    by_pid = start_under_scheduler(console_state, "some-other-tag")
    try:
        import plistlib

        with (agents / "com.acme.ancestry.plist").open("wb") as handle:
            plistlib.dump(
                {
                    "Label": "com.acme.ancestry",
                    "ProgramArguments": ["/bin/bash", "-c", "opsconsole-run --tag x"],
                },
                handle,
            )
        scheduler_tools["launchctl"].write_text(
            f"PID\tStatus\tLabel\n{by_pid.pid}\t0\tcom.acme.ancestry\n"
        )
        snapshot = wait_for_live(console_state, lambda s: len(s.sessions) == 2)
        call_command("collect_jobs")
        statuses = {s.job.label: s for s in job_statuses(snapshot)}

        tagged = statuses["by-tag"]
        assert [r.script_tag for r in tagged.live] == ["by-tag"]
        assert kinds(tagged.badges)[0] == "live"
        ancestry = statuses["com.acme.ancestry"]
        assert [r.script_tag for r in ancestry.live] == ["some-other-tag"]
        linked = Session.objects.get(session_id=ancestry.live[0].session_id)
        assert linked.job.label == "com.acme.ancestry"

        user = get_user_model().objects.create_user("ops")
        token = ApiToken.issue(user)[1]
        body = client.get("/api/status", HTTP_AUTHORIZATION=f"Bearer {token}").json()
        rows = {row["label"]: row for row in body["jobs"]}
        assert rows["by-tag"]["live_sessions"][0]["html_url"].startswith("/sessions/")
        assert rows["com.acme.ancestry"]["pids"] == [by_pid.pid]
        assert rows["by-tag"]["badges"][0]["kind"] == "live"
    finally:
        for proc in (by_tag, by_pid):
            subprocess.run(["pkill", "-KILL", "-s", str(proc.pid)], check=False)
            proc.wait(timeout=10)


def test_dashboard_needs_login_and_shows_jobs(console_state, scheduler_tools, client):
    scheduler_tools["crontab"].write_text("0 2 * * * opsconsole-run --tag nightly -- -p x\n")
    assert client.get("/jobs/").status_code == 302
    assert client.get("/api/status").status_code == 401
    client.force_login(get_user_model().objects.create_user("ops"))

    page = client.get("/jobs/")
    rows = client.get("/jobs/rows/")

    assert page.status_code == 200 and rows.status_code == 200
    assert b"nightly" in page.content and b"At 02:00" in page.content


def test_a_failing_collector_is_shown_and_the_others_go_on(
    console_state, scheduler_tools, settings, client
):
    settings.OPSCONSOLE_SCHEDULERS = ["cron", "launchd"]
    scheduler_tools["crontab"].write_text("0 2 * * * opsconsole-run --tag nightly -- -p x\n")
    scheduler_tools["launchctl"].write_text("launchctl: garbage\n")
    client.force_login(get_user_model().objects.create_user("ops"))

    body = client.get("/api/status").json()

    assert [row["label"] for row in body["jobs"]] == ["nightly"]
    assert "unexpected" in body["collector_errors"]["launchd"][0]


def test_a_job_made_after_the_index_was_cached_still_claims_its_runs(console_state, settings):
    """A run is linked to its job once, when its row is made: a job made (by another
    process, say) while the monitor's index was cached used to leave it linked to none."""
    from jobs_app.linking import job_id_for, job_index

    settings.OPSCONSOLE_SNAPSHOT_SECONDS = 600
    assert job_index() == {}  # cached, before the job exists
    job = Job.objects.create(
        scheduler="cron", label="waiting agent", host=settings.OPSCONSOLE_HOST, tags=["waiter"]
    )
    assert job_id_for(settings.OPSCONSOLE_HOST, "waiter") == job.pk
    assert job_id_for(settings.OPSCONSOLE_HOST, "someone-else") is None
    assert job_id_for("another-host", "waiter") is None
