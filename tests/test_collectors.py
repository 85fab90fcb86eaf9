"""Collectors against the real formats: stand-in scheduler tools on PATH that print
captured output, real plist files, real crontab text."""

from __future__ import annotations

import plistlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from jobs_app.collectors import cron, launchd, systemd
from jobs_app.collectors.base import wrapper_tags

FIXTURES = Path(__file__).parent / "scheduler_fixtures"
NOW = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)
WRAPPER = "/opt/oc/bin/opsconsole-run"


def stand_in(bin_dir: Path, name: str, body: str) -> str:
    """An executable that answers like the real tool; returns its path."""
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def launchctl(tmp_path):
    return stand_in(
        tmp_path / "bin",
        "launchctl",
        f"""if [ "$1" = list ] && [ -n "$2" ]; then
  [ "$2" = com.acme.registered-no-plist ] && exec cat {FIXTURES}/launchctl_list_label.txt
  echo "Could not find service \\"$2\\" in domain for port" >&2; exit 113
fi
exec cat {FIXTURES}/launchctl_list.txt
""",
    )


def write_plist(folder: Path, label: str, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{label}.plist"
    with path.open("wb") as handle:
        plistlib.dump({"Label": label, **extra}, handle)
    return path


@pytest.fixture
def agents(tmp_path):
    folder = tmp_path / "LaunchAgents"
    write_plist(
        folder,
        "com.acme.nightly-report",
        ProgramArguments=[WRAPPER, "--tag", "nightly-report", "--", "-p", "report"],
        StartCalendarInterval={"Hour": 2, "Minute": 15},
    )
    write_plist(
        folder,
        "com.acme.inbox-triage",
        ProgramArguments=["/bin/bash", "-lc", f"cd ~/inbox && {WRAPPER} --tag inbox -- -p t"],
        StartInterval=900,
    )
    write_plist(
        folder,
        "com.acme.killed-agent",
        ProgramArguments=[WRAPPER, "--tag", "killed", "--", "-p", "x"],
        StartCalendarInterval=[
            {"Weekday": 1, "Hour": 9, "Minute": 0},
            {"Weekday": 4, "Hour": 9, "Minute": 0},
        ],
    )
    write_plist(
        folder,
        "com.acme.failed-agent",
        ProgramArguments=["/usr/bin/python3", "-m", "wrapper", "--tag", "failed", "--"],
    )
    write_plist(folder, "com.acme.quota-agent", ProgramArguments=[WRAPPER, "--tag", "quota"])
    write_plist(
        folder,
        "com.acme.not-running",  # a plist whose label is not loaded
        ProgramArguments=[WRAPPER, "--tag", "idle"],
        StartInterval=3600,
    )
    write_plist(folder, "com.apple.unrelated", ProgramArguments=["/usr/libexec/thing"])
    (folder / "broken.plist").write_bytes(b"<?xml version='1.0'?><plist><dict><key>")
    return folder


def collect_launchd(launchctl, agents, **kw):
    return launchd.collect(host="mac", now=NOW, plist_dirs=[agents], launchctl=launchctl, **kw)


def by_label(collection):
    return {job.label: job for job in collection.jobs}


def test_launchd_finds_our_jobs_and_leaves_system_ones_out(launchctl, agents):
    jobs = by_label(collect_launchd(launchctl, agents))

    assert set(jobs) == {
        "com.acme.nightly-report",
        "com.acme.inbox-triage",
        "com.acme.killed-agent",
        "com.acme.failed-agent",
        "com.acme.quota-agent",
        "com.acme.not-running",
    }
    nightly = jobs["com.acme.nightly-report"]
    assert nightly.tags == ["nightly-report"]
    assert nightly.schedule_text == "At 02:15"
    assert nightly.next_run_at.hour == 2 and nightly.next_run_at.minute == 15
    assert nightly.state == "idle"
    inbox = jobs["com.acme.inbox-triage"]
    assert (inbox.tags, inbox.pids, inbox.state) == (["inbox"], [5123], "running")
    assert (inbox.interval_seconds, inbox.schedule_text) == (900, "every 15 minutes")


def test_launchd_odd_cases(launchctl, agents):
    collection = collect_launchd(launchctl, agents, known_labels={"com.acme.registered-no-plist"})
    jobs = by_label(collection)

    killed = jobs["com.acme.killed-agent"]
    assert (killed.last_exit_status, killed.state) == (-9, "killed (SIGKILL)")
    assert "; " in killed.schedule_raw  # two calendar entries
    assert jobs["com.acme.failed-agent"].state == "failed (exit 78)"
    assert jobs["com.acme.quota-agent"].last_exit_status == 79
    assert jobs["com.acme.not-running"].state == "not loaded"
    assert jobs["com.acme.not-running"].enabled is False
    registered = jobs["com.acme.registered-no-plist"]
    assert registered.tags == ["legacy-sync"]
    assert "no plist was found" in registered.error
    assert any("broken.plist" in e and "unreadable" in e for e in collection.errors)


def test_launchd_unexpected_output_is_an_error_and_plists_still_shown(tmp_path, agents):
    garbage = stand_in(tmp_path / "bin", "launchctl", "echo 'Usage: launchctl <subcommand>'\n")
    collection = collect_launchd(garbage, agents)

    assert any("printed something unexpected" in e for e in collection.errors)
    assert "com.acme.nightly-report" in by_label(collection)


def test_launchd_missing_tool_is_a_clear_error(tmp_path, agents):
    collection = collect_launchd(str(tmp_path / "no-launchctl"), agents)
    assert any("not found" in e for e in collection.errors)


@pytest.fixture
def systemctl(tmp_path):
    return stand_in(
        tmp_path / "bin",
        "systemctl",
        f"""case "$*" in
  *list-units*) exec cat {FIXTURES}/systemctl_list_units.txt ;;
  *show*TimersCalendar*) exec cat {FIXTURES}/systemctl_show_timers.txt ;;
  *show*) exec cat {FIXTURES}/systemctl_show_services.txt ;;
esac
exit 1
""",
    )


def test_systemd_services_and_timers(systemctl):
    collection = systemd.collect(host="linux", now=NOW, systemctl=systemctl, scopes=("--user",))
    jobs = by_label(collection)

    assert set(jobs) == {
        "nightly-report.service",
        "broken-agent.service",
        "killed-agent.service",
        "direct-agent.service",  # runs claude directly: a job, not wrapped (dbus is none)
    }
    direct = jobs["direct-agent.service"]
    assert (direct.wrapped, direct.tags) == (False, [])
    assert direct.command == "/home/ops/.local/bin/claude -p Triage the inbox"
    nightly = jobs["nightly-report.service"]
    assert nightly.wrapped
    assert nightly.tags == ["nightly-report"]
    assert nightly.next_run_at == datetime(2026, 11, 25, 2, 15, tzinfo=UTC)
    assert nightly.schedule_raw == "OnCalendar=*-*-* 02:15:00"
    assert (nightly.last_exit_status, nightly.state) == (0, "dead")
    broken = jobs["broken-agent.service"]
    assert broken.tags == ["broken"]  # found through `sh -c`
    assert (broken.last_exit_status, broken.state) == (203, "failed (exit-code)")
    killed = jobs["killed-agent.service"]
    assert (killed.last_exit_status, killed.state) == (-9, "killed (SIGKILL)")
    assert killed.enabled is False


def test_systemd_without_a_running_manager_says_so(tmp_path):
    no_bus = stand_in(
        tmp_path / "bin",
        "systemctl",
        'echo "Failed to connect to bus: No medium found" >&2; exit 1\n',
    )
    collection = systemd.collect(host="linux", now=NOW, systemctl=no_bus)
    assert collection.jobs == []
    assert len(collection.errors) == 2
    assert all("Failed to connect to bus" in e for e in collection.errors)


def test_systemd_malformed_show_output(tmp_path):
    odd = stand_in(
        tmp_path / "bin",
        "systemctl",
        'case "$*" in *list-units*) echo "a.service loaded active running A";; '
        '*) echo "this is not key=value output" | tr -d =;; esac\n',
    )
    collection = systemd.collect(host="linux", now=NOW, systemctl=odd, scopes=("--user",))
    assert "unexpected" in collection.errors[0]


@pytest.fixture
def crontab_tool(tmp_path):
    return stand_in(tmp_path / "bin", "crontab", f"exec cat {FIXTURES}/crontab.txt\n")


def test_cron_entries_that_run_the_wrapper(crontab_tool, tmp_path):
    system = tmp_path / "cron.d"
    system.mkdir()
    (system / "agents").write_text(
        f"30 6 * * * ops {WRAPPER} --tag morning-brief -- -p brief\n"
        "0 * * * * root /usr/sbin/logrotate /etc/logrotate.conf\n"
    )
    collection = cron.collect(host="h", now=NOW, crontab=crontab_tool, system_paths=(str(system),))
    jobs = by_label(collection)

    assert set(jobs) == {"nightly", "inbox-triage", "paused-agent", "morning-brief"}
    nightly = jobs["nightly"]
    assert nightly.tags == ["nightly-report"]
    assert nightly.schedule_raw == "15 2 * * *"
    assert nightly.next_run_at > NOW and nightly.previous_run_at < NOW
    assert jobs["inbox-triage"].tags == ["inbox-triage"]
    assert "Monday through Friday" in jobs["inbox-triage"].schedule_text
    paused = jobs["paused-agent"]
    assert (paused.enabled, paused.state) == (False, "commented out")
    assert jobs["morning-brief"].source == str(system / "agents")


def test_no_crontab_is_not_an_error(tmp_path):
    empty = stand_in(tmp_path / "bin", "crontab", 'echo "no crontab for ops" >&2; exit 1\n')
    collection = cron.collect(host="h", now=NOW, crontab=empty, system_paths=())
    assert (collection.jobs, collection.errors) == ([], [])


@pytest.mark.parametrize(
    ("argv", "tags"),
    [
        ([WRAPPER, "--tag", "a", "--", "-p", "--tag", "not-ours"], ["a"]),
        (["/usr/bin/python3", "-m", "wrapper", "--tag=b", "--"], ["b"]),
        (["/bin/sh", "-c", f"cd /x && {WRAPPER} --tag c -- -p 'hi there'"], ["c"]),
        (["/bin/zsh", "-lc", "opsconsole-run --tag d"], ["d"]),
        (["/usr/bin/claude", "-p", "opsconsole-run"], None),
        (["/bin/sh", "-c", "echo 'unbalanced"], None),
        ([], None),
    ],
)
def test_wrapper_tags(argv, tags):
    assert wrapper_tags(argv) == tags
