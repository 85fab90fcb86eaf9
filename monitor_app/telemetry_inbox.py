"""What the host's telemetry receiver took, until the monitor writes it.

The `Inbox` folds each request's records into per-run rollups and keeps the spans
waiting, under one lock the receiver's threads and the round share (held for a dict
update per record, never for I/O). It is bounded: a body names at most
NEW_RUNS_PER_BODY runs new to it, it holds ROLLUPS_KEPT runs and lets go of the least
recently touched one already written (a later record of that run starts a segment of its
own, added on record). Its rollups are kept on disk across monitor restarts.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any

from sessions_app.otlp import Records
from sessions_app.telemetry import Rollup, session_key, span_row
from wrapper.formats import FormatError, StatePaths, read_json_record, write_json_atomic

log = logging.getLogger(__name__)

PENDING_SPANS_LIMIT = 50_000
ROLLUPS_KEPT = 5_000  # runs whose rollups the inbox holds (the oldest are let go)
NEW_RUNS_PER_BODY = 100
EVICTION_LOOKS = 256  # rollups looked at for one to let go (the changed ones wait to be written)


@dataclass
class Drained:
    rollups: list[Rollup] = field(default_factory=list)
    spans: list[dict[str, Any]] = field(default_factory=list)


class Inbox:
    """What the receiver took, kept until the monitor writes it (thread-safe)."""

    def __init__(self, rollups: dict[str, Rollup] | None = None) -> None:
        self.lock = threading.Lock()
        # Least recently touched first: letting one go is O(1), whatever floods in.
        self.rollups: OrderedDict[str, Rollup] = OrderedDict(rollups or {})
        self.new_in_body = 0
        # Kept rollups are written once more at start: the last batch before a stop may
        # not have been (writing a segment again changes nothing).
        self.changed: set[str] = set(self.rollups)
        self.spans: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()

    def take(self, records: Records) -> None:
        with self.lock:
            self.new_in_body = 0
            for why, n in records.dropped.items():
                self.counts[f"dropped: {why}"] += n
            for event in records.events:
                rollup = self.rollup_for(event.attributes)
                if rollup is not None:
                    rollup.take_event(event)
            for span in records.spans:
                rollup = self.rollup_for(span.attributes)
                if rollup is not None:
                    rollup.take_span(
                        span.name, span.attributes, span.trace_id, span.start_ns, span.end_ns
                    )
                if len(self.spans) < PENDING_SPANS_LIMIT:
                    self.spans.append(span_row(span))
                else:
                    self.counts["dropped: spans waiting"] += 1
            for point in records.points:
                rollup = self.rollup_for(point.attributes)
                if rollup is not None:
                    rollup.take_point(point)
            self.counts["records"] += len(records)

    def rollup_for(self, attributes: dict[str, Any]) -> Rollup | None:
        key = session_key(attributes)
        if key is None:
            self.counts["dropped: no session id"] += 1
            return None
        rollup = self.rollups.get(key)
        if rollup is not None:
            self.rollups.move_to_end(key)
        else:
            # One exporter names one run: a body naming hundreds is a flood, not telemetry.
            if self.new_in_body >= NEW_RUNS_PER_BODY or not self.make_room():
                self.counts["dropped: too many runs"] += 1
                return None
            self.new_in_body += 1
            rollup = self.rollups[key] = Rollup(key)
        self.changed.add(key)
        return rollup

    def make_room(self) -> bool:
        """Let go of the least recently touched rollup already written (a later record of
        its run starts a segment of its own, added on record); False if none may go."""
        if len(self.rollups) < ROLLUPS_KEPT:
            return True
        for key in islice(self.rollups, EVICTION_LOOKS):
            if key not in self.changed:
                del self.rollups[key]
                return True
        return False

    def drain(self, waits: Callable[[Rollup], bool] | None = None) -> Drained:
        """Copies of the rollups changed since the last drain, but those `waits` holds
        back (they stay changed, for a later drain), and the spans waiting."""
        with self.lock:
            due = [
                k
                for k in self.changed
                if k in self.rollups and not (waits and waits(self.rollups[k]))
            ]
            drained = Drained([self.rollups[k].copy() for k in due], self.spans)
            self.changed.difference_update(due)
            self.changed &= self.rollups.keys()
            self.spans = []
        return drained

    def put_back(self, drained: Drained) -> None:
        """What could not be written (database away) waits for the next round."""
        with self.lock:
            self.changed.update(r.session_id for r in drained.rollups)
            room = PENDING_SPANS_LIMIT - len(self.spans)
            self.spans = drained.spans[:room] + self.spans
            if len(drained.spans) > room:
                self.counts["dropped: spans waiting"] += len(drained.spans) - room

    def get(self, session_id: str) -> Rollup | None:
        with self.lock:
            rollup = self.rollups.get(session_id)
            return rollup.copy() if rollup else None

    def count(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.counts[what] += n

    def figures(self) -> dict[str, int]:
        with self.lock:
            return dict(self.counts)


# --------------------------------------------------------------------------- kept rollups


def rollups_file(paths: StatePaths) -> Path:
    return paths.home / "monitor" / "telemetry-rollups.json"


def load_rollups(paths: StatePaths) -> dict[str, Rollup]:
    """The rollups a previous monitor kept; {} when there are none or they are unreadable."""
    try:
        data = read_json_record(rollups_file(paths), max_bytes=64 * 1024 * 1024)
    except FormatError:
        return {}
    rollups = {}
    for key, value in (data.get("rollups") or {}).items():
        try:
            rollups[key] = Rollup.from_dict(value)
        except (TypeError, ValueError):
            continue
    return rollups


# A rollup of a run no longer live is let go this long after its last record (its last
# batch comes as the run exits, so not at once).
ROLLUP_KEPT_AFTER_END = timedelta(minutes=10)


def keep_rollups(paths: StatePaths, inbox: Inbox, live: set[str], now: datetime) -> None:
    """Write the inbox's rollups down (so a restarted monitor adds on, not over) and let go
    of those of runs that ended a while ago: their rollups are on record."""
    cutoff = (now - ROLLUP_KEPT_AFTER_END).timestamp() * 1e9
    with inbox.lock:
        for key, rollup in list(inbox.rollups.items()):
            if key not in live and key not in inbox.changed and rollup.last_ns < cutoff:
                del inbox.rollups[key]
        kept = [rollup.copy() for rollup in inbox.rollups.values()]
    # Serialised outside the lock: the receiver's threads do not wait on a file.
    data = {"rollups": {rollup.session_id: rollup.to_dict() for rollup in kept}}
    try:
        write_json_atomic(rollups_file(paths), data)
    except OSError as exc:
        log.warning("telemetry rollups not kept: %s", exc)
