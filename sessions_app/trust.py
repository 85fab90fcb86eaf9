"""Whether a sidecar may be believed, and whether a process may be signalled.

A sidecar is a file anyone who can write the active directory could have made, and it
names PIDs: believed blindly, it could point Stop or the watchdog at any process on the
host. A sidecar is trusted only when the wrapper it names (and its agent, when it names
one) is the very process it says (PID and start time) and runs as the user who owns the
sidecar file, and that user is one the console is configured to watch. Plain functions
(no Django): the monitor, the live view and stopping call them.

Claude Code's own registry (`sessions/<pid>.json`) is a file too: a process it names is
believed to be a Claude Code session only when its executable and command line are
Claude Code's (`is_claude_code`), so a file naming any other process is never signalled.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

import psutil

from wrapper.formats import Sidecar, same_start_time


def process_uids(pid: int) -> tuple[int, int] | None:
    """(real, effective) uid of `pid`, or None when it is gone or cannot be read."""
    try:
        uids = psutil.Process(pid).uids()
    except psutil.Error:
        return None
    return uids.real, uids.effective


def runs_as(pid: int, uid: int) -> bool:
    """True when both the real and the effective uid of `pid` are `uid`."""
    uids = process_uids(pid)
    return uids is not None and uids == (uid, uid)


def sidecar_trust_problem(
    sidecar: Sidecar,
    path: Path,
    *,
    allowed_uids: Collection[int] | None = None,
) -> str | None:
    """Why `sidecar` (read from `path`) must not be trusted, or None when it may be.

    `allowed_uids`: the users whose runs the console watches (default: the user the
    console runs as). A process that is gone is not a reason to distrust: that is a
    vanished run, which the caller decides on; a live process that is not the one named
    (start time differs), or runs as another user, is.
    """
    allowed = {os.geteuid()} if allowed_uids is None else set(allowed_uids)
    try:
        owner = os.lstat(path).st_uid
    except OSError as exc:
        return f"sidecar unreadable: {exc.strerror or exc}"
    if owner not in allowed:
        return f"sidecar owned by uid {owner}, not a user this console watches"
    for role, pid, started in (
        ("wrapper", sidecar.wrapper_pid, sidecar.wrapper_started),
        ("agent", sidecar.claude_pid, sidecar.claude_started),
    ):
        if not pid:
            continue
        try:
            proc = psutil.Process(pid)
            create_time = proc.create_time()
            uids = proc.uids()
        except psutil.NoSuchProcess:
            continue  # gone: vanished, not forged
        except psutil.Error as exc:
            return f"{role} pid {pid} cannot be inspected ({type(exc).__name__})"
        if started is not None and not same_start_time(create_time, started):
            continue  # a reused PID: the run it named is gone, this process is not it
        if (uids.real, uids.effective) != (owner, owner):
            return (
                f"{role} pid {pid} runs as uid {uids.real}/{uids.effective}, "
                f"but the sidecar is owned by uid {owner}"
            )
    return None


def is_trusted_sidecar(
    sidecar: Sidecar, path: Path, *, allowed_uids: Collection[int] | None = None
) -> bool:
    return sidecar_trust_problem(sidecar, path, allowed_uids=allowed_uids) is None


def may_signal(pid: int, *, other_users: bool = False) -> bool:
    """Whether the console may signal `pid`: only processes of its own user, unless it
    is configured to (OPSCONSOLE_SIGNAL_OTHER_USERS=1)."""
    if other_users:
        return True
    return runs_as(pid, os.geteuid())


def signal_other_users_configured(environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return (env.get("OPSCONSOLE_SIGNAL_OTHER_USERS") or "").strip().lower() in {
        "1",
        "true",
        "yes",
        "on",
    }


# The native binary, as npm installs it (bin/claude.exe, the platform package's `claude`),
# as Homebrew or a package manager names it, or as the native installer keeps it
# (~/.local/share/claude/versions/<version>, started through the `claude` symlink).
CLAUDE_BINARY_NAMES = frozenset({"claude", "claude.exe"})
# The npm package's JavaScript entry point, run by node (older builds): .../claude-code/cli.js
CLAUDE_SCRIPT_NAMES = frozenset({"cli.js", "cli.mjs"})
CLAUDE_PACKAGE_DIR = "claude-code"


def is_claude_code(exe: str, argv: list[str]) -> bool:
    """Whether a process with this executable path and command line is Claude Code: the
    native binary (its file, or the native installer's versions/<version>, started as
    `claude`), or node running the claude-code package's cli.js. Judged by where the
    executable is and how it was started, never by the process name (which a process
    sets for itself)."""
    exe = exe.removesuffix(" (deleted)")  # replaced on disk by an upgrade while it runs
    if not exe or not argv:
        return False
    binary = Path(exe)
    started_as = Path(argv[0]).name
    if binary.name in CLAUDE_BINARY_NAMES:
        return started_as in CLAUDE_BINARY_NAMES or started_as == binary.name
    if binary.parent.name == "versions" and binary.parent.parent.name == "claude":
        return started_as in CLAUDE_BINARY_NAMES or started_as == binary.name
    if binary.name.startswith("node"):
        return any(
            Path(arg).name in CLAUDE_SCRIPT_NAMES and Path(arg).parent.name == CLAUDE_PACKAGE_DIR
            for arg in argv[1:]
        )
    return False


def claude_code_problem(pid: int) -> str | None:
    """Why `pid` is not a Claude Code process, or None when it is."""
    try:
        proc = psutil.Process(pid)
        exe = proc.exe()
        argv = proc.cmdline()
    except psutil.NoSuchProcess:
        return f"pid {pid} is gone"
    except psutil.Error as exc:
        return f"pid {pid} cannot be inspected ({type(exc).__name__})"
    if is_claude_code(exe, argv):
        return None
    shown = " ".join(argv)[:120] or "no command line"
    return f"pid {pid} runs {exe or 'an unknown executable'} ({shown}), not Claude Code"
