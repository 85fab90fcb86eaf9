"""One scan of the process table, and the ancestry questions asked of it.

A status read costs one pass over /proc (pid, ppid, start time, name). The
expensive per-process fields (command line, CPU, memory) are read only for the
processes that belong to a session.
"""

from __future__ import annotations

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
    entries = []
    for proc in psutil.process_iter(["pid", "ppid", "create_time", "name", "status"]):
        info = proc.info
        if info.get("create_time") is None or info.get("ppid") is None:
            continue
        if info.get("status") == psutil.STATUS_ZOMBIE:
            continue  # exited, not yet reaped: dead for every question asked here
        entries.append(
            ProcessEntry(
                pid=info["pid"],
                ppid=info["ppid"],
                started=info["create_time"],
                name=info.get("name") or "",
            )
        )
    return ProcessTable.from_entries(entries)


# psutil measures CPU between two calls on the same Process object; keep them per PID.
_cpu_samplers: dict[tuple[int, float], psutil.Process] = {}


def describe(table: ProcessTable, pids_with_depth: list[tuple[int, int]]) -> list[ProcessDetail]:
    """Command line, CPU % and RSS for the given processes; vanished ones are dropped."""
    details = []
    for pid, depth in pids_with_depth:
        entry = table.entries[pid]
        key = (pid, entry.started)
        proc = _cpu_samplers.get(key)
        try:
            if proc is None:
                proc = psutil.Process(pid)
                if not same_start_time(proc.create_time(), entry.started):
                    continue
                _cpu_samplers[key] = proc
            with proc.oneshot():
                cmdline = " ".join(proc.cmdline()) or f"[{entry.name}]"
                cpu = proc.cpu_percent(interval=None)
                rss = proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            _cpu_samplers.pop(key, None)
            continue
        except psutil.AccessDenied:
            cmdline, cpu, rss = f"[{entry.name}]", 0.0, 0
        details.append(
            ProcessDetail(
                pid=pid,
                ppid=entry.ppid,
                depth=depth,
                name=entry.name,
                cmdline=cmdline,
                cpu_percent=round(cpu, 1),
                rss=rss,
                started=entry.started,
            )
        )
    return details


def forget_exited(table: ProcessTable) -> None:
    """Drop CPU samplers of processes that are gone, so the cache cannot grow forever."""
    for key in list(_cpu_samplers):
        pid, started = key
        if not table.is_same_process(pid, started):
            del _cpu_samplers[key]
