"""What one sample saw: the live sessions, the leftovers of ended runs and the sidecars
skipped, as plain data. The monitor makes these, publishes them, and every reader
(pages, the fleet, alerts) gets them back the same shape."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from sessions_app.proctree import ProcessDetail, TreeFigures
from wrapper.formats import Sidecar, parse_iso


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
    # The scheduler job its processes name (sessions_app.origins), in words, and the Job
    # it was tied to (jobs_app.linking.job_for_origin); a wrapped run is tied by its tag.
    origin: str = ""
    job_id: int | None = None

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


# A sampler claiming a shorter interval is held to this one: never silent at once.
SHORTEST_INTERVAL_SECONDS = 0.5


def silent_after_seconds(interval_seconds: float, heartbeat_seconds: float | None = None) -> float:
    """How long a monitor may go unheard before it is silent: SILENT_AFTER_INTERVALS of
    its sample interval, after the heartbeat it declared when it has nothing to report
    (fleet.reporting: an idle host reports every heartbeat, not every sample, and a
    heartbeat that cannot get through is tried again every sample)."""
    intervals = SILENT_AFTER_INTERVALS * max(interval_seconds, SHORTEST_INTERVAL_SECONDS)
    return intervals + (heartbeat_seconds or 0.0)


def sample_is_stale(
    taken_at: datetime,
    interval_seconds: float,
    now: datetime | None = None,
    heartbeat_seconds: float | None = None,
):
    """True when a sample is older than its monitor may go unheard (silent_after_seconds)."""
    age = ((now or datetime.now(UTC)) - taken_at).total_seconds()
    return age > silent_after_seconds(interval_seconds, heartbeat_seconds)


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
    # A reporting host's declared heartbeat, when it reports that often instead of every
    # sample (HostSample.heartbeat_seconds): the console's to know, not the sample's.
    heartbeat_seconds: float | None = None

    @property
    def stale(self) -> bool:
        """Older than three sample intervals (after its heartbeat): the monitor is silent."""
        return sample_is_stale(self.taken_at, self.interval_seconds, None, self.heartbeat_seconds)

    def leftover_run(self, session_id: str) -> LeftoverRun | None:
        return next((r for r in self.leftovers if r.session_id == session_id), None)

    def get(self, session_id: str) -> LiveSession | None:
        return next((s for s in self.sessions if s.session_id == session_id), None)

    def sessions_for_pid(self, pid: int) -> list[LiveSession]:
        ids = set(self.sessions_by_ancestor.get(pid, ()))
        ids.update(s.session_id for s in self.sessions if s.sidecar.wrapper_pid == pid)
        return [s for s in self.sessions if s.session_id in ids]
