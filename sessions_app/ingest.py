"""Getting runs on record: the wrapper's spool, and runs that vanished without one.

Idempotent by session id. A spool file is moved aside once recorded (into
spool/ingested/<day>/), a malformed one into spool/rejected/ with a
<name>.reason.txt beside it: nothing is deleted, so nothing is lost, and the next
pass only looks at what is new. One record that cannot be saved is quarantined
alone; only a database that cannot be reached stops the pass.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from django.db import transaction

from jobs_app.linking import job_id_for
from jobs_app.models import AuditEntry, Job
from sessions_app import output_checks, transcript_store
from sessions_app.database import DATABASE_AWAY
from sessions_app.models import LIVE_STATUSES, Session, Status
from wrapper.formats import (
    REASON_FIELDS,
    FormatError,
    Sidecar,
    SpoolRecord,
    StatePaths,
    copy_into_archive,
    ensure_private_dir,
    parse_iso,
    read_spool_record,
)

log = logging.getLogger(__name__)

END_REASON_STATUS = {
    "succeeded": Status.SUCCEEDED,
    "failed": Status.FAILED,
    "refused": Status.REFUSED,
    "quota_skip": Status.QUOTA_SKIP,
    "overlap_skip": Status.OVERLAP_SKIP,
    "signalled": Status.KILLED,
}

# Runs a policy decided, on record in the audit log too: (actor, action) by status.
POLICY_AUDITS = {
    Status.CHECK_FAILED: ("output-check", "check_failed"),
    Status.OVERLAP_SKIP: ("overlap-policy", "overlap_skip"),
}

USAGE_FIELDS = {
    "input_tokens": "input_tokens",
    "output_tokens": "output_tokens",
    "cache_read_input_tokens": "cache_read_tokens",
    "cache_creation_input_tokens": "cache_creation_tokens",
}


@dataclass
class IngestResult:
    recorded: int = 0
    sessions: list[Session] = field(default_factory=list)  # the rows just completed
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (file name, why)
    waiting: int = 0  # left in the spool by a `limit`, for the next pass


def pending_spool_files(paths: StatePaths) -> list[Path]:
    try:
        return sorted(
            entry
            for entry in paths.spool.iterdir()
            if entry.suffix == ".json" and not entry.name.startswith(".")
        )
    except (FileNotFoundError, NotADirectoryError):
        return []


def ingest_spool(
    paths: StatePaths,
    *,
    progress: Callable[[int, int], None] | None = None,
    limit: int | None = None,
) -> IngestResult:
    """Record the completion records waiting in the spool (the first `limit` of them, if
    given: the rest stay for the next pass). Database errors propagate."""
    result = IngestResult()
    files = pending_spool_files(paths)
    if limit is not None:
        files, result.waiting = files[:limit], max(0, len(files) - limit)
    for index, path in enumerate(files, start=1):
        ingest_spool_file(path, paths, result)
        if progress:
            progress(index, len(files))
    return result


def ingest_spool_file(path: Path, paths: StatePaths, result: IngestResult) -> bool:
    try:
        record = read_spool_record(path)
    except FormatError as exc:
        _quarantine(path, paths, result, str(exc))
        return False
    try:
        judge_here(record)  # before the savepoint: a git log may take seconds
        with transaction.atomic():  # a savepoint: a failed row leaves the connection usable
            session = record_completion(record)
    except DATABASE_AWAY:
        raise  # the database is down, not this record: keep it for the next pass
    except Exception as exc:  # DataError, IntegrityError, ValueError, OverflowError...
        _quarantine(path, paths, result, f"could not be recorded: {type(exc).__name__}: {exc}")
        return False
    result.sessions.append(session)
    result.recorded += 1
    day = record.started_at[:10] if record.started_at[:4].isdigit() else "undated"
    _move_aside(path, paths.spool / "ingested" / day)
    return True


def _quarantine(path: Path, paths: StatePaths, result: IngestResult, reason: str) -> None:
    reason = reason[:2000]
    log.warning("spool record %s rejected: %s (moved to spool/rejected/)", path.name, reason)
    result.rejected.append((path.name, reason))
    folder = paths.spool / "rejected"
    _move_aside(path, folder)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    try:
        with os.fdopen(os.open(folder / f"{path.name}.reason.txt", flags, 0o600), "w") as handle:
            handle.write(reason + "\n")
    except OSError as exc:
        log.warning("could not write why %s was rejected: %s", path.name, exc)


def _move_aside(path: Path, folder: Path) -> None:
    try:
        ensure_private_dir(folder.parent)
        ensure_private_dir(folder)
        os.replace(path, folder / path.name)
    except FileNotFoundError:
        pass  # another console process took it first
    except OSError as exc:  # UnsafeDirectory too: say so, never take the pages down for it
        log.warning("could not move spool record %s into %s: %s", path.name, folder, exc)


def false_success_reason(record: SpoolRecord) -> str | None:
    """Why an attempt that exited 0 was not a success, in words; None when it was one.

    The one place this is decided. Only the `result` event's own fields count (the
    wrapper copies them into the spool record), never what the agent printed.
    """
    if record.exit_code != 0 or record.end_reason not in ("succeeded", "failed"):
        return None
    if record.is_error:
        return f"exit 0, but the result says is_error ({record.subtype or 'error'})"
    if "API Error" in (record.error or ""):
        return "exit 0, but the result is an API Error"
    if record.num_turns == 0:
        return "exit 0, but the run made no turn"
    # A stream-json run names its model in the init event; one that then ends without
    # a result event was cut short. (Plain text output has neither: nothing to judge.)
    if record.subtype is None and record.is_error is None and record.model:
        return "exit 0, but the run ended without a result event"
    return None


def checks_for(host: str, script_tag: str) -> dict:
    """The output checks of the job a run of (host, tag) belongs to; {} for none."""
    job_id = job_id_for(host, script_tag)
    job = Job.objects.filter(pk=job_id).first() if job_id else None
    return job.output_checks() if job is not None else {}


def judge_here(record: SpoolRecord) -> None:
    """A completion record read on the host where the run was: its job's output checks
    are judged now, against this host's files (whatever the record said before)."""
    record.output_check = output_checks.judge(checks_for(record.host, record.script_tag), record)


def record_completion(record: SpoolRecord) -> Session:
    """Create or complete the Session row for one finished attempt. Its output checks'
    verdict is the record's (judged on its host: judge_here, or a reporting host)."""
    values = {
        "script_tag": record.script_tag,
        "platform": record.platform,
        "host": record.host,
        "attempt": record.attempt,
        "retry_of": record.retry_of,
        "status": END_REASON_STATUS[record.end_reason],
        "end_reason": record.end_reason,
        "exit_code": record.exit_code,
        "error": record.error or "",
        "started_at": parse_iso(record.started_at),
        "ended_at": parse_iso(record.ended_at),
        "duration_ms": record.duration_ms,
        "num_turns": record.num_turns,
        "cost_usd": _decimal(record.cost_usd),
        "is_error": record.is_error,
        "stop_reason": record.stop_reason or "",
        "api_error_status": record.api_error_status,
        "model": record.model or "",
        "cwd": record.cwd or "",
        "wrapper_pid": record.wrapper_pid,
        "end_details": end_details(record),
        "claude_config_dir": record.claude_config_dir or "",
        "transcript_path": record.transcript_path or "",
        "archive_path": record.archive_path or "",
        "recorded_from": "spool",
        "job_id": job_id_for(record.host, record.script_tag),
    }
    if record.claude_pid is not None:  # older records name none: keep what the sidecar said
        values["claude_pid"] = record.claude_pid
    if values["job_id"] is None:
        del values["job_id"]  # keep a link the run's processes made (monitor_app.job_join)
    false_success = false_success_reason(record)
    if false_success:
        values.update(status=Status.FALSE_SUCCESS, error=record.error or false_success)
    verdict = record.output_check
    if verdict:
        values["end_details"]["output_check"] = verdict
        if verdict.get("verdict") == "failed" and values["status"] == Status.SUCCEEDED:
            values.update(status=Status.CHECK_FAILED, error=output_checks.failure_words(verdict))
    if record.duration_ms is None:
        elapsed = values["ended_at"] - values["started_at"]
        values["duration_ms"] = max(0, int(elapsed.total_seconds() * 1000))
    for usage_key, column in USAGE_FIELDS.items():
        values[column] = (record.usage or {}).get(usage_key)
    before = (
        Session.objects.filter(session_id=record.session_id)
        .values_list("status", "stopped_by", "end_reason")
        .first()
    )
    if before and before[1]:  # an operator or the watchdog stopped it: that is why it ended
        values.update(status=Status.KILLED, end_reason=before[2])
    session, _ = Session.objects.update_or_create(session_id=record.session_id, defaults=values)
    if session.status in POLICY_AUDITS and (before is None or before[0] != session.status):
        audit_policy_run(session)
    # Tokens with subagents, the cost computed from the transcript, the search index.
    transcript_store.record_transcript_figures(session)
    return session


def audit_policy_run(session: Session) -> None:
    """A run an output check failed or the overlap policy skipped, in the audit log."""
    actor, action = POLICY_AUDITS[session.status]
    AuditEntry.objects.create(
        actor=actor,
        action=action,
        job_id=session.job_id,
        target=str(session.session_id),
        ok=session.status == Status.OVERLAP_SKIP,  # the policy did its job; a check failed
        exit_code=session.exit_code,
        detail={
            "message": session.error[:2000],
            "session_id": str(session.session_id),
            "script_tag": session.script_tag,
            "host": session.host,
            **(
                {"output_check": session.end_details["output_check"]}
                if "output_check" in (session.end_details or {})
                else {}
            ),
        },
    )


def end_details(record: SpoolRecord) -> dict:
    """What the record says about why the run ended (REASON_FIELDS), the fields it has."""
    return {
        name: getattr(record, name)
        for name in REASON_FIELDS
        if getattr(record, name) not in (None, [], "")
    }


def _decimal(value: float | None) -> Decimal | None:
    return None if value is None else Decimal(str(value)).quantize(Decimal("0.000001"))


def sidecar_values(sidecar: Sidecar, status: str) -> dict:
    return {
        "script_tag": sidecar.script_tag,
        "platform": sidecar.platform,
        "host": sidecar.host,
        "attempt": sidecar.attempt,
        "retry_of": sidecar.retry_of,
        "status": status,
        "started_at": parse_iso(sidecar.started_at),
        "cwd": sidecar.cwd,
        "wrapper_pid": sidecar.wrapper_pid,
        "claude_pid": sidecar.claude_pid,
        "claude_config_dir": sidecar.claude_config_dir,
        "transcript_path": sidecar.transcript_path,
        "recorded_from": "sidecar",
        "job_id": job_id_for(sidecar.host, sidecar.script_tag),
    }


def record_live(sessions: list) -> dict[str, str]:
    """Make sure every live session has a row, and that its status is current.

    `sessions` are live sessions (monitor_app.snapshot.LiveSession). One SELECT for all
    of them; writes only for what is new or changed. A row that already ended (its
    completion record came first) is never turned back to live. Returns each
    session's status on record afterwards.
    """
    if not sessions:
        return {}
    known = {
        str(k): v
        for k, v in Session.objects.filter(
            session_id__in=[s.session_id for s in sessions]
        ).values_list("session_id", "status")
    }
    new_rows = []
    for live in sessions:
        sidecar, status = live.sidecar, live.state
        current = known.get(sidecar.session_id)
        if current is None:
            values = sidecar_values(sidecar, status)
            if not live.wrapped:
                values.update(wrapped=False, recorded_from="registry")
            if values["job_id"] is None:
                values["job_id"] = getattr(live, "job_id", None)  # tied by its processes
            new_rows.append(Session(session_id=sidecar.session_id, **values))
            known[sidecar.session_id] = status
        elif current != status and current in (*LIVE_STATUSES, Status.UNKNOWN):
            Session.objects.filter(session_id=sidecar.session_id).update(
                status=status, claude_pid=sidecar.claude_pid, end_reason="", ended_at=None
            )
            known[sidecar.session_id] = status
    if new_rows:
        Session.objects.bulk_create(new_rows, ignore_conflicts=True)
    return known


def record_unwrapped_end(
    sidecar: Sidecar,
    status: str,
    ended_at: datetime,
    paths: StatePaths,
    transcript: Path | None,
    job_id: int | None = None,
) -> Session:
    """An unwrapped session is gone: "exited" when Claude Code removed its registry file
    (a normal exit), "killed" when the file was left behind. Its transcript is archived."""
    error = (
        "Claude Code's registry file was left behind: the session was killed "
        "(SIGKILL, OOM or a crash)."
        if status == Status.KILLED
        else "The session exited (not wrapped: no exit code or result is known)."
    )
    return record_vanished(
        sidecar,
        paths,
        transcript,
        status=status,
        end_reason="vanished" if status == Status.KILLED else "exited",
        error=error,
        now=ended_at,
        wrapped=False,
        job_id=job_id,
    )


def record_vanished(
    sidecar: Sidecar,
    paths: StatePaths,
    transcript: Path | None,
    *,
    status: str = Status.KILLED,
    end_reason: str = "vanished",
    error: str = "The wrapper and the agent exited without a completion record "
    "(killed, crashed, or the host went down).",
    now: datetime | None = None,
    wrapped: bool = True,
    job_id: int | None = None,
) -> Session:
    """A session whose wrapper and agent are both gone, with no completion record: killed,
    unless the wrapper wrote into its sidecar how the run ended.

    The transcript is copied into the archive first, so the run stays readable after
    Claude Code's own cleanup.
    """
    archive_path = ""
    if transcript is not None:
        dest = paths.archive_path(sidecar.started_at, sidecar.script_tag, sidecar.session_id)
        try:
            copy_into_archive(transcript, dest)
            archive_path = str(dest)
        except OSError as exc:
            log.warning("could not archive transcript of %s: %s", sidecar.session_id, exc)
    now = now or datetime.now(UTC)
    values = sidecar_values(sidecar, status)
    values.update(
        end_reason=end_reason,
        ended_at=now,
        duration_ms=max(0, int((now - values["started_at"]).total_seconds() * 1000)),
        error=error,
        archive_path=archive_path,
    )
    if not wrapped:
        values.update(wrapped=False, recorded_from="registry")
    values["job_id"] = values["job_id"] or job_id  # by its tag, else by its processes
    if sidecar.end_reason in END_REASON_STATUS and sidecar.ended_at:
        # The wrapper saw the run end but could not write its completion record (disk
        # full): it left its outcome in the sidecar. Not killed.
        ended = parse_iso(sidecar.ended_at)
        values.update(
            status=END_REASON_STATUS[sidecar.end_reason],
            end_reason=sidecar.end_reason,
            exit_code=sidecar.exit_code,
            ended_at=ended,
            duration_ms=max(0, int((ended - values["started_at"]).total_seconds() * 1000)),
            error="The completion record could not be written (disk full?); this outcome "
            "is from the wrapper's sidecar (no cost or tokens).",
        )
    with transaction.atomic():
        session, created = Session.objects.select_for_update().get_or_create(
            session_id=sidecar.session_id, defaults=values
        )
        if not created and session.status in (*LIVE_STATUSES, Status.UNKNOWN):
            if session.stopped_by:
                values.pop("end_reason")  # keep the reason it was stopped for
                values["status"] = Status.KILLED
                values["error"] = f"Stopped by {session.stopped_by} ({session.end_reason})."
            if values["job_id"] is None:
                del values["job_id"]  # keep the link made while it was live
            for name, value in values.items():
                setattr(session, name, value)
            session.save()
    transcript_store.record_transcript_figures(session, transcript)
    return session


def has_completion_record(session_id: str, paths: StatePaths) -> bool:
    """True when the attempt finished on record (ingesting a just-written spool file)."""
    spool_file = paths.spool_path(session_id)
    if spool_file.exists():
        ingest_spool_file(spool_file, paths, IngestResult())
    return Session.objects.filter(session_id=session_id).exclude(status__in=LIVE_STATUSES).exists()
