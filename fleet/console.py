"""Many hosts, one console: what the console does with a host's report.

A reporting host's monitor posts its sample, its unacknowledged events and the
completion records in its spool (fleet.reporting), and the origins of its live runs,
which the console ties to their jobs (fleet.report_origins). `receive_report` records them
exactly as a console's own monitor would (the same ingest code, idempotent by session
id and event key), writes the host's HostSample row, and answers with what it recorded,
what it refused (fleet.report_items: item by item, kept with why in RefusedItem) and
the operator requests waiting for the host.

Each item is recorded in a savepoint of its own: a value the database will not take
refuses that item, never the report. Only a database that is away (OperationalError,
InterfaceError) fails the whole report, and the host sends it again.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from datetime import datetime

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from fleet.budgets import (
    Budgets,
)
from fleet.host_requests import deliver_actions, finish_action
from fleet.report import HOST_RULE_ACTOR
from fleet.report_items import Parsed, Refusal, ReportRejected, one_item, parse_report
from fleet.report_origins import origins_done, tie_origins
from fleet.report_sample import (
    close_lost_rows,
    held_sample,
    lost_rows_due,
    runs_to_record,
    write_sample,
)
from fleet.report_transcripts import store_transcripts
from fleet.telemetry_items import span_key
from jobs_app.linking import job_id_for, job_index
from jobs_app.models import AuditEntry, Job
from monitor_app.events import EventOutbox
from monitor_app.job_status import record_collections
from monitor_app.models import (
    RefusedItem,
    own_host_problem,
)
from monitor_app.monitor import add_end_event
from sessions_app import ingest
from sessions_app.database import DATABASE_AWAY
from sessions_app.models import (
    LIVE_STATUSES,
    RunTelemetry,
    Session,
    Status,
    TelemetrySpan,
    leftover_members,
    leftover_record,
)
from sessions_app.telemetry_records import write_rollups, write_spans

log = logging.getLogger(__name__)

__all__ = ["ReportRejected", "receive_report"]

# Refused items written per report; the rest are counted in one row (an attack of a
# million bad events costs a million rows nowhere).
MAX_REFUSALS_KEPT = 100
MAX_REFUSALS_ANSWERED = 1000


def receive_report(
    payload: object, host: str, received_at: datetime | None = None, limits: Budgets | None = None
) -> dict:
    """Record one report of `host`; the answer (acks, refusals and requests).
    ReportRejected only when it is not a report of this host at all."""
    received_at = received_at or timezone.now()
    problem = own_host_problem(host)
    if problem:  # whatever the token: the console's own runs are its own monitor's
        raise ReportRejected(problem, 403)
    limits = limits or Budgets.from_settings()
    parsed = parse_report(
        payload,
        host,
        sessions_per_report=limits.sessions_per_report,
        jobs_per_report=limits.jobs_per_host,
        held=held_sample(payload, host),
    )
    with transaction.atomic():
        parsed.drop_sessions(owners_elsewhere(parsed.named_sessions(), host))
        parsed.drop_telemetry(telemetry_owners_elsewhere(parsed, host))
        refused_before = list(parsed.refused)
        # Almost every report records cleanly: try it whole, in one savepoint, and only
        # when the database refuses something go again item by item (a savepoint each),
        # so a clean report costs what it did before items could be refused.
        try:
            with transaction.atomic():
                answer = _record(parsed, payload, host, received_at, limits)
        except DATABASE_AWAY:
            raise
        except Exception as exc:
            log.info("report of %s recorded item by item: %s", host, exc)
            parsed.refused, parsed.one_by_one = refused_before, True
            answer = _record(parsed, payload, host, received_at, limits)
        record_refusals(parsed.refused, host, received_at)
    return answer


def owners_elsewhere(ids: set[str], host: str) -> dict[str, str]:
    """Session ids another host recorded first, with that host: a session id belongs
    to the host that first recorded it."""
    if not ids:
        return {}
    # Unordered: ordering by the model's default would make PostgreSQL walk every
    # session newest first looking for ones that are not there.
    rows = (
        Session.objects.filter(session_id__in=list(ids))
        .exclude(host=host)
        .order_by()
        .values_list("session_id", "host")
    )
    return {str(session_id): owner for session_id, owner in rows}


def telemetry_owners_elsewhere(parsed: Parsed, host: str) -> dict[str, str]:
    """Sessions whose telemetry another host put on record, and traces another host's
    telemetry is in (for the spans of no session): a run's telemetry, like the run, is
    its host's alone."""
    ids = {r.session_id for r in parsed.rollups} | {
        s["session_id"] for s in parsed.spans if s["session_id"]
    }
    traces = {s["trace_id"] for s in parsed.spans if not s["session_id"]}
    owners: dict[str, str] = {}
    if ids:
        rows = RunTelemetry.objects.filter(session_id__in=list(ids)).exclude(host=host)
        owners |= {str(sid): owner for sid, owner in rows.values_list("session_id", "host")}
    if traces:
        for model in (RunTelemetry, TelemetrySpan):
            rows = model.objects.filter(trace_id__in=list(traces)).exclude(host=host).order_by()
            owners |= dict(rows.values_list("trace_id", "host").distinct())
    return owners


def record_telemetry(parsed: Parsed, host: str) -> None:
    """The host's rollups and spans on record (sessions_app.telemetry), in one batch of
    each; item by item, a savepoint each, when the report is taken so."""
    refused: list[str] = []
    if parsed.one_by_one:
        for rollup in parsed.rollups:
            key, item = rollup.session_id, rollup.to_dict()
            written = one_item(parsed, "telemetry_rollup", key, item, write_rollups, [rollup], host)
            refused += written.refused if written is not None else []
        for span in parsed.spans:
            one_item(parsed, "telemetry_span", span_key(span), span, write_spans, [span], host)
    else:
        refused = write_rollups(parsed.rollups, host).refused
        write_spans(parsed.spans, host)
    for session_id in refused:  # another host's telemetry, come in since the check
        reason = f"session {session_id}'s telemetry is on record for another host"
        parsed.refuse("telemetry_rollup", session_id, reason, None, 409)


def _record(
    parsed: Parsed,
    payload: dict,
    host: str,
    received_at: datetime,
    limits: Budgets,
) -> dict:
    now = received_at
    outbox = EventOutbox(host, None)
    recorded: list[str] = []
    for result in parsed.results:
        one_item(parsed, "result", result.get("id"), result, finish_action, result, host, now)
    for stop in parsed.stops:
        # The host's watchdog is stopping it: on record before its completion record.
        one_item(parsed, "stop", stop["session_id"], stop, record_host_stop, stop, host)
    for audit in parsed.audits:
        one_item(parsed, "audit", audit["target"], audit, record_host_audit, audit, host)
    for record in parsed.completions:
        # The host's archive is on the host: the console's copy is set below
        # (store_transcripts), and nothing is ever written to a path a host names.
        record = replace(record, archive_path=None)
        session = one_item(
            parsed,
            "completion",
            record.session_id,
            asdict(record),
            ingest.record_completion,
            record,
        )
        if session is not None:
            add_end_event(outbox, session, now)
            recorded.append(record.session_id)
    for sidecar in parsed.vanished:
        if one_item(
            parsed,
            "vanished",
            sidecar.session_id,
            sidecar.to_dict(),
            record_vanished,
            sidecar,
            outbox,
            now,
        ):
            recorded.append(sidecar.session_id)
    for sidecar, status, ended_at in parsed.endings:
        if one_item(
            parsed,
            "ending",
            sidecar.session_id,
            sidecar.to_dict(),
            record_ending,
            sidecar,
            status,
            ended_at,
            outbox,
        ):
            recorded.append(sidecar.session_id)
    for session_id, members in parsed.leftovers.items():
        one_item(
            parsed,
            "leftovers",
            session_id,
            members,
            record_leftovers,
            session_id,
            members,
            host,
        )
    if parsed.jobs is not None:
        most = limits.jobs_per_host
        unrecorded = one_item(
            parsed, "job", "jobs", None, record_collections, parsed.jobs, now, host, most
        )
        for job in unrecorded or ():  # a host naming new labels in every report
            reason = (
                f"{host} has {most} jobs on record, the most one host may have "
                "(OPSCONSOLE_HOST_JOBS): delete gone ones in the console's admin"
            )
            parsed.refuse("job", job.label, reason, None, 413)
    # After the collection (a cron entry just collected names its job), before the sample
    # and the live rows (they carry the links).
    tie_origins(parsed, host, now)
    current = parsed.snapshot is not None and one_item(
        parsed,
        "sample",
        parsed.sample.get("seq"),
        None,
        write_sample,
        parsed,
        host,
        payload.get("monitor_version", ""),
        received_at,
    )
    if current:
        # A replayed older sample is not the host's present: nothing live or lost from it.
        snapshot = parsed.snapshot
        one_item(parsed, "live", "sample", None, ingest.record_live, runs_to_record(parsed))
        if snapshot.active_dir_error is None and lost_rows_due(parsed, received_at):
            close_lost_rows(snapshot, host, set(recorded), now)
    if parsed.rollups or parsed.spans:
        record_telemetry(parsed, host)
    flush_events(parsed, outbox)
    held, paused = store_transcripts(parsed, host, recorded, limits, now)
    refused = parsed.refused
    refused_events = {r.key for r in refused if r.kind == "event"}
    return {
        "ok": True,
        "ack": {
            "sessions": recorded,
            # Completion records refused: the host moves them to spool/rejected/.
            "rejected": [r.key for r in refused if r.kind == "completion"],
            "refused": [r.answer() for r in refused[:MAX_REFUSALS_ANSWERED]],
            "events": [e.dedupe_key for e in parsed.events if e.dedupe_key not in refused_events],
            "transcripts": held,
            "transcripts_paused_seconds": paused,
            # Origins of runs now on record (tied to their job, or naming none of ours).
            "origins": origins_done(parsed, host),
            # Telemetry items read (taken or refused): the host lets that many go.
            "telemetry": {
                name: len(payload[name]) if isinstance(payload.get(name), list) else 0
                for name in ("telemetry_rollups", "telemetry_spans")
            },
        },
        "actions": deliver_actions(host, now),
        "policy": host_policy(host),
        "received_at": received_at.isoformat(),
        # The sample the console now holds for the host: its next may be a delta of it.
        "base": {"seq": parsed.sample["seq"], "monitor_pid": parsed.snapshot_pid}
        if current
        else None,
    }


def record_vanished(sidecar, outbox: EventOutbox, now: datetime) -> bool:
    existing = Session.objects.filter(session_id=sidecar.session_id).first()
    if existing is None or existing.status in (*LIVE_STATUSES, Status.UNKNOWN):
        session = ingest.record_vanished(sidecar, settings.OPSCONSOLE_STATE, None, now=now)
        add_end_event(outbox, session, now)
    return True


def record_ending(sidecar, status: str, ended_at: datetime, outbox: EventOutbox) -> bool:
    session = ingest.record_unwrapped_end(
        sidecar, status, ended_at, settings.OPSCONSOLE_STATE, None
    )
    if session.status == status:
        add_end_event(outbox, session, ended_at)
    return True


def record_host_stop(stop: dict, host: str) -> None:
    Session.objects.filter(
        session_id=stop["session_id"], host=host, status__in=LIVE_STATUSES
    ).update(stopped_by=HOST_RULE_ACTOR, end_reason=str(stop.get("reason") or "watchdog")[:32])


def flush_events(parsed: Parsed, outbox: EventOutbox) -> None:
    """The host's events with those of this report's records, in one insert; when the
    database refuses the batch, one by one, so only the bad ones are refused."""
    own = list(outbox.pending)
    outbox.pending.extend(parsed.events)
    if not outbox.pending:
        return
    if not parsed.one_by_one:
        outbox.flush()
        return
    try:
        with transaction.atomic():
            outbox.flush()
        return
    except DATABASE_AWAY:
        raise
    except Exception:
        outbox.pending = []
    for event in own + parsed.events:
        outbox.pending = [event]
        one_item(parsed, "event", event.dedupe_key, asdict(event), outbox.flush)
    outbox.pending = []


def record_refusals(refused: list[Refusal], host: str, now: datetime) -> None:
    """What the console did not record, kept with why (the Hosts page, the admin)."""
    kept, more = refused[:MAX_REFUSALS_KEPT], refused[MAX_REFUSALS_KEPT:]
    if more:
        kept.append(Refusal("more", "more", f"{len(more)} more refused items in one report", None))
    for refusal in kept:
        if refusal.status == 429:
            continue  # not refused for good: sent again when the budget allows
        values = {"reason": refusal.reason, "last_at": now, "item": refusal.item_text()}
        rows = RefusedItem.objects.filter(host=host, kind=refusal.kind, key=refusal.key)
        if rows.update(count=F("count") + 1, **values):
            continue
        try:
            with transaction.atomic():
                RefusedItem.objects.create(
                    host=host, kind=refusal.kind, key=refusal.key, first_at=now, **values
                )
        except IntegrityError:  # the same item refused in a report of the host's at once
            rows.update(count=F("count") + 1, **values)


def record_leftovers(session_id: str, members: list, host: str) -> None:
    Session.objects.filter(session_id=session_id, host=host).update(
        leftovers=clean_leftovers(members)
    )


def clean_leftovers(members: list) -> list[dict]:
    """Leftover processes as the Session row keeps them: pid, start time, command line."""
    found = leftover_members(members, limit=1000)
    return leftover_record({key: cmdline[:2000] for key, cmdline in found.items()})


def record_host_audit(audit: dict, host: str) -> None:
    """What a host's own rules did (the watchdog, the leftover rule), in the audit log:
    checked to be that rule's (fleet.report_items), and said to be this host's."""
    tag = str(audit.get("script_tag") or "")
    detail = audit.get("detail") if isinstance(audit.get("detail"), dict) else {}
    AuditEntry.objects.create(
        actor=HOST_RULE_ACTOR,
        action=audit["action"],
        job_id=job_id_for(host, tag) if tag else None,
        target=audit["target"],
        ok=bool(audit.get("ok")),
        output=str(audit.get("output") or "")[-20_000:],
        detail={**detail, "host": host},
    )


def host_policy(host: str) -> dict:
    """The console's rules for a host's runs: per tag, its job's time limit, leftover
    rule and output checks, and the defaults for runs of no job."""
    ids = {job_id for (job_host, _tag), job_id in job_index().items() if job_host == host}
    jobs = Job.objects.in_bulk(ids) if ids else {}
    tags = {}
    for (job_host, tag), job_id in job_index().items():
        job = jobs.get(job_id)
        if job_host == host and job is not None:
            tags[tag] = {
                "max_runtime_minutes": job.max_runtime_minutes,
                "kill_leftovers": job.kill_leftovers,
                # Judged by the host when a run ends (sessions_app.output_checks).
                "checks": job.output_checks(),
            }
    return {
        "default_max_runtime_minutes": settings.OPSCONSOLE_DEFAULT_MAX_RUNTIME_MINUTES,
        "kill_leftovers": settings.OPSCONSOLE_KILL_LEFTOVERS,
        "leftover_grace_seconds": settings.OPSCONSOLE_LEFTOVER_GRACE_SECONDS,
        "tags": tags,
    }
