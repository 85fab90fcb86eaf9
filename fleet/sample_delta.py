"""A sample as what changed since the one the console holds: both halves of the format.

A reporting host whose last sample the console acknowledged holding sends the next
one as a delta of its state document (monitor_app.published.state_dict): the
top-level fields that changed, the live runs added or changed (whole), the ids of
those that ended, and their order only when applying the rest would not give it. The
console applies it to the state it holds for the host (HostSample.state_document) and
rebuilds both documents from the result, as from a full report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

# Fields of the state document that move every sample, whatever else does: a sample
# that changes only these has nothing new to say (a heartbeat carries them).
EVERY_SAMPLE_FIELDS = frozenset({"taken_at", "scan_ms"})


@dataclass
class HeldSample:
    """The sample the console holds for a host (its HostSample row): what a delta changes."""

    seq: int
    monitor_pid: int | None
    state_document: str
    received_at: datetime | None


class DeltaUnreadable(ValueError):
    """The delta is not one (a wrong type where a list or object belongs)."""


@dataclass
class Applied:
    """A state document rebuilt from the one held and a delta."""

    state: dict
    changed: set[str] = field(default_factory=set)  # runs the delta sent (added or changed)
    added: set[str] = field(default_factory=set)  # of those, runs the held state lacked
    removed: set[str] = field(default_factory=set)  # runs the held state had and ended
    # Runs added or whose state (live, stalled, ...) the delta changed: what is on record
    # of the others did not change.
    restated: set[str] = field(default_factory=set)


def session_id_of(item: dict) -> str:
    return item["sidecar"]["session_id"]


def _merged_order(held: list[str], removed: set[str], sent: list[str]) -> list[str]:
    """The runs' order applying gives: those held in place, those added at the end."""
    gone, known = set(removed), set(held)
    return [s for s in held if s not in gone] + [s for s in sent if s not in known]


def state_delta(held: dict, current: dict) -> dict:
    """What turns the state document `held` into `current` (the host's side)."""
    before = {session_id_of(item): item for item in held.get("sessions", [])}
    sessions = current.get("sessions", [])
    now_ids = [session_id_of(item) for item in sessions]
    sent = [item for item in sessions if before.get(session_id_of(item)) != item]
    live = set(now_ids)
    removed = [s for s in before if s not in live]
    delta = {
        "state": {
            key: value
            for key, value in current.items()
            if key != "sessions" and (key not in held or held[key] != value)
        },
        "sessions": sent,
        "removed": removed,
    }
    if _merged_order(list(before), set(removed), [session_id_of(s) for s in sent]) != now_ids:
        delta["order"] = now_ids
    return delta


def says_nothing_new(delta: dict) -> bool:
    """Only the fields every sample moves changed: no run, no banner, no leftover."""
    return not (delta["sessions"] or delta["removed"] or set(delta["state"]) - EVERY_SAMPLE_FIELDS)


def _state_of(item: object) -> object:
    return item.get("state") if isinstance(item, dict) else None


def apply_state_delta(held: dict, delta: dict) -> Applied:
    """The state document `delta` makes of `held` (the console's side), or
    DeltaUnreadable. Ids the held state lacks (runs the console refused) are ignored
    where they are removed or ordered."""
    changes, sent = delta.get("state", {}), delta.get("sessions", [])
    removed, order = delta.get("removed", []), delta.get("order")
    if not isinstance(changes, dict) or "sessions" in changes:
        raise DeltaUnreadable("a delta's state is an object of fields other than sessions")
    if not isinstance(sent, list) or not isinstance(removed, list):
        raise DeltaUnreadable("a delta's sessions and removed are lists")
    if order is not None and not isinstance(order, list):
        raise DeltaUnreadable("a delta's order is a list")
    runs = {session_id_of(item): item for item in held.get("sessions", [])}
    applied = Applied(state={**held, **changes})
    for session_id in removed:
        if isinstance(session_id, str) and runs.pop(session_id, None) is not None:
            applied.removed.add(session_id)
    for item in sent:
        try:
            session_id = session_id_of(item)
        except (KeyError, TypeError) as exc:
            raise DeltaUnreadable(f"a run without a session id: {exc}") from exc
        if not isinstance(session_id, str):
            raise DeltaUnreadable("a run's session id is not text")
        before = runs.get(session_id)
        if before is None:
            applied.added.add(session_id)
        if before is None or before.get("state") != _state_of(item):
            applied.restated.add(session_id)
        runs[session_id] = item  # in place when held, at the end when new
        applied.changed.add(session_id)
    if order is not None:
        named = dict.fromkeys(s for s in order if isinstance(s, str))
        placed = [runs[s] for s in named if s in runs]
        ordered = {session_id_of(item) for item in placed}
        runs = {session_id_of(item): item for item in placed} | {
            s: item for s, item in runs.items() if s not in ordered
        }
    applied.state["sessions"] = list(runs.values())
    return applied
