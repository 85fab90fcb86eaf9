"""launchd (macOS): `launchctl list`, `launchctl list <label>`, and the plists."""

from __future__ import annotations

import plistlib
import re
import signal
from datetime import datetime
from pathlib import Path

from jobs_app.collectors.base import (
    CollectedJob,
    Collection,
    CollectorError,
    cron_times,
    describe_cron,
    describe_interval,
    job_kind,
    run_tool,
)

DEFAULT_PLIST_DIRS = (
    "~/Library/LaunchAgents",
    "/Library/LaunchAgents",
    "/Library/LaunchDaemons",
)
_CALENDAR_FIELDS = ("Minute", "Hour", "Day", "Month", "Weekday")


def parse_list(text: str) -> dict[str, tuple[int | None, int | None]]:
    """`launchctl list`: label -> (pid or None, last exit status; negative = signal)."""
    lines = text.splitlines()
    if not lines or lines[0].split() != ["PID", "Status", "Label"]:
        first = lines[0] if lines else "(nothing)"
        raise CollectorError(f"launchctl list printed something unexpected: {first[:120]}")
    jobs = {}
    for line in lines[1:]:
        parts = line.split("\t") if "\t" in line else line.split(None, 2)
        if len(parts) != 3:
            continue
        pid, status, label = (part.strip() for part in parts)
        jobs[label] = (_int(pid), _int(status))
    return jobs


def _int(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None  # "-"


_ENTRY_RE = re.compile(r'^\s*"(?P<key>[^"]+)"\s*=\s*(?P<value>.*?);?\s*$')


def parse_list_label(text: str) -> dict:
    """`launchctl list <label>`: the NeXT-style dict it prints, as far as we need it."""
    info: dict = {}
    lines = iter(text.splitlines())
    for line in lines:
        match = _ENTRY_RE.match(line)
        if not match:
            continue
        key, value = match["key"], match["value"].strip()
        if value == "(":
            items = []
            for item in lines:
                if item.strip().startswith(")"):
                    break
                items.append(item.strip().rstrip(";").strip('"'))
            info[key] = items
        else:
            info[key] = _int(value) if re.fullmatch(r"-?\d+", value) else value.strip('"')
    if "Label" not in info:
        raise CollectorError(f"launchctl list <label> printed no Label: {text[:120]!r}")
    return info


def read_plists(dirs: list[Path]) -> tuple[dict[str, tuple[Path, dict]], list[str]]:
    found: dict[str, tuple[Path, dict]] = {}
    errors = []
    for folder in dirs:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.plist")):
            try:
                with path.open("rb") as handle:
                    data = plistlib.load(handle)
            except Exception as exc:  # plistlib raises its parsers' own errors too
                errors.append(f"{path}: unreadable plist ({exc.__class__.__name__}: {exc})")
                continue
            if not isinstance(data, dict) or not isinstance(data.get("Label"), str):
                errors.append(f"{path}: plist has no Label")
                continue
            found[data["Label"]] = (path, data)
    return found, errors


def calendar_to_cron(entry: dict) -> str:
    """A StartCalendarInterval dict as a cron expression (missing keys = every)."""
    return " ".join(str(entry.get(name, "*")) for name in _CALENDAR_FIELDS)


def schedule_of(plist: dict, now: datetime) -> dict:
    interval = plist.get("StartInterval")
    if isinstance(interval, int) and interval > 0:
        return {
            "schedule_raw": f"StartInterval={interval}",
            "schedule_text": describe_interval(interval),
            "interval_seconds": interval,
        }
    calendar = plist.get("StartCalendarInterval")
    entries = calendar if isinstance(calendar, list) else [calendar] if calendar else []
    entries = [e for e in entries if isinstance(e, dict)]
    if not entries:
        return {"schedule_raw": "", "schedule_text": "on demand"}
    expressions = [calendar_to_cron(e) for e in entries]
    times = [cron_times(expr, now) for expr in expressions]
    previous = [p for p, _ in times if p]
    following = [n for _, n in times if n]
    return {
        "schedule_raw": "StartCalendarInterval=" + "; ".join(expressions),
        "schedule_text": "; ".join(describe_cron(expr) for expr in expressions),
        "previous_run_at": max(previous) if previous else None,
        "next_run_at": min(following) if following else None,
    }


def state_of(loaded: bool, pid: int | None, status: int | None) -> str:
    if not loaded:
        return "not loaded"
    if pid:
        return "running"
    if status is not None and status < 0:
        try:
            return f"killed ({signal.Signals(-status).name})"
        except ValueError:
            return f"killed (signal {-status})"
    if status:
        return f"failed (exit {status})"
    return "idle"


def collect(
    *,
    host: str,
    now: datetime,
    known_labels: set[str] = frozenset(),
    plist_dirs: list[Path] | None = None,
    launchctl: str = "launchctl",
) -> Collection:
    collection = Collection("launchd")
    dirs = [Path(d).expanduser() for d in (plist_dirs or DEFAULT_PLIST_DIRS)]
    plists, collection.errors = read_plists(dirs)
    try:
        loaded = parse_list(run_tool([launchctl, "list"]))
    except CollectorError as exc:
        collection.errors.append(str(exc))
        loaded = {}
    for label in sorted(set(plists) | set(known_labels)):
        path, plist = plists.get(label, (None, None))
        if plist is None and label in known_labels and label in loaded:
            try:
                plist = parse_list_label(run_tool([launchctl, "list", label]))
            except CollectorError as exc:
                collection.errors.append(str(exc))
                plist = {}
        plist = plist or {}
        argv = plist.get("ProgramArguments") or (
            [plist["Program"]] if isinstance(plist.get("Program"), str) else []
        )
        argv = [str(a) for a in argv] if isinstance(argv, list) else []
        kind = job_kind(argv)
        if kind is None and label not in known_labels:
            continue  # not an agent job of ours (a label its runs named is known)
        tags = kind[0] if kind else None
        pid, status = loaded.get(label, (None, None))
        job = CollectedJob(
            scheduler="launchd",
            label=label,
            host=host,
            tags=tags or [],
            command=" ".join(argv),
            pids=[pid] if pid else [],
            last_exit_status=status,
            state=state_of(label in loaded, pid, status),
            enabled=label in loaded and not plist.get("Disabled", False),
            source=str(path) if path else "",
            scope="system" if path and "LaunchDaemons" in path.parts else "gui",
            wrapped=kind is not None and kind[1],
        )
        if plist:
            for name, value in schedule_of(plist, now).items():
                setattr(job, name, value)
        if path is None:
            job.error = "loaded in launchd, but no plist was found in " + ", ".join(map(str, dirs))
        collection.jobs.append(job)
    return collection
