"""Zero-config join (issue 24, part 1): what a process says about the scheduler job
that started it, read from a /proc tree of real files, and the Job it is tied to."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from crontab import CronTab
from django.contrib.auth import get_user_model
from django.utils.html import escape

from jobs_app.collectors.base import job_kind, wrapping_line
from jobs_app.collectors.cron import jobs_in
from jobs_app.linking import job_for_origin, match_origin, wrapping_suggestion
from jobs_app.models import Job
from sessions_app.models import Session, Status
from sessions_app.origins import Origin, OriginReader, ci_origin, launchd_origin, parse_cgroup
from sessions_app.proctree import ProcessEntry, ProcessTable
from tests.server_fixtures import manage

NOW = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0::/system.slice/nightly-report.service\n", ("nightly-report.service", "system")),
        (
            "0::/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service\n",
            ("foo.service", "user"),
        ),
        ("0::/system.slice/run-u123.service\n", ("run-u123.service", "system")),
        (
            "0::/user.slice/user-1000.slice/user@1000.service/app.slice/run-p42-i43.scope\n",
            ("run-p42-i43.scope", "user"),
        ),
        # cgroup v1: the name=systemd hierarchy says it
        (
            "12:cpu,cpuacct:/\n1:name=systemd:/system.slice/agent.service\n",
            ("agent.service", "system"),
        ),
        # not jobs: a login session, the user manager, a terminal's scope, containers, cron
        ("0::/user.slice/user-1000.slice/session-3.scope\n", None),
        ("0::/user.slice/user-1000.slice/user@1000.service/init.scope\n", None),
        (
            "0::/user.slice/user-1000.slice/user@1000.service/app.slice/"
            "app-org.gnome.Terminal.slice/vte-spawn-1234.scope\n",
            None,
        ),
        ("0::/system.slice/docker-0123abcd.scope\n", None),
        ("0::/system.slice/cron.service\n", None),
        ("0::/\n", None),
        ("", None),
        ("garbage", None),
    ],
)
def test_the_systemd_unit_is_read_from_the_cgroup(text, expected):
    assert parse_cgroup(text) == expected


def test_ci_and_launchd_are_read_from_the_environment():
    github = ci_origin(
        {
            "GITHUB_ACTIONS": "true",
            "GITHUB_REPOSITORY": "acme/site",
            "GITHUB_WORKFLOW": "nightly",
            "GITHUB_JOB": "agent",
            "GITHUB_RUN_ID": "991",
        }
    )
    assert (github.scheduler, github.scope, github.label, github.run_id) == (
        "ci",
        "github",
        "acme/site/nightly/agent",
        "991",
    )
    gitlab = ci_origin(
        {"GITLAB_CI": "true", "CI_PROJECT_PATH": "g/p", "CI_JOB_NAME": "triage", "CI_JOB_ID": "7"}
    )
    assert (gitlab.scope, gitlab.label, gitlab.run_id) == ("gitlab", "g/p/triage", "7")
    jenkins = ci_origin(
        {"JENKINS_HOME": "/var/jenkins", "BUILD_TAG": "jenkins-nightly-4", "JOB_NAME": "nightly"}
    )
    assert (jenkins.scope, jenkins.label) == ("jenkins", "nightly")
    assert ci_origin({"BUILD_TAG": "jenkins-nightly-4", "JOB_NAME": "nightly"}) is None
    assert ci_origin({"GITHUB_ACTIONS": "false", "GITHUB_WORKFLOW": "x"}) is None
    assert ci_origin({"PATH": "/bin"}) is None
    assert launchd_origin({"XPC_SERVICE_NAME": "com.acme.nightly"}) == Origin(
        "launchd", "com.acme.nightly"
    )
    # "0": not a launchd job; application.*: an app a person opened (a terminal)
    assert launchd_origin({"XPC_SERVICE_NAME": "0"}) is None
    assert launchd_origin({"XPC_SERVICE_NAME": "application.com.apple.Terminal.1"}) is None


class FakeProc:
    """A /proc tree of real files, and the process table that goes with it."""

    def __init__(self, root: Path):
        self.root = root
        self.entries: list[ProcessEntry] = []

    def add(self, pid, ppid, name, *, argv=(), environ=None, cgroup="0::/\n", started=100.0):
        folder = self.root / str(pid)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in argv))
        (folder / "cgroup").write_text(cgroup)
        env = environ or {}
        (folder / "environ").write_bytes(b"".join(f"{k}={v}\0".encode() for k, v in env.items()))
        self.entries.append(ProcessEntry(pid=pid, ppid=ppid, started=started, name=name))
        return folder

    def table(self) -> ProcessTable:
        return ProcessTable.from_entries(self.entries)


@pytest.fixture
def proc(tmp_path):
    return FakeProc(tmp_path / "proc")


def test_a_cron_run_is_told_by_its_cron_ancestor_and_the_shell_it_started(proc):
    proc.add(50, 1, "cron", argv=["/usr/sbin/cron", "-f"])
    proc.add(60, 50, "cron", argv=["/usr/sbin/CRON", "-f"])  # Debian: cron forks per job
    proc.add(61, 60, "sh", argv=["/bin/sh", "-c", 'cd /srv && claude -p "nightly" '])
    proc.add(
        62, 61, "claude", argv=["claude", "-p", "nightly"], cgroup="0::/system.slice/cron.service\n"
    )
    reader = OriginReader(proc.root)
    assert reader.origin(proc.table(), 62) == Origin(
        "cron", "", command='cd /srv && claude -p "nightly"'
    )

    # The shell exec'd its one command: the process itself is cron's child.
    proc.add(70, 50, "claude", argv=["/opt/claude", "-p", "hi"])
    assert reader.origin(proc.table(), 70) == Origin("cron", "", argv=("/opt/claude", "-p", "hi"))


def test_a_cron_that_is_pid_1_is_found_as_in_a_busybox_container(proc):
    proc.add(1, 0, "crond", argv=["crond", "-f", "-l", "2"])
    proc.add(20, 1, "sh", argv=["sh", "-c", "claude -p report"])
    proc.add(21, 20, "claude", argv=["claude", "-p", "report"])
    assert OriginReader(proc.root).origin(proc.table(), 21) == Origin(
        "cron", "", command="claude -p report"
    )
    # PID 1 that is not cron (an init) names no job.
    proc.add(1, 0, "tini", argv=["tini", "--", "sh"])
    assert OriginReader(proc.root).origin(proc.table(), 21) is None


def test_ci_wins_over_the_runner_service_and_systemd_is_the_last_word(proc):
    proc.add(
        80,
        1,
        "claude",
        argv=["claude", "-p", "x"],
        environ={
            "GITHUB_ACTIONS": "true",
            "GITHUB_REPOSITORY": "a/b",
            "GITHUB_WORKFLOW": "w",
            "GITHUB_RUN_ID": "5",
        },
        cgroup="0::/system.slice/actions.runner.a-b.service\n",
    )
    proc.add(90, 1, "claude", argv=["claude"], cgroup="0::/system.slice/run-u9.service\n")
    proc.add(
        91, 1, "claude", argv=["claude"], cgroup="0::/user.slice/user-1000.slice/session-2.scope\n"
    )
    reader = OriginReader(proc.root)
    table = proc.table()
    assert reader.origin(table, 80).label == "a/b/w"
    assert reader.origin(table, 90) == Origin("systemd", "run-u9.service", scope="system")
    assert reader.origin(table, 91) is None  # a terminal: nobody's job


def test_a_process_is_read_once_then_again_only_when_its_pid_is_reused(proc):
    folder = proc.add(90, 1, "claude", cgroup="0::/system.slice/a.service\n")
    reader = OriginReader(proc.root)
    assert reader.origin(proc.table(), 90).label == "a.service"
    (folder / "cgroup").write_text("0::/system.slice/b.service\n")
    assert reader.origin(proc.table(), 90).label == "a.service"  # cached: not read again
    proc.entries = []
    proc.add(90, 1, "claude", cgroup="0::/system.slice/b.service\n", started=200.0)  # reused
    table = proc.table()
    reader.forget_exited(table)
    assert list(reader.known) == []
    assert reader.origin(table, 90).label == "b.service"


def test_another_users_environment_is_not_read(proc):
    folder = proc.add(95, 1, "claude", environ={"GITHUB_ACTIONS": "true", "GITHUB_WORKFLOW": "w"})
    (folder / "environ").chmod(0)
    if os.access(folder / "environ", os.R_OK):
        pytest.skip("running as root: every environment is readable")
    assert OriginReader(proc.root).origin(proc.table(), 95) is None


def test_the_wrapping_line_puts_the_wrapper_where_claude_was():
    assert (
        wrapping_line('cd /srv && claude -p "ask claude" >>/var/log/n.log 2>&1', "nightly")
        == 'cd /srv && opsconsole-run --tag nightly -- -p "ask claude" >>/var/log/n.log 2>&1'
    )
    assert (
        wrapping_line("/home/me/.local/bin/claude -p hi", "x")
        == "OPSCONSOLE_CLAUDE_BIN=/home/me/.local/bin/claude opsconsole-run --tag x -- -p hi"
    )
    # "claude" in a prompt is not the command
    assert wrapping_line("echo claude", "x") == ""
    assert job_kind(["sh", "-c", "cd /x && claude -p hi"]) == ([], False)
    assert job_kind(["opsconsole-run", "--tag", "t", "--", "-p", "x"]) == (["t"], True)
    assert job_kind(["echo", "claude"]) is None


def test_the_cron_collector_lists_entries_that_run_claude_directly():
    tab = CronTab(
        tab="# opsconsole: nightly-agent\n"
        '0 3 * * * cd /srv && claude -p "nightly"\n'
        "15 2 * * * opsconsole-run --tag wrapped -- -p x\n"
        "@daily /usr/bin/backup.sh\n"
    )
    jobs = {j.label: j for j in jobs_in(tab, host="h", now=NOW, source="crontab -l")}
    assert set(jobs) == {"nightly-agent", "wrapped"}
    assert (jobs["nightly-agent"].wrapped, jobs["nightly-agent"].tags) == (False, [])
    assert jobs["wrapped"].wrapped


@pytest.mark.django_db
def test_an_origin_is_tied_to_the_collected_job_else_a_found_one_is_made():
    entry = Job.objects.create(
        scheduler="cron",
        label="nightly-agent",
        host="h",
        command='cd /srv && claude -p "nightly"',
        wrapped=False,
    )
    exec_d = Job.objects.create(
        scheduler="cron", label="exec", host="h", command="FOO=1 /opt/claude -p hi"
    )
    assert (
        match_origin("h", Origin("cron", "", command='cd /srv && claude -p "nightly"')) == entry.pk
    )
    assert match_origin("h", Origin("cron", "", argv=("/opt/claude", "-p", "hi"))) == exec_d.pk
    assert (
        match_origin("other-host", Origin("cron", "", command='cd /srv && claude -p "nightly"'))
        is None
    )

    github = Origin("ci", "a/b/w", scope="github", run_id="5")
    job_id = job_for_origin(
        "h", github, script_tag="unwrapped", wrapped=False, command="claude -p 'go on'", now=NOW
    )
    job = Job.objects.get(pk=job_id)
    assert (job.scheduler, job.label, job.wrapped, job.tags, job.first_seen_at) == (
        "ci",
        "a/b/w",
        False,
        [],
        NOW,
    )
    assert wrapping_suggestion(job) == "opsconsole-run --tag a-b-w -- -p 'go on'"
    # The next run (another run id) is the same job.
    again = Origin("ci", "a/b/w", scope="github", run_id="6")
    assert (
        job_for_origin("h", again, script_tag="unwrapped", wrapped=False, command="", now=NOW)
        == job_id
    )

    unit = Origin("systemd", "run-u9.service", scope="user")
    found = Job.objects.get(
        pk=job_for_origin(
            "h", unit, script_tag="unwrapped", wrapped=False, command="claude -p x", now=NOW
        )
    )
    assert (found.scheduler, found.scope, found.wrapped) == ("systemd", "user", False)
    assert wrapping_suggestion(found) == "opsconsole-run --tag run-u9 -- -p x"
    # A long-lived service hosting agents (a CI runner) makes no job; a collected one ties.
    runner = Origin("systemd", "actions.runner.acme.service", scope="system")
    kwargs = {"script_tag": "unwrapped", "wrapped": False, "command": "", "now": NOW}
    assert job_for_origin("h", runner, **kwargs) is None
    collected = Job.objects.create(
        scheduler="systemd", label="actions.runner.acme.service", host="h"
    )
    assert job_for_origin("h", runner, **kwargs) == collected.pk
    assert (
        wrapping_suggestion(entry)
        == 'cd /srv && opsconsole-run --tag nightly-agent -- -p "nightly"'
    )


@pytest.mark.django_db
def test_a_found_job_s_page_offers_the_line_that_wraps_it(client, console_state, settings):
    settings.OPSCONSOLE_SCHEDULERS = ["none"]
    client.force_login(get_user_model().objects.create_user("ops"))
    job = Job.objects.create(
        scheduler="cron",
        label="nightly-agent",
        host=settings.OPSCONSOLE_HOST,
        command='cd /srv && claude -p "<b>nightly</b>" >>/tmp/n.log',
        wrapped=False,
    )
    Session.objects.create(
        session_id=uuid.uuid4(),
        script_tag="unwrapped",
        status=Status.EXITED,
        started_at=NOW,
        ended_at=NOW,
        host=settings.OPSCONSOLE_HOST,
        wrapped=False,
        job=job,
    )
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert 'id="not-wrapped"' in page
    line = escape(
        'cd /srv && opsconsole-run --tag nightly-agent -- -p "<b>nightly</b>" >>/tmp/n.log'
    )
    assert "&lt;b&gt;" in line
    assert f'aria-label="The line that wraps this job">{line}</textarea>' in page
    assert 'data-copy="wrap-line"' in page
    assert "<b>nightly" not in page  # the command is escaped everywhere
    # Its run found from its processes is on the page and in History's filter.
    assert page.count("exited") >= 1
    assert client.get("/api/status").json()["jobs"][0]["wrapped"] is False

    wrapped = Job.objects.create(scheduler="cron", label="w", host="h", tags=["w"], command="x")
    assert 'id="wrap-hint"' not in client.get(f"/jobs/{wrapped.pk}/").content.decode()


@pytest.mark.browser
def test_the_copy_button_copies_the_wrapping_line(browser, console_server):
    """In a real browser: the job page's Copy button puts the line on the clipboard."""
    command = 'cd /srv && /opt/bin/claude -p "nightly" >>/tmp/n.log 2>&1'
    made = manage(
        console_server.env,
        "shell",
        "-c",
        "from jobs_app.models import Job; "
        f"print(Job.objects.create(scheduler='cron', label='nightly-agent', host='h', "
        f"wrapped=False, command={command!r}).pk)",
    )
    job_id = int(made.strip().splitlines()[-1])
    context = browser.new_context(permissions=["clipboard-read", "clipboard-write"])
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    try:
        tab.goto(console_server.url + "/")
        tab.fill("#id_username", console_server.username)
        tab.fill("#id_password", console_server.password)
        tab.click("button[type=submit]")
        tab.wait_for_url(console_server.url + "/")
        tab.goto(f"{console_server.url}/jobs/{job_id}/")
        expected = (
            "cd /srv && OPSCONSOLE_CLAUDE_BIN=/opt/bin/claude opsconsole-run --tag nightly-agent"
            ' -- -p "nightly" >>/tmp/n.log 2>&1'
        )
        assert tab.input_value("#wrap-line") == expected
        tab.click("button[data-copy=wrap-line]")
        tab.wait_for_function(
            "document.querySelector('button[data-copy]').textContent === 'Copied'"
        )
        assert tab.evaluate("navigator.clipboard.readText()") == expected
    finally:
        context.close()
