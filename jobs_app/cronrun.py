"""A cron entry run the way cron runs it, and watched until its run is seen.

cron gives a command `SHELL -c COMMAND` (SHELL=/bin/sh unless the crontab says
otherwise), the user's HOME as working directory, PATH=/usr/bin:/bin, and the
crontab's own `NAME=value` lines; an unescaped `%` ends the command and starts
its standard input. A command that works in a login shell often fails there
(a bare `opsconsole-run`, `claude` in ~/.local/bin), which is exactly what
"run now" must show instead of hiding it.

A run is "seen" when the wrapper's sidecar appears in the active directory, when
its completion record appears in the spool, or when Claude Code's own registry
file `$CLAUDE_CONFIG_DIR/sessions/<pid>.json` appears for one of the started
command's processes.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from crontab import CronTab

from jobs_app.collectors.cron import find_entry
from wrapper.formats import FormatError, StatePaths, read_json_record

CRON_DEFAULT_PATH = "/usr/bin:/bin"
CRON_DEFAULT_SHELL = "/bin/sh"
POLL_SECONDS = 0.1
OUTPUT_LIMIT = 20_000


class CronEntryError(Exception):
    """The entry cannot be found or read; nothing was started."""


@dataclass
class CronEntry:
    command: str
    stdin: str
    env: dict[str, str]  # the crontab's own NAME=value lines in force for this entry
    user: str = ""  # system crontabs name the user in a column of their own


def read_crontab(source: str) -> CronTab:
    """The crontab a job came from: the user's (`crontab -l`) or a system file."""
    if source in ("", "crontab -l"):
        try:
            done = subprocess.run(
                ["crontab", "-l"], capture_output=True, text=True, timeout=30, errors="replace"
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise CronEntryError(f"crontab -l: {exc}") from exc
        if done.returncode not in (0, 1):  # 1: "no crontab for USER"
            raise CronEntryError(f"crontab -l exited {done.returncode}: {done.stderr.strip()}")
        return CronTab(tab=done.stdout)
    try:
        return CronTab(tabfile=source, user=False)
    except (OSError, ValueError) as exc:
        raise CronEntryError(f"{source}: unreadable ({exc})") from exc


def entry_for(label: str, source: str) -> CronEntry:
    tab = read_crontab(source)
    entry = find_entry(tab, label)
    if entry is None:
        raise CronEntryError(f"no crontab entry named {label!r} in {source or 'crontab -l'}")
    # Variables hold for every entry below them, as in cron itself.
    env = {str(k): str(v) for k, v in tab.env.items()}
    for item in tab:
        env.update({str(k): str(v) for k, v in item.env.items()})
        if item is entry:
            break
    user = entry.user if isinstance(getattr(entry, "user", None), str) else ""
    return CronEntry(entry.command or "", entry.stdin or "", env, user)


def cron_environment(entry_env: dict[str, str]) -> dict[str, str]:
    """The environment cron gives a job of the current user (Debian/Vixie cron)."""
    account = pwd.getpwuid(os.getuid())
    env = {
        "HOME": account.pw_dir,
        "LOGNAME": account.pw_name,
        "USER": account.pw_name,
        "SHELL": CRON_DEFAULT_SHELL,
        "PATH": CRON_DEFAULT_PATH,
    }
    env.update(entry_env)
    return env


def state_paths_for(env: dict[str, str]) -> StatePaths:
    """Where a wrapper started with `env` keeps its state (its HOME, not ours)."""
    if not env.get("OPSCONSOLE_HOME") and env.get("HOME"):
        env = {**env, "OPSCONSOLE_HOME": f"{env['HOME']}/.local/state/opsconsole"}
    return StatePaths.from_env(env)


def config_dir_for(env: dict[str, str]) -> Path:
    """The Claude config dir a claude started with `env` uses."""
    if env.get("CLAUDE_CONFIG_DIR"):
        return Path(env["CLAUDE_CONFIG_DIR"]).expanduser()
    return Path(env.get("HOME") or os.path.expanduser("~")) / ".claude"


@dataclass
class Watched:
    """What became of a started command within the wait."""

    pid: int
    seen: str = ""  # how the run was seen: "sidecar <file>", "spool <file>", "registry <file>"
    record: dict = field(default_factory=dict)  # what that file says
    exit_code: int | None = None  # None: still running
    output: str = ""
    pids: set[int] = field(default_factory=set)


def _listing(folder: Path, suffix: str = ".json") -> set[str]:
    try:
        return {name for name in os.listdir(folder) if name.endswith(suffix)}
    except OSError:
        return set()


def _tree(proc: psutil.Process) -> set[int]:
    try:
        return {proc.pid, *(child.pid for child in proc.children(recursive=True))}
    except psutil.Error:
        return set()


class RunWatcher:
    """New sidecars, completion records and registry files since it was made: the signs
    that a run started. One is ours when its PID is among `pids` (the started command's
    tree) or, for our own files, when it carries one of the job's tags."""

    def __init__(self, state_dirs: list[StatePaths], config_dirs: list[Path], tags: list[str]):
        self.tags = list(tags)
        self.folders = {
            "sidecar": [paths.active for paths in state_dirs],
            "spool": [paths.spool for paths in state_dirs],
            "registry": [config / "sessions" for config in config_dirs],
        }
        self.before = {
            (kind, folder): _listing(folder)
            for kind, dirs in self.folders.items()
            for folder in dirs
        }

    def seen(self, pids: set[int] = frozenset()) -> tuple[str, dict]:
        for kind, dirs in self.folders.items():
            for folder in dirs:
                for name in sorted(_listing(folder) - self.before[(kind, folder)]):
                    path = folder / name
                    data = _read(path, trusted=kind != "registry")
                    pid = data.get("pid") if kind == "registry" else data.get("wrapper_pid")
                    if kind == "registry" and pid is None and path.stem.isdigit():
                        pid = int(path.stem)
                    ours = kind != "registry" and data.get("script_tag") in self.tags
                    if pid in pids or ours:
                        return f"{kind} {path}", data
        return "", {}

    def wait(self, seconds: float) -> tuple[str, dict]:
        """For a run started by someone else (launchd, systemd): seen by its tag, or not."""
        deadline = time.monotonic() + seconds
        while True:
            found = self.seen()
            if found[0] or time.monotonic() >= deadline:
                return found
            time.sleep(POLL_SECONDS)


def start_and_watch(
    command: str,
    *,
    stdin: str,
    env: dict[str, str],
    log_path: Path,
    watcher: RunWatcher,
    wait_seconds: float,
) -> Watched:
    """Start `SHELL -c command` detached, its output into `log_path`, and wait until its run
    is seen, it exits, or the wait is over. Raises OSError when the shell cannot start."""
    home = env.get("HOME", "/")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as log:
        proc = subprocess.Popen(  # the entry's own command, as cron runs it
            [env.get("SHELL") or CRON_DEFAULT_SHELL, "-c", command],
            cwd=home if os.path.isdir(home) else "/",
            env=env,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    if stdin:
        try:
            proc.stdin.write(stdin.replace("%", "\n").encode() + b"\n")
            proc.stdin.close()
        except OSError:
            pass
    watched = Watched(pid=proc.pid, pids={proc.pid})
    try:
        handle = psutil.Process(proc.pid)
    except psutil.Error:
        handle = None
    deadline = time.monotonic() + wait_seconds
    while True:
        if handle is not None:
            watched.pids |= _tree(handle)
        watched.seen, watched.record = watcher.seen(watched.pids)
        exit_code = proc.poll()
        if watched.seen or exit_code is not None or time.monotonic() >= deadline:
            if not watched.seen and exit_code is not None:
                # It ended: its records, if any, are written by now.
                watched.seen, watched.record = watcher.seen(watched.pids)
            watched.exit_code = exit_code
            break
        time.sleep(POLL_SECONDS)
    watched.output = read_output(log_path)
    return watched


def _read(path: Path, *, trusted: bool) -> dict:
    """A protocol file (owner-checked, size-bounded) or Claude Code's registry file."""
    try:
        data = read_json_record(path) if trusted else json.loads(path.read_text()[:65536])
    except (OSError, FormatError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_output(path: Path) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - OUTPUT_LIMIT))
            return handle.read().decode(errors="replace").strip()
    except OSError:
        return ""
