"""A host's latest sample, written once by its monitor and read by every web process.

The monitor writes two pre-serialised documents per sample: the /api/claude-active
body (served byte for byte, with an ETag) and the state a page needs to rebuild
the snapshot. They go into the host's `HostSample` row and, so the live view
survives a database outage, into a private file under OPSCONSOLE_HOME. Readers
parse a document once per sequence number, however many requests ask.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import threading
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError

from monitor_app.leftovers import leftover_payload
from monitor_app.models import HostSample
from monitor_app.runs import session_url_templates
from monitor_app.snapshot import LeftoverRun, LiveSession, SkippedSidecar, Snapshot, sample_is_stale
from sessions_app.proctree import ProcessDetail
from wrapper.formats import Sidecar, atomic_file, ensure_private_dir, parse_iso

log = logging.getLogger(__name__)

# 2: a reporting monitor sends deltas and heartbeats (fleet.sample_delta); the Hosts page
# shows which hosts still send a full report every sample.
MONITOR_VERSION = "2"
STATE_FORMAT = 1
LOCAL_FORMAT = 1
MAX_LOCAL_BYTES = 256 * 1024 * 1024


@dataclass
class Published:
    """One host's sample as stored: what the API serves and what pages rebuild."""

    host: str
    seq: int
    taken_at: datetime
    interval_seconds: float
    sample_ms: float
    etag: str
    api_document: str
    state_document: str
    monitor_pid: int | None = None
    heartbeat_seconds: float | None = None  # a reporting host's, when it declared one

    @cached_property
    def api_body(self) -> bytes:
        """The API document as sent: encoded once, not once per request."""
        return self.api_document.encode()


# ----------------------------------------------------------------------------- writing


def state_dict(snapshot: Snapshot) -> dict:
    return {
        "format": STATE_FORMAT,
        "taken_at": snapshot.taken_at.isoformat(),
        "interval_seconds": snapshot.interval_seconds,
        "scan_ms": snapshot.scan_ms,
        "active_dir_error": snapshot.active_dir_error,
        "database_error": snapshot.database_error,
        "rejected_spool_files": snapshot.rejected_spool_files,
        "quota_until": snapshot.quota_until,
        "quota_reason": snapshot.quota_reason,
        "skipped": [{"name": s.name, "reason": s.reason} for s in snapshot.skipped],
        "sessions_by_ancestor": {str(k): v for k, v in snapshot.sessions_by_ancestor.items()},
        "sessions": [
            {
                "sidecar": live.sidecar.to_dict(),
                "state": live.state,
                "wrapped": live.wrapped,
                "job_id": live.job_id,
                "origin": live.origin,
                "last_tool_call": live.last_tool_call,
                "idle_since": live.idle_since.isoformat() if live.idle_since else None,
                "running_cost_usd": live.running_cost_usd,
                "transcript_bytes": live.transcript_bytes,
                "processes": [p.to_dict() for p in live.processes],
            }
            for live in snapshot.sessions
        ],
        "leftovers": [
            {
                "session_id": run.session_id,
                "script_tag": run.script_tag,
                "host": run.host,
                "ended_at": run.ended_at.isoformat(),
                "processes": [p.to_dict() for p in run.processes],
            }
            for run in snapshot.leftovers
        ],
    }


def snapshot_from_state(state: dict, *, seq: int, source: str) -> Snapshot:
    snapshot = Snapshot(
        taken_at=parse_iso(state["taken_at"]),
        active_dir_error=state.get("active_dir_error"),
        database_error=state.get("database_error"),
        rejected_spool_files=state.get("rejected_spool_files", 0),
        scan_ms=state.get("scan_ms", 0.0),
        source=source,
        seq=seq,
        interval_seconds=state.get("interval_seconds", 2.0),
        quota_until=state.get("quota_until"),
        quota_reason=state.get("quota_reason"),
        skipped=[SkippedSidecar(**s) for s in state.get("skipped", [])],
        sessions_by_ancestor={int(k): v for k, v in state.get("sessions_by_ancestor", {}).items()},
    )
    for item in state.get("sessions", []):
        snapshot.sessions.append(
            LiveSession(
                sidecar=Sidecar(**item["sidecar"]),
                state=item["state"],
                wrapped=item.get("wrapped", True),
                job_id=item.get("job_id"),
                origin=item.get("origin", ""),
                last_tool_call=item.get("last_tool_call"),
                idle_since=parse_iso(item["idle_since"]) if item.get("idle_since") else None,
                running_cost_usd=item.get("running_cost_usd"),
                transcript_bytes=item.get("transcript_bytes"),
                processes=[ProcessDetail(**p) for p in item.get("processes", [])],
            )
        )
    for item in state.get("leftovers", []):
        snapshot.leftovers.append(
            LeftoverRun(
                session_id=item["session_id"],
                script_tag=item["script_tag"],
                host=item["host"],
                ended_at=parse_iso(item["ended_at"]),
                processes=[ProcessDetail(**p) for p in item.get("processes", [])],
            )
        )
    return snapshot


def api_dict(snapshot: Snapshot, host: str, seq: int) -> dict:
    """The /api/claude-active body. Field names kept from the seed's API."""
    html, jsonl = session_url_templates()
    sessions = []
    for live in snapshot.sessions:
        sidecar = live.sidecar
        # A live run has no outcome yet: only what is true of it now (the fields a
        # finished run adds are in /api/sessions/<id>).
        sessions.append(
            {
                "session_id": sidecar.session_id,
                "script_tag": sidecar.script_tag,
                "platform": sidecar.platform,
                "host": sidecar.host,
                "attempt": sidecar.attempt,
                "retry_of": sidecar.retry_of,
                "state": live.state,
                "status": live.state,
                "wrapped": live.wrapped,
                "started_at": sidecar.started_at,
                "wrapper_pid": sidecar.wrapper_pid,
                "claude_pid": sidecar.claude_pid,
                "live": True,
                "last_tool_call": live.last_tool_call,
                "cpu_percent": live.cpu_percent,
                "rss": live.rss,
                "idle_since": live.idle_since.isoformat() if live.idle_since else None,
                "running_cost_usd": live.running_cost_usd,
                "html_url": html.format(sidecar.session_id),
                "jsonl_url": jsonl.format(sidecar.session_id),
            }
        )
    return {
        "host": host,
        "seq": seq,
        "taken_at": snapshot.taken_at.isoformat(),
        "interval_seconds": snapshot.interval_seconds,
        "sessions": sessions,
        "leftovers": [
            {
                "session_id": run.session_id,
                "script_tag": run.script_tag,
                "host": run.host,
                "ended_at": run.ended_at.isoformat(),
                "html_url": html.format(run.session_id),
                "processes": leftover_payload(run),
            }
            for run in snapshot.leftovers
        ],
        "skipped_sidecars": [{"name": s.name, "reason": s.reason} for s in snapshot.skipped],
        "active_dir_error": snapshot.active_dir_error,
        "database_error": snapshot.database_error,
        "quota_until": snapshot.quota_until,
        "sample_ms": snapshot.scan_ms,
    }


def build(snapshot: Snapshot, host: str, seq: int, monitor_pid: int | None) -> Published:
    api_document = json.dumps(api_dict(snapshot, host, seq), separators=(",", ":"))
    state_document = json.dumps(state_dict(snapshot), separators=(",", ":"))
    digest = hashlib.blake2b(api_document.encode(), digest_size=12).hexdigest()
    return Published(
        host=host,
        seq=seq,
        taken_at=snapshot.taken_at,
        interval_seconds=snapshot.interval_seconds,
        sample_ms=snapshot.scan_ms,
        etag=f'"{digest}"',
        api_document=api_document,
        state_document=state_document,
        monitor_pid=monitor_pid,
    )


def local_sample_path() -> Path:
    return settings.OPSCONSOLE_HOME / "monitor" / "sample.json"


def write_local(published: Published) -> None:
    """The copy this host's web processes read (and fall back on without a database).

    Three lines: a JSON header, the API document, the state document. JSON never
    holds a raw newline, so a reader serving the API parses only the header.
    """
    path = local_sample_path()
    ensure_private_dir(path.parent)
    header = {
        "format": LOCAL_FORMAT,
        "host": published.host,
        "seq": published.seq,
        "taken_at": published.taken_at.isoformat(),
        "interval_seconds": published.interval_seconds,
        "sample_ms": published.sample_ms,
        "etag": published.etag,
        "monitor_pid": published.monitor_pid,
    }
    with atomic_file(path) as handle:
        handle.write(json.dumps(header).encode() + b"\n")
        handle.write(published.api_document.encode() + b"\n")
        handle.write(published.state_document.encode() + b"\n")


def write_database(published: Published) -> None:
    HostSample.objects.update_or_create(
        host=published.host,
        defaults={
            "seq": published.seq,
            "taken_at": published.taken_at,
            "interval_seconds": published.interval_seconds,
            "sample_ms": published.sample_ms,
            "monitor_pid": published.monitor_pid,
            "monitor_version": MONITOR_VERSION,
            "etag": published.etag,
            "api_document": published.api_document,
            "state_document": published.state_document,
        },
    )


# ----------------------------------------------------------------------------- reading


def is_fresh(item: Published | Snapshot, now: datetime | None = None) -> bool:
    """Not older than three sample intervals (after its heartbeat): its monitor is alive."""
    return not sample_is_stale(item.taken_at, item.interval_seconds, now, item.heartbeat_seconds)


def read_local_sample(path: Path | None = None) -> Published | None:
    """The monitor's local copy of its latest sample (at `path`, default this host's), or
    None if there is none to trust."""
    path = path or local_sample_path()
    try:
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
        with os.fdopen(os.open(path, flags), "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
                return None  # not ours: never trusted
            raw = handle.read(MAX_LOCAL_BYTES)
    except OSError:
        return None
    parts = raw.split(b"\n")
    if len(parts) < 3:
        return None
    try:
        header = json.loads(parts[0])
        if header.get("format") != LOCAL_FORMAT:
            return None
        return Published(
            host=str(header["host"]),
            seq=int(header["seq"]),
            taken_at=parse_iso(header["taken_at"]),
            interval_seconds=float(header["interval_seconds"]),
            sample_ms=float(header.get("sample_ms") or 0.0),
            etag=str(header["etag"]),
            api_document=parts[1].decode(),
            state_document=parts[2].decode(),
            monitor_pid=header.get("monitor_pid"),
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


_HEAD_FIELDS = ("seq", "etag", "taken_at", "interval_seconds")


class PublishedReader:
    """What a web process knows of the latest sample, re-parsed only when `seq` moves."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._published: Published | None = None
        self._snapshot: Snapshot | None = None
        self._local_key: tuple[int, int, int] | None = None

    def head(self, host: str) -> tuple[int, str, datetime, float] | None:
        """(seq, etag, taken_at, interval) of the host's row: one small indexed query."""
        row = HostSample.objects.filter(host=host).values_list(*_HEAD_FIELDS).first()
        return row

    def published(self, host: str) -> tuple[Published | None, str]:
        """The latest sample and where it came from ("monitor" or "local").

        For this host, the monitor's local file is the fast path: one stat per
        request, one parse per sample. The database row serves other hosts, and
        this one when the file is missing or stale.
        """
        if host == settings.OPSCONSOLE_HOST:
            local = self._local_if_fresh(host)
            if local is not None:
                return local, "monitor"
        try:
            head = self.head(host)
        except DatabaseError:
            return self._from_local(host), "local"
        if head is None:
            return None, "monitor"
        seq, etag = head[0], head[1]
        current = self._published
        # (seq, ETag): the row's version, whichever console wrote it; a restarted monitor
        # may send a seq again, so the seq alone could keep another document's body.
        if (
            current is not None
            and current.host == host
            and (current.seq, current.etag)
            == (
                seq,
                etag,
            )
        ):
            return current, "monitor"
        try:
            row = HostSample.objects.filter(host=host).first()
        except DatabaseError:
            return self._from_local(host), "local"
        if row is None:
            return None, "monitor"
        published = Published(
            host=row.host,
            seq=row.seq,
            taken_at=row.taken_at,
            interval_seconds=row.interval_seconds,
            sample_ms=row.sample_ms,
            etag=row.etag,
            api_document=row.api_document,
            state_document=row.state_document,
            monitor_pid=row.monitor_pid,
            heartbeat_seconds=row.heartbeat_seconds,
        )
        with self._lock:
            self._published, self._snapshot = published, None
        return published, "monitor"

    def _local_if_fresh(self, host: str) -> Published | None:
        path = local_sample_path()
        try:
            info = os.stat(path)
        except OSError:
            return None
        key = (info.st_ino, info.st_mtime_ns, info.st_size)
        current = self._published
        if current is None or self._local_key != key or current.host != host:
            local = read_local_sample()
            if local is None or local.host != host:
                return None
            with self._lock:
                self._published, self._snapshot, self._local_key = local, None, key
            current = local
        return current if is_fresh(current) else None

    def _from_local(self, host: str) -> Published | None:
        local = read_local_sample()
        return local if local is not None and local.host == host else None

    def snapshot(self, host: str) -> Snapshot | None:
        published, source = self.published(host)
        if published is None:
            return None
        with self._lock:
            cached = self._snapshot
            if cached is not None and cached.seq == published.seq and cached.source == source:
                cached.taken_at = published.taken_at
                return cached
        try:
            snapshot = snapshot_from_state(
                json.loads(published.state_document), seq=published.seq, source=source
            )
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("published sample %s of %s unreadable: %s", published.seq, host, exc)
            return None
        snapshot.taken_at = published.taken_at
        snapshot.heartbeat_seconds = published.heartbeat_seconds
        with self._lock:
            if source == "monitor":
                self._snapshot = snapshot
        return snapshot


reader = PublishedReader()
