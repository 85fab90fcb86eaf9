"""What every collector shares: the job shape, running a scheduler's tool, and
recognising a command line that runs our wrapper."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from datetime import datetime

from croniter import croniter

WRAPPER_NAMES = {"opsconsole-run"}
# The Claude Code CLI as a job names it (the npm package's native binary is claude.exe).
CLAUDE_NAMES = {"claude", "claude.exe"}
SHELLS = {"sh", "bash", "zsh", "dash", "ksh"}
TOOL_TIMEOUT_SECONDS = 10


class CollectorError(Exception):
    """A scheduler tool that is missing, failed, or printed something we cannot read."""


@dataclass
class CollectedJob:
    scheduler: str
    label: str
    host: str
    tags: list[str] = field(default_factory=list)
    command: str = ""
    schedule_raw: str = ""
    schedule_text: str = ""
    interval_seconds: int | None = None
    next_run_at: datetime | None = None
    previous_run_at: datetime | None = None  # the latest fire time the schedule says is due
    pids: list[int] = field(default_factory=list)
    last_exit_status: int | None = None
    state: str = ""
    enabled: bool = True
    source: str = ""
    scope: str = ""  # systemd: user | system; launchd: gui | system
    error: str = ""
    wrapped: bool = True  # False: it runs claude directly (runs_claude)


@dataclass
class Collection:
    scheduler: str
    jobs: list[CollectedJob] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def run_tool(argv: list[str], *, ok_codes: tuple[int, ...] = (0,)) -> str:
    """stdout of a scheduler tool; CollectorError says plainly what went wrong."""
    try:
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT_SECONDS,
            errors="replace",
        )
    except FileNotFoundError as exc:
        raise CollectorError(f"{argv[0]}: not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise CollectorError(f"{' '.join(argv)}: no answer in {TOOL_TIMEOUT_SECONDS} s") from exc
    except OSError as exc:
        raise CollectorError(f"{argv[0]}: {exc}") from exc
    if result.returncode not in ok_codes:
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise CollectorError(
            f"{' '.join(argv)} exited {result.returncode}: {detail[0] if detail else ''}"
        )
    return result.stdout


def wrapper_tags(argv: list[str]) -> list[str] | None:
    """The --tag values if this command line runs opsconsole-run (directly, through
    `python -m wrapper`, or through `sh -c "..."`); None if it does not run it.

    Only a word in command position counts: a prompt that mentions opsconsole-run
    does not make a job ours.
    """
    if not argv:
        return None
    if os.path.basename(argv[0]) in SHELLS:
        for index, arg in enumerate(argv[1:-1], start=1):
            if arg.startswith("-") and not arg.startswith("--") and "c" in arg:
                # systemd prints argv unquoted, so the script may span several words.
                return wrapper_tags_in_shell_line(" ".join(argv[index + 1 :]))
    for index in _command_positions(argv):
        word = os.path.basename(argv[index])
        if word in WRAPPER_NAMES:
            return _tags_after(argv[index + 1 :])
        if word.startswith("python") and argv[index + 1 : index + 3] == ["-m", "wrapper"]:
            return _tags_after(argv[index + 3 :])
    return None


_SEPARATORS = {"&&", "||", ";", "|", "exec", "nohup", "nice", "env", "time", "caffeinate"}


def _command_positions(words: list[str]) -> list[int]:
    positions = []
    expecting_command = True
    for index, word in enumerate(words):
        if expecting_command and ("=" in word and not word.startswith("-")):
            continue  # VAR=value before the command
        if expecting_command:
            positions.append(index)
        expecting_command = word in _SEPARATORS
    return positions


def runs_claude(argv: list[str]) -> bool:
    """True if this command line runs `claude` itself (in command position, directly or
    through `sh -c "..."`): a job that is ours to watch, though nobody wrapped it."""
    if not argv:
        return False
    if os.path.basename(argv[0]) in SHELLS:
        for index, arg in enumerate(argv[1:-1], start=1):
            if arg.startswith("-") and not arg.startswith("--") and "c" in arg:
                return runs_claude_in_shell_line(" ".join(argv[index + 1 :]))
    return any(os.path.basename(argv[i]) in CLAUDE_NAMES for i in _command_positions(argv))


def runs_claude_in_shell_line(line: str) -> bool:
    try:
        return runs_claude(shlex.split(line))
    except ValueError:
        return False


def job_kind(argv: list[str]) -> tuple[list[str], bool] | None:
    """(wrapper tags, wrapped) of a job's command line: ([tags], True) when it runs
    opsconsole-run, ([], False) when it runs claude directly, None when neither."""
    tags = wrapper_tags(argv)
    if tags is not None:
        return tags, True
    return ([], False) if runs_claude(argv) else None


_CLAUDE_WORD = re.compile(r"(?<![\w./-])((?:[^\s'\"]*/)?claude(?:\.exe)?)(?=[\s;|&)]|$)")


def wrapping_line(line: str, tag: str) -> str:
    """`line` with its `claude` word replaced by `opsconsole-run --tag TAG --`: what a
    person pastes to wrap a job that runs claude directly. A claude named by its path
    is passed to the wrapper as OPSCONSOLE_CLAUDE_BIN. "" if the line runs no claude."""
    for match in _CLAUDE_WORD.finditer(line):
        before = line[: match.start()]
        try:
            words = shlex.split(before + "claude")
        except ValueError:
            continue
        if len(words) - 1 not in _command_positions(words):
            continue  # a word in a prompt, not the command
        word = match.group(1)
        runner = f"opsconsole-run --tag {shlex.quote(tag)} --"
        if word not in CLAUDE_NAMES:
            runner = f"OPSCONSOLE_CLAUDE_BIN={shlex.quote(word)} {runner}"
        return before + runner + line[match.end() :]
    return ""


def wrapper_tags_in_shell_line(line: str) -> list[str] | None:
    try:
        return wrapper_tags(shlex.split(line))
    except ValueError:
        return None


def _tags_after(args: list[str]) -> list[str]:
    tags = []
    for index, arg in enumerate(args):
        if arg == "--":
            break
        if arg == "--tag" and index + 1 < len(args):
            tags.append(args[index + 1])
        elif arg.startswith("--tag="):
            tags.append(arg.split("=", 1)[1])
    return tags


def cron_times(expression: str, now: datetime) -> tuple[datetime | None, datetime | None]:
    """(previous, next) fire times of a cron expression around `now` (aware, local)."""
    try:
        schedule = croniter(expression, now)
        following = schedule.get_next(datetime)
        schedule = croniter(expression, now)
        previous = schedule.get_prev(datetime)
    except (ValueError, KeyError):
        return None, None
    return previous, following


CRON_MACROS = {
    "@reboot": "at boot",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


def describe_cron(expression: str) -> str:
    """In words; a macro (@hourly) is described as what it stands for, not echoed."""
    from cron_descriptor import ExpressionDescriptor, Options

    macro = CRON_MACROS.get(expression.strip().lower())
    if macro == "at boot":
        return "At boot"
    expression = macro or expression

    options = Options()
    options.use_24hour_time_format = True
    try:
        return str(ExpressionDescriptor(expression, options))
    except Exception:  # the library raises several kinds; a description is a nicety
        return expression


def describe_interval(seconds: int) -> str:
    if seconds % 86400 == 0:
        days = seconds // 86400
        return "every day" if days == 1 else f"every {days} days"
    if seconds % 3600 == 0:
        hours = seconds // 3600
        return "every hour" if hours == 1 else f"every {hours} hours"
    if seconds % 60 == 0:
        minutes = seconds // 60
        return "every minute" if minutes == 1 else f"every {minutes} minutes"
    return f"every {seconds} seconds"
