"""What a request asks of the host engine: the live snapshot, a run by its id, the
jobs' latest collection, as the monitor last published them.

`get_snapshot()` is what every page, API call and command asks. It reads the
sample the monitor published; requests never scan /proc, read sidecars or write
history themselves, except when no monitor is publishing: then one request per
OPSCONSOLE_SNAPSHOT_SECONDS samples on demand (and pages say so with a banner).
It sits above monitor.py for that reason; what the monitor's round needs takes
the snapshot as an argument instead of asking here.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError
from django.utils import timezone

from monitor_app.fleet_reader import fleet
from monitor_app.job_status import CACHE_KEY, CollectionReport, collect_and_record, recorded_report
from monitor_app.monitor import Monitor
from monitor_app.published import is_fresh, reader
from monitor_app.runs import Run, run_from_live, run_from_record
from monitor_app.snapshot import LiveSession, Snapshot
from sessions_app.models import LIVE_STATUSES, Session
from wrapper.formats import StatePaths, is_session_id

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
    published = reader.snapshot(settings.OPSCONSOLE_HOST)
    if published is not None and not published.stale:
        return published
    snapshot = _sample_on_demand(settings.OPSCONSOLE_STATE, fresh=fresh)
    snapshot.monitor_last_seen = published.taken_at if published is not None else None
    return snapshot


def ensure_history_current() -> None:
    """For pages that show history: with a monitor publishing, history is already
    current (one small query says so); without one, sample on demand first."""
    item, _ = reader.published(settings.OPSCONSOLE_HOST)
    if item is None or not is_fresh(item):
        _sample_on_demand(settings.OPSCONSOLE_STATE, fresh=False)


def take_snapshot(paths: StatePaths) -> Snapshot:
    """Sample now, in this process (commands and tests; pages use get_snapshot)."""
    return _sample_on_demand(paths, fresh=True)


def _sample_on_demand(paths: StatePaths, *, fresh: bool) -> Snapshot:
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


RECHECK_AFTER = timedelta(seconds=0.2)


def find_run(
    session_id: str, snapshot: Snapshot | None = None, *, fresh_tried: bool = False
) -> Run | None:
    """The run with this session id, live or on record; None if unknown or not a UUID."""
    if not is_session_id(session_id):
        return None
    snapshot = snapshot or get_snapshot()
    try:
        record = Session.objects.filter(session_id=session_id).first()
    except DatabaseError:
        record = None  # the live view does not need the database
    live = snapshot.get(session_id)
    if live is None and record is not None and record.host != settings.OPSCONSOLE_HOST:
        live = _reported_live(record)
    stale = timezone.now() - snapshot.taken_at > RECHECK_AFTER
    if live is None and record is None and not fresh_tried and stale:
        # Started within the cache window: look once more before saying "not found"
        # (bounded, so unknown ids cannot force a process scan per request).
        return find_run(session_id, get_snapshot(fresh=True), fresh_tried=True)
    if live is not None:
        return run_from_live(live, record)
    return run_from_record(record) if record is not None else None


def _reported_live(record: Session) -> LiveSession | None:
    """A live run on a reporting host: its tree from that host's latest sample."""
    if record.status not in LIVE_STATUSES:
        return None
    try:
        return fleet.snapshot([record.host]).get(str(record.session_id))
    except DatabaseError:
        return None


def live_runs(snapshot: Snapshot | None = None) -> list[Run]:
    snapshot = snapshot or get_snapshot()
    return [run_from_live(live) for live in snapshot.sessions]


def current_report() -> CollectionReport:
    """The latest collection. The monitor collects on its own cadence; without one,
    the collectors run here, at most once per snapshot window."""
    snapshot = get_snapshot()
    if snapshot.source != "on-demand":
        return recorded_report()
    report = cache.get(CACHE_KEY)
    if report is None:
        try:
            report = collect_and_record()
        except DatabaseError as exc:
            report = CollectionReport(timezone.now(), {"database": [str(exc)]})
        cache.set(CACHE_KEY, report, timeout=settings.OPSCONSOLE_SNAPSHOT_SECONDS)
    return report
