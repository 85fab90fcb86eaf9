"""Operator requests for a reporting host, the console's side: handed over with the
answer to the host's report, and what the host answered, on record as if done here."""

from __future__ import annotations

import contextlib
from datetime import datetime

from django.db import connection, transaction

from jobs_app.models import AuditEntry
from monitor_app import job_controls
from monitor_app.job_controls import ActionResult, audited
from monitor_app.models import Event, EventKind, RemoteAction
from sessions_app.models import LIVE_STATUSES, Session
from wrapper.formats import parse_iso


def deliver_actions(host: str, now: datetime) -> list[dict]:
    """The host's pending requests, marked sent. Runs inside the report's transaction,
    which holds their locks; asked of every report and almost always empty, so it is
    asked first whether there is one at all (any_pending), and a job action's job is
    read only when there is one.

    Handed out once: when a host's reports go to several consoles on one PostgreSQL, a
    request another console's report is handing out right now is locked, and skipped
    here (SKIP LOCKED), not waited for; once that report commits it is no longer
    pending. (SQLite has one writer at a time: there, nothing is ever skipped.)"""
    if not any_pending(host):
        return []
    with transaction.atomic(savepoint=False):
        rows = list(
            RemoteAction.objects.select_for_update(skip_locked=True).filter(
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


def any_pending(host: str) -> bool:
    """Whether the host has a request waiting: asked of every report and held poll, and
    almost always no, so as one statement as written (the ORM built it at more CPU than
    the query cost). A request asked a moment after it goes out with the next answer."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT 1 FROM {RemoteAction._meta.db_table} "  # noqa: S608 - the model's own table
            "WHERE host = %s AND state = %s LIMIT 1",
            [host, RemoteAction.State.PENDING.value],
        )
        return cursor.fetchone() is not None


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
    """The host's answer to a request, on record once. A host sends an answer again until
    a report's acknowledgement says it arrived, so two consoles may get the same one:
    only the one whose update finds the request still open records it."""
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
            # Why the console asked (a catch-up's misses): never overridden by the host.
            **action.detail,
        }
    else:
        action.detail = {
            "terminated": result.get("terminated") or [],
            "killed": result.get("killed") or [],
        }
    action.detail.update(landing(result))
    claimed = RemoteAction.objects.filter(pk=action.pk, state__in=RemoteAction.OPEN_STATES).update(
        state=action.state,
        finished_at=action.finished_at,
        message=action.message,
        detail=action.detail,
    )
    if not claimed:
        return  # another console recorded this answer meanwhile
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


def landing(result: dict) -> dict:
    """When the request landed on the host (the host's clock) and how it came there: its
    held poll ("push") or a report's answer ("report"); absent from an older host."""
    landed = {}
    with contextlib.suppress(KeyError, ValueError, OverflowError):
        landed["landed_at"] = parse_iso(str(result["landed_at"])).isoformat()
    if result.get("via") in ("push", "report"):
        landed["via"] = result["via"]
    return landed


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
