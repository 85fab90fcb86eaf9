"""What a job will meet when its scheduler starts it, checked before it does.

A job that works from a login shell often fails under its scheduler: cron's PATH
is /usr/bin:/bin, launchd's /usr/bin:/bin:/usr/sbin:/sbin, a systemd user manager
has its own. Each check says what it found and, when it is a problem, what to fix.
"""

from __future__ import annotations

import os
import plistlib
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from jobs_app import cronrun
from jobs_app.collectors import configured_schedulers
from jobs_app.models import Job
from wrapper.formats import (
    StatePaths,
    UnsafeDirectory,
    check_private_dir,
    claude_config_dir,
    read_quota_stamp,
)

LAUNCHD_DEFAULT_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"
TOOL_TIMEOUT_SECONDS = 10
OK, WARNING, PROBLEM = "ok", "warning", "problem"
SYSTEMD_STATES = ("running", "degraded", "starting", "initializing", "maintenance", "stopping")


@dataclass
class Check:
    level: str  # ok | warning | problem
    what: str
    found: str
    fix: str = ""


@dataclass
class Report:
    title: str
    checks: list[Check] = field(default_factory=list)

    def add(self, level: str, what: str, found: str, fix: str = "") -> None:
        self.checks.append(Check(level, what, found, fix))

    @property
    def problems(self) -> int:
        return sum(check.level == PROBLEM for check in self.checks)


@dataclass
class SchedulerEnv:
    env: dict[str, str]
    described: str  # where the environment came from, for the report
    error: str = ""


def _run(argv: list[str]) -> tuple[int | None, str]:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT_SECONDS, errors="replace"
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return None, str(exc)
    return done.returncode, (done.stdout + done.stderr).strip()


# ----------------------------------------------------------------------------- environments


def scheduler_env(job: Job) -> SchedulerEnv:
    """The environment the job's scheduler gives it, as far as it can be read."""
    if job.scheduler == "cron":
        try:
            entry = cronrun.entry_for(job.label, job.source)
        except cronrun.CronEntryError as exc:
            return SchedulerEnv(cronrun.cron_environment({}), "cron's defaults", str(exc))
        own = ", ".join(sorted(entry.env)) or "none"
        return SchedulerEnv(
            cronrun.cron_environment(entry.env), f"cron's defaults + the crontab's lines ({own})"
        )
    if job.scheduler == "launchd":
        env = {"PATH": LAUNCHD_DEFAULT_PATH, "HOME": os.path.expanduser("~")}
        try:
            with open(job.source, "rb") as handle:
                extra = plistlib.load(handle).get("EnvironmentVariables") or {}
        except (OSError, ValueError, plistlib.InvalidFileException) as exc:
            return SchedulerEnv(env, "launchd's defaults", f"{job.source}: {exc}")
        env.update({str(k): str(v) for k, v in extra.items()})
        return SchedulerEnv(env, "launchd's defaults + the plist's EnvironmentVariables")
    scope = "--system" if job.scope == "system" else "--user"
    code, text = _run(["systemctl", scope, "show-environment"])
    if code != 0:
        error = f"systemctl {scope} show-environment: {text}"
        return SchedulerEnv({}, "the systemd manager", error)
    env = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    code, text = _run(["systemctl", scope, "show", "-p", "Environment", "--value", job.label])
    if code == 0 and text:
        for word in shlex.split(text):
            if "=" in word:
                key, value = word.split("=", 1)
                env[key] = value
    return SchedulerEnv(env, f"the systemd {scope[2:]} manager + the unit's Environment=")


# ----------------------------------------------------------------------------- checks


def check_executable(report: Report, name: str, command: str, env: dict[str, str], fix: str):
    path_var = env.get("PATH", "")
    if "/" in command:
        if os.path.isfile(command) and os.access(command, os.X_OK):
            report.add(OK, name, command)
        else:
            report.add(PROBLEM, name, f"{command} is not an executable file", fix)
        return
    found = shutil.which(command, path=path_var)
    if found:
        report.add(OK, name, f"{found} (PATH={path_var})")
    else:
        report.add(PROBLEM, name, f"{command!r} not found with PATH={path_var}", fix)


def wrapper_word(command: str) -> str | None:
    """How the job's command names opsconsole-run (a bare name or a path)."""
    try:
        words = shlex.split(command, comments=True)
    except ValueError:
        words = command.split()
    return next((w for w in words if os.path.basename(w) == "opsconsole-run"), None)


def check_claude(report: Report, env: dict[str, str]) -> None:
    console_claude = shutil.which("claude") or "/path/to/claude"
    configured = env.get("OPSCONSOLE_CLAUDE_BIN")
    if configured:
        check_executable(
            report,
            "claude (OPSCONSOLE_CLAUDE_BIN)",
            configured,
            env,
            f"point OPSCONSOLE_CLAUDE_BIN at the claude executable (here: {console_claude})",
        )
        return
    check_executable(
        report,
        "claude",
        "claude",
        env,
        f"set OPSCONSOLE_CLAUDE_BIN={console_claude} in the job's environment "
        "(a crontab line, the unit's Environment=, the plist's EnvironmentVariables), "
        "or put its directory on the scheduler's PATH",
    )


def check_state(report: Report, paths: StatePaths) -> None:
    for name, folder in (("state dir", paths.home), ("sidecar dir", paths.active)):
        if not os.path.lexists(folder):
            parent = folder.parent
            while not parent.exists() and parent != parent.parent:
                parent = parent.parent
            if os.access(parent, os.W_OK):
                report.add(OK, name, f"{folder} (not there yet; the wrapper creates it 0700)")
            else:
                report.add(
                    PROBLEM,
                    name,
                    f"{folder} is missing and {parent} is not writable",
                    f"mkdir -m 700 -p {folder} as the job's user",
                )
            continue
        try:
            check_private_dir(folder)
        except UnsafeDirectory as exc:
            report.add(PROBLEM, name, str(exc), f"chown $(id -un) {folder} && chmod 700 {folder}")
            continue
        if not os.access(folder, os.W_OK | os.X_OK):
            report.add(PROBLEM, name, f"{folder} is not writable", f"chmod 700 {folder}")
        else:
            report.add(OK, name, f"{folder} (private, writable)")


def check_config_dir(report: Report, config: Path) -> None:
    if not config.exists():
        report.add(
            WARNING,
            "Claude config dir",
            f"{config} does not exist yet (claude creates it; log in once as this user)",
        )
    elif not os.access(config, os.R_OK | os.X_OK):
        report.add(
            PROBLEM, "Claude config dir", f"{config} is not readable", f"chmod u+rx {config}"
        )
    else:
        report.add(OK, "Claude config dir", f"{config} (readable)")
    readable = [Path(p).resolve() for p in settings.OPSCONSOLE_CLAUDE_CONFIG_DIRS]
    if config.resolve() not in readable:
        report.add(
            WARNING,
            "console can read its transcripts",
            f"{config} is not in OPSCONSOLE_CLAUDE_CONFIG_DIRS; the console only reads the "
            "wrapper's archived copy of its transcripts",
            f"add {config} to OPSCONSOLE_CLAUDE_CONFIG_DIRS",
        )


def check_quota(report: Report, paths: StatePaths) -> None:
    stamp = read_quota_stamp(paths)
    if stamp is None:
        report.add(OK, "quota stamp", "none holds")
    else:
        report.add(
            PROBLEM,
            "quota stamp",
            f"holds until {stamp.until} ({stamp.reason}): every run exits 79 without starting "
            "claude until then",
            "wait for the reset, or clear it: opsconsole-run --clear-quota-stamp",
        )


def check_scheduler(report: Report, scheduler: str, scope: str = "") -> None:
    if scheduler == "cron":
        code, text = _run(["crontab", "-l"])
        ok = code in (0, 1)  # 1: "no crontab for USER"
        argv = "crontab -l"
    elif scheduler == "systemd":
        flag = "--system" if scope == "system" else "--user"
        code, text = _run(["systemctl", flag, "is-system-running"])
        ok = text.split()[:1] in [[state] for state in SYSTEMD_STATES]  # degraded exits 1
        argv = f"systemctl {flag} is-system-running"
    else:
        code, text = _run(["launchctl", "print", f"gui/{os.getuid()}"])
        ok = code == 0
        argv = f"launchctl print gui/{os.getuid()}"
    if ok:
        report.add(OK, f"{scheduler} reachable", argv)
    else:
        report.add(
            PROBLEM,
            f"{scheduler} reachable",
            f"{argv}: {text[:200] or f'exit {code}'}",
            "run the console as the jobs' user, on the host that runs them",
        )


def diagnose_job(job: Job) -> Report:
    report = Report(f"job {job.label} ({job.scheduler}, {job.source or 'no source'})")
    check_scheduler(report, job.scheduler, job.scope)
    found = scheduler_env(job)
    if found.error:
        report.add(PROBLEM, "scheduler environment", found.error, "check the job's definition")
    else:
        report.add(OK, "scheduler environment", found.described)
    env = found.env
    wrapper = wrapper_word(job.command)
    if wrapper:
        venv_run = Path(sys.executable).parent / "opsconsole-run"
        check_executable(
            report,
            "opsconsole-run",
            wrapper,
            env,
            f"call it by its full path ({venv_run}) or set PATH={venv_run.parent}:/usr/bin:/bin "
            "in the job's environment",
        )
    check_claude(report, env)
    paths = cronrun.state_paths_for(env)
    check_state(report, paths)
    check_config_dir(report, cronrun.config_dir_for(env))
    check_quota(report, paths)
    return report


def diagnose_console() -> Report:
    """With no job to look at: what this environment gives a job started from it."""
    report = Report("this environment (no job runs opsconsole-run yet)")
    schedulers = configured_schedulers()
    if not schedulers:
        report.add(
            WARNING,
            "scheduler",
            "none found (launchctl, systemd as PID 1, crontab)",
            "install one, or name it in OPSCONSOLE_SCHEDULERS",
        )
    for scheduler in schedulers:
        check_scheduler(report, scheduler)
    check_claude(report, dict(os.environ))
    check_state(report, settings.OPSCONSOLE_STATE)
    check_config_dir(report, claude_config_dir())
    check_quota(report, settings.OPSCONSOLE_STATE)
    return report
