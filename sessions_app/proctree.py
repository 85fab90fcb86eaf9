"""One scan of the process table, and the ancestry questions asked of it.

A status read costs one pass over /proc (pid, ppid, start time, name). The
expensive per-process fields (command line, CPU, memory) are read only for the
processes that belong to a session.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import psutil

from wrapper.formats import same_start_time

# A process tree deeper than this is a loop in stale data, not a real tree.
MAX_TREE_DEPTH = 64


@dataclass(frozen=True)
class ProcessEntry:
    pid: int
    ppid: int
    started: float  # epoch seconds (psutil create_time)
    name: str
    # Read in the same pass where the platform allows (Linux: /proc/<pid>/stat), so a
    # session's CPU and memory cost no second read per process. None: ask psutil.
    cpu_seconds: float | None = None
    rss: int | None = None


@dataclass(frozen=True)
class ProcessDetail:
    """What a person sees of one process under a session."""

    pid: int
    ppid: int
    depth: int  # 0 for the session's root process
    name: str
    cmdline: str
    cpu_percent: float
    rss: int  # bytes
    started: float

    def to_dict(self) -> dict:
        return {
            "pid": self.pid,
            "ppid": self.ppid,
            "depth": self.depth,
            "name": self.name,
            "cmdline": self.cmdline,
            "cpu_percent": self.cpu_percent,
            "rss": self.rss,
            "started": self.started,
        }


class TreeFigures:
    """CPU and memory of a session's whole process tree (`processes`)."""

    processes: list[ProcessDetail]

    @property
    def cpu_percent(self) -> float:
        return round(sum(p.cpu_percent for p in self.processes), 1)

    @property
    def rss(self) -> int:
        return sum(p.rss for p in self.processes)


@dataclass
class ProcessTable:
    entries: dict[int, ProcessEntry]
    children: dict[int, list[int]] = field(default_factory=dict)

    @classmethod
    def from_entries(cls, entries: Iterable[ProcessEntry]) -> ProcessTable:
        by_pid = {entry.pid: entry for entry in entries}
        children: dict[int, list[int]] = {}
        for entry in by_pid.values():
            if entry.ppid != entry.pid:
                children.setdefault(entry.ppid, []).append(entry.pid)
        return cls(entries=by_pid, children=children)

    def is_same_process(self, pid: int | None, started: float | None) -> bool:
        """True when `pid` is alive and is still the process that started at `started`."""
        if pid is None or pid <= 1:
            return False
        entry = self.entries.get(pid)
        return entry is not None and same_start_time(entry.started, started)

    def ancestors(self, pid: int) -> list[int]:
        """Parent, grandparent, ... up to (not including) PID 1; depth-capped, cycle-guarded."""
        chain: list[int] = []
        seen = {pid}
        entry = self.entries.get(pid)
        while entry is not None and len(chain) < MAX_TREE_DEPTH:
            parent = entry.ppid
            if parent <= 1 or parent in seen:
                break
            chain.append(parent)
            seen.add(parent)
            entry = self.entries.get(parent)
        return chain

    def subtree(self, root: int) -> list[tuple[int, int]]:
        """(pid, depth) for `root` and every descendant, depth first, cycle-guarded."""
        if root not in self.entries:
            return []
        ordered: list[tuple[int, int]] = []
        seen: set[int] = set()
        stack = [(root, 0)]
        while stack:
            pid, depth = stack.pop()
            if pid in seen or depth > MAX_TREE_DEPTH:
                continue
            seen.add(pid)
            ordered.append((pid, depth))
            for child in sorted(self.children.get(pid, ()), reverse=True):
                stack.append((child, depth + 1))
        return ordered


def scan_process_table() -> ProcessTable:
    if _PROC_STAT_READABLE:
        return ProcessTable.from_entries(_scan_proc())
    return ProcessTable.from_entries(_scan_psutil())


_PROC_STAT_READABLE = os.path.exists("/proc/self/stat")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _scan_proc() -> list[ProcessEntry]:
    """One read of /proc/<pid>/stat per process: parent, start, state, CPU time, RSS.

    The same arithmetic as psutil's create_time (boot time + start ticks / CLK_TCK),
    so start times compare equal with the wrapper's and with psutil's.
    """
    boot = boot_time()
    entries = []
    with os.scandir("/proc") as listing:
        for item in listing:
            if not item.name.isdigit():
                continue
            try:
                with open(f"/proc/{item.name}/stat", "rb") as handle:
                    raw = handle.read()
            except OSError:
                continue  # exited between the listing and the read
            close = raw.rfind(b")")
            fields = raw[close + 2 :].split()
            if len(fields) < 22 or fields[0] in (b"Z", b"X"):
                continue  # a zombie: exited, not yet reaped, dead for every question here
            entries.append(
                ProcessEntry(
                    pid=int(item.name),
                    ppid=int(fields[1]),
                    started=boot + int(fields[19]) / _CLOCK_TICKS,
                    name=raw[raw.find(b"(") + 1 : close].decode("utf-8", "replace"),
                    cpu_seconds=(int(fields[11]) + int(fields[12])) / _CLOCK_TICKS,
                    rss=int(fields[21]) * _PAGE_SIZE,
                )
            )
    return entries


def _scan_psutil() -> list[ProcessEntry]:
    entries = []
    for proc in psutil.process_iter(["pid", "ppid", "create_time", "name", "status"]):
        info = proc.info
        if info.get("create_time") is None or info.get("ppid") is None:
            continue
        if info.get("status") == psutil.STATUS_ZOMBIE:
            continue
        entries.append(
            ProcessEntry(
                pid=info["pid"],
                ppid=info["ppid"],
                started=info["create_time"],
                name=info.get("name") or "",
            )
        )
    return entries


def boot_time() -> float:
    return psutil.boot_time()


# What never changes for a process is read once per (pid, start time): its command line.
_cmdlines: dict[tuple[int, float], str] = {}
# CPU % is CPU time used between two samples over the wall time between them.
_cpu_seen: dict[tuple[int, float], tuple[float, float]] = {}  # key -> (cpu seconds, at)
# Where the table gives no CPU or memory (macOS): psutil keeps its own sampling state.
_psutil_procs: dict[tuple[int, float], psutil.Process] = {}


def command_line(pid: int, entry: ProcessEntry) -> str | None:
    """The command line of a process, read once; None if it is gone or not ours."""
    key = (pid, entry.started)
    cached = _cmdlines.get(key)
    if cached is not None:
        return cached
    try:
        if _PROC_STAT_READABLE:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                raw = handle.read(64 * 1024)
            text = raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")
        else:
            text = " ".join(psutil.Process(pid).cmdline())
    except FileNotFoundError:
        return None
    except (OSError, psutil.Error):
        text = ""
    text = text or f"[{entry.name}]"
    _cmdlines[key] = text
    return text


def describe(
    table: ProcessTable, pids_with_depth: list[tuple[int, int]], now: float | None = None
) -> list[ProcessDetail]:
    """Command line, CPU % and RSS for the given processes; vanished ones are dropped."""
    now = time.monotonic() if now is None else now
    details = []
    for pid, depth in pids_with_depth:
        entry = table.entries[pid]
        key = (pid, entry.started)
        cmdline = command_line(pid, entry)
        if cmdline is None:
            continue
        if entry.cpu_seconds is not None:
            before = _cpu_seen.get(key)
            _cpu_seen[key] = (entry.cpu_seconds, now)
            cpu = 0.0
            if before is not None and now > before[1]:
                cpu = 100.0 * (entry.cpu_seconds - before[0]) / (now - before[1])
            rss = entry.rss or 0
        else:
            sampled = _psutil_sample(pid, entry)
            if sampled is None:
                continue
            cpu, rss = sampled
        details.append(
            ProcessDetail(
                pid=pid,
                ppid=entry.ppid,
                depth=depth,
                name=entry.name,
                cmdline=cmdline,
                cpu_percent=round(max(cpu, 0.0), 1),
                rss=rss,
                started=entry.started,
            )
        )
    return details


def _psutil_sample(pid: int, entry: ProcessEntry) -> tuple[float, int] | None:
    key = (pid, entry.started)
    proc = _psutil_procs.get(key)
    try:
        if proc is None:
            proc = psutil.Process(pid)
            if not same_start_time(proc.create_time(), entry.started):
                return None
            _psutil_procs[key] = proc
        with proc.oneshot():
            return proc.cpu_percent(interval=None), proc.memory_info().rss
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        _psutil_procs.pop(key, None)
        return None
    except psutil.AccessDenied:
        return 0.0, 0


def forget_exited(table: ProcessTable) -> None:
    """Drop what was kept for processes that are gone, so the caches cannot grow forever."""
    for cache in (_cmdlines, _cpu_seen, _psutil_procs):
        for key in [k for k in cache if not table.is_same_process(*k)]:
            del cache[key]
