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
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError
from django.urls import reverse

from monitor_app.models import HostSample
from sessions_app.live import LeftoverRun, LiveSession, SkippedSidecar, Snapshot
from sessions_app.proctree import ProcessDetail
from wrapper.formats import FormatError, Sidecar, ensure_private_dir, parse_iso, write_json_atomic

log = logging.getLogger(__name__)

MONITOR_VERSION = "1"
STATE_FORMAT = 1


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


# ----------------------------------------------------------------------------- writing


def session_url_templates() -> tuple[str, str]:
    """The session page and transcript URLs with a placeholder: one reverse() per sample."""
    marker = "00000000-0000-4000-8000-000000000000"
    html = reverse("session", args=[marker]).replace(marker, "{}")
    jsonl = reverse("api-transcript", args=[marker]).replace(marker, "{}")
    return html, jsonl


def _process_dict(p: ProcessDetail) -> dict:
    return p.to_dict()


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
                "last_tool_call": live.last_tool_call,
                "idle_since": live.idle_since.isoformat() if live.idle_since else None,
                "running_cost_usd": live.running_cost_usd,
                "transcript_bytes": live.transcript_bytes,
                "processes": [_process_dict(p) for p in live.processes],
            }
            for live in snapshot.sessions
        ],
        "leftovers": [
            {
                "session_id": run.session_id,
                "script_tag": run.script_tag,
                "host": run.host,
                "ended_at": run.ended_at.isoformat(),
                "processes": [_process_dict(p) for p in run.processes],
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
    from sessions_app.runs import run_from_live, run_payload

    html, jsonl = session_url_templates()
    sessions = []
    for live in snapshot.sessions:
        payload = run_payload(run_from_live(live), urls=False)
        payload["html_url"] = html.format(live.session_id)
        payload["jsonl_url"] = jsonl.format(live.session_id)
        payload["wrapped"] = live.wrapped
        payload["idle_since"] = live.idle_since.isoformat() if live.idle_since else None
        payload["running_cost_usd"] = live.running_cost_usd
        sessions.append(payload)
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
                "processes": [
                    {
                        "pid": p.pid,
                        "cmdline": p.cmdline,
                        "started": p.started,
                        "cpu_percent": p.cpu_percent,
                        "rss": p.rss,
                    }
                    for p in run.processes
                ],
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
    """The copy the live view falls back on when the database cannot be read."""
    path = local_sample_path()
    ensure_private_dir(path.parent)
    write_json_atomic(
        path,
        {
            "host": published.host,
            "seq": published.seq,
            "taken_at": published.taken_at.isoformat(),
            "interval_seconds": published.interval_seconds,
            "sample_ms": published.sample_ms,
            "etag": published.etag,
            "monitor_pid": published.monitor_pid,
            "api_document": published.api_document,
            "state_document": published.state_document,
        },
    )


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
    """Not older than three sample intervals: its monitor is alive."""
    now = now or datetime.now(UTC)
    return (now - item.taken_at).total_seconds() <= 3 * item.interval_seconds


def read_local_sample() -> Published | None:
    """The monitor's local copy of its latest sample, or None if there is none to trust."""
    path = local_sample_path()
    try:
        data = _read_large_record(path)
    except (FormatError, OSError):
        return None
    try:
        return Published(
            host=str(data["host"]),
            seq=int(data["seq"]),
            taken_at=parse_iso(data["taken_at"]),
            interval_seconds=float(data["interval_seconds"]),
            sample_ms=float(data.get("sample_ms") or 0.0),
            etag=str(data["etag"]),
            api_document=str(data["api_document"]),
            state_document=str(data["state_document"]),
            monitor_pid=data.get("monitor_pid"),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _read_large_record(path: Path) -> dict:
    """Like the protocol's record reader (no links, ours only), without its 64 KB cap."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    with os.fdopen(os.open(path, flags), "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            raise FormatError("not a regular file of ours")
        data = json.loads(handle.read(256 * 1024 * 1024))
    if not isinstance(data, dict):
        raise FormatError("not a JSON object")
    return data


_HEAD_FIELDS = ("seq", "etag", "taken_at", "interval_seconds")


class PublishedReader:
    """What a web process knows of the latest sample, re-parsed only when `seq` moves."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._published: Published | None = None
        self._snapshot: Snapshot | None = None

    def head(self, host: str) -> tuple[int, str, datetime, float] | None:
        """(seq, etag, taken_at, interval) of the host's row: one small indexed query."""
        row = HostSample.objects.filter(host=host).values_list(*_HEAD_FIELDS).first()
        return row

    def head_or_none(self, host: str) -> tuple[int, str, datetime, float] | None:
        """The head, or None when there is none or the database cannot say."""
        try:
            return self.head(host)
        except DatabaseError:
            return None

    def published(self, host: str) -> tuple[Published | None, str]:
        """The latest sample and where it came from ("monitor" or "local")."""
        try:
            head = self.head(host)
        except DatabaseError:
            return self._from_local(host), "local"
        if head is None:
            return None, "monitor"
        seq = head[0]
        current = self._published
        if current is not None and current.host == host and current.seq == seq:
            current.taken_at = head[2]
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
        )
        with self._lock:
            self._published, self._snapshot = published, None
        return published, "monitor"

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
        with self._lock:
            if source == "monitor":
                self._snapshot = snapshot
        return snapshot


reader = PublishedReader()
