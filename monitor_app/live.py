"""The live snapshot: what is running on this host now, as the monitor last saw it.

`get_snapshot()` is what every page, API call and command asks. It reads the
sample the monitor (monitor_app) published; requests never scan /proc, read
sidecars or write history themselves, except when no monitor is publishing:
then one request per OPSCONSOLE_SNAPSHOT_SECONDS samples on demand (and pages
say so with a banner).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.conf import settings

from sessions_app.proctree import ProcessDetail, TreeFigures
from wrapper.formats import Sidecar, StatePaths, parse_iso


@dataclass
class LiveSession(TreeFigures):
    # For an unwrapped session, a sidecar made from its registry entry: the agent is
    # both "wrapper" and agent, its tag is "unwrapped" and its platform the entrypoint.
    sidecar: Sidecar
    state: str  # "live", "orphaned" or "unwrapped"
    processes: list[ProcessDetail]
    last_tool_call: str | None = None
    wrapped: bool = True
    # When the transcript last grew or the tree last used CPU, if not in the latest sample.
    idle_since: datetime | None = None
    running_cost_usd: float | None = None
    transcript_bytes: int | None = None

    @property
    def session_id(self) -> str:
        return self.sidecar.session_id

    @property
    def started_at(self) -> datetime:
        return parse_iso(self.sidecar.started_at)

    @property
    def retrying(self) -> bool:
        return self.sidecar.attempt > 1


@dataclass
class SkippedSidecar:
    name: str
    reason: str


# A sample older than this many of its intervals means its monitor has fallen silent.
SILENT_AFTER_INTERVALS = 3


def sample_is_stale(taken_at: datetime, interval_seconds: float, now: datetime | None = None):
    """True when a sample is older than SILENT_AFTER_INTERVALS of its interval."""
    age = ((now or datetime.now(UTC)) - taken_at).total_seconds()
    return age > SILENT_AFTER_INTERVALS * interval_seconds


@dataclass
class LeftoverRun(TreeFigures):
    """A run that ended while processes of its tree lived on (reparented to PID 1)."""

    session_id: str
    script_tag: str
    host: str
    ended_at: datetime
    processes: list[ProcessDetail]


@dataclass
class Snapshot:
    taken_at: datetime
    sessions: list[LiveSession] = field(default_factory=list)
    leftovers: list[LeftoverRun] = field(default_factory=list)
    skipped: list[SkippedSidecar] = field(default_factory=list)
    # Every ancestor PID of a session's wrapper -> the sessions under it: how a
    # scheduler's job PID finds its live session in O(1).
    sessions_by_ancestor: dict[int, list[str]] = field(default_factory=dict)
    active_dir_error: str | None = None
    database_error: str | None = None
    rejected_spool_files: int = 0
    scan_ms: float = 0.0
    # Where this snapshot came from: "monitor" (published), "local" (the monitor's file,
    # the database being unreadable), or "on-demand" (no monitor: this process sampled).
    source: str = "on-demand"
    seq: int = 0
    interval_seconds: float = 2.0
    quota_until: str | None = None
    quota_reason: str | None = None
    # For an on-demand snapshot: when the monitor last published, if it ever did.
    monitor_last_seen: datetime | None = None

    @property
    def stale(self) -> bool:
        """Older than three sample intervals: the monitor is silent."""
        return sample_is_stale(self.taken_at, self.interval_seconds)

    def leftover_run(self, session_id: str) -> LeftoverRun | None:
        return next((r for r in self.leftovers if r.session_id == session_id), None)

    def get(self, session_id: str) -> LiveSession | None:
        return next((s for s in self.sessions if s.session_id == session_id), None)

    def sessions_for_pid(self, pid: int) -> list[LiveSession]:
        ids = set(self.sessions_by_ancestor.get(pid, ()))
        ids.update(s.session_id for s in self.sessions if s.sidecar.wrapper_pid == pid)
        return [s for s in self.sessions if s.session_id in ids]


_on_demand_lock = threading.Lock()
# Per state root: the in-process monitor that samples when no monitor is publishing,
# and its latest snapshot with the monotonic time it expires.
_on_demand: dict[StatePaths, tuple[object, Snapshot | None, float]] = {}


def get_snapshot(*, fresh: bool = False) -> Snapshot:
    """The host's live snapshot: the monitor's latest published sample.

    When no monitor is publishing (its sample is missing or older than three
    intervals), this process samples on demand, at most once per
    OPSCONSOLE_SNAPSHOT_SECONDS, and the snapshot says so (`source`).
    """
    from monitor_app.published import reader

    published = reader.snapshot(settings.OPSCONSOLE_HOST)
    if published is not None and not published.stale:
        return published
    snapshot = _sample_on_demand(settings.OPSCONSOLE_STATE, fresh=fresh)
    snapshot.monitor_last_seen = published.taken_at if published is not None else None
    return snapshot


def ensure_history_current() -> None:
    """For pages that show history: with a monitor publishing, history is already
    current (one small query says so); without one, sample on demand first."""
    from monitor_app.published import is_fresh, reader

    item, _ = reader.published(settings.OPSCONSOLE_HOST)
    if item is None or not is_fresh(item):
        _sample_on_demand(settings.OPSCONSOLE_STATE, fresh=False)


def take_snapshot(paths: StatePaths) -> Snapshot:
    """Sample now, in this process (commands and tests; pages use get_snapshot)."""
    return _sample_on_demand(paths, fresh=True)


def _sample_on_demand(paths: StatePaths, *, fresh: bool) -> Snapshot:
    from monitor_app.monitor import Monitor

    with _on_demand_lock:
        monitor, snapshot, expires = _on_demand.get(paths, (None, None, 0.0))
        if not fresh and snapshot is not None and time.monotonic() < expires:
            return snapshot
        if monitor is None or monitor.config_dirs != list(settings.OPSCONSOLE_CLAUDE_CONFIG_DIRS):
            monitor = Monitor(paths=paths, publish=False, cadences=False)
        snapshot = monitor.tick()
        snapshot.source = "on-demand"
        expires = time.monotonic() + settings.OPSCONSOLE_SNAPSHOT_SECONDS
        if len(_on_demand) > 32:
            _on_demand.clear()
        _on_demand[paths] = (monitor, snapshot, expires)
        return snapshot
