"""cron: the user's crontab and the system ones, parsed by python-crontab."""

from __future__ import annotations

import hashlib
import shlex
from datetime import datetime
from pathlib import Path

from crontab import CronTab

from jobs_app.collectors.base import (
    CollectedJob,
    Collection,
    CollectorError,
    cron_times,
    describe_cron,
    job_kind,
    run_tool,
)

SYSTEM_CRONTABS = ("/etc/crontab", "/etc/cron.d")
NAME_PREFIX = "opsconsole:"


def entry_label(comment: str, tags: list[str], command: str) -> str:
    """A name that survives edits: `# opsconsole: NAME` on the entry, else the tag."""
    comment = comment.strip()
    if comment.startswith(NAME_PREFIX):
        return comment[len(NAME_PREFIX) :].strip()
    if tags:
        return tags[0]
    return "cron-" + hashlib.sha256(command.encode()).hexdigest()[:10]


def labelled_entries(tab: CronTab):
    """(label, tags, entry) for each entry that runs the wrapper or claude directly (no
    tags); one naming rule for the collector, the controls that edit an entry, and the
    join of an unwrapped run to its entry."""
    seen: dict[str, int] = {}
    for entry in tab:
        kind = entry_kind(entry.command or "")
        if kind is None:
            continue
        tags = kind[0]
        label = entry_label(entry.comment or "", tags, entry.command)
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label = f"{label}#{seen[label]}"
        yield label, tags, entry


def entry_kind(command: str) -> tuple[list[str], bool] | None:
    try:
        return job_kind(shlex.split(command))
    except ValueError:
        return None


def find_entry(tab: CronTab, label: str):
    return next((entry for name, _, entry in labelled_entries(tab) if name == label), None)


def jobs_in(tab: CronTab, *, host: str, now: datetime, source: str) -> list[CollectedJob]:
    jobs = []
    for label, tags, entry in labelled_entries(tab):
        expression = str(entry.slices)
        previous, following = cron_times(expression, now) if entry.is_valid() else (None, None)
        jobs.append(
            CollectedJob(
                scheduler="cron",
                label=label,
                host=host,
                tags=tags,
                command=entry.command,
                schedule_raw=expression,
                schedule_text=describe_cron(expression) if entry.is_valid() else "invalid",
                previous_run_at=previous,
                next_run_at=following,
                state="scheduled" if entry.is_enabled() else "commented out",
                enabled=entry.is_enabled(),
                source=source,
                error="" if entry.is_valid() else f"invalid schedule {expression!r}",
                wrapped=(entry_kind(entry.command or "") or ([], True))[1],
            )
        )
    return jobs


def collect(
    *,
    host: str,
    now: datetime,
    known_labels: set[str] = frozenset(),
    crontab: str = "crontab",
    system_paths: tuple[str, ...] = SYSTEM_CRONTABS,
) -> Collection:
    collection = Collection("cron")
    local_now = now.astimezone()
    try:
        # `crontab -l` exits 1 with "no crontab for USER" when there is none: not an error.
        text = run_tool([crontab, "-l"], ok_codes=(0, 1))
        collection.jobs += jobs_in(CronTab(tab=text), host=host, now=local_now, source="crontab -l")
    except CollectorError as exc:
        collection.errors.append(str(exc))
    for path in _system_files(system_paths):
        try:
            tab = CronTab(tabfile=str(path), user=False)
        except (OSError, ValueError) as exc:
            collection.errors.append(f"{path}: unreadable ({exc})")
            continue
        collection.jobs += jobs_in(tab, host=host, now=local_now, source=str(path))
    return collection


def _system_files(paths: tuple[str, ...]) -> list[Path]:
    files = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            files.append(path)
    return files
