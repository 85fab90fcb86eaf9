"""Operator controls: run now, stop, enable/disable, change the schedule.

Every call is audited (who, what, target, outcome, the scheduler's own output),
whether it worked or not, and whatever went wrong; a scheduler command that fails
comes back with its exit code and stderr. Input is checked before anything runs:
a value that reaches an argv always comes after `--`, so it is never an option.
Permission checks belong to the caller (views, API).

One piece: each action for launchd, systemd and cron side by side, so a fix to one
scheduler's control is seen against the other two.
"""

from __future__ import annotations

import logging
import os
import plistlib
import pwd
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from crontab import CronTab
from django.conf import settings
from django.utils import timezone

from jobs_app import cronrun
from jobs_app.collectors.cron import find_entry
from jobs_app.models import AuditEntry, Job
from monitor_app.fleet_reader import fleet
from monitor_app.job_status import live_runs_of
from monitor_app.live import get_snapshot
from monitor_app.remote_actions import ON_ITS_WAY, request_action, request_job_action
from monitor_app.stopping import stop_session
from sessions_app.models import Session
from wrapper.formats import StatePaths, atomic_file, ensure_private_dir

log = logging.getLogger(__name__)

COMMAND_TIMEOUT_SECONDS = 30
MAX_SCHEDULE_CHARS = 256
# launchd's StartInterval: whole seconds launchd can hold (a signed 32-bit integer).
MAX_INTERVAL_SECONDS = 2**31 - 1
_INTERVAL_RE = re.compile(r"[0-9]{1,10}")
_FIELD_RE = re.compile(r"[0-9]{1,2}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
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
    # True when the request cannot be carried out as asked (nothing was tried): a 4xx.
    refused: bool = False
    # True when another host's monitor will carry it out: asked, not done yet (a 202).
    pending: bool = False


def _storable(value):
    """Text any database column takes: no NUL (PostgreSQL refuses it in text and jsonb)."""
    if isinstance(value, str):
        return value.replace("\x00", "\\x00")
    if isinstance(value, dict):
        return {str(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(v) for v in value]
    return value


def audited(action: str, job: Job | None, actor: str, target: str, result: ActionResult):
    AuditEntry.objects.create(
        actor=actor[:150],
        action=_storable(action[:32]),
        job=job,
        target=_storable(target[:1000]),
        ok=result.ok,
        exit_code=result.exit_code,
        output=_storable(result.output[-20_000:]),
        detail=_storable({"message": result.message[:2000], **result.detail}),
    )
    return result


def refuse_option_like(*values: str) -> None:
    """A value that would reach an argv where `--` cannot protect it (launchctl)."""
    for value in values:
        if value.startswith("-"):
            raise ControlError(f"{value[:60]!r} starts with '-' and would be read as an option")


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


def start_run(job: Job) -> ActionResult:
    if job.scheduler == "launchd":
        argv = ["launchctl", "kickstart", f"{launchd_domain(job)}/{job.label}"]
        return start_and_see(job, argv)
    if job.scheduler == "systemd":
        return start_and_see(job, ["systemctl", systemd_scope(job), "start", "--", job.label])
    return start_cron_entry(job)


def _watcher(job: Job, extra_state: StatePaths | None = None, extra_config=None):
    state_dirs = [settings.OPSCONSOLE_STATE]
    if extra_state is not None and extra_state != settings.OPSCONSOLE_STATE:
        state_dirs.append(extra_state)
    configs = [extra_config] if extra_config else []
    config_dirs = list(dict.fromkeys([*configs, *settings.OPSCONSOLE_CLAUDE_CONFIG_DIRS]))
    return cronrun.RunWatcher(state_dirs, config_dirs, list(job.tags or []))


def start_and_see(job: Job, argv: list[str]) -> ActionResult:
    """The scheduler starts the job; that it answered is not enough: the run must appear."""
    watcher = _watcher(job)
    result = run_command(argv)
    if not result.ok:
        return result
    wait = run_now_wait_seconds()
    seen, record = watcher.wait(wait)
    if seen:
        result.message = f"{' '.join(argv)}; run seen: {seen}"
        result.detail["seen"] = seen
        if record.get("session_id"):
            result.detail["session_id"] = record["session_id"]
        return result
    result.ok = False
    result.message = (
        f"{' '.join(argv)} answered, but no run of {', '.join(job.tags) or 'this job'} "
        f"appeared within {wait:g} s: see the job's own log, or `opsconsole doctor --job "
        f"{job.label}`"
    )
    return result


def run_now_wait_seconds() -> float:
    return float(getattr(settings, "OPSCONSOLE_RUN_NOW_WAIT_SECONDS", 0) or 0) or float(
        os.environ.get("OPSCONSOLE_RUN_NOW_WAIT_SECONDS", "5")
    )


def start_cron_entry(job: Job) -> ActionResult:
    """The entry's command as cron would run it, reported as started only once its run is
    seen (sidecar, completion record, or Claude Code's registry file); otherwise a failure
    with what the command printed. The output is kept in the audit log either way."""
    try:
        entry = cronrun.entry_for(job.label, job.source)
    except cronrun.CronEntryError as exc:
        return ActionResult(False, f"not started: {exc}", refused=True)
    me = pwd.getpwuid(os.getuid()).pw_name
    if entry.user and entry.user != me:
        return ActionResult(
            False, f"not started: the entry runs as {entry.user}, the console as {me}", refused=True
        )
    env = cronrun.cron_environment(entry.env)
    watcher = _watcher(job, cronrun.state_paths_for(env), cronrun.config_dir_for(env))
    stamp = f"{timezone.now():%Y%m%dT%H%M%S%f}"
    # Named by label, not row id: a reporting host runs this for a job it has no row of.
    safe_label = re.sub(r"[^A-Za-z0-9._-]", "_", job.label)[:80]
    log_path = settings.OPSCONSOLE_STATE.home / "run-now" / f"{safe_label}-{stamp}.log"
    ensure_private_dir(log_path.parent)
    prune_run_logs(log_path.parent)
    wait = run_now_wait_seconds()
    try:
        watched = cronrun.start_and_watch(
            entry.command,
            stdin=entry.stdin,
            env=env,
            log_path=log_path,
            watcher=watcher,
            wait_seconds=wait,
        )
    except OSError as exc:
        return ActionResult(False, f"could not start the entry's command: {exc}")
    detail = {"pid": watched.pid, "log": str(log_path), "path": env.get("PATH", "")}
    if watched.seen:
        detail["seen"] = watched.seen
        record = watched.record
        session_id = record.get("session_id") or record.get("sessionId")
        if session_id:
            detail["session_id"] = session_id
        message = f"started as cron would (pid {watched.pid}); run seen: {watched.seen}"
        if watched.seen.startswith("spool") and record.get("end_reason"):
            # It already ended: say how, so a run that failed at once is not news later.
            ended = f"{record['end_reason']}, exit {record.get('exit_code')}"
            message += f"; it has already ended ({ended})"
            if record.get("error"):
                message += f": {record['error']}"
        return ActionResult(True, message, watched.exit_code, watched.output, detail)
    first = watched.output.splitlines()[-1] if watched.output else "(no output)"
    if watched.exit_code is None:
        message = (
            f"no run seen within {wait:g} s (pid {watched.pid} still running, output in "
            f"{log_path}): {first}"
        )
    else:
        message = f"the entry's command exited {watched.exit_code} and no run was seen: {first}"
    message += f" (`opsconsole doctor --job {job.label}` says what to fix)"
    return ActionResult(False, message, watched.exit_code, watched.output, detail)


RUN_LOGS_KEPT = 200


def prune_run_logs(folder: Path, keep: int = RUN_LOGS_KEPT) -> None:
    """Each run-now output is in the audit log too: keep only the newest files."""
    try:
        logs = sorted(folder.glob("*.log"), key=lambda path: path.stat().st_mtime)
    except OSError:
        return
    for old in logs[: max(0, len(logs) - keep + 1)]:
        old.unlink(missing_ok=True)


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


def toggle(job: Job, enabled: bool) -> ActionResult:
    if job.scheduler == "launchd":
        if not enabled:
            return run_command(["launchctl", "bootout", f"{launchd_domain(job)}/{job.label}"])
        if not job.source:
            return ActionResult(
                False, "no plist is known for this job: cannot bootstrap", refused=True
            )
        if job.source.startswith("-"):
            return ActionResult(
                False, f"plist path {job.source[:60]!r} starts with '-'", refused=True
            )
        return run_command(["launchctl", "bootstrap", launchd_domain(job), job.source])
    if job.scheduler == "systemd":
        action = "enable" if enabled else "disable"
        return run_command(
            ["systemctl", systemd_scope(job), action, "--now", "--", systemd_timer(job)]
        )
    return toggle_cron_entry(job, enabled)


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
        return ActionResult(
            False, f"only the user's crontab is edited; {job.source} is not", refused=True
        )
    try:
        tab, text = _user_crontab()
    except ControlError as exc:
        return ActionResult(False, str(exc))
    entry = find_entry(tab, job.label)
    if entry is None:
        return ActionResult(False, f"no crontab entry named {job.label!r}", refused=True)
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


def check_schedule_text(text: str) -> str:
    """One line of printable text of sane length, stripped; ControlError says why not."""
    if len(text) > MAX_SCHEDULE_CHARS:
        raise ControlError(f"a schedule is at most {MAX_SCHEDULE_CHARS} characters")
    text = text.strip()
    if not text:
        raise ControlError("give a schedule")
    if _CONTROL_RE.search(text):
        raise ControlError("a schedule is one line with no control characters (no NUL)")
    return text


def parse_launchd_schedule(text: str) -> dict:
    """'900' -> StartInterval; 'M H D Mon W' (numbers or *) -> StartCalendarInterval.

    ASCII digits only: '²'.isdigit() is True, and int() of 5,000 digits raises.
    """
    text = check_schedule_text(text)
    if _INTERVAL_RE.fullmatch(text):
        seconds = int(text)
        if not 1 <= seconds <= MAX_INTERVAL_SECONDS:
            raise ControlError(
                f"an interval is from 1 to {MAX_INTERVAL_SECONDS} seconds, not {text}"
            )
        return {"StartInterval": seconds}
    if text.isdigit() or text.isdecimal():
        raise ControlError(f"an interval is from 1 to {MAX_INTERVAL_SECONDS} seconds (digits 0-9)")
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
        if not _FIELD_RE.fullmatch(value) or not low <= int(value) <= high:
            raise ControlError(f"{name} must be * or a number from {low} to {high}")
        calendar[name] = int(value)
    return {"StartCalendarInterval": calendar}


def reschedule(job: Job, schedule: str) -> ActionResult:
    try:
        check_schedule_for(job, schedule)
        if job.scheduler == "launchd":
            return change_launchd_schedule(job, schedule)
        return change_systemd_schedule(job, schedule)
    except ControlError as exc:
        return ActionResult(False, f"not changed: {exc}", refused=True)


def check_schedule_for(job: Job, schedule: str) -> None:
    """What can be checked without the job's host: ControlError says what is wrong."""
    if job.scheduler == "launchd":
        parse_launchd_schedule(schedule)
    elif job.scheduler == "systemd":
        check_systemd_schedule(schedule)
    else:
        raise ControlError("a cron job's schedule is edited in its crontab (crontab -e)")


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


def check_systemd_schedule(schedule: str) -> str:
    try:
        schedule = check_schedule_text(schedule)
    except ControlError as exc:
        raise ControlError(
            f"{exc}: give one OnCalendar expression, e.g. '*-*-* 02:15:00' or 'hourly'"
        ) from exc
    if schedule.startswith("-"):  # '--help' once cleared the timer: OnCalendar=--help
        raise ControlError("an OnCalendar expression does not start with '-'")
    return schedule


def change_systemd_schedule(job: Job, schedule: str) -> ActionResult:
    schedule = check_systemd_schedule(schedule)
    check = run_command(["systemd-analyze", "calendar", "--", schedule])
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
        [["systemctl", scope, "daemon-reload"], ["systemctl", scope, "restart", "--", timer]]
    )
    if result.ok:
        result.message = f"drop-in {dropin} written and {timer} restarted"
    result.detail["dropin"] = str(dropin)
    return result


# ----------------------------------------------------------------------------- entry points


def execute(job: Job, action: str, schedule: str = "") -> ActionResult:
    """A scheduler action (run, enable, disable, schedule) carried out on this host.

    It reads and writes no database: the caller puts the outcome on record (`record`).
    A reporting host's monitor runs this very code for the console's requests
    (fleet.reporting), with the job as its own collector last saw it."""
    try:
        if action == "run":
            return start_run(job)
        if action in ("enable", "disable"):
            return toggle(job, action == "enable")
        if action == "schedule":
            return reschedule(job, schedule)
    except ControlError as exc:
        return ActionResult(False, f"not done: {exc}", refused=True)
    except Exception as exc:  # the outcome is recorded whatever happens
        log.exception("%s of job %s failed", action, job.label)
        return ActionResult(False, f"{action} failed: {type(exc).__name__}: {exc}")
    return ActionResult(False, f"unknown action {action[:32]!r}", refused=True)


def record(job: Job, action: str, actor: str, result: ActionResult, schedule: str = ""):
    """An action's outcome on record: the job's enabled flag when it changed, and the
    audit log. The same for an action done here and one a reporting host answered."""
    if result.ok and action in ("enable", "disable"):
        job.scheduler_enabled = action == "enable"
        job.save(update_fields=["scheduler_enabled"])
    if action == "schedule":
        result.detail["schedule"] = schedule[: MAX_SCHEDULE_CHARS + 1]
    return audited(action, job, actor, job.label, result)


def run_now(job: Job, actor: str) -> ActionResult:
    return record(job, "run", actor, execute(job, "run"))


def set_enabled(job: Job, enabled: bool, actor: str) -> ActionResult:
    action = "enable" if enabled else "disable"
    return record(job, action, actor, execute(job, action))


def change_schedule(job: Job, schedule: str, actor: str) -> ActionResult:
    return record(job, "schedule", actor, execute(job, "schedule", schedule), schedule)


def perform(job: Job, action: str, actor: str, schedule: str = "") -> ActionResult:
    """One entry point for views, the API and scripts. Every call is audited, whatever
    happens. An unknown action raises ControlError; input that cannot be acted on comes
    back `refused` (a 400), with its reason. A job on another host is acted on through
    its monitor (perform_remote): the result is then `pending`."""
    if action not in ACTIONS:
        message = f"unknown action {action[:32]!r}; one of {', '.join(ACTIONS)}"
        audited(action, job, actor, job.label, ActionResult(False, message, refused=True))
        raise ControlError(message)
    if job.host != settings.OPSCONSOLE_HOST:
        return perform_remote(job, action, actor, schedule)
    if action != "stop":
        return record(job, action, actor, execute(job, action, schedule), schedule)
    try:
        return stop_job(job, actor)
    except Exception as exc:
        # stop_job audits itself as its last step: reaching here means it did not.
        log.exception("stop of job %s failed", job.pk)
        return audited("stop", job, actor, job.label, ActionResult(False, f"stop failed: {exc!r}"))


def perform_remote(job: Job, action: str, actor: str, schedule: str = "") -> ActionResult:
    """A job on a reporting host. Its live runs are stopped, and its scheduler acted on,
    by requests its monitor picks up with its next report and answers with the one after
    (fleet.console); what can be checked here is checked before anything is asked."""
    if action == "schedule":
        try:
            check_schedule_for(job, schedule)
        except ControlError as exc:
            refused = ActionResult(False, f"not changed: {exc}", refused=True)
            return record(job, action, actor, refused, schedule)
    if action != "stop":
        request = request_job_action(action, job, actor, schedule)
        return ActionResult(
            True,
            f"{action} requested from {job.host} (request {request.pk}): {ON_ITS_WAY}; "
            "this page and the Hosts page show the outcome",
            detail={"remote_action": request.pk, "state": request.state},
            pending=True,
        )
    runs = live_runs_of(job, fleet.snapshot([job.host]), record_links=False)
    sessions = Session.objects.filter(session_id__in=[run.session_id for run in runs])
    requests = [request_action("stop", session, actor) for session in sessions]
    if not requests:
        return audited("stop", job, actor, job.label, ActionResult(True, "no live session to stop"))
    return ActionResult(
        True,
        f"stop requested from {job.host} for {len(requests)} run(s): {ON_ITS_WAY} "
        "(Hosts page: the outcome)",
        detail={"remote_actions": [r.pk for r in requests]},
        pending=True,
    )
