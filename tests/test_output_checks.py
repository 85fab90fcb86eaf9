"""Output checks per job (issue 24, part 2): "exit 0" is not success. Real wrapper
processes (tests/fake_claude.py), the real monitor round with the alert rules as its
step, real files and a real git repository; a reporting host's verdict carried in the
completion record it sends."""

from __future__ import annotations

import os
import subprocess
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from prometheus_client.parser import text_string_to_metric_families

from alerts_app.engine import alert_round
from alerts_app.models import Alert, Incident
from fleet.console import host_policy
from fleet.reporting import reporting_monitor
from jobs_app.models import AuditEntry, Job
from monitor_app.models import Event, EventKind
from monitor_app.monitor import Monitor
from opsconsole.models import ApiToken
from sessions_app import output_checks
from sessions_app.models import Session, Status
from tests.conftest import wrapper_command
from tests.test_fleet import host_a, report_once  # noqa: F401 - a fixture
from wrapper.formats import (
    FormatError,
    SpoolRecord,
    host_name,
    new_session_id,
    read_spool_record,
    write_json_atomic,
)

pytestmark = pytest.mark.django_db

STREAM = ("-p", "write the report", "--output-format", "stream-json", "--verbose")


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def a_record(cwd, started: datetime, **fields) -> SpoolRecord:
    values = dict(
        session_id=new_session_id(),
        script_tag="nightly",
        platform="cron",
        host=host_name(),
        attempt=1,
        started_at=iso(started),
        ended_at=iso(started + timedelta(seconds=5)),
        end_reason="succeeded",
        exit_code=0,
        cwd=str(cwd),
        num_turns=3,
        cost_usd=0.05,
        is_error=False,
        subtype="success",
        result_text="Report written: 3 findings.",
    )
    values.update(fields)
    return SpoolRecord(**values)


# ----------------------------------------------------------------------------- each check


def test_each_check_passes_and_fails_on_what_it_sees(tmp_path):
    started = datetime.now(UTC) - timedelta(seconds=30)
    record = a_record(tmp_path, started)
    assert output_checks.judge({"result_matches": r"\d+ findings"}, record)["verdict"] == "passed"
    failed = output_checks.judge({"result_matches": r"^All clear"}, record)
    assert failed["verdict"] == "failed" and failed["check"] == "result_matches"
    assert "Report written" in failed["seen"]
    failed = output_checks.judge({"result_not_matches": "findings"}, record)
    assert failed["check"] == "result_not_matches" and "'findings'" in failed["seen"]
    assert output_checks.judge({"min_turns": 3}, record)["verdict"] == "passed"
    assert output_checks.judge({"min_turns": 4}, record)["seen"] == "3 turn(s)"
    assert output_checks.judge({"max_cost_usd": "0.10"}, record)["verdict"] == "passed"
    assert output_checks.judge({"max_cost_usd": "0.05"}, record)["seen"] == "$0.0500"
    # A failed run is not judged: it has already failed.
    assert output_checks.judge({"min_turns": 99}, replace(record, exit_code=1)) is None
    assert output_checks.judge({}, record) is None


def test_files_changed_looks_at_modification_times_since_the_run_began(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    old = out / "yesterday.md"
    old.write_text("old")
    started = datetime.now(UTC)
    record = a_record(tmp_path, started)
    yesterday = started.timestamp() - 86400
    os.utime(old, (yesterday, yesterday))
    failed = output_checks.judge({"files_changed": "out"}, record)
    assert failed["check"] == "files_changed"
    assert "before the run started" in failed["seen"]
    (out / "sub").mkdir()
    (out / "sub" / "today.md").write_text("new")
    assert output_checks.judge({"files_changed": "out"}, record)["verdict"] == "passed"
    missing = output_checks.judge({"files_changed": str(tmp_path / "nope")}, record)
    assert "does not exist" in missing["seen"]


def git(cwd, *args):
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "PATH": "/usr/bin:/bin",
        "HOME": str(cwd),
    }
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


def test_git_commit_must_land_during_the_run(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    record = a_record(repo, datetime.now(UTC) - timedelta(seconds=5))
    assert "git log" in output_checks.judge({"git_commit": True}, record)["seen"]  # no commit
    (repo / "a.txt").write_text("a")
    git(repo, "add", "a.txt")
    git(repo, "commit", "-q", "-m", "old", "--date", "2020-01-01T00:00:00Z")
    # The committer date is what counts: make this one old too.
    subprocess.run(
        ["git", "commit", "-q", "--amend", "--no-edit"],
        cwd=repo,
        check=True,
        capture_output=True,
        env={
            "GIT_COMMITTER_DATE": "2020-01-01T00:00:00Z",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.com",
            "PATH": "/usr/bin:/bin",
            "HOME": str(repo),
        },
    )
    failed = output_checks.judge({"git_commit": True}, record)
    assert failed["check"] == "git_commit" and "older than the run" in failed["seen"]
    (repo / "b.txt").write_text("b")
    git(repo, "add", "b.txt")
    git(repo, "commit", "-q", "-m", "during the run")
    assert output_checks.judge({"git_commit": True}, record)["verdict"] == "passed"


def test_a_job_with_a_bad_pattern_is_refused_by_the_admin_form():
    job = Job(scheduler="cron", label="x", host="h", check_result_matches="([unclosed")
    with pytest.raises(Exception, match="not a regular expression"):
        job.full_clean()


# ----------------------------------------------------------------------------- end to end


@pytest.fixture
def checked_job(console_state):
    return Job.objects.create(
        scheduler="cron",
        label="nightly report",
        host=host_name(),
        tags=["nightly"],
        check_files_changed="reports",
        check_min_tool_calls=None,
    )


def run_wrapped(state, **env) -> int:
    done = subprocess.run(
        wrapper_command("nightly", *STREAM),
        env=dict(state.env, **env),
        cwd=state.workdir,
        capture_output=True,
        timeout=60,
    )
    return done.returncode


def test_a_run_that_wrote_no_file_is_check_failed_alerted_once_then_recovers_once(
    console_state, fake_claude, checked_job, client
):
    monitor = Monitor(paths=console_state.paths, steps=(alert_round,), publish=False)
    monitor.tick()
    for _ in range(2):  # two runs that exit 0 and write nothing
        assert run_wrapped(console_state) == 0
        monitor.tick()
    failed = list(Session.objects.filter(job=checked_job).order_by("started_at"))
    assert [s.status for s in failed] == [Status.CHECK_FAILED] * 2
    verdict = failed[0].end_details["output_check"]
    assert verdict["check"] == "files_changed" and "does not exist" in verdict["seen"]
    assert "output check files_changed failed" in failed[0].error
    # On record: an event (run ended, check failed) and an audit entry each.
    ended = Event.objects.filter(kind=EventKind.RUN_ENDED, status=Status.CHECK_FAILED)
    assert ended.count() == 2
    audits = AuditEntry.objects.filter(actor="output-check", action="check_failed")
    assert audits.count() == 2 and audits.first().job == checked_job
    opened = Alert.objects.filter(phase=Alert.Phase.OPENED)
    assert opened.count() == 1, list(opened.values("title"))
    assert "failed its output check" in opened.get().title

    # Fixed: the run writes its report now.
    assert run_wrapped(console_state, FAKE_CLAUDE_WRITE="reports/today.md") == 0
    monitor.tick()
    assert run_wrapped(console_state, FAKE_CLAUDE_WRITE="reports/today.md") == 0
    monitor.tick()
    latest = Session.objects.filter(job=checked_job).order_by("-started_at")[:2]
    assert [s.status for s in latest] == [Status.SUCCEEDED] * 2
    assert latest[0].end_details["output_check"]["verdict"] == "passed"
    assert Alert.objects.filter(phase=Alert.Phase.OPENED).count() == 1
    assert Alert.objects.filter(phase=Alert.Phase.RESOLVED).count() == 1
    assert not Incident.objects.filter(resolved_at__isnull=True).exists()

    # Counted in /metrics, and badged on the job page.
    user = get_user_model().objects.create_user("prom", password="pw")
    _, token = ApiToken.issue(user, "scraper")
    text = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}").content.decode()
    runs = {f.name: f for f in text_string_to_metric_families(text)}["opsconsole_runs"]
    counted = [s for s in runs.samples if s.labels.get("status") == "check_failed"]
    assert counted and counted[0].value == 2
    admin = get_user_model().objects.create_superuser("admin", password="pw")
    client.force_login(admin)
    page = client.get(f"/jobs/{checked_job.pk}/").content.decode()
    assert "badge--check_failed" in page and "files_changed" in page
    assert 'id="policy-actions"' in page and "output-check" in page


# ----------------------------------------------------------------------------- other hosts


@pytest.mark.django_db(transaction=True)
def test_a_reporting_hosts_verdict_reaches_the_console_with_its_record(host_a, tmp_path):  # noqa: F811
    job = Job.objects.create(
        scheduler="cron",
        label="far report",
        host="host-a",
        tags=["nightly"],
        check_files_changed="reports",
        check_max_cost_usd=Decimal("1.5"),
    )
    # The console's rules for that host carry the job's checks...
    checks = host_policy("host-a")["tags"]["nightly"]["checks"]
    assert checks == {"files_changed": "reports", "max_cost_usd": "1.500000"}
    report_once(host_a)  # the first answer brings them
    # ...the host judges them where the files are, and its record carries the verdict;
    # a restarted monitor too, before the console has answered it (they are on disk).
    restarted = reporting_monitor(host_a.reporting.reporter, host="host-a", interval=1.0)
    paths = restarted.paths
    record = a_record(tmp_path, datetime.now(UTC), host="host-a")
    paths.spool.mkdir(parents=True, exist_ok=True)
    write_json_atomic(paths.spool_path(record.session_id), asdict(record))
    judged = restarted.reporting.judged(read_spool_record(paths.spool_path(record.session_id)))
    assert judged.output_check["check"] == "files_changed"
    report_once(restarted)
    session = Session.objects.get(session_id=record.session_id)
    assert (session.status, session.host, session.job) == (Status.CHECK_FAILED, "host-a", job)
    assert session.end_details["output_check"]["check"] == "files_changed"
    assert AuditEntry.objects.filter(actor="output-check", job=job).count() == 1
    assert not paths.spool_path(record.session_id).exists()  # acknowledged

    # A verdict that does not fit is refused like any bad field.
    with pytest.raises(FormatError):
        SpoolRecord.from_dict({**asdict(record), "output_check": {"verdict": "maybe"}})
    with pytest.raises(FormatError):
        SpoolRecord.from_dict({**asdict(record), "output_check": {"verdict": "x" * 600}})


# ----------------------------------------------------------------------------- the real CLI

REAL_STREAM = ("--output-format", "stream-json", "--verbose", "--allowedTools", "Bash")


@pytest.mark.real_cli
@pytest.mark.django_db(transaction=True)
def test_with_the_real_cli_a_run_that_wrote_no_report_fails_its_check_and_a_fixed_one_recovers(
    console_state, real_claude, checked_job
):
    def run() -> int:
        return subprocess.run(
            wrapper_command("nightly", "-p", "write the nightly report", *REAL_STREAM),
            env=console_state.env,
            cwd=console_state.workdir,
            capture_output=True,
            timeout=180,
        ).returncode

    monitor = Monitor(paths=console_state.paths, steps=(alert_round,), publish=False)
    real_claude.script("nightly report", {"kind": "text", "text": "Report done."})
    assert run() == 0  # exit 0, and no file written
    monitor.tick()
    failed = Session.objects.get(job=checked_job)
    assert failed.status == Status.CHECK_FAILED, failed.error
    assert failed.end_details["output_check"]["check"] == "files_changed"
    assert Alert.objects.filter(phase=Alert.Phase.OPENED).count() == 1

    real_claude.rules.clear()
    real_claude.script(
        "nightly report",
        {
            "kind": "bash",
            "command": "mkdir -p reports && echo ok > reports/today.md",
            "text": "Report written.",
        },
    )
    assert run() == 0
    monitor.tick()
    fixed = Session.objects.filter(job=checked_job).latest("started_at")
    assert fixed.status == Status.SUCCEEDED, (fixed.error, fixed.end_details)
    assert (console_state.workdir / "reports" / "today.md").exists()
    assert output_checks.count_tool_calls(Path(fixed.archive_path)) == 1
    assert Alert.objects.filter(phase=Alert.Phase.OPENED).count() == 1
    assert Alert.objects.filter(phase=Alert.Phase.RESOLVED).count() == 1
