"""Many hosts, one console: what the console does with reports, and the fleet's view.

A reporting host's monitor posts its sample, its unacknowledged events and the
completion records in its spool (fleet.reporting). `receive_report`
records them exactly as a console's own monitor would (the same ingest code,
idempotent by session id and event key), writes the host's HostSample row, and
answers with what it recorded and the operator requests waiting for the host.
Every row a report touches is checked to belong to the token's host.

One piece: the console's half of the report protocol, the mirror of fleet.reporting;
parsing, the host check and recording are one transaction's steps.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from jobs_app.collectors.base import CollectedJob, Collection
from jobs_app.linking import job_id_for, job_index
from jobs_app.models import AuditEntry, Job
from monitor_app import job_controls, published
from monitor_app.events import EventOutbox, PendingEvent
from monitor_app.job_controls import ActionResult, audited
from monitor_app.job_status import record_collections
from monitor_app.models import Event, EventKind, HostSample, RemoteAction, own_host_problem
from monitor_app.monitor import STALE_LIVE_ROW_GRACE, add_end_event
from monitor_app.snapshot import Snapshot
from sessions_app import ingest, remote_transcripts
from sessions_app.models import (
    LIVE_STATUSES,
    Session,
    Status,
    leftover_members,
    leftover_record,
)
from sessions_app.remote_transcripts import MAX_CHUNK_BYTES
from wrapper.formats import FormatError, Sidecar, SpoolRecord, is_session_id, parse_iso

log = logging.getLogger(__name__)


class ReportRejected(Exception):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _require(condition: bool, message: str, status: int = 400) -> None:
    if not condition:
        raise ReportRejected(message, status)


def _check_host(named: object, host: str, what: str) -> None:
    if named != host:
        raise ReportRejected(f"this token is for host {host!r}; {what} names host {named!r}", 403)


@dataclass
class Parsed:
    sample: dict
    snapshot: Snapshot
    completions: list[SpoolRecord]
    rejected: list[str]
    vanished: list[Sidecar]
    endings: list[tuple[Sidecar, str, datetime]]
    leftovers: dict[str, list]
    events: list[PendingEvent]
    results: list[dict]
    transcripts: list[tuple[str, int, bytes]]
    jobs: list | None = None
    stops: list[dict] = field(default_factory=list)
    audits: list[dict] = field(default_factory=list)


def parse_report(payload: object, host: str) -> Parsed:
    """Validate a report against the token's host, before anything is written."""
    _require(isinstance(payload, dict), "a report is a JSON object")
    _require(payload.get("format") == 1, "unknown report format")
    _check_host(payload.get("host"), host, "the report")
    sample = payload.get("sample")
    _require(isinstance(sample, dict), "sample missing")
    try:
        api = json.loads(sample["api_document"])
        state = json.loads(sample["state_document"])
        snapshot = published.snapshot_from_state(state, seq=int(sample["seq"]), source="monitor")
        parse_iso(sample["taken_at"])
        float(sample["interval_seconds"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ReportRejected(f"sample unreadable: {exc}", 400) from exc
    _check_host(api.get("host"), host, "the sample")
    for live in snapshot.sessions:
        _check_host(live.sidecar.host, host, f"live session {live.session_id}")
    for run in snapshot.leftovers:
        _check_host(run.host, host, f"leftovers of {run.session_id}")
    completions, rejected = [], []
    for item in _list(payload, "completions"):
        try:
            record = SpoolRecord.from_dict(item)
        except (FormatError, TypeError) as exc:
            session_id = item.get("session_id") if isinstance(item, dict) else None
            log.warning("completion record from %s rejected: %s", host, exc)
            if isinstance(session_id, str):
                rejected.append(session_id)
            continue
        _check_host(record.host, host, f"completion record {record.session_id}")
        completions.append(record)
    vanished = [_sidecar(item, host) for item in _list(payload, "vanished")]
    endings = []
    for item in _list(payload, "endings"):
        try:
            status = item["status"]
            _require(status in (Status.EXITED, Status.KILLED), "ending status")
            endings.append((_sidecar(item["sidecar"], host), status, parse_iso(item["ended_at"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise ReportRejected(f"ending unreadable: {exc}", 400) from exc
    leftovers = payload.get("leftovers") or {}
    _require(isinstance(leftovers, dict), "leftovers is an object")
    events = []
    for item in _list(payload, "events"):
        try:
            event = PendingEvent(**item)
            parse_iso(event.at)
        except (TypeError, ValueError) as exc:
            raise ReportRejected(f"event unreadable: {exc}", 400) from exc
        _check_host(event.host, host, f"event {event.dedupe_key}")
        _require(event.kind in EventKind.values, f"unknown event kind {event.kind!r}")
        _require(
            event.dedupe_key.startswith(f"{host}:"), "an event's key starts with its host", 403
        )
        events.append(event)
    results = [r for r in _list(payload, "action_results") if isinstance(r, dict)]
    transcripts = []
    for item in _list(payload, "transcripts"):
        try:
            session_id, offset = item["session_id"], item["offset"]
            data = base64.b64decode(item["data"], validate=True)
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise ReportRejected(f"transcript chunk unreadable: {exc}", 400) from exc
        _require(is_session_id(session_id), "a transcript chunk names a session id")
        _require(isinstance(offset, int) and offset >= 0, "a chunk's offset is a byte count")
        _require(len(data) <= MAX_CHUNK_BYTES, "transcript chunk too large", 413)
        transcripts.append((session_id, offset, data))
    jobs = parse_jobs(payload.get("jobs"), host)
    stops = [
        s
        for s in _list(payload, "stops")
        if isinstance(s, dict) and is_session_id(s.get("session_id"))
    ]
    audits = [a for a in _list(payload, "audits") if isinstance(a, dict)]
    return Parsed(
        stops=stops,
        audits=audits,
        jobs=jobs,
        sample=sample,
        snapshot=snapshot,
        completions=completions,
        rejected=rejected,
        vanished=vanished,
        endings=endings,
        leftovers=leftovers,
        events=events,
        results=results,
        transcripts=transcripts,
    )


def parse_jobs(value: object, host: str):
    """A host's latest scheduler collection (jobs_app collectors, run on the host)."""
    if value is None:
        return None
    _require(isinstance(value, list), "jobs is a list of collections")
    collections = []
    for item in value:
        try:
            collection = Collection(
                scheduler=str(item["scheduler"])[:16],
                errors=[str(e)[:500] for e in item.get("errors") or []],
            )
            for job in item.get("jobs") or []:
                found = CollectedJob(**job)
                for name in ("next_run_at", "previous_run_at"):
                    raw = getattr(found, name)
                    setattr(found, name, parse_iso(raw) if raw else None)
                _check_host(found.host, host, f"job {found.label}")
                collection.jobs.append(found)
        except (KeyError, TypeError, ValueError) as exc:
            raise ReportRejected(f"job collection unreadable: {exc}", 400) from exc
        collections.append(collection)
    return collections


def _list(payload: dict, name: str) -> list:
    value = payload.get(name) or []
    _require(isinstance(value, list), f"{name} is a list")
    return value


def _sidecar(item: object, host: str) -> Sidecar:
    try:
        sidecar = Sidecar.from_dict(item)
    except (FormatError, TypeError) as exc:
        raise ReportRejected(f"sidecar unreadable: {exc}", 400) from exc
    _check_host(sidecar.host, host, f"session {sidecar.session_id}")
    return sidecar


def receive_report(payload: object, host: str, received_at: datetime | None = None) -> dict:
    """Record one report of `host`; the answer (acks and requests). ReportRejected if not."""
    received_at = received_at or timezone.now()
    problem = own_host_problem(host)
    if problem:  # whatever the token: the console's own runs are its own monitor's
        raise ReportRejected(problem, 403)
    parsed = parse_report(payload, host)
    with transaction.atomic():
        return _record(parsed, payload, host, received_at)


def _record(parsed: Parsed, payload: dict, host: str, received_at: datetime) -> dict:
    outbox = EventOutbox(host, None)
    recorded: list[str] = []
    # Sessions this host already has on record under another host are not its to write.
    ids = [r.session_id for r in parsed.completions] + [s.session_id for s in parsed.vanished]
    ids += [s.session_id for s, _, _ in parsed.endings] + list(parsed.leftovers)
    ids += [live.session_id for live in parsed.snapshot.sessions]
    ids += [session_id for session_id, _, _ in parsed.transcripts]
    ids += [stop["session_id"] for stop in parsed.stops]
    # Unordered: first() would sort by the model's ordering, and PostgreSQL may then walk
    # every session newest first looking for one that is not there (a millisecond a
    # report at a few thousand rows, and more with every run on record).
    foreign = (
        Session.objects.filter(session_id__in=[i for i in ids if is_session_id(i)])
        .exclude(host=host)
        .order_by()
        .values_list("session_id", flat=True)[:1]
    )
    if foreign:
        raise ReportRejected(f"session {foreign[0]} is on record for another host", 403)

    write_sample(parsed, host, payload.get("monitor_version", ""), received_at)
    now = received_at
    for result in parsed.results:
        finish_action(result, host, now)
    for stop in parsed.stops:
        # The host's watchdog is stopping it: on record before its completion record.
        Session.objects.filter(
            session_id=stop["session_id"], host=host, status__in=LIVE_STATUSES
        ).update(
            stopped_by=str(stop.get("actor") or "watchdog")[:150],
            end_reason=str(stop.get("reason") or "watchdog")[:32],
        )
    for audit in parsed.audits:
        record_host_audit(audit, host)
    for record in parsed.completions:
        session = ingest.record_completion(record)
        add_end_event(outbox, session, now)
        recorded.append(record.session_id)
    for sidecar in parsed.vanished:
        existing = Session.objects.filter(session_id=sidecar.session_id).first()
        if existing is None or existing.status in (*LIVE_STATUSES, Status.UNKNOWN):
            session = ingest.record_vanished(sidecar, settings.OPSCONSOLE_STATE, None, now=now)
            add_end_event(outbox, session, now)
        recorded.append(sidecar.session_id)
    for sidecar, status, ended_at in parsed.endings:
        session = ingest.record_unwrapped_end(
            sidecar, status, ended_at, settings.OPSCONSOLE_STATE, None
        )
        if session.status == status:
            add_end_event(outbox, session, ended_at)
        recorded.append(sidecar.session_id)
    for session_id, members in parsed.leftovers.items():
        if is_session_id(session_id) and isinstance(members, list):
            Session.objects.filter(session_id=session_id, host=host).update(
                leftovers=clean_leftovers(members)
            )
    ingest.record_live(parsed.snapshot.sessions)
    if parsed.snapshot.active_dir_error is None:
        close_lost_rows(parsed.snapshot, host, set(recorded), now)
    if parsed.jobs is not None:
        record_collections(parsed.jobs, now, host=host)
    outbox.pending.extend(parsed.events)
    outbox.flush()
    held = store_transcripts(parsed, host, recorded)
    return {
        "ok": True,
        "ack": {
            "sessions": recorded,
            "rejected": parsed.rejected,
            "events": [e.dedupe_key for e in parsed.events],
            "transcripts": held,
        },
        "actions": deliver_actions(host, now),
        "policy": host_policy(host),
        "received_at": received_at.isoformat(),
    }


def store_transcripts(parsed: Parsed, host: str, recorded: list[str]) -> dict[str, int]:
    """New transcript bytes into the console's copy; the Session row points at it, so the
    session page, tail and Range follower read it as an archived transcript."""
    held = {}
    for session_id, offset, data in parsed.transcripts:
        if not Session.objects.filter(session_id=session_id, host=host).exists():
            continue  # no row yet: the host sends it again with the next report
        held[session_id] = remote_transcripts.append_chunk(host, session_id, offset, data)
    for session_id in set(held) | set(recorded):
        path = remote_transcripts.local_path(host, session_id)
        if path is None and (held.get(session_id) or session_id in recorded):
            # Object storage: the console's own copy, never the host's path from its record.
            path = str(remote_transcripts.cache_path(host, session_id))
        if path is not None:
            Session.objects.filter(session_id=session_id, host=host).exclude(
                archive_path=path
            ).update(archive_path=path)
    return held


def clean_leftovers(members: list) -> list[dict]:
    """Leftover processes as the Session row keeps them: pid, start time, command line."""
    found = leftover_members(members, limit=1000)
    return leftover_record({key: cmdline[:2000] for key, cmdline in found.items()})


def record_host_audit(audit: dict, host: str) -> None:
    """What a host's own rules did (the watchdog, the leftover rule), in the audit log."""
    tag = str(audit.get("script_tag") or "")
    detail = audit.get("detail") if isinstance(audit.get("detail"), dict) else {}
    AuditEntry.objects.create(
        actor=str(audit.get("actor") or "watchdog")[:150],
        action=str(audit.get("action") or "")[:32],
        job_id=job_id_for(host, tag) if tag else None,
        target=str(audit.get("target") or "")[:2000],
        ok=bool(audit.get("ok")),
        output=str(audit.get("output") or "")[-20_000:],
        detail={**detail, "host": host},
    )


def host_policy(host: str) -> dict:
    """The console's rules for a host's runs: per tag, its job's time limit and
    leftover rule, and the defaults for runs of no job."""
    ids = {job_id for (job_host, _tag), job_id in job_index().items() if job_host == host}
    jobs = Job.objects.in_bulk(ids) if ids else {}
    tags = {}
    for (job_host, tag), job_id in job_index().items():
        job = jobs.get(job_id)
        if job_host == host and job is not None:
            tags[tag] = {
                "max_runtime_minutes": job.max_runtime_minutes,
                "kill_leftovers": job.kill_leftovers,
            }
    return {
        "default_max_runtime_minutes": settings.OPSCONSOLE_DEFAULT_MAX_RUNTIME_MINUTES,
        "kill_leftovers": settings.OPSCONSOLE_KILL_LEFTOVERS,
        "leftover_grace_seconds": settings.OPSCONSOLE_LEFTOVER_GRACE_SECONDS,
        "tags": tags,
    }


def write_sample(parsed: Parsed, host: str, version: object, received_at: datetime) -> None:
    """The host's HostSample row. Both documents are rebuilt here from the checked
    snapshot: what the console serves is what it validated (no session of another host,
    its own URLs), never the host's bytes as sent."""
    sample = parsed.sample
    snapshot = parsed.snapshot
    snapshot.interval_seconds = float(sample["interval_seconds"])
    pid = sample.get("monitor_pid")
    pid = pid if isinstance(pid, int) and not isinstance(pid, bool) else None
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
        "clock_skew_seconds": round((taken_at - received_at).total_seconds(), 3),
        "reported": True,
    }
    # Only a newer sample of the same monitor replaces the row (a retried old report must
    # not go back in time); a restarted monitor's always does (its clock may have gone back).
    newer = Q(seq__lte=values["seq"]) | ~Q(monitor_pid=pid) | Q(monitor_pid=None)
    updated = HostSample.objects.filter(newer, host=host).update(**values)
    if not updated and not HostSample.objects.filter(host=host).exists():
        HostSample.objects.get_or_create(host=host, defaults=values)


def close_lost_rows(snapshot: Snapshot, host: str, recorded: set[str], now: datetime) -> None:
    """Rows of `host` marked live that its sample no longer names and nothing ended: the
    console lost sight of them (as the local monitor's own rule; a record arriving later
    still wins)."""
    live_ids = {s.session_id for s in snapshot.sessions} | recorded
    lost = (
        Session.objects.filter(
            status__in=LIVE_STATUSES, host=host, started_at__lt=now - STALE_LIVE_ROW_GRACE
        )
        .exclude(session_id__in=live_ids)
        .values_list("pk", flat=True)
    )
    for pk in lost:
        Session.objects.filter(pk=pk, status__in=LIVE_STATUSES).update(
            status=Status.UNKNOWN,
            end_reason="lost",
            ended_at=now,
            error=f"The console lost sight of this run: {host}'s monitor no longer reports it "
            "and sent no completion record.",
        )


# ----------------------------------------------------------------------------- requests


def deliver_actions(host: str, now: datetime) -> list[dict]:
    """The host's pending requests, marked sent. Runs inside the report's transaction,
    which holds their locks; asked of every report and almost always empty, so the query
    is kept narrow (a job action's job is read only when there is one)."""
    with transaction.atomic(savepoint=False):
        rows = list(
            RemoteAction.objects.select_for_update().filter(
                host=host, state=RemoteAction.State.PENDING
            )
        )
        for action in rows:
            action.state, action.sent_at = RemoteAction.State.SENT, now
            action.save(update_fields=["state", "sent_at"])
            if action.kind == RemoteAction.Kind.STOP:
                # On record before the host acts, so the completion record keeps the reason.
                Session.objects.filter(
                    session_id=action.session_id, status__in=LIVE_STATUSES
                ).update(stopped_by=action.requested_by, end_reason="stopped")
    return [delivered(a) for a in rows]


def delivered(action: RemoteAction) -> dict:
    """A request as the host receives it. A job is named by scheduler and label only: the
    host acts on the job as its own collector last saw it, never on paths sent to it."""
    item = {
        "id": action.pk,
        "kind": action.kind,
        "session_id": str(action.session_id) if action.session_id else None,
        "requested_by": action.requested_by,
    }
    if action.is_job_action:
        job = action.job
        item["job"] = {"scheduler": job.scheduler, "label": job.label} if job else None
        item["arguments"] = action.arguments
    return item


def finish_action(result: dict, host: str, now: datetime) -> None:
    action = RemoteAction.objects.filter(pk=result.get("id"), host=host).select_related("job")
    action = action.first()
    if action is None or action.state not in RemoteAction.OPEN_STATES:
        return
    ok = bool(result.get("ok"))
    action.state = RemoteAction.State.DONE if ok else RemoteAction.State.FAILED
    action.finished_at = now
    action.message = str(result.get("message") or "")[:2000]
    if action.is_job_action:
        action.detail = {
            **plain_items(result.get("detail")),
            "exit_code": _int_or_none(result.get("exit_code")),
        }
    else:
        action.detail = {
            "terminated": result.get("terminated") or [],
            "killed": result.get("killed") or [],
        }
    action.save()
    if action.is_job_action:
        record_job_outcome(action, result, host)
    else:
        session = Session.objects.filter(session_id=action.session_id).select_related("job")
        session = session.first()
        AuditEntry.objects.create(
            actor=action.requested_by,
            action=action.kind,
            job=session.job if session else None,
            target=str(action.session_id or ""),
            ok=ok,
            output=action.message,
            detail={"host": host, "remote_action": action.pk, **action.detail},
        )
    Event.objects.get_or_create(
        dedupe_key=f"{host}:remote_action:{action.pk}"[:200],
        defaults={
            "at": now,
            "host": host,
            "kind": EventKind.REMOTE_ACTION,
            "session_id": action.session_id,
            "job": action.job,
            "status": action.state,
            "message": f"{action.get_kind_display()} asked by {action.requested_by}: "
            f"{action.message}"[:2000],
            "detail": {"remote_action": action.pk, "ok": ok},
        },
    )


def record_job_outcome(action: RemoteAction, result: dict, host: str) -> None:
    """What the host answered, on record as if done here (monitor_app.job_controls.record)."""
    outcome = ActionResult(
        ok=action.state == RemoteAction.State.DONE,
        message=f"{host} answered: {action.message}",
        exit_code=action.detail.get("exit_code"),
        output=str(result.get("output") or "")[-20_000:],
        detail={"host": host, "remote_action": action.pk, **action.detail},
    )
    if action.job is None:  # the job's row was deleted since: the answer is still on record
        audited(action.kind, None, action.requested_by, "", outcome)
        return
    schedule = action.arguments.get("schedule", "")
    job_controls.record(action.job, action.kind, action.requested_by, outcome, schedule)


def plain_items(value: object, most: int = 20) -> dict:
    """A host's detail (the run seen, a backup's path) as short plain values, bounded."""
    if not isinstance(value, dict):
        return {}
    items = {}
    for key, item in list(value.items())[:most]:
        if isinstance(item, str):
            items[str(key)[:64]] = item[:1000]
        elif item is None or isinstance(item, bool | int | float):
            items[str(key)[:64]] = item
    return items


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# ----------------------------------------------------------------------------- hosts


# ----------------------------------------------------------------------------- the fleet view
