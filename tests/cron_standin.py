"""A stand-in for cron on a machine without it: a process named `cron` (its kernel
name, as `ps` and /proc/<pid>/stat show it) that runs one crontab entry the way cron
does, `SHELL -c COMMAND` with cron's environment (jobs_app.cronrun), waits for it and
exits with its code.

    python -m tests.cron_standin LABEL [CRONTAB_FILE]

Without CRONTAB_FILE the entry comes from `crontab -l` (the `tools` fixture's stand-in).
"""

from __future__ import annotations

import ctypes
import subprocess
import sys

from jobs_app.cronrun import CRON_DEFAULT_SHELL, cron_environment, entry_for

PR_SET_NAME = 15


def name_this_process(name: str) -> None:
    ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode(), 0, 0, 0)


def main() -> int:
    label = sys.argv[1]
    entry = entry_for(label, sys.argv[2] if len(sys.argv) > 2 else "")
    env = cron_environment(entry.env)
    name_this_process("cron")
    shell = subprocess.Popen(
        [env.get("SHELL") or CRON_DEFAULT_SHELL, "-c", entry.command],
        env=env,
        cwd=env["HOME"],
        stdin=subprocess.PIPE if entry.stdin else subprocess.DEVNULL,
    )
    if entry.stdin:
        shell.communicate(entry.stdin.replace("%", "\n").encode())
    return shell.wait()


if __name__ == "__main__":
    sys.exit(main())
