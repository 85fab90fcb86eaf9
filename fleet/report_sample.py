"""The host's sample on record (its HostSample row), from a report: written whole from a
full sample, or from a delta of the one on record (fleet.sample_delta), which is read
from the database (never from a console's memory) so that any console behind a load
balancer takes any report; and the runs on record that the sample shows live or lost.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import Q

from fleet.report_items import Parsed
from fleet.report_origins import jobs_of_live_runs
from fleet.sample_delta import HeldSample
from monitor_app import published
from monitor_app.models import HostSample
from monitor_app.monitor import STALE_LIVE_ROW_GRACE
from monitor_app.snapshot import Snapshot, silent_after_seconds
from sessions_app.models import LIVE_STATUSES, Session, Status


def held_sample(payload: object, host: str) -> HeldSample | None:
    """The host's sample on record, when its report sends the next one as a delta of it
    (fleet.sample_delta): read before the report's transaction, and written only if it
    is still the one on record (write_sample)."""
    sample = payload.get("sample") if isinstance(payload, dict) else None
    if not isinstance(sample, dict) or "base" not in sample:
        return None
    # Asked by every delta and heartbeat: as written (the ORM built it at three times
    # the CPU; docs/scale.md), the fields still made Python values by Django.
    rows = HostSample.objects.raw(
        "SELECT id, seq, monitor_pid, state_document, received_at "  # noqa: S608 - the model's own table
        f"FROM {HostSample._meta.db_table} WHERE host = %s",
        [host],
    )
    for row in rows:
        return HeldSample(row.seq, row.monitor_pid, row.state_document, row.received_at)
    return None


def runs_to_record(parsed: Parsed) -> list:
    """The live runs whose rows may need writing: all of a full sample's; of a delta,
    those it added or whose state it changed (the rest were recorded when they came)."""
    sessions = parsed.snapshot.sessions
    if parsed.applied is None:
        return sessions
    return [live for live in sessions if live.session_id in parsed.applied.restated]


def lost_rows_due(parsed: Parsed, received_at: datetime) -> bool:
    """Whether to look for rows the sample no longer names (close_lost_rows): with a full
    sample, a delta that ended runs, and once a minute of the console's clock besides, for
    a run that left while too young to call lost (STALE_LIVE_ROW_GRACE)."""
    held = parsed.held
    if parsed.applied is None or parsed.applied.removed or held.received_at is None:
        return True
    return received_at.timestamp() // 60 != held.received_at.timestamp() // 60


def clock_skew_seconds(parsed: Parsed, received_at: datetime) -> float:
    """The host's clock less the console's, from when the host sent the report: the
    sample's own time is older by the sample's duration, which a loaded host makes long."""
    sent_at = parsed.sent_at or parsed.snapshot.taken_at
    return round((sent_at - received_at).total_seconds(), 3)


def write_sample(parsed: Parsed, host: str, version: object, received_at: datetime) -> bool:
    """The host's HostSample row, when this sample is newer than the one on record.
    Both documents are rebuilt here from the checked snapshot: what the console serves
    is what it validated (no session of another host, its own URLs), never the host's
    bytes as sent. False for a replayed or retried older sample."""
    sample = parsed.sample
    snapshot = parsed.snapshot
    snapshot.interval_seconds = float(sample["interval_seconds"])
    jobs_of_live_runs(snapshot, host)
    pid = parsed.snapshot_pid
    document = published.build(snapshot, host, int(sample["seq"]), pid)
    taken_at = document.taken_at
    values = {
        "seq": document.seq,
        "taken_at": taken_at,
        "interval_seconds": document.interval_seconds,
        "sample_ms": document.sample_ms,
        "monitor_pid": pid,
        "monitor_version": str(version)[:32],
        "etag": document.etag,
        "api_document": document.api_document,
        "state_document": document.state_document,
        "received_at": received_at,
        "clock_skew_seconds": clock_skew_seconds(parsed, received_at),
        "reported": True,
        "heartbeat_seconds": sample.get("heartbeat_seconds"),
    }
    held = parsed.held
    if parsed.applied is not None:  # a delta: of the sample on record, if it still is
        rows = HostSample.objects.filter(host=host, seq=held.seq, monitor_pid=held.monitor_pid)
        if rows.update(**values):
            return True
        reason = "the sample this delta changes was replaced meanwhile: send a full report"
        parsed.refuse("sample", document.seq, reason, None, 409)
        return False
    newer = newer_than_on_record(document.seq, pid, taken_at, received_at, document)
    if HostSample.objects.filter(newer, host=host).update(**values):
        return True
    if HostSample.objects.filter(host=host).exists():
        return False
    HostSample.objects.create(host=host, **values)
    return True


def newer_than_on_record(
    seq: int, pid: int | None, taken_at: datetime, received_at: datetime, document
) -> Q:
    """The row on record is older than this sample: the same monitor counts up; another
    monitor (a restart) must not have taken its sample before the one on record, so a
    replayed old report never turns a host back; unless the row on record has gone
    silent (by the console's clock), so a host whose clock was wrong and is put right
    is heard again within three intervals, never held back by its own future."""
    silent_for = timedelta(seconds=silent_after_seconds(document.interval_seconds))
    later = Q(taken_at__lte=taken_at) | Q(received_at__lte=received_at - silent_for)
    if pid is None:
        return later
    return Q(monitor_pid=pid, seq__lt=seq) | (~Q(monitor_pid=pid) & later)


def close_lost_rows(snapshot: Snapshot, host: str, recorded: set[str], now: datetime) -> None:
    """Rows of `host` marked live that its sample no longer names and nothing ended: the
    console lost sight of them (as the local monitor's own rule; a record arriving later
    still wins). One statement, however many."""
    live_ids = {s.session_id for s in snapshot.sessions} | recorded
    Session.objects.filter(
        status__in=LIVE_STATUSES, host=host, started_at__lt=now - STALE_LIVE_ROW_GRACE
    ).exclude(session_id__in=live_ids).update(
        status=Status.UNKNOWN,
        end_reason="lost",
        ended_at=now,
        error=f"The console lost sight of this run: {host}'s monitor no longer reports it "
        "and sent no completion record.",
    )
