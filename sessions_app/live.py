"""The live snapshot: sidecars + one process-table scan, with GC on read.

`get_snapshot()` is what every page, API call and command asks. It is computed
at most once per OPSCONSOLE_SNAPSHOT_SECONDS however many tabs poll, and each
computation also brings history up to date: it ingests the wrapper's spool and
records runs that vanished without a completion record (as killed).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError

from sessions_app import ingest, transcript_store
from sessions_app.models import LIVE_STATUSES, Session, Status
from sessions_app.proctree import (
    ProcessDetail,
    TreeFigures,
    describe,
    forget_exited,
    scan_process_table,
)
from wrapper.formats import (
    FormatError,
    Sidecar,
    StatePaths,
    UnsafeDirectory,
    check_private_dir,
    parse_iso,
    read_sidecar,
)

log = logging.getLogger(__name__)

CACHE_KEY = "opsconsole:live-snapshot"
# A live row with neither a sidecar nor a completion record this long after it started
# was lost (its sidecar removed by hand, say); younger ones may just be mid-write.
STALE_LIVE_ROW_GRACE = timedelta(seconds=60)


@dataclass
class LiveSession(TreeFigures):
    sidecar: Sidecar
    state: str  # "live" or "orphaned"
    processes: list[ProcessDetail]
    last_tool_call: str | None = None

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


@dataclass
class Snapshot:
    taken_at: datetime
    sessions: list[LiveSession] = field(default_factory=list)
    skipped: list[SkippedSidecar] = field(default_factory=list)
    # Every ancestor PID of a session's wrapper -> the sessions under it: how a
    # scheduler's job PID finds its live session in O(1).
    sessions_by_ancestor: dict[int, list[str]] = field(default_factory=dict)
    active_dir_error: str | None = None
    database_error: str | None = None
    rejected_spool_files: int = 0
    scan_ms: float = 0.0

    def get(self, session_id: str) -> LiveSession | None:
        return next((s for s in self.sessions if s.session_id == session_id), None)

    def sessions_for_pid(self, pid: int) -> list[LiveSession]:
        ids = set(self.sessions_by_ancestor.get(pid, ()))
        ids.update(s.session_id for s in self.sessions if s.sidecar.wrapper_pid == pid)
        return [s for s in self.sessions if s.session_id in ids]


_compute_lock = threading.Lock()


def get_snapshot(*, fresh: bool = False) -> Snapshot:
    """The current snapshot, from the cache when it is younger than the window."""
    if not fresh:
        cached = cache.get(CACHE_KEY)
        if cached is not None:
            return cached
    # Threads of one process that miss together compute once; the rest wait for it.
    with _compute_lock:
        cached = None if fresh else cache.get(CACHE_KEY)
        if cached is not None:
            return cached
        snapshot = take_snapshot(settings.OPSCONSOLE_STATE)
        cache.set(CACHE_KEY, snapshot, timeout=settings.OPSCONSOLE_SNAPSHOT_SECONDS)
        return snapshot


def take_snapshot(paths: StatePaths) -> Snapshot:
    began = time.perf_counter()
    snapshot = Snapshot(taken_at=datetime.now(UTC))

    try:
        snapshot.rejected_spool_files = len(ingest.ingest_spool(paths).rejected)
    except DatabaseError as exc:
        snapshot.database_error = _one_line(exc)

    sidecars = read_sidecars(paths, snapshot)
    table = scan_process_table()
    forget_exited(table)

    by_state: dict[str, list[Sidecar]] = {Status.LIVE: [], Status.ORPHANED: []}
    for sidecar in sidecars:
        wrapper_alive = table.is_same_process(sidecar.wrapper_pid, sidecar.wrapper_started)
        claude_alive = table.is_same_process(sidecar.claude_pid, sidecar.claude_started)
        if wrapper_alive:
            root = sidecar.wrapper_pid
            state = Status.LIVE
        elif claude_alive:
            root = sidecar.claude_pid
            state = Status.ORPHANED
        else:
            collect_vanished(sidecar, paths, snapshot)
            continue
        by_state[state].append(sidecar)
        snapshot.sessions.append(
            LiveSession(
                sidecar=sidecar,
                state=state,
                processes=describe(table, table.subtree(root)),
                last_tool_call=transcript_store.last_tool_call(sidecar),
            )
        )
        for ancestor in table.ancestors(root):
            snapshot.sessions_by_ancestor.setdefault(ancestor, []).append(sidecar.session_id)

    snapshot.sessions.sort(key=lambda s: s.sidecar.started_at, reverse=True)
    if snapshot.database_error is None:
        try:
            ingest.record_live(by_state)
            close_lost_live_rows(snapshot, paths)
        except DatabaseError as exc:
            snapshot.database_error = _one_line(exc)
    snapshot.scan_ms = round((time.perf_counter() - began) * 1000, 1)
    return snapshot


def read_sidecars(paths: StatePaths, snapshot: Snapshot) -> list[Sidecar]:
    """Every trustworthy sidecar; the others are skipped, counted and logged once."""
    try:
        check_private_dir(paths.active)
    except UnsafeDirectory as exc:
        if paths.active.exists() or paths.active.is_symlink():
            snapshot.active_dir_error = str(exc)
            _log_once(("active-dir", str(exc)), "not reading sidecars: %s", exc)
        return []
    sidecars = []
    seen_sessions: set[str] = set()
    for entry in sorted(paths.active.iterdir()):
        if entry.name.startswith(".") or entry.suffix != ".json":
            continue  # a wrapper's temp file mid-rename, or not ours
        try:
            sidecar = read_sidecar(entry)
        except FormatError as exc:
            _skip(snapshot, entry, str(exc))
            continue
        if sidecar.session_id in seen_sessions:
            _skip(snapshot, entry, f"session {sidecar.session_id} is claimed by another sidecar")
            continue
        seen_sessions.add(sidecar.session_id)
        sidecars.append(sidecar)
    return sidecars


def _skip(snapshot: Snapshot, entry: Path, reason: str) -> None:
    snapshot.skipped.append(SkippedSidecar(name=entry.name, reason=reason))
    try:
        mtime = entry.lstat().st_mtime
    except OSError:
        mtime = 0
    _log_once((entry.name, mtime, reason), "sidecar %s skipped: %s", entry.name, reason)


def collect_vanished(sidecar: Sidecar, paths: StatePaths, snapshot: Snapshot) -> None:
    """GC on read: the owner is gone. Put the run on record, then remove its sidecar.

    With the database down the sidecar stays, so the run is recorded on a later read.
    """
    if snapshot.database_error is not None:
        return
    try:
        if not ingest.has_completion_record(sidecar.session_id, paths):
            ingest.record_vanished(sidecar, paths, transcript_store.find_live_transcript(sidecar))
            log.info(
                "session %s (%s) vanished without a completion record; recorded as killed",
                sidecar.session_id,
                sidecar.script_tag,
            )
    except DatabaseError as exc:
        snapshot.database_error = _one_line(exc)
        return
    with contextlib.suppress(FileNotFoundError):
        paths.sidecar_path(sidecar.wrapper_pid).unlink()


def close_lost_live_rows(snapshot: Snapshot, paths: StatePaths) -> None:
    """Rows of this host still marked live whose session no sidecar names any more."""
    live_ids = {s.session_id for s in snapshot.sessions}
    cutoff = snapshot.taken_at - STALE_LIVE_ROW_GRACE
    lost = (
        Session.objects.filter(
            status__in=LIVE_STATUSES, host=settings.OPSCONSOLE_HOST, started_at__lt=cutoff
        )
        .exclude(session_id__in=live_ids)
        .only("session_id")
    )
    for row in lost:
        if not ingest.has_completion_record(str(row.session_id), paths):
            Session.objects.filter(pk=row.pk, status__in=LIVE_STATUSES).update(
                status=Status.KILLED,
                end_reason="vanished",
                ended_at=snapshot.taken_at,
                error="No sidecar and no completion record remain for this run.",
            )


_logged: set = set()


def _log_once(key, message: str, *args) -> None:
    if key in _logged:
        return
    if len(_logged) > 10_000:
        _logged.clear()
    _logged.add(key)
    log.warning(message, *args)


def _one_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
