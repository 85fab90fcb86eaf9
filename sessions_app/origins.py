"""Which scheduler started a process, read from the process itself: no setup asked.

- cron: the nearest ancestor named `cron` (or `crond`); the process just below it is
  the entry's shell, `sh -c COMMAND`, and COMMAND is the crontab line's command (when
  the shell exec'd its one command, that process's argv is kept instead).
- CI: the environment a runner gives its jobs (GitHub Actions, GitLab CI, Jenkins,
  Buildkite, CircleCI), from /proc/<pid>/environ.
- launchd (macOS): XPC_SERVICE_NAME in the environment is the job's label.
- systemd: the innermost unit of the process's cgroup (/proc/<pid>/cgroup): a system
  unit (`/system.slice/foo.service`), a user unit (`.../user@1000.service/app.slice/
  foo.service`), a transient one (`run-u123.service`, `run-p42-i43.scope`).

A process is read once per (pid, start time): later samples cost a dictionary look-up.
Another user's environment is not readable without privileges: such a process is
tied by its cgroup or its cron ancestor only. `proc_root` stands for /proc (a test
hands it a tree of real files).
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import psutil

from sessions_app.proctree import ProcessTable

CRON_NAMES = {"cron", "crond"}
SHELLS = {"sh", "bash", "zsh", "dash", "ksh"}
ENVIRON_LIMIT = 256 * 1024
# How far up the process tree a cron ancestor is looked for.
CRON_SEARCH_DEPTH = 16

# (provider, variable that says so, variables naming the job, variable naming this run)
CI_PROVIDERS = (
    (
        "github",
        "GITHUB_ACTIONS",
        ("GITHUB_REPOSITORY", "GITHUB_WORKFLOW", "GITHUB_JOB"),
        "GITHUB_RUN_ID",
    ),
    ("gitlab", "GITLAB_CI", ("CI_PROJECT_PATH", "CI_JOB_NAME"), "CI_JOB_ID"),
    (
        "buildkite",
        "BUILDKITE",
        ("BUILDKITE_PIPELINE_SLUG", "BUILDKITE_LABEL"),
        "BUILDKITE_BUILD_NUMBER",
    ),
    ("circleci", "CIRCLECI", ("CIRCLE_PROJECT_REPONAME", "CIRCLE_JOB"), "CIRCLE_BUILD_NUM"),
    ("jenkins", "JENKINS_URL", ("JOB_NAME",), "BUILD_TAG"),
    # BUILD_TAG and JOB_NAME alone are names anything may export (a Makefile): Jenkins
    # sets one of these too.
    ("jenkins", "JENKINS_HOME", ("JOB_NAME",), "BUILD_TAG"),
)

# Units that hold processes without being a job: a login session, the user manager
# itself, containers, and cron's own service (its jobs are told by their cron ancestor).
_NOT_A_JOB = re.compile(
    r"^(session-.*\.scope|init\.scope|user@\d+\.service|user-runtime-dir@.*|"
    r"(docker|libpod|crio|containerd)-.*|cron\.service|crond\.service|"
    r"(ssh|sshd|getty@.*|serial-getty@.*|systemd-.*)\.service)$"
)
UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.\\@-]+\.(service|scope)$")


@dataclass(frozen=True)
class Origin:
    """The job that started a process, as its scheduler names it."""

    scheduler: str  # SCHEDULERS: cron | systemd | ci | launchd
    label: str  # the unit, the CI job, the launchd label; "" for cron (see command)
    scope: str = ""  # systemd: user | system; ci: the provider
    command: str = ""  # cron: the entry's command, as `sh -c` was given it
    argv: tuple[str, ...] = ()  # cron, when the shell exec'd the command: its argv
    run_id: str = ""  # ci: this run's id (GITHUB_RUN_ID, CI_JOB_ID, ...)
    detail: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @cached_property
    def description(self) -> str:
        """In words, for a person (computed once: each sample shows it)."""
        if self.scheduler == "cron":
            return f"cron: {self.command or ' '.join(self.argv)}"
        if self.scheduler == "systemd":
            return f"systemd {self.scope} unit {self.label}"
        if self.scheduler == "ci":
            return f"{self.scope} CI: {self.label}" + (
                f" (run {self.run_id})" if self.run_id else ""
            )
        return f"{self.scheduler}: {self.label}"

    def record(self) -> dict:
        """What a reporting host sends of it (fleet.reporting; checked by fleet.item_checks):
        every field that names the job (the CI variables in `detail` only describe it)."""
        return {name: getattr(self, name) for name in ORIGIN_FIELDS} | {"argv": list(self.argv)}


# The fields of an Origin that name its job, in a host's report.
ORIGIN_FIELDS = ("scheduler", "label", "scope", "command", "argv", "run_id")
SCHEDULERS = ("cron", "systemd", "ci", "launchd")


def parse_cgroup(text: str) -> tuple[str, str] | None:
    """(unit, "user" | "system") of the innermost job unit in a /proc/<pid>/cgroup text
    (cgroup v2 `0::/path`, or v1's `name=systemd` line); None when it names no job."""
    path = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[1] in ("", "name=systemd"):
            path = parts[2]
            if parts[1] == "name=systemd":
                break
    if not path:
        return None
    components = [part for part in path.strip().split("/") if part]
    for index in range(len(components) - 1, -1, -1):
        unit = components[index]
        if unit.endswith(".slice"):
            continue
        if not UNIT_NAME.match(unit) or _NOT_A_JOB.match(unit):
            return None
        if unit.endswith(".scope") and not unit.startswith("run-"):
            return None  # a desktop app's or a terminal's scope, not a job
        user = any(re.fullmatch(r"user@\d+\.service", part) for part in components[:index])
        return unit, "user" if user else "system"
    return None


def parse_environ(raw: bytes) -> dict[str, str]:
    env = {}
    for item in raw.split(b"\0"):
        name, sep, value = item.partition(b"=")
        if sep and name:
            env[name.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return env


def ci_origin(env: dict[str, str]) -> Origin | None:
    for provider, marker, names, run_var in CI_PROVIDERS:
        if not env.get(marker) or env.get(marker, "").lower() == "false":
            continue
        parts = [env[name] for name in names if env.get(name)]
        if not parts:
            continue
        detail = {name: env[name] for name in (*names, run_var) if env.get(name)}
        return Origin(
            "ci", "/".join(parts)[:255], scope=provider, run_id=env.get(run_var, ""), detail=detail
        )
    return None


def launchd_origin(env: dict[str, str]) -> Origin | None:
    label = env.get("XPC_SERVICE_NAME", "")
    # "0": not started by launchd; "application.*": an app a person opened (a terminal).
    if not label or label == "0" or label.startswith("application."):
        return None
    return Origin("launchd", label[:255])


class OriginReader:
    """Origins of processes, read once per process (pid, start time)."""

    def __init__(self, proc_root: str | Path = "/proc") -> None:
        self.proc_root = Path(proc_root)
        self.linux = (self.proc_root / "self").exists() or str(proc_root) != "/proc"
        self.known: dict[tuple[int, float], Origin | None] = {}

    def origin(self, table: ProcessTable, pid: int) -> Origin | None:
        entry = table.entries.get(pid)
        if entry is None:
            return None
        key = (pid, entry.started)
        if key not in self.known:
            self.known[key] = self.read(table, pid)
        return self.known[key]

    def read(self, table: ProcessTable, pid: int) -> Origin | None:
        found = self.cron_origin(table, pid)
        if found is not None:
            return found
        env = self.environ(pid)
        found = ci_origin(env) or launchd_origin(env)
        if found is not None:
            return found
        unit = parse_cgroup(self.read_text(pid, "cgroup"))
        return Origin("systemd", unit[0], scope=unit[1]) if unit else None

    def cron_origin(self, table: ProcessTable, pid: int) -> Origin | None:
        chain = [pid, *table.ancestors(pid)]
        top = table.entries.get(chain[-1])
        if top is not None and top.ppid == 1 and 1 in table.entries:
            # ancestors() stops below PID 1; in a container, cron (busybox crond) is PID 1.
            chain.append(1)
        chain = chain[:CRON_SEARCH_DEPTH]
        for below, above in itertools.pairwise(chain):
            parent = table.entries.get(above)
            if parent is None or parent.name.lower() not in CRON_NAMES:
                continue
            argv = self.argv(below)
            if not argv:
                return None
            if os.path.basename(argv[0]) in SHELLS and len(argv) >= 3 and argv[1] == "-c":
                return Origin("cron", "", command=argv[2].strip())
            return Origin("cron", "", argv=tuple(argv))
        return None

    def read_text(self, pid: int, name: str) -> str:
        try:
            with open(self.proc_root / str(pid) / name, "rb") as handle:
                return handle.read(ENVIRON_LIMIT).decode("utf-8", "replace")
        except OSError:
            return ""

    def argv(self, pid: int) -> list[str]:
        try:
            with open(self.proc_root / str(pid) / "cmdline", "rb") as handle:
                raw = handle.read(ENVIRON_LIMIT)
        except OSError:
            return self._psutil(pid, "cmdline") or []
        return [part.decode("utf-8", "replace") for part in raw.rstrip(b"\0").split(b"\0") if part]

    def environ(self, pid: int) -> dict[str, str]:
        """The process's environment; {} when it is not ours to read (another user's)."""
        try:
            with open(self.proc_root / str(pid) / "environ", "rb") as handle:
                return parse_environ(handle.read(ENVIRON_LIMIT))
        except PermissionError:
            return {}
        except OSError:
            return self._psutil(pid, "environ") or {}

    def _psutil(self, pid: int, what: str):
        """Where there is no /proc (macOS): psutil asks the kernel."""
        if self.linux:
            return None
        try:
            return getattr(psutil.Process(pid), what)()
        except (psutil.Error, OSError):
            return None

    def forget_exited(self, table: ProcessTable) -> None:
        for key in [k for k in self.known if not table.is_same_process(*k)]:
            del self.known[key]
