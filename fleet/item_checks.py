"""The checks one item of a host's report must pass (fleet.report_items applies them):
each raises ItemRefused with the reason a person reads on the Hosts page. Besides the
formats module's field limits: what the pages compute with (process figures, the
sample's own fields) and the types of a job a host's collector found.
"""

from __future__ import annotations

import math

from jobs_app.collectors.base import CollectedJob
from monitor_app.snapshot import Snapshot
from sessions_app.origins import CI_PROVIDERS, ORIGIN_FIELDS, SCHEDULERS, UNIT_NAME, Origin
from wrapper.formats import (
    MAX_COST_USD,
    MAX_EPOCH_SECONDS,
    is_session_id,
    parse_iso,
    report_item_problem,
)


class ItemRefused(Exception):
    """One item is refused; the report goes on."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


def check(condition: bool, reason: str, status: int = 400) -> None:
    if not condition:
        raise ItemRefused(reason, status)


def fits(item: dict) -> None:
    problem = report_item_problem(item)
    check(problem is None, problem or "")


def own(named: object, host: str, what: str) -> None:
    check(named == host, f"{what} names host {named!r}, not this token's {host!r}", 403)


# What the pages compute with: a number that is not one would fail a page, not a write.
MAX_PROCESSES = 10_000
MAX_CMDLINE_CHARS = 20_000
JOB_TEXT_FIELDS = (
    "scheduler",
    "label",
    "command",
    "schedule_raw",
    "schedule_text",
    "state",
    "source",
    "scope",
    "error",
)


def number(value: object, low: float, high: float) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and low <= value <= high
    )


def check_processes(processes: object) -> None:
    check(isinstance(processes, list) and len(processes) <= MAX_PROCESSES, "processes")
    for process in processes:
        for name in ("pid", "ppid", "depth"):
            value = getattr(process, name)
            check(isinstance(value, int) and number(value, 0, 2**31), f"a process's {name}")
        check(number(process.rss, 0, 2**62), "a process's rss")
        check(number(process.cpu_percent, 0, 1e6), "a process's cpu_percent")
        check(number(process.started, 0, MAX_EPOCH_SECONDS), "a process's start time")
        check(isinstance(process.name, str) and len(process.name) <= 255, "a process's name")
        check(
            isinstance(process.cmdline, str) and len(process.cmdline) <= MAX_CMDLINE_CHARS,
            "a process's command line",
        )


def check_snapshot_fields(snapshot: Snapshot) -> None:
    """The sample's own fields, read by every page that shows the host."""
    for name in ("quota_until", "quota_reason", "active_dir_error", "database_error"):
        value = getattr(snapshot, name)
        check(value is None or (isinstance(value, str) and len(value) <= 4000), f"{name}")
    if snapshot.quota_until is not None:
        parse_iso(snapshot.quota_until)
    check(number(snapshot.scan_ms, 0, 1e9), "scan_ms is a number")
    check(number(snapshot.rejected_spool_files, 0, 2**31), "rejected_spool_files")
    check(len(snapshot.skipped) <= 10_000, "too many skipped files")
    for skipped in snapshot.skipped:
        check(isinstance(skipped.name, str) and isinstance(skipped.reason, str), "skipped")
    check(len(snapshot.sessions_by_ancestor) <= 100_000, "sessions_by_ancestor")
    for sessions in snapshot.sessions_by_ancestor.values():
        check(isinstance(sessions, list), "sessions_by_ancestor lists session ids")


def check_live_figures(live) -> None:
    check_processes(live.processes)
    check(
        isinstance(live.origin, str) and len(live.origin) <= MAX_CMDLINE_CHARS + 100,
        "origin is a line of text",
    )
    check(isinstance(live.wrapped, bool), "wrapped is true or false")
    check(
        live.last_tool_call is None
        or (isinstance(live.last_tool_call, str) and len(live.last_tool_call) <= 2000),
        "last_tool_call is text",
    )
    check(
        live.running_cost_usd is None or number(live.running_cost_usd, 0, MAX_COST_USD),
        "running_cost_usd is a number of dollars",
    )
    check(
        live.transcript_bytes is None or number(live.transcript_bytes, 0, 2**62),
        "transcript_bytes is a byte count",
    )


def collected_job(item: object, host: str) -> CollectedJob:
    check(isinstance(item, dict), "a job is an object")
    fits(item)
    try:
        found = CollectedJob(**item)
        for name in ("next_run_at", "previous_run_at"):
            raw = getattr(found, name)
            setattr(found, name, parse_iso(raw) if raw else None)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ItemRefused(f"job unreadable: {exc}") from exc
    own(found.host, host, f"job {found.label}")
    check(
        isinstance(found.tags, list) and all(isinstance(t, str) for t in found.tags),
        "tags is a list of text",
    )
    check(
        isinstance(found.pids, list)
        and all(isinstance(p, int) and not isinstance(p, bool) for p in found.pids),
        "pids is a list of whole numbers",
    )
    for name in ("interval_seconds", "last_exit_status"):
        value = getattr(found, name)
        check(
            value is None or (isinstance(value, int) and not isinstance(value, bool)),
            f"{name} is a whole number",
        )
    check(isinstance(found.enabled, bool), "enabled is true or false")
    for name in JOB_TEXT_FIELDS:
        check(isinstance(getattr(found, name), str), f"{name} is text")
    return found


MAX_ARGV_WORDS = 4096
CI_SCOPES = {provider for provider, *_ in CI_PROVIDERS}


def origin_item(item: object, host: str) -> tuple[str, Origin, str]:
    """(session id, its origin, its root process's command line) from a host's report:
    each field of the type and within the limits the host's own reader gives it."""
    check(isinstance(item, dict), "an origin is an object")
    check(is_session_id(item.get("session_id")), "an origin names a session id")
    fields = {name: item.get(name) for name in ORIGIN_FIELDS}
    texts = {name: value for name, value in fields.items() if name != "argv"}
    check(all(isinstance(v, str) for v in texts.values()), "an origin's fields are text")
    run_command = item.get("run_command", "")
    check(isinstance(run_command, str), "run_command is text")
    fits(texts)
    fits({"command": run_command})
    check(len(fields["run_id"]) <= 255, "run_id is at most 255 characters")
    argv = fields["argv"]
    check(
        isinstance(argv, list)
        and len(argv) <= MAX_ARGV_WORDS
        and all(isinstance(word, str) for word in argv)
        and sum(map(len, argv)) <= MAX_CMDLINE_CHARS,
        "argv is a list of words (a command line's length at most)",
    )
    scheduler, label, scope = fields["scheduler"], fields["label"], fields["scope"]
    check(scheduler in SCHEDULERS, f"unknown scheduler {scheduler!r}")
    if scheduler == "cron":
        check(label == "" and bool(fields["command"] or argv), "a cron origin names a command")
    else:
        check(bool(label), f"a {scheduler} origin names its job")
    if scheduler == "systemd":
        check(bool(UNIT_NAME.match(label)), "a systemd origin names a unit")
        check(scope in ("user", "system"), "a systemd unit is a user or a system one")
    if scheduler == "ci":
        check(scope in CI_SCOPES, f"unknown CI provider {scope!r}")
    origin = Origin(**(fields | {"argv": tuple(argv)}))
    return item["session_id"], origin, run_command
