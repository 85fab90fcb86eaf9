"""Recording events: durable across a database outage, and never twice.

The monitor adds events as it sees changes; `flush()` writes them in one bulk
insert that ignores keys already on record. While the database cannot be
written, pending events are also kept in a private file under OPSCONSOLE_HOME,
so a monitor restart during the outage loses none of them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from django.db import DatabaseError

from jobs_app.linking import job_id_for
from monitor_app.models import Event, EventKind
from sessions_app.models import Session
from wrapper.formats import ensure_private_dir, parse_iso, write_json_atomic

log = logging.getLogger(__name__)

# Past this many unwritten events (a very long outage), the oldest are dropped, loudly.
MAX_PENDING = 20_000


@dataclass
class PendingEvent:
    at: str  # ISO 8601
    host: str
    kind: str
    message: str
    dedupe_key: str
    session_id: str | None = None
    script_tag: str = ""
    status: str = ""
    detail: dict = field(default_factory=dict)


class EventOutbox:
    def __init__(self, host: str, spill_path: Path | None) -> None:
        self.host = host
        self.spill_path = spill_path
        self.pending: list[PendingEvent] = self._load_spill()

    def add(
        self,
        kind: EventKind,
        message: str,
        *,
        key: str,
        at: datetime,
        session_id: str | None = None,
        script_tag: str = "",
        status: str = "",
        detail: dict | None = None,
    ) -> None:
        self.pending.append(
            PendingEvent(
                at=at.isoformat(),
                host=self.host,
                kind=str(kind),
                message=message[:2000],
                dedupe_key=f"{self.host}:{key}"[:200],
                session_id=session_id,
                script_tag=script_tag[:100],
                status=str(status)[:16],
                detail=detail or {},
            )
        )
        if len(self.pending) > MAX_PENDING:
            dropped = len(self.pending) - MAX_PENDING
            log.error("event outbox full: dropping the %d oldest unwritten events", dropped)
            del self.pending[:dropped]

    def flush(self) -> int:
        """Write what is pending. DatabaseError propagates, with everything kept."""
        if not self.pending:
            return 0
        batch = list(self.pending)
        try:
            by_tag = [
                job_id_for(item.host, item.script_tag) if item.script_tag else None
                for item in batch
            ]
            tied = jobs_of_sessions(
                [item.session_id for item, job in zip(batch, by_tag, strict=True) if job is None]
            )
            rows = [
                Event(
                    at=parse_iso(item.at),
                    host=item.host,
                    kind=item.kind,
                    session_id=item.session_id,
                    job_id=job or tied.get(item.session_id or ""),
                    script_tag=item.script_tag,
                    status=item.status,
                    message=item.message,
                    detail=item.detail,
                    dedupe_key=item.dedupe_key,
                )
                for item, job in zip(batch, by_tag, strict=True)
            ]
            Event.objects.bulk_create(rows, ignore_conflicts=True, batch_size=500)
        except DatabaseError:
            self._spill()
            raise
        del self.pending[: len(batch)]
        if self.spill_path is not None and self.spill_path.exists():
            self.spill_path.unlink(missing_ok=True)
        return len(batch)

    def acknowledge(self, keys: set[str]) -> None:
        """Report mode: the console recorded these (by dedupe key); the rest stay pending."""
        if keys:
            self.pending = [e for e in self.pending if e.dedupe_key not in keys]
        self.save()

    def save(self) -> None:
        """Report mode keeps what is pending on disk at every change: there is no database
        to fall back on, and a restart must lose nothing."""
        if self.pending:
            self._spill()
        elif self.spill_path is not None:
            self.spill_path.unlink(missing_ok=True)

    def _spill(self) -> None:
        if self.spill_path is None:
            return
        try:
            ensure_private_dir(self.spill_path.parent)
            write_json_atomic(self.spill_path, {"events": [asdict(e) for e in self.pending]})
        except OSError as exc:
            log.error("cannot keep %d pending events on disk: %s", len(self.pending), exc)

    def _load_spill(self) -> list[PendingEvent]:
        if self.spill_path is None:
            return []
        try:
            data = json.loads(self.spill_path.read_text())
            return [PendingEvent(**item) for item in data["events"]]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("pending events in %s unreadable (%s); set aside", self.spill_path, exc)
            self.spill_path.rename(self.spill_path.with_suffix(".unreadable"))
            return []


def prune_events(older_than: timedelta, now: datetime) -> int:
    """Retention: events older than the cut-off are deleted (in batches, oldest first)."""
    deleted = 0
    cutoff = now - older_than
    while True:
        ids = list(
            Event.objects.filter(at__lt=cutoff).order_by("at").values_list("id", flat=True)[:5000]
        )
        if not ids:
            return deleted
        deleted += Event.objects.filter(id__in=ids).delete()[0]


def jobs_of_sessions(session_ids: list[str | None]) -> dict[str, int]:
    """Session id -> job, for runs their tag ties to no job but their processes did
    (monitor_app.job_join): an unwrapped run's events are its job's too."""
    ids = [sid for sid in session_ids if sid]
    if not ids:
        return {}
    rows = Session.objects.filter(session_id__in=ids, job__isnull=False)
    return {str(sid): job_id for sid, job_id in rows.values_list("session_id", "job_id")}
