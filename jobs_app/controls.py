"""Operator controls: run now, stop, enable/disable, change the schedule.

Every call is audited (who, what, target, outcome, the scheduler's own output),
whether it worked or not; a scheduler command that fails comes back with its
exit code and stderr. Permission checks belong to the caller (views, API).
"""

from __future__ import annotations

import os
import plistlib
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from crontab import CronTab
from django.conf import settings
from django.utils import timezone

from jobs_app.collectors.cron import find_entry
from jobs_app.models import AuditEntry, Job
from jobs_app.status import live_runs_of
from sessions_app.live import get_snapshot
from sessions_app.stopping import stop_session
from wrapper.formats import atomic_file, ensure_private_dir

COMMAND_TIMEOUT_SECONDS = 30
ACTIONS = ("run", "stop", "enable", "disable", "schedule")
_LAUNCHD_FIELDS = (
    ("Minute", 0, 59),
    ("Hour", 0, 23),
    ("Day", 1, 31),
    ("Month", 1, 12),
    ("Weekday", 0, 7),
)


class ControlError(Exception):
    """An action that cannot be carried out as asked; nothing was changed."""


@dataclass
class ActionResult:
    ok: bool
    message: str
    exit_code: int | None = None
    output: str = ""
    detail: dict = field(default_factory=dict)


def audited(action: str, job: Job | None, actor: str, target: str, result: ActionResult):
    AuditEntry.objects.create(
        actor=actor,
        action=action,
        job=job,
        target=target,
        ok=result.ok,
        exit_code=result.exit_code,
        output=result.output[-20_000:],
        detail={"message": result.message, **result.detail},
    )
    return result


def run_command(argv: list[str]) -> ActionResult:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_SECONDS, errors="replace"
        )
    except FileNotFoundError:
        return ActionResult(False, f"{argv[0]}: not found", 127)
    except subprocess.TimeoutExpired as exc:
        return ActionResult(False, f"{' '.join(argv)}: no answer in {exc.timeout} s")
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        first = output.splitlines()[0] if output else ""
        return ActionResult(
            False, f"{' '.join(argv)} exited {done.returncode}: {first}", done.returncode, output
        )
    return ActionResult(True, " ".join(argv), 0, output)


def run_all(commands: list[list[str]]) -> ActionResult:
    """Run scheduler commands in order; stop at the first failure and say which."""
    outputs, result = [], ActionResult(True, "nothing to do")
    for argv in commands:
        result = run_command(argv)
        outputs.append(f"$ {' '.join(argv)}\n{result.output}".strip())
        if not result.ok:
            break
    result.output = "\n".join(outputs)
    return result


# ----------------------------------------------------------------------------- per scheduler


def launchd_domain(job: Job) -> str:
    return "system" if job.scope == "system" else f"gui/{os.getuid()}"


def systemd_scope(job: Job) -> str:
    return "--system" if job.scope == "system" else "--user"


def systemd_timer(job: Job) -> str:
    return re.sub(r"\.service$", ".timer", job.label)


def run_now(job: Job, actor: str) -> ActionResult:
    if job.scheduler == "launchd":
        result = run_command(["launchctl", "kickstart", f"{launchd_domain(job)}/{job.label}"])
    elif job.scheduler == "systemd":
        result = run_command(["systemctl", systemd_scope(job), "start", job.label])
    else:
        result = start_cron_entry(job)
    return audited("run", job, actor, job.label, result)


def start_cron_entry(job: Job) -> ActionResult:
    """The entry's command, detached, as cron would run it: sh -c, HOME as cwd, cron's PATH."""
    home = os.path.expanduser("~")
    env = {
        "HOME": home,
        "LOGNAME": os.environ.get("USER", ""),
        "USER": os.environ.get("USER", ""),
        "SHELL": "/bin/sh",
        "PATH": "/usr/bin:/bin",
    }
    try:
        tab, _ = _user_crontab()
        env.update({str(k): str(v) for k, v in tab.env.items()})
    except ControlError:
        pass
    try:
        proc = subprocess.Popen(
            [env.get("SHELL", "/bin/sh"), "-c", job.command],
            cwd=home if os.path.isdir(home) else "/",
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as exc:
        return ActionResult(False, f"could not start the entry's command: {exc}")
    return ActionResult(
        True, f"started the entry's command (pid {proc.pid})", detail={"pid": proc.pid}
    )


def stop_job(job: Job, actor: str, grace: float | None = None) -> ActionResult:
    grace = settings.OPSCONSOLE_STOP_GRACE_SECONDS if grace is None else grace
    snapshot = get_snapshot(fresh=True)
    runs = live_runs_of(job, snapshot)
    if not runs:
        return audited("stop", job, actor, job.label, ActionResult(True, "no live session to stop"))
    outcomes = []
    for run in runs:
        live = snapshot.get(run.session_id)
        if live is not None:
            outcomes.append(stop_session(live, actor=actor, reason="stopped", grace=grace))
    errors = [error for outcome in outcomes for error in outcome.errors]
    result = ActionResult(
        not errors,
        "; ".join(outcome.summary for outcome in outcomes),
        output="\n".join(errors),
        detail={
            "sessions": [o.session_id for o in outcomes],
            "killed": [pid for o in outcomes for pid in o.killed],
        },
    )
    return audited("stop", job, actor, ", ".join(o.session_id for o in outcomes), result)


def set_enabled(job: Job, enabled: bool, actor: str) -> ActionResult:
    action = "enable" if enabled else "disable"
    if job.scheduler == "launchd":
        if enabled:
            if not job.source:
                result = ActionResult(False, "no plist is known for this job: cannot bootstrap")
            else:
                result = run_command(["launchctl", "bootstrap", launchd_domain(job), job.source])
        else:
            result = run_command(["launchctl", "bootout", f"{launchd_domain(job)}/{job.label}"])
    elif job.scheduler == "systemd":
        result = run_command(["systemctl", systemd_scope(job), action, "--now", systemd_timer(job)])
    else:
        result = toggle_cron_entry(job, enabled)
    if result.ok:
        job.scheduler_enabled = enabled
        job.save(update_fields=["scheduler_enabled"])
    return audited(action, job, actor, job.label, result)


def _user_crontab() -> tuple[CronTab, str]:
    try:
        text = subprocess.run(
            ["crontab", "-l"], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_SECONDS
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ControlError(f"crontab -l: {exc}") from exc
    return CronTab(tab=text), text


def toggle_cron_entry(job: Job, enabled: bool) -> ActionResult:
    if job.source != "crontab -l":
        return ActionResult(False, f"only the user's crontab is edited; {job.source} is not")
    try:
        tab, text = _user_crontab()
    except ControlError as exc:
        return ActionResult(False, str(exc))
    entry = find_entry(tab, job.label)
    if entry is None:
        return ActionResult(False, f"no crontab entry named {job.label!r}")
    backup = backup_crontab(text)
    entry.enable(enabled)
    try:
        written = subprocess.run(
            ["crontab", "-"],
            input=tab.render(),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_SECONDS,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return ActionResult(False, f"crontab -: {exc}", detail={"backup": str(backup)})
    if written.returncode != 0:
        return ActionResult(
            False,
            f"crontab - exited {written.returncode}",
            written.returncode,
            written.stderr,
            {"backup": str(backup)},
        )
    state = "uncommented" if enabled else "commented out"
    return ActionResult(
        True, f"entry {state}; previous crontab in {backup}", 0, detail={"backup": str(backup)}
    )


def backup_crontab(text: str) -> Path:
    folder = settings.OPSCONSOLE_STATE.home / "crontab-backups"
    ensure_private_dir(folder)
    path = folder / f"crontab-{timezone.now():%Y%m%dT%H%M%S%f}.txt"
    with atomic_file(path) as handle:
        handle.write(text.encode())
    return path


# ----------------------------------------------------------------------------- schedules


def parse_launchd_schedule(text: str) -> dict:
    """'900' -> StartInterval; 'M H D Mon W' (numbers or *) -> StartCalendarInterval."""
    text = text.strip()
    if text.isdigit():
        seconds = int(text)
        if seconds < 1:
            raise ControlError("an interval must be at least 1 second")
        return {"StartInterval": seconds}
    parts = text.split()
    if len(parts) != 5:
        raise ControlError(
            "give seconds (e.g. 900) or five fields 'minute hour day month weekday' "
            "with numbers or * (e.g. '15 2 * * *')"
        )
    calendar = {}
    for value, (name, low, high) in zip(parts, _LAUNCHD_FIELDS, strict=True):
        if value == "*":
            continue
        if not value.isdigit() or not low <= int(value) <= high:
            raise ControlError(f"{name} must be * or a number from {low} to {high}")
        calendar[name] = int(value)
    return {"StartCalendarInterval": calendar}


def change_schedule(job: Job, schedule: str, actor: str) -> ActionResult:
    try:
        if job.scheduler == "launchd":
            result = change_launchd_schedule(job, schedule)
        elif job.scheduler == "systemd":
            result = change_systemd_schedule(job, schedule)
        else:
            result = ActionResult(False, "cron schedules are edited in the crontab itself")
    except ControlError as exc:
        result = ActionResult(False, f"not changed: {exc}")
    result.detail["schedule"] = schedule
    return audited("schedule", job, actor, job.label, result)


def change_launchd_schedule(job: Job, schedule: str) -> ActionResult:
    keys = parse_launchd_schedule(schedule)  # validated before anything is written
    plist_path = Path(job.source)
    if not job.source or not plist_path.is_file():
        raise ControlError("no plist is known for this job")
    with plist_path.open("rb") as handle:
        plist = plistlib.load(handle)
    plist.pop("StartInterval", None)
    plist.pop("StartCalendarInterval", None)
    plist.update(keys)
    mode = plist_path.stat().st_mode & 0o777
    with atomic_file(plist_path, mode) as handle:
        plistlib.dump(plist, handle)
    domain = launchd_domain(job)
    result = run_all(
        [
            ["launchctl", "bootout", f"{domain}/{job.label}"],
            ["launchctl", "bootstrap", domain, str(plist_path)],
        ]
    )
    if result.ok:
        result.message = f"plist updated ({keys}) and reloaded"
    return result


def change_systemd_schedule(job: Job, schedule: str) -> ActionResult:
    schedule = schedule.strip()
    if not schedule or "\n" in schedule:
        raise ControlError("give one OnCalendar expression, e.g. '*-*-* 02:15:00' or 'hourly'")
    check = run_command(["systemd-analyze", "calendar", schedule])
    if not check.ok:
        raise ControlError(f"systemd-analyze rejects {schedule!r}: {check.output[:200]}")
    timer = systemd_timer(job)
    base = (
        Path("/etc/systemd/system")
        if job.scope == "system"
        else Path(os.path.expanduser("~/.config/systemd/user"))
    )
    folder = base / f"{timer}.d"
    folder.mkdir(parents=True, exist_ok=True)
    dropin = folder / "opsconsole-schedule.conf"
    with atomic_file(dropin, 0o644) as handle:
        # The empty OnCalendar= clears the unit's own schedule before setting ours.
        handle.write(f"[Timer]\nOnCalendar=\nOnCalendar={schedule}\n".encode())
    scope = systemd_scope(job)
    result = run_all(
        [["systemctl", scope, "daemon-reload"], ["systemctl", scope, "restart", timer]]
    )
    if result.ok:
        result.message = f"drop-in {dropin} written and {timer} restarted"
    result.detail["dropin"] = str(dropin)
    return result


def perform(job: Job, action: str, actor: str, schedule: str = "") -> ActionResult:
    """One entry point for views, the API and scripts."""
    if job.host != settings.OPSCONSOLE_HOST and action in ACTIONS:
        return perform_remote(job, action, actor)
    if action == "run":
        return run_now(job, actor)
    if action == "stop":
        return stop_job(job, actor)
    if action in ("enable", "disable"):
        return set_enabled(job, action == "enable", actor)
    if action == "schedule":
        return change_schedule(job, schedule, actor)
    raise ControlError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")


def perform_remote(job: Job, action: str, actor: str) -> ActionResult:
    """A job on a reporting host: its live runs are stopped by requests its monitor
    picks up (monitor_app.fleet); the scheduler actions are not offered there yet."""
    from monitor_app.fleet import fleet, request_action
    from sessions_app.models import Session

    if action != "stop":
        result = ActionResult(
            False,
            f"{action} is not available yet for a job on another host ({job.host}): "
            "run it there, or stop its runs from here",
        )
        return audited(action, job, actor, job.label, result)
    runs = live_runs_of(job, fleet.snapshot([job.host]), record_links=False)
    sessions = Session.objects.filter(session_id__in=[run.session_id for run in runs])
    actions = [request_action("stop", session, actor) for session in sessions]
    if not actions:
        return audited("stop", job, actor, job.label, ActionResult(True, "no live session to stop"))
    return ActionResult(
        True,
        f"stop requested from {job.host} for {len(actions)} run(s): pending until its "
        "monitor's next report (Hosts page: the outcome)",
        detail={"remote_actions": [a.pk for a in actions]},
    )
