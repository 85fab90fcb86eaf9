"""Operator controls and the watchdog: real process trees, stand-in scheduler tools
that record the calls they get, a real plist and a crontab kept in a file."""

from __future__ import annotations

import os
import plistlib
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from jobs_app.models import AuditEntry, Job
from monitor_app.job_controls import change_schedule, run_now, set_enabled, stop_job
from monitor_app.live import take_snapshot
from opsconsole.models import ApiToken
from sessions_app.models import Session, Status
from tests.conftest import wrapper_command
from tests.scheduler_tools import calls
from tests.test_collectors import stand_in
from tests.test_e2e import eventually
from wrapper.formats import host_name

pytestmark = pytest.mark.django_db(transaction=True)


def job(**fields) -> Job:
    values = {
        "scheduler": "launchd",
        "label": "com.acme.report",
        "host": host_name(),
        "tags": ["report"],
        "scope": "gui",
    }
    values.update(fields)
    return Job.objects.create(**values)


def test_run_now_for_each_scheduler(console_state, tools, fake_claude, monkeypatch):
    # Stand-ins that do what the real ones do on kickstart / start: run the job.
    starts_the_job = (
        f'echo "$(basename "$0") $*" >> {tools["calls"]}\n'
        'case "$*" in *kickstart*|*" start "*) '
        f'"{sys.executable}" -m wrapper --tag report -- -p x >/dev/null 2>&1 & ;; esac\n'
    )
    stand_in(tools["dir"] / "tools", "launchctl", starts_the_job)
    stand_in(tools["dir"] / "tools", "systemctl", starts_the_job)
    for key in ("OPSCONSOLE_CLAUDE_BIN", "FAKE_CLAUDE_STATE", "PYTHONPATH"):
        monkeypatch.setenv(key, console_state.env[key])

    launchd = run_now(job(), "alice")
    systemd = run_now(job(scheduler="systemd", label="report.service", scope="user"), "alice")

    assert launchd.ok, launchd.message
    assert systemd.ok, systemd.message
    assert "run seen" in launchd.message and launchd.detail["seen"]
    assert calls(tools)[:2] == [
        f"launchctl kickstart gui/{os.getuid()}/com.acme.report",
        "systemctl --user start -- report.service",
    ]
    assert AuditEntry.objects.filter(actor="alice", action="run", ok=True).count() == 2


def test_run_now_the_scheduler_accepts_but_that_never_runs_reports_failure(
    console_state, tools, settings, client
):
    settings.OPSCONSOLE_RUN_NOW_WAIT_SECONDS = 1
    agent = job()

    result = run_now(agent, "alice")  # launchctl answers 0, and nothing runs

    assert not result.ok
    assert "answered, but no run of report appeared within 1 s" in result.message
    assert "opsconsole doctor --job com.acme.report" in result.message
    assert AuditEntry.objects.get(action="run").ok is False
    admin = get_user_model().objects.create_user("admin", is_staff=True)
    token = ApiToken.issue(admin)[1]
    answer = client.post(f"/api/jobs/{agent.pk}/run", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert answer.status_code == 502 and answer.json()["ok"] is False


def cron_job(tools, crontab_text: str, label: str = "nightly", tags=("nightly",)) -> Job:
    tools["crontab"].write_text(crontab_text)
    return job(scheduler="cron", label=label, tags=list(tags), source="crontab -l", scope="")


def test_run_now_on_a_cron_entry_whose_command_cannot_start_reports_failure(
    console_state, tools, client
):
    # The demo's mistake: a bare opsconsole-run, which cron's PATH (/usr/bin:/bin) lacks.
    entry = cron_job(
        tools, "# opsconsole: nightly\n15 2 * * * opsconsole-run --tag nightly -- -p x\n"
    )

    result = run_now(entry, "alice")

    assert not result.ok
    assert result.exit_code == 127
    assert "not found" in result.output and "no run was seen" in result.message
    audit = AuditEntry.objects.get(action="run")
    assert (audit.ok, audit.exit_code) == (False, 127)
    assert "opsconsole-run" in audit.output and "not found" in audit.output
    assert audit.detail["path"] == "/usr/bin:/bin"

    admin = get_user_model().objects.create_user("admin", is_staff=True)
    token = ApiToken.issue(admin)[1]
    answer = client.post(f"/api/jobs/{entry.pk}/run", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert answer.status_code == 502
    assert answer.json()["ok"] is False and "not found" in answer.json()["output"]


def test_run_now_on_a_cron_entry_that_starts_but_never_runs_the_agent_reports_failure(
    console_state, tools
):
    command = "true || opsconsole-run --tag nightly -- -p x; echo pretending"
    entry = cron_job(tools, f"# opsconsole: nightly\n* * * * * {command}\n")

    result = run_now(entry, "alice")

    assert not result.ok and result.exit_code == 0
    assert "pretending" in result.output


def test_run_now_runs_a_cron_entry_with_its_environment_and_sees_the_run(
    console_state, tools, fake_claude
):
    bin_dir = tools["dir"] / "job-bin"
    wrapper = stand_in(bin_dir, "opsconsole-run", f'exec "{sys.executable}" -m wrapper "$@"\n')
    env = console_state.env
    lines = [
        "SHELL=/bin/sh",
        f"PATH={bin_dir}:/usr/bin:/bin",
        f"PYTHONPATH={env['PYTHONPATH']}",
        f"OPSCONSOLE_HOME={env['OPSCONSOLE_HOME']}",
        f"CLAUDE_CONFIG_DIR={env['CLAUDE_CONFIG_DIR']}",
        f"OPSCONSOLE_CLAUDE_BIN={env['OPSCONSOLE_CLAUDE_BIN']}",
        f"FAKE_CLAUDE_STATE={env['FAKE_CLAUDE_STATE']}",
        "FAKE_CLAUDE_BEHAVIOUR=sleep:3",
        "# opsconsole: nightly",
        "15 2 * * * opsconsole-run --tag nightly -- -p x --output-format json",
    ]
    entry = cron_job(tools, "\n".join(lines) + "\n")

    result = run_now(entry, "alice")

    assert result.ok, (result.message, result.output)
    assert result.detail["seen"].startswith(("sidecar", "spool"))
    assert len(result.detail["session_id"]) == 36
    assert Path(wrapper).parent == bin_dir
    audit = AuditEntry.objects.get(action="run")
    assert audit.ok and audit.detail["log"].endswith(".log")
    eventually(lambda: list(console_state.paths.spool.glob("*.json")), bool, timeout=20)


def test_run_now_that_starts_a_run_which_fails_at_once_says_so(console_state, tools, fake_claude):
    # The wrapper runs (the run is on record), but claude is not where the entry says.
    env = console_state.env
    lines = [
        f"PYTHONPATH={env['PYTHONPATH']}",
        f"OPSCONSOLE_HOME={env['OPSCONSOLE_HOME']}",
        "OPSCONSOLE_CLAUDE_BIN=/nonexistent/claude",
        "# opsconsole: nightly",
        # `python -m wrapper` is what opsconsole-run runs; the trailing bare name (not on
        # cron's PATH, so it never runs) is how the collector knows the entry for ours.
        f"15 2 * * * {sys.executable} -m wrapper --tag nightly -- -p x || opsconsole-run -h",
    ]
    entry = cron_job(tools, "\n".join(lines) + "\n")

    result = run_now(entry, "alice")

    assert result.ok, result.message
    assert result.detail["seen"].startswith("spool")
    assert "already ended (failed, exit 127)" in result.message
    assert "OPSCONSOLE_CLAUDE_BIN" in result.message


def test_schedule_of_a_cron_job_is_refused_with_a_4xx(console_state, tools, client):
    entry = cron_job(tools, "# opsconsole: nightly\n15 2 * * * opsconsole-run --tag n -- -p x\n")
    admin = get_user_model().objects.create_user("admin", is_staff=True)
    token = ApiToken.issue(admin)[1]

    answer = client.post(
        f"/api/jobs/{entry.pk}/schedule",
        {"schedule": "0 3 * * *"},
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )

    assert answer.status_code == 400
    assert answer.json()["ok"] is False and "crontab" in answer.json()["error"]
    assert AuditEntry.objects.get(action="schedule").ok is False


def test_a_failing_scheduler_command_is_reported_and_audited(console_state, tools):
    failing = job(scheduler="systemd", label="broken.service", scope="user")

    result = set_enabled(failing, False, "alice")

    assert not result.ok
    assert result.exit_code == 5 and "not found" in result.output
    entry = AuditEntry.objects.get(action="disable")
    assert (entry.ok, entry.exit_code, entry.actor) == (False, 5, "alice")
    assert "not found" in entry.output
    failing.refresh_from_db()
    assert failing.scheduler_enabled is True  # nothing half-done


def test_enable_disable_launchd_and_systemd(console_state, tools):
    agent = job(source="/Users/me/Library/LaunchAgents/com.acme.report.plist")
    assert set_enabled(agent, False, "alice").ok
    assert set_enabled(agent, True, "alice").ok
    timer_job = job(scheduler="systemd", label="report.service", scope="system")
    assert set_enabled(timer_job, False, "alice").ok

    assert calls(tools) == [
        f"launchctl bootout gui/{os.getuid()}/com.acme.report",
        f"launchctl bootstrap gui/{os.getuid()} {agent.source}",
        "systemctl --system disable --now -- report.timer",
    ]


def test_cron_entry_is_commented_out_with_a_backup(console_state, tools):
    tools["crontab"].write_text(
        'MAILTO=""\n# opsconsole: nightly\n15 2 * * * opsconsole-run --tag nightly -- -p x\n'
        "*/5 * * * * /usr/bin/other-thing\n"
    )
    entry = job(scheduler="cron", label="nightly", source="crontab -l")

    result = set_enabled(entry, False, "alice")

    assert result.ok, result.message
    text = tools["crontab"].read_text()
    assert "#15 2 * * * opsconsole-run --tag nightly" in text.replace("# 15", "#15")
    assert "*/5 * * * * /usr/bin/other-thing" in text
    backup = Path(result.detail["backup"])
    assert "15 2 * * * opsconsole-run" in backup.read_text()
    assert backup.stat().st_mode & 0o777 == 0o600
    assert set_enabled(entry, True, "alice").ok
    assert "\n15 2 * * * opsconsole-run --tag nightly" in tools["crontab"].read_text()


def test_launchd_schedule_is_validated_then_written_and_reloaded(console_state, tools):
    plist = tools["dir"] / "com.acme.report.plist"
    with plist.open("wb") as handle:
        plistlib.dump(
            {
                "Label": "com.acme.report",
                "StartInterval": 600,
                "ProgramArguments": ["opsconsole-run", "--tag", "report"],
            },
            handle,
        )
    agent = job(source=str(plist))

    bad = change_schedule(agent, "99 2 * * *", "alice")
    assert not bad.ok and "Minute" in bad.message
    assert plistlib.loads(plist.read_bytes())["StartInterval"] == 600
    assert calls(tools) == []

    good = change_schedule(agent, "15 2 * * 1", "alice")
    assert good.ok, good.message
    data = plistlib.loads(plist.read_bytes())
    assert data["StartCalendarInterval"] == {"Minute": 15, "Hour": 2, "Weekday": 1}
    assert "StartInterval" not in data
    assert calls(tools)[-2:] == [
        f"launchctl bootout gui/{os.getuid()}/com.acme.report",
        f"launchctl bootstrap gui/{os.getuid()} {plist}",
    ]
    assert [e.ok for e in AuditEntry.objects.order_by("id")] == [False, True]


def test_systemd_schedule_goes_into_a_drop_in(console_state, tools):
    timer_job = job(scheduler="systemd", label="report.service", scope="user")

    assert not change_schedule(timer_job, "garbage in", "alice").ok
    result = change_schedule(timer_job, "*-*-* 03:30:00", "alice")

    assert result.ok, result.message
    dropin = Path(result.detail["dropin"])
    assert dropin == (
        tools["dir"] / "home-dir/.config/systemd/user/report.timer.d" / "opsconsole-schedule.conf"
    )
    assert dropin.read_text() == "[Timer]\nOnCalendar=\nOnCalendar=*-*-* 03:30:00\n"
    assert calls(tools)[-2:] == [
        "systemctl --user daemon-reload",
        "systemctl --user restart -- report.timer",
    ]


# ----------------------------------------------------------------------------- stopping


def start_tree(state, tag: str, marker: str, **env) -> subprocess.Popen:
    """The wrapper with a stand-in agent that builds a stubborn process tree."""
    return subprocess.Popen(
        wrapper_command(tag, "-p", "work", "--output-format", "stream-json", "--verbose"),
        env=dict(
            state.env,
            FAKE_CLAUDE_BEHAVIOUR="tree:300",
            OPSCONSOLE_TEST_MARK=marker,
            OPSCONSOLE_KILL_GRACE_SECONDS="30",
            **env,
        ),
        cwd=state.workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def marked(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["environ", "status"]):
        env = proc.info.get("environ") or {}
        if env.get("OPSCONSOLE_TEST_MARK") == marker and proc.info["status"] != "zombie":
            found.append(proc)
    return found


def wait_for_tree(state, marker: str):
    return eventually(
        lambda: take_snapshot(state.paths),
        lambda s: len(s.sessions) == 1 and len(marked(marker)) >= 8,
        timeout=20,
    )


def cleanup(marker: str) -> None:
    for proc in marked(marker):
        proc.kill()


def test_stop_kills_the_whole_tree_even_children_born_after_term(console_state, fake_claude, tools):
    marker = str(uuid.uuid4())
    tree_job = job(scheduler="cron", label="tree", tags=["tree"])
    bystander = subprocess.Popen(["sleep", "300"])
    proc = start_tree(console_state, "tree", marker)
    try:
        snapshot = wait_for_tree(console_state, marker)
        session_id = snapshot.sessions[0].session_id

        began = time.monotonic()
        result = stop_job(tree_job, "alice", grace=1.0)
        elapsed = time.monotonic() - began

        assert result.ok, result.message
        assert result.detail["killed"], "the stubborn ones needed SIGKILL"
        eventually(lambda: marked(marker), lambda alive: alive == [], timeout=10)
        assert bystander.poll() is None, "a process outside the tree was touched"
        assert elapsed < 10
        proc.wait(timeout=10)
        take_snapshot(console_state.paths)
        row = Session.objects.get(session_id=session_id)
        assert (row.status, row.end_reason, row.stopped_by) == (Status.KILLED, "stopped", "alice")
        entry = AuditEntry.objects.get(action="stop")
        assert entry.actor == "alice" and session_id in entry.target
    finally:
        bystander.kill()
        cleanup(marker)


def test_watchdog_dry_run_then_stop_with_its_reason(console_state, fake_claude, capsys):
    marker = str(uuid.uuid4())
    job(scheduler="cron", label="slow", tags=["slow"], max_runtime_minutes=0)
    (console_state.active).mkdir(exist_ok=True, mode=0o700)
    (console_state.active / "99999.json").write_text("{not json")  # a bad sidecar
    proc = start_tree(console_state, "slow", marker)
    try:
        wait_for_tree(console_state, marker)

        call_command("watchdog", "--dry-run")
        dry = capsys.readouterr()
        assert "would stop: slow" in dry.out and "skipped sidecar 99999.json" in dry.err
        assert len(marked(marker)) >= 8, "a dry run stops nothing"

        call_command("watchdog", "--grace", "1")
        assert "stopped: slow" in capsys.readouterr().out
        eventually(lambda: marked(marker), lambda alive: alive == [], timeout=10)
        proc.wait(timeout=10)
        take_snapshot(console_state.paths)
        row = Session.objects.get(script_tag="slow")
        assert (row.status, row.end_reason, row.stopped_by) == (
            Status.KILLED,
            "watchdog",
            "watchdog",
        )
        entry = AuditEntry.objects.get(action="watchdog")
        assert entry.detail["runtime_seconds"] >= 0 and entry.detail["limit_seconds"] == 0
    finally:
        cleanup(marker)


def test_watchdog_stops_an_orphan_past_its_limit(console_state, fake_claude, settings):
    settings.OPSCONSOLE_DEFAULT_MAX_RUNTIME_MINUTES = 0  # no job: the default limit applies
    marker = str(uuid.uuid4())
    proc = start_tree(console_state, "orphan", marker)
    try:
        wait_for_tree(console_state, marker)
        proc.kill()  # the wrapper alone
        proc.wait(timeout=10)
        assert take_snapshot(console_state.paths).sessions[0].state == Status.ORPHANED

        call_command("watchdog", "--grace", "1")

        eventually(lambda: marked(marker), lambda alive: alive == [], timeout=10)
    finally:
        cleanup(marker)


# ----------------------------------------------------------------------------- permissions


def test_only_admins_may_act(console_state, tools, client):
    target = job(source="/Users/me/Library/LaunchAgents/com.acme.report.plist")
    viewer = get_user_model().objects.create_user("viewer")
    admin = get_user_model().objects.create_user("admin", is_staff=True)

    client.force_login(viewer)
    assert client.post(f"/jobs/{target.pk}/run").status_code == 403
    viewer_token = ApiToken.issue(viewer)[1]
    denied = client.post(f"/api/jobs/{target.pk}/run", HTTP_AUTHORIZATION=f"Bearer {viewer_token}")
    assert denied.status_code == 403
    assert calls(tools) == [] and AuditEntry.objects.count() == 0
    assert b"Actions need admin rights" in client.get(f"/jobs/{target.pk}/").content

    client.force_login(admin)
    page = client.post(f"/jobs/{target.pk}/disable", follow=True)
    assert b"bootout" in page.content  # the outcome, shown to the person
    token = ApiToken.issue(admin)[1]
    api = client.post(f"/api/jobs/{target.pk}/enable", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert api.status_code == 200 and api.json()["ok"] is True
    assert [e.actor for e in AuditEntry.objects.all()] == ["admin", "admin"]
    assert (
        client.post(
            f"/api/jobs/{target.pk}/explode", HTTP_AUTHORIZATION=f"Bearer {token}"
        ).status_code
        == 400
    )


def test_people_need_a_csrf_token(console_state, tools):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(get_user_model().objects.create_user("admin", is_staff=True))
    assert strict.post(f"/jobs/{job().pk}/run").status_code == 403
    assert calls(tools) == []


# ----------------------------------------------------------------------------- hostile input


@pytest.fixture
def admin_api(client):
    admin = get_user_model().objects.create_user("admin", is_staff=True)
    token = ApiToken.issue(admin)[1]

    def post(job_id: int, action: str, **data):
        return client.post(
            f"/api/jobs/{job_id}/{action}", data, HTTP_AUTHORIZATION=f"Bearer {token}"
        )

    return post


@pytest.mark.parametrize("schedule", ["--help", "--version", "-h", " --help"])
def test_systemd_schedule_that_looks_like_an_option_is_refused(
    console_state, tools, admin_api, schedule
):
    """Before: `--help` reached `systemd-analyze calendar` as an option, was accepted,
    audited as a success and written as OnCalendar=--help, clearing the timer."""
    timer_job = job(scheduler="systemd", label="report.service", scope="user")

    response = admin_api(timer_job.pk, "schedule", schedule=schedule)

    assert response.status_code == 400
    assert "'-'" in response.json()["error"]
    assert calls(tools) == []  # nothing ran, nothing was written
    assert not (tools["dir"] / "home-dir/.config/systemd/user/report.timer.d").exists()
    (entry,) = AuditEntry.objects.all()
    assert (entry.action, entry.ok) == ("schedule", False)


@pytest.mark.parametrize(
    "schedule",
    ["a\x00b", "x" * 1_000_000, "daily\nOnCalendar=hourly", ""],
    ids=["nul", "1MB", "newline", "empty"],
)
def test_systemd_schedule_with_nul_or_too_long_is_400_and_audited(
    console_state, tools, admin_api, schedule
):
    """Before: a NUL byte or 1 MB answered 500 and left no audit entry."""
    timer_job = job(scheduler="systemd", label="report.service", scope="user")

    response = admin_api(timer_job.pk, "schedule", schedule=schedule)

    assert response.status_code == 400
    assert response.json()["error"]
    assert calls(tools) == []
    (entry,) = AuditEntry.objects.all()
    assert entry.ok is False and len(entry.detail["schedule"]) <= 257


def test_systemd_schedule_reaches_the_real_systemd_analyze_after_a_double_dash(console_state):
    """The real tool: `--` makes an option-like value an expression it rejects."""
    from monitor_app.job_controls import run_command

    checked = run_command(["systemd-analyze", "calendar", "--", "--help"])
    assert not checked.ok and "Failed to parse" in checked.output


def test_every_value_reaches_an_argv_after_a_double_dash(console_state, tools):
    timer_job = job(scheduler="systemd", label="report.service", scope="user")
    assert change_schedule(timer_job, "*-*-* 03:30:00", "alice").ok
    assert calls(tools)[0] == "systemd-analyze calendar -- *-*-* 03:30:00"
    for line in calls(tools):
        if line.startswith("systemctl") and "daemon-reload" not in line:
            assert " -- " in line, line


@pytest.mark.parametrize(
    "schedule", ["²", "9" * 5000, str(2**70), "0", "¹ 2 * * *", "15 2 * * 1\x00"]
)
def test_launchd_schedule_out_of_range_is_400_and_audited(
    console_state, tools, admin_api, schedule
):
    """Before: '²', 5,000 digits or 2**70 answered 500 (int() of a superscript, the digit
    limit, a plist integer overflow) and were not audited."""
    plist = tools["dir"] / "com.acme.report.plist"
    plist.write_bytes(plistlib.dumps({"Label": "com.acme.report", "StartInterval": 600}))
    agent = job(source=str(plist))

    response = admin_api(agent.pk, "schedule", schedule=schedule)

    assert response.status_code == 400, response.content[:300]
    assert response.json()["error"].startswith("not changed")
    assert plistlib.loads(plist.read_bytes())["StartInterval"] == 600
    assert calls(tools) == []
    assert [(e.action, e.ok) for e in AuditEntry.objects.all()] == [("schedule", False)]


def test_an_action_that_fails_unexpectedly_is_still_audited(console_state, tools, admin_api):
    plist = tools["dir"] / "com.acme.report.plist"
    plist.write_bytes(b"this is not a plist")
    agent = job(source=str(plist))

    response = admin_api(agent.pk, "schedule", schedule="900")

    # Tried and failed: 502, with the reason (a 400 is for what could not be tried).
    assert response.status_code == 502 and response.json()["ok"] is False
    (entry,) = AuditEntry.objects.all()
    assert entry.ok is False and "failed" in entry.detail["message"]


def test_an_unknown_action_is_audited(console_state, tools, admin_api):
    assert admin_api(job().pk, "explode").status_code == 400
    assert [(e.action, e.ok) for e in AuditEntry.objects.all()] == [("explode", False)]
