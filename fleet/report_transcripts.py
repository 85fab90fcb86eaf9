"""Transcript chunks a host ships with its reports, into the console's copy, within
the host's budget (fleet.budgets). A chunk is taken from where the console's copy
ends, so a resent or overlapping chunk adds nothing twice."""

from __future__ import annotations

from datetime import datetime

from django.utils import timezone

from fleet.budgets import (
    Budgets,
    locked_budget,
    seconds_to_next_hour,
    spend_transcript,
    transcript_allowance,
)
from fleet.report_items import Parsed, one_item
from monitor_app.models import Event, EventKind, HostBudget
from sessions_app import remote_transcripts
from sessions_app.models import Session


def store_transcripts(
    parsed: Parsed,
    host: str,
    recorded: list[str],
    limits: Budgets,
    now: datetime,
) -> tuple[dict[str, int], int]:
    """New transcript bytes into the console's copy, within the host's budget; the
    Session row points at it, so the session page, tail and Range follower read it as
    an archived transcript. Returns what is held per session, and the seconds the host
    should stop sending chunks (0: go on)."""
    held: dict[str, int] = {}
    paused = 0
    if parsed.transcripts:
        held, paused = store_chunks(parsed, host, limits, now)
    for session_id in set(held) | set(recorded):
        path = remote_transcripts.local_path(host, session_id)
        if path is None and (held.get(session_id) or session_id in recorded):
            # Object storage: the console's own copy, never the host's path from its record.
            path = str(remote_transcripts.cache_path(host, session_id))
        if path is not None:
            Session.objects.filter(session_id=session_id, host=host).exclude(
                archive_path=path
            ).update(archive_path=path)
    return held, paused


def store_chunks(
    parsed: Parsed, host: str, limits: Budgets, now: datetime
) -> tuple[dict[str, int], int]:
    """The report's chunks, counted against the host's budget row (locked: a host's
    reports are counted one after another)."""
    held: dict[str, int] = {}
    paused = 0
    budget = locked_budget(host)
    allowance = transcript_allowance(budget, now, limits)
    for session_id, offset, data in parsed.transcripts:
        if len(data) > allowance:
            reason = (
                f"over this host's transcript budget ({limits.transcript_bytes_per_hour} "
                f"bytes an hour, {limits.transcript_bytes_total} in all)"
            )
            parsed.refuse("transcript", session_id, reason, {"offset": offset}, 429)
            paused = seconds_to_next_hour(budget, now)
            over_budget_event(host, "transcript", budget, reason)
            continue
        if not Session.objects.filter(session_id=session_id, host=host).exists():
            continue  # no row yet: the host sends it again with the next report
        before = held.get(session_id, offset)
        stored = one_item(
            parsed,
            "transcript",
            session_id,
            {"offset": offset},
            remote_transcripts.append_chunk,
            host,
            session_id,
            offset,
            data,
        )
        if stored is not None:
            held[session_id] = stored
            spent = max(0, stored - max(before, offset))
            spend_transcript(budget, spent)
            allowance -= spent
    budget.save(
        update_fields=["hour_started_at", "hour_transcript_bytes", "transcript_bytes_total"]
    )
    return held, paused


def over_budget_event(host: str, budget_name: str, budget: HostBudget, reason: str) -> None:
    """One event per host, budget and hour: the alert rules and the Hosts page see it."""
    window = budget.hour_started_at.strftime("%Y%m%dT%H%M") if budget.hour_started_at else "-"
    Event.objects.get_or_create(
        dedupe_key=f"{host}:over_budget:{budget_name}:{window}"[:200],
        defaults={
            "at": timezone.now() if budget.hour_started_at is None else budget.hour_started_at,
            "host": host,
            "kind": EventKind.HOST_OVER_BUDGET,
            "message": f"{host}: {reason}; refused until the hour turns",
            "detail": {"budget": budget_name},
        },
    )
