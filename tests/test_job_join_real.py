"""Zero-config join with the real Claude Code CLI (issue 24, "Must show"): an unwrapped
`claude -p` started from a crontab line as cron runs it (`sh -c` under a process named
`cron`), one under a systemd unit (this machine may have no systemd: the unit is read
from a fixture cgroup file in a /proc tree of real files), and one in a GitHub Actions
environment, are each tied to their job: live on the job, on record with the job when
they end, and seen by late detection; the cron one on a host in report mode too."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.conf import settings

from jobs_app.collectors.base import CollectedJob, Collection
from jobs_app.linking import wrapping_suggestion
from jobs_app.models import Job
from monitor_app.fleet_reader import fleet
from monitor_app.job_status import collect_and_record, job_statuses, record_collections
from monitor_app.models import Event, EventKind
from monitor_app.monitor import Monitor
from monitor_app.snapshot import Snapshot
from sessions_app.models import LIVE_STATUSES, Session, Status
from tests.conftest import REPO_ROOT
from tests.live_helpers import wait_until
from tests.test_fleet import host_a, report_once  # noqa: F401 - the fixture

pytestmark = [pytest.mark.real_cli, pytest.mark.django_db(transaction=True)]

STREAM = ("--output-format", "stream-json", "--verbose", "--allowedTools", "Bash")
TOOL = {"kind": "bash", "command": "sleep 2; echo done", "text": "Done."}


# What the crontab gives the entry's claude of the test's environment.
CRON_ENV = (
    "HOME",
    "CLAUDE_CONFIG_DIR",
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_API_KEY",
    "DISABLE_TELEMETRY",
    "DISABLE_AUTOUPDATER",
    "DISABLE_ERROR_REPORTING",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
)


def live_on_job(monitor: Monitor, job_id: int):
    """The first live, unwrapped session the monitor ties to `job_id`."""
    snapshot = monitor.tick()
    return next((s for s in snapshot.sessions if s.job_id == job_id and not s.wrapped), None)


def ended_row(monitor: Monitor, session_id: str):
    monitor.tick()
    return Session.objects.filter(session_id=session_id).exclude(status__in=LIVE_STATUSES).first()


def late_badges(job: Job, now: datetime):
    (status,) = [s for s in job_statuses(Snapshot(taken_at=now), now) if s.job.pk == job.pk]
    return status, [b.kind for b in status.badges if b.kind == "late"]


def test_an_unwrapped_claude_run_by_cron_is_tied_to_its_crontab_entry(
    state, console_state, real_claude, tools
):
    settings.OPSCONSOLE_SCHEDULERS = ["cron"]
    real_claude.script("nightly", TOOL)
    claude = state.env["OPSCONSOLE_CLAUDE_BIN"]
    cron_env = {name: state.env[name] for name in CRON_ENV}
    command = (
        f'cd {state.workdir} && {claude} -p "nightly report" {" ".join(STREAM)} >/dev/null 2>&1'
    )
    tools["crontab"].write_text(
        "".join(f"{k}={v}\n" for k, v in cron_env.items())
        + f"# opsconsole: nightly-agent\n0 3 * * * {command}\n"
    )
    collect_and_record()
    job = Job.objects.get(scheduler="cron", label="nightly-agent")
    assert (job.wrapped, job.tags, job.command) == (False, [], command)
    assert wrapping_suggestion(job) == (
        f"cd {state.workdir} && OPSCONSOLE_CLAUDE_BIN={claude} opsconsole-run --tag nightly-agent"
        f' -- -p "nightly report" {" ".join(STREAM)} >/dev/null 2>&1'
    )
    # Known for a while, and its 03:00 run has not happened: late (on a clock an hour on).
    Job.objects.filter(pk=job.pk).update(first_seen_at=job.previous_run_at - timedelta(days=1))
    job.refresh_from_db()
    later = datetime.now(UTC) + timedelta(hours=1)
    assert late_badges(job, later)[1] == ["late"]

    monitor = Monitor(paths=console_state.paths, cadences=False)
    cron = subprocess.Popen(
        [sys.executable, "-m", "tests.cron_standin", "nightly-agent"],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        live = wait_until(lambda: live_on_job(monitor, job.pk), timeout=60)
        assert live.origin.startswith("cron: cd ")
        # The running sh -c and claude are under the stand-in named cron.
        assert Path(f"/proc/{cron.pid}/stat").read_text().split()[1] == "(cron)"
        (status,) = [s for s in job_statuses(monitor.tick()) if s.job.pk == job.pk]
        assert [r.session_id for r in status.live] == [live.session_id]
        assert cron.wait(timeout=120) == 0
        row = wait_until(lambda: ended_row(monitor, live.session_id))
    finally:
        if cron.poll() is None:
            cron.kill()
    assert (row.status, row.wrapped, row.job_id) == (Status.EXITED, False, job.pk)
    # Its events are the job's: the alert rules (late resolved, channels, mutes) follow.
    events = Event.objects.filter(session_id=live.session_id)
    assert {(e.kind, e.job_id) for e in events} == {
        (EventKind.RUN_STARTED, job.pk),
        (EventKind.RUN_ENDED, job.pk),
    }
    status, late = late_badges(job, later)
    assert late == [] and status.last_session == row


def test_an_unwrapped_claude_under_a_systemd_unit_is_tied_to_it(
    state, console_state, real_claude, tmp_path
):
    real_claude.script("unit run", TOOL)
    claude = state.env["OPSCONSOLE_CLAUDE_BIN"]
    host = settings.OPSCONSOLE_HOST
    now = datetime.now(UTC)
    # The user unit as the systemd collector records one whose ExecStart runs claude.
    record_collections(
        [
            Collection(
                "systemd",
                jobs=[
                    CollectedJob(
                        scheduler="systemd",
                        label="nightly-agent.service",
                        host=host,
                        command=f"{claude} -p unit run",
                        schedule_raw="OnCalendar=*-*-* 03:00:00",
                        previous_run_at=now - timedelta(hours=2),
                        scope="user",
                        wrapped=False,
                    )
                ],
            )
        ],
        now - timedelta(days=1),
    )
    job = Job.objects.get(scheduler="systemd", label="nightly-agent.service")
    later = now + timedelta(hours=1)
    assert late_badges(job, later)[1] == ["late"]

    proc_root = tmp_path / "proc"
    units = {
        "nightly-agent.service": "0::/user.slice/user-1000.slice/user@1000.service/app.slice/"
        "nightly-agent.service\n",
        "run-u123.service": "0::/system.slice/run-u123.service\n",  # transient, no job yet
    }
    agents = {}
    monitor = Monitor(paths=console_state.paths, cadences=False, proc_root=proc_root)
    try:
        for unit, cgroup in units.items():
            argv = [claude, "-p", f"unit run in {unit}", *STREAM]
            agent = subprocess.Popen(
                argv,
                env=state.env,
                cwd=state.workdir,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            # Before any sample reads it: the fixture cgroup of the real process.
            (proc_root / str(agent.pid)).mkdir(parents=True)
            (proc_root / str(agent.pid) / "cgroup").write_text(cgroup)
            (proc_root / str(agent.pid) / "cmdline").write_bytes(b"\0".join(map(str.encode, argv)))
            agents[unit] = agent

        def both_live():
            snapshot = monitor.tick()
            by_pid = {s.sidecar.claude_pid: s for s in snapshot.sessions}
            found = {u: by_pid.get(a.pid) for u, a in agents.items()}
            return found if all(s and s.job_id for s in found.values()) else None

        live = wait_until(both_live, timeout=60)
        transient = Job.objects.get(pk=live["run-u123.service"].job_id)
        assert (transient.scheduler, transient.label, transient.scope, transient.wrapped) == (
            "systemd",
            "run-u123.service",
            "system",
            False,
        )
        assert wrapping_suggestion(transient).startswith(f"OPSCONSOLE_CLAUDE_BIN={claude} ")
        assert live["nightly-agent.service"].job_id == job.pk
        for agent in agents.values():
            assert agent.wait(timeout=120) == 0
        rows = {
            unit: wait_until(lambda s=s: ended_row(monitor, s.session_id))
            for unit, s in live.items()
        }
    finally:
        for agent in agents.values():
            if agent.poll() is None:
                agent.kill()
    assert rows["nightly-agent.service"].job_id == job.pk
    assert rows["run-u123.service"].job_id == transient.pk
    assert {r.status for r in rows.values()} == {Status.EXITED}
    status, late = late_badges(job, later)
    assert late == [] and status.last_session == rows["nightly-agent.service"]


def test_an_unwrapped_claude_in_a_ci_job_is_tied_to_it(state, console_state, real_claude):
    real_claude.script("ci run", TOOL)
    env = {
        **state.env,
        "GITHUB_ACTIONS": "true",
        "GITHUB_REPOSITORY": "acme/site",
        "GITHUB_WORKFLOW": "nightly",
        "GITHUB_JOB": "agent",
        "GITHUB_RUN_ID": "4242",
    }
    monitor = Monitor(paths=console_state.paths, cadences=False)
    agent = subprocess.Popen(
        [state.env["OPSCONSOLE_CLAUDE_BIN"], "-p", "ci run", *STREAM],
        env=env,
        cwd=state.workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def tied():
            live = monitor.tick()
            return next(
                (s for s in live.sessions if s.sidecar.claude_pid == agent.pid and s.job_id), None
            )

        live = wait_until(tied, timeout=60)
        assert live.origin == "github CI: acme/site/nightly/agent (run 4242)"
        job = Job.objects.get(pk=live.job_id)
        assert (job.scheduler, job.label, job.wrapped, job.host) == (
            "ci",
            "acme/site/nightly/agent",
            False,
            settings.OPSCONSOLE_HOST,
        )
        assert agent.wait(timeout=120) == 0
        row = wait_until(lambda: ended_row(monitor, live.session_id))
    finally:
        if agent.poll() is None:
            agent.kill()
    assert (row.job_id, row.wrapped, row.status) == (job.pk, False, Status.EXITED)


def test_an_unwrapped_claude_run_by_cron_on_a_reporting_host_is_tied_to_its_entry(
    state,
    console_state,
    real_claude,
    tools,
    host_a,  # noqa: F811 - the fixture
):
    """The same on a host in report mode: host-a's monitor reads the run's origin and
    sends it with its report, the console ties the run to host-a's crontab entry."""
    settings.OPSCONSOLE_SCHEDULERS = ["cron"]
    real_claude.script("nightly", TOOL)
    claude = state.env["OPSCONSOLE_CLAUDE_BIN"]
    cron_env = {name: state.env[name] for name in CRON_ENV}
    command = (
        f'cd {state.workdir} && {claude} -p "nightly report" {" ".join(STREAM)} >/dev/null 2>&1'
    )
    tools["crontab"].write_text(
        "".join(f"{k}={v}\n" for k, v in cron_env.items())
        + f"# opsconsole: nightly-agent\n0 3 * * * {command}\n"
    )
    report_once(host_a)  # host-a's collection: the entry, on record under host-a
    job = Job.objects.get(host="host-a", scheduler="cron", label="nightly-agent")
    assert (job.wrapped, job.command) == (False, command)
    Job.objects.filter(pk=job.pk).update(first_seen_at=job.previous_run_at - timedelta(days=1))
    job.refresh_from_db()
    later = datetime.now(UTC) + timedelta(hours=1)
    assert late_badges(job, later)[1] == ["late"]

    def tied():
        report_once(host_a)
        return Session.objects.filter(host="host-a", wrapped=False, job=job).first()

    cron = subprocess.Popen(
        [sys.executable, "-m", "tests.cron_standin", "nightly-agent"],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        row = wait_until(tied, timeout=60)
        live = fleet.snapshot(["host-a"]).get(str(row.session_id))
        assert live.job_id == job.pk and live.origin.startswith("cron: cd ")
        assert cron.wait(timeout=120) == 0

        def ended():
            report_once(host_a)
            return Session.objects.exclude(status__in=LIVE_STATUSES).filter(pk=row.pk).first()

        row = wait_until(ended)
    finally:
        if cron.poll() is None:
            cron.kill()
    assert (row.status, row.wrapped, row.job_id) == (Status.EXITED, False, job.pk)
    events = Event.objects.filter(session_id=row.session_id)
    assert {(e.kind, e.job_id) for e in events} == {
        (EventKind.RUN_STARTED, job.pk),
        (EventKind.RUN_ENDED, job.pk),
    }
    status, late = late_badges(job, later)
    assert late == [] and status.last_session == row
