"""A run's telemetry on record: its rollup in segments (`RunTelemetry`), its spans
(`TelemetrySpan`), written for one host in a few statements, read back summed, and
pruned. The rollup itself and the rules read from it are in sessions_app.telemetry."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import connections, router, transaction
from django.db.models import Exists, OuterRef, Q

from sessions_app.models import RunTelemetry, Session, TelemetrySpan
from sessions_app.telemetry import Rollup, ns_to_datetime
from wrapper.formats import clean_text

# --------------------------------------------------------------------------- on record


@dataclass
class Written:
    rollups: int = 0
    spans: int = 0
    refused: list[str] = field(default_factory=list)  # session ids another host owns


def write_rollups(rollups: list[Rollup], host: str) -> Written:
    """Put rollups on record for `host`: a few statements, however many. A session that
    another host's run or telemetry owns is refused (its id in `refused`), never merged."""
    written = Written()
    if not rollups:
        return written
    ids = [r.session_id for r in rollups]
    on_record = {str(t.session_id): t for t in RunTelemetry.objects.filter(session_id__in=ids)}
    owners = {sid: row.host for sid, row in on_record.items()}
    existing = {sid: row for sid, row in on_record.items() if row.host == host}
    sessions = {
        str(sid): (pk, owner, cost, tag)
        for sid, pk, owner, cost, tag in Session.objects.filter(session_id__in=ids).values_list(
            "session_id", "id", "host", "cost_telemetry_usd", "script_tag"
        )
    }
    creates, updates, costs = [], [], []
    for rollup in rollups:
        sid = rollup.session_id
        run_host = sessions.get(sid, (None, host, None, ""))[1] or host
        if owners.get(sid, host) != host or run_host != host:
            written.refused.append(sid)
            continue
        row = existing.get(sid) or RunTelemetry(session_id=sid, host=host)
        stored, total = with_segment(row.rollup, rollup)
        fill_row(row, total)
        row.rollup = stored
        # The job a row counts under (/metrics) is its run's, never what the sender's
        # resource attributes claim: unknown until the run is on record.
        row.job_tag = sessions[sid][3] if sid in sessions else ""
        (updates if row.pk else creates).append(row)
        if sid in sessions and sessions[sid][2] != row.cost_usd:  # most records cost nothing
            costs.append(Session(id=sessions[sid][0], cost_telemetry_usd=row.cost_usd))
    RunTelemetry.objects.bulk_create(creates, ignore_conflicts=True)
    # This host's rows, rewritten as one upsert: bulk_update's CASE per column costs
    # seconds for 200 rows (a report's worth), the upsert a tenth of a second.
    RunTelemetry.objects.bulk_create(
        updates, update_conflicts=True, unique_fields=["session_id"], update_fields=ROLLUP_COLUMNS
    )
    Session.objects.bulk_update(costs, ["cost_telemetry_usd"])
    written.rollups = len(creates) + len(updates)
    return written


# Segments a row keeps; past this the two oldest are added into one.
SEGMENTS_KEPT = 8


def segments_of(stored: dict[str, Any]) -> dict[str, Rollup]:
    """A row's rollup segments ({} when none); a row from before segments is one."""
    if not isinstance(stored, dict):
        return {}
    raw = stored.get("segments") if "segments" in stored else {"0": stored} if stored else {}
    segments = {}
    for key, value in (raw or {}).items():
        try:
            segments[str(key)] = Rollup.from_dict(value)
        except (TypeError, ValueError):
            continue
    return segments


def stored_rollup(stored: dict[str, Any]) -> Rollup | None:
    """The whole run's rollup: its segments added up (None when there are none)."""
    segments = sorted(segments_of(stored).values(), key=lambda r: r.first_ns)
    if not segments:
        return None
    total = segments[0].copy()
    for segment in segments[1:]:
        total.add(segment)
    return total


def with_segment(stored: dict[str, Any], rollup: Rollup) -> tuple[dict[str, Any], Rollup]:
    """The row's rollup JSON with `rollup` put in as its segment, and the new total."""
    segments = segments_of(stored)
    segments[rollup.segment] = rollup
    while len(segments) > SEGMENTS_KEPT:
        oldest, older = sorted(segments, key=lambda k: segments[k].first_ns)[:2]
        merged = segments.pop(oldest).copy()
        merged.add(segments.pop(older))
        merged.segment = oldest
        segments[oldest] = merged
    total = stored_rollup({"segments": {k: r.to_dict() for k, r in segments.items()}})
    return {"segments": {k: r.to_dict() for k, r in segments.items()}}, total


ROLLUP_COLUMNS = [
    "job_tag",
    "trace_id",
    "cost_usd",
    "api_requests",
    "api_errors",
    "tool_calls",
    "tool_failures",
    "ttft_p50_ms",
    "ttft_p95_ms",
    "input_tokens",
    "output_tokens",
    "last_event_at",
    "rollup",
]


def fill_row(row: RunTelemetry, rollup: Rollup) -> None:
    p50, p95 = rollup.ttft_percentiles()
    row.trace_id = rollup.trace_id
    row.cost_usd = Decimal(str(round(min(rollup.cost_usd, 10**6 - 1), 6)))
    row.api_requests = rollup.api_requests
    row.api_errors = rollup.api_errors
    row.tool_calls = rollup.tool_calls
    row.tool_failures = rollup.tool_failures
    row.ttft_p50_ms, row.ttft_p95_ms = p50, p95
    row.input_tokens = rollup.input_tokens
    row.output_tokens = rollup.output_tokens
    row.last_event_at = ns_to_datetime(rollup.last_ns) if rollup.last_ns else None


def write_spans(rows: list[dict[str, Any]], host: str) -> int:
    """Spans on record for `host`; a span already there (same trace and span id) is kept as
    it was. Spans naming a session another host owns are left out."""
    ids = {r["session_id"] for r in rows if r.get("session_id")}
    foreign = set()
    if ids:
        foreign = {
            str(s)
            for s in Session.objects.filter(session_id__in=ids)
            .exclude(host=host)
            .values_list("session_id", flat=True)
        }
    kept = [r for r in rows if r.get("session_id") not in foreign]
    if kept:
        insert_spans(kept, host)
    return len(kept)


SPAN_COLUMNS = (
    "trace_id",
    "span_id",
    "parent_span_id",
    "session_id",
    "host",
    "name",
    "start_at",
    "duration_ms",
    "error",
    "attributes",
)
SPANS_PER_STATEMENT = 500


def insert_spans(rows: list[dict[str, Any]], host: str) -> None:
    """`INSERT ... ON CONFLICT (trace_id, span_id) DO NOTHING` (SQLite and PostgreSQL alike)
    run over the rows, each value adapted by its own field: bulk_create's model objects
    and SQL compiler were most of the time of a sample's 400 spans."""
    connection = connections[router.db_for_write(TelemetrySpan)]
    fields = [TelemetrySpan._meta.get_field(name) for name in SPAN_COLUMNS]
    table = connection.ops.quote_name(TelemetrySpan._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(field.column) for field in fields)
    sql = (
        f"INSERT INTO {table} ({columns}) VALUES ({', '.join(['%s'] * len(fields))}) "  # noqa: S608 (our constants)
        "ON CONFLICT (trace_id, span_id) DO NOTHING"
    )
    session_ids: dict[Any, Any] = {}  # a batch names few runs: each adapted once
    session_field, start_field, attributes_field = fields[3], fields[6], fields[9]
    host = fields[4].get_db_prep_save(host, connection)
    params = []
    for r in rows:
        sid = r.get("session_id")
        if sid not in session_ids:
            session_ids[sid] = session_field.get_db_prep_save(sid, connection)
        params.append(
            (
                clean_text(r["trace_id"]),
                clean_text(r["span_id"]),
                clean_text(r.get("parent_span_id") or ""),
                session_ids[sid],
                host,
                clean_text(r["name"]),
                start_field.get_db_prep_save(ns_to_datetime(r["start_ns"]), connection),
                float(r["duration_ms"]),
                bool(r.get("error")),
                attributes_field.get_db_prep_save(r.get("attributes") or {}, connection),
            )
        )
    with transaction.atomic(using=connection.alias, savepoint=False), connection.cursor() as cursor:
        for start in range(0, len(params), SPANS_PER_STATEMENT):
            cursor.executemany(sql, params[start : start + SPANS_PER_STATEMENT])


def prune_spans(keep: timedelta, now: datetime) -> int:
    """Spans past their days, and rollups of sessions that never came on record here."""
    deleted, _ = TelemetrySpan.objects.filter(start_at__lt=now - keep).delete()
    runs = Session.objects.filter(session_id=OuterRef("session_id"))
    orphans, _ = (
        RunTelemetry.objects.filter(updated_at__lt=now - keep).filter(~Exists(runs)).delete()
    )
    return deleted + orphans


def run_spans(rollup_trace: str, session_id: str) -> list[TelemetrySpan]:
    """The spans of one run's timeline: its own, and the wrapper's spans of its fire."""
    query = Q(session_id=session_id)
    if rollup_trace:
        query |= Q(trace_id=rollup_trace, session_id__isnull=True)
    return list(TelemetrySpan.objects.filter(query).order_by("start_at", "id")[:2000])
