"""systemd (Linux): services that run the wrapper, and the timers that start them."""

from __future__ import annotations

import re
import signal
from datetime import UTC, datetime
from pathlib import Path

from jobs_app.collectors.base import (
    CollectedJob,
    Collection,
    CollectorError,
    job_kind,
    run_tool,
)

SERVICE_PROPERTIES = (
    "Id",
    "Description",
    "ExecStart",
    "MainPID",
    "ExecMainStatus",
    "ExecMainCode",
    "ActiveState",
    "SubState",
    "Result",
    "ControlGroup",
    "UnitFileState",
    "FragmentPath",
)
TIMER_PROPERTIES = (
    "Id",
    "Unit",
    "TimersCalendar",
    "TimersMonotonic",
    "NextElapseUSecRealtime",
    "LastTriggerUSec",
    "ActiveState",
    "UnitFileState",
)
CGROUP_ROOT = Path("/sys/fs/cgroup")
_ARGV_RE = re.compile(r"argv\[\]=(.*?) ; ignore_errors=")
_CALENDAR_RE = re.compile(r"OnCalendar=(.*?) ;")
CLD_KILLED, CLD_DUMPED = 2, 3  # ExecMainCode values for a signal death


def parse_show(text: str) -> list[dict[str, str]]:
    """`systemctl show -p ... UNIT...`: one dict per unit (blocks split by blank lines)."""
    units, current = [], {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                units.append(current)
                current = {}
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise CollectorError(f"systemctl show printed something unexpected: {line[:120]}")
        current[key] = value
    if current:
        units.append(current)
    return units


def parse_timestamp(value: str) -> datetime | None:
    """'Tue 2026-11-24 02:15:00 UTC' (systemctl's own format); None for n/a or empty."""
    parts = value.split()
    if len(parts) < 3:
        return None
    try:
        naive = datetime.strptime(" ".join(parts[1:3]), "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None
    zone = parts[3] if len(parts) > 3 else ""
    if zone in ("UTC", "GMT"):
        return naive.replace(tzinfo=UTC)
    return naive.astimezone()  # systemctl prints local time in the local zone


def exec_argv(exec_start: str) -> list[str]:
    match = _ARGV_RE.search(exec_start)
    return match.group(1).split() if match else []


def last_exit(unit: dict[str, str]) -> int | None:
    """Exit status as launchd gives it: negative when a signal ended the run."""
    try:
        status = int(unit.get("ExecMainStatus", ""))
    except ValueError:
        return None
    code = unit.get("ExecMainCode", "")
    if code in (str(CLD_KILLED), str(CLD_DUMPED)) and status:
        return -status
    return status


def cgroup_pids(control_group: str, root: Path = CGROUP_ROOT) -> list[int]:
    if not control_group:
        return []
    try:
        text = (root / control_group.lstrip("/") / "cgroup.procs").read_text()
    except OSError:
        return []
    return [int(pid) for pid in text.split() if pid.isdigit()]


def state_of(unit: dict[str, str]) -> str:
    active, sub, result = (
        unit.get("ActiveState", ""),
        unit.get("SubState", ""),
        unit.get("Result", ""),
    )
    if active == "active" or active == "activating":
        return "running"
    if active == "failed" or result not in ("", "success"):
        exit_status = last_exit(unit)
        if exit_status is not None and exit_status < 0:
            try:
                return f"killed ({signal.Signals(-exit_status).name})"
            except ValueError:
                return f"killed (signal {-exit_status})"
        return f"failed ({result or 'exit ' + str(exit_status)})"
    return sub or active or "unknown"


def collect_scope(scope: str, *, host: str, systemctl: str) -> Collection:
    collection = Collection("systemd")
    listing = run_tool(
        [
            systemctl,
            scope,
            "list-units",
            "--all",
            "--type=service,timer",
            "--no-legend",
            "--plain",
            "--no-pager",
        ]
    )
    names = [line.split()[0] for line in listing.splitlines() if line.strip()]
    services = [n for n in names if n.endswith(".service")]
    timers = [n for n in names if n.endswith(".timer")]
    if not services:
        return collection
    shown = parse_show(
        run_tool(
            [systemctl, scope, "show", "--no-pager", "-p", ",".join(SERVICE_PROPERTIES), *services]
        )
    )
    timer_by_service: dict[str, dict[str, str]] = {}
    if timers:
        for timer in parse_show(
            run_tool(
                [systemctl, scope, "show", "--no-pager", "-p", ",".join(TIMER_PROPERTIES), *timers]
            )
        ):
            timer_by_service[timer.get("Unit", "")] = timer
    for unit in shown:
        argv = exec_argv(unit.get("ExecStart", ""))
        kind = job_kind(argv)
        if kind is None:
            continue
        tags, wrapped = kind
        label = unit.get("Id", "")
        timer = timer_by_service.get(label, {})
        calendar = _CALENDAR_RE.findall(timer.get("TimersCalendar", ""))
        main_pid = int(unit.get("MainPID") or 0)
        pids = cgroup_pids(unit.get("ControlGroup", "")) or ([main_pid] if main_pid else [])
        enabled_state = timer.get("UnitFileState") or unit.get("UnitFileState", "")
        collection.jobs.append(
            CollectedJob(
                scheduler="systemd",
                label=label,
                host=host,
                tags=tags,
                command=" ".join(argv),
                schedule_raw="; ".join(f"OnCalendar={c}" for c in calendar)
                or timer.get("TimersMonotonic", ""),
                schedule_text=("; ".join(calendar) if calendar else "on demand")
                + (f" (via {timer['Id']}, {scope.lstrip('-')})" if timer.get("Id") else ""),
                next_run_at=parse_timestamp(timer.get("NextElapseUSecRealtime", "")),
                pids=pids,
                last_exit_status=last_exit(unit),
                state=state_of(unit),
                enabled=enabled_state not in ("disabled", "masked"),
                source=unit.get("FragmentPath", ""),
                scope=scope.lstrip("-"),
                wrapped=wrapped,
            )
        )
    return collection


def collect(
    *,
    host: str,
    now: datetime,
    known_labels: set[str] = frozenset(),
    systemctl: str = "systemctl",
    scopes: tuple[str, ...] = ("--user", "--system"),
) -> Collection:
    collection = Collection("systemd")
    for scope in scopes:
        try:
            found = collect_scope(scope, host=host, systemctl=systemctl)
        except CollectorError as exc:
            collection.errors.append(f"{scope.lstrip('-')} manager: {exc}")
            continue
        collection.jobs.extend(found.jobs)
    return collection
