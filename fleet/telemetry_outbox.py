"""A reporting host's telemetry, waiting for the console (fleet.reporting).

The monitor's round hands over what its receiver took (monitor_app.telemetry_receiver:
the rollups that changed, whole, and the spans waiting). Here they wait until a report
carries them and the console's answer says it read them: the latest rollup of a session
replaces an older one not yet acknowledged, spans wait in arrival order. A report takes
at most MAX_ROLLUPS_PER_REPORT rollups and MAX_SPANS_PER_REPORT spans, within
MAX_TELEMETRY_BYTES_PER_REPORT; the rest wait for the next one. While the console is
away the backlog is bounded (BACKLOG_ROLLUPS sessions, BACKLOG_SPANS spans); what comes
beyond it is dropped and counted, never the monitor's memory. The backlog is written to
a file when the monitor stops (and every minute while the console is away), so a
restarted monitor sends what was not acknowledged.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, deque
from datetime import datetime
from pathlib import Path
from typing import Any

from fleet.report import (
    MAX_ROLLUPS_PER_REPORT,
    MAX_SPANS_PER_REPORT,
    MAX_TELEMETRY_BYTES_PER_REPORT,
)
from monitor_app.monitor import Cadence
from monitor_app.telemetry_receiver import Drained
from wrapper.formats import (
    FormatError,
    ensure_private_dir,
    read_json_record,
    write_json_atomic,
)

log = logging.getLogger(__name__)

BACKLOG_ROLLUPS = 5_000  # sessions (the receiver's inbox keeps as many)
BACKLOG_SPANS = 50_000
SAVE_EVERY_SECONDS = 60
# A live run's rollup changes every sample: it goes at most this often (the latest one
# then), and at once when the run is no longer live.
LIVE_ROLLUP_EVERY_SECONDS = 10


def size_of(item: dict[str, Any]) -> int:
    return len(json.dumps(item, separators=(",", ":")))


class TelemetryOutbox:
    def __init__(self, file: Path) -> None:
        self.file = file
        # session id -> (its latest rollup, as a dict; its size as JSON), oldest first
        self.rollups: dict[str, tuple[dict[str, Any], int]] = {}
        self.spans: deque[tuple[dict[str, Any], int]] = deque()
        self.dropped: Counter[str] = Counter()
        self.sent: dict[str, datetime] = {}  # session id -> when its rollup last went
        self.changed = False  # since the file was last written
        self.saving = Cadence()
        self.load()

    def __len__(self) -> int:
        return len(self.rollups) + len(self.spans)

    def add(self, drained: Drained) -> dict[str, int]:
        """What the receiver took since the last sample; what did not fit, by kind."""
        dropped: Counter[str] = Counter()
        for rollup in drained.rollups:
            data = dict(vars(rollup))  # the drain's own copy: no need to copy it again
            known = self.rollups.pop(rollup.session_id, None) is not None
            if not known and len(self.rollups) >= BACKLOG_ROLLUPS:
                dropped["rollups"] += 1
                continue
            self.rollups[rollup.session_id] = (data, size_of(data))
        room = BACKLOG_SPANS - len(self.spans)
        self.spans.extend((span, size_of(span)) for span in drained.spans[: max(0, room)])
        dropped["spans"] += max(0, len(drained.spans) - max(0, room))
        self.changed = self.changed or bool(drained.rollups or drained.spans)
        dropped = +dropped
        if dropped:
            if not self.dropped:
                log.warning("telemetry backlog full (console away?): dropping %s", dict(dropped))
            self.dropped.update(dropped)
        return dict(dropped)

    def batch(
        self, now: datetime, live: set[str]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The rollups and spans the next report carries: oldest first, bounded; a rollup
        of a `live` run sent less than LIVE_ROLLUP_EVERY_SECONDS ago waits."""
        for session_id, at in list(self.sent.items()):
            if abs((now - at).total_seconds()) >= LIVE_ROLLUP_EVERY_SECONDS:
                del self.sent[session_id]
        budget = MAX_TELEMETRY_BYTES_PER_REPORT
        rollups, spans = [], []
        for session_id, (data, size) in self.rollups.items():
            if session_id in live and session_id in self.sent:
                continue
            if len(rollups) >= MAX_ROLLUPS_PER_REPORT or (size > budget and rollups):
                break
            rollups.append(data)
            budget -= size
        for data, size in self.spans:
            if len(spans) >= MAX_SPANS_PER_REPORT or size > budget:
                break
            spans.append(data)
            budget -= size
        return rollups, spans

    def acknowledged(
        self, rollups: list[dict], spans: list[dict], read: object, now: datetime
    ) -> None:
        """The console read the first `read[name]` items of each kind sent (taken or
        refused for good): those leave; a rollup replaced since it was sent stays."""
        if not isinstance(read, dict):
            return  # a console that does not take telemetry: everything waits
        rollups_read = _count(read.get("telemetry_rollups"), len(rollups))
        for data in rollups[:rollups_read]:
            self.sent[data["session_id"]] = now
            kept = self.rollups.get(data["session_id"])
            if kept is not None and kept[0] is data:
                del self.rollups[data["session_id"]]
        spans_read = _count(read.get("telemetry_spans"), len(spans))
        for data in spans[:spans_read]:
            if self.spans and self.spans[0][0] is data:
                self.spans.popleft()
        if rollups_read or spans_read:
            self.changed = True

    # ------------------------------------------------------------------ on disk

    def save(self, now: datetime | None = None) -> None:
        """Write the backlog (always when `now` is None; else at most once a minute)."""
        if not self.changed or (now is not None and not self.saving.due(now, SAVE_EVERY_SECONDS)):
            return
        try:
            if len(self):
                ensure_private_dir(self.file.parent)
                data = {
                    "rollups": [data for data, _size in self.rollups.values()],
                    "spans": [data for data, _size in self.spans],
                }
                write_json_atomic(self.file, data)
            else:
                self.file.unlink(missing_ok=True)
            self.changed = False
        except OSError as exc:
            log.warning("telemetry backlog not kept on disk: %s", exc)

    def load(self) -> None:
        try:
            data = read_json_record(self.file, max_bytes=256 * 1024 * 1024)
        except FormatError as exc:
            if self.file.exists():
                log.warning("telemetry backlog in %s unreadable (%s): not sent", self.file, exc)
            return
        for rollup in data.get("rollups") or []:
            if isinstance(rollup, dict) and isinstance(rollup.get("session_id"), str):
                self.rollups[rollup["session_id"]] = (rollup, size_of(rollup))
        spans = [s for s in data.get("spans") or [] if isinstance(s, dict)][:BACKLOG_SPANS]
        self.spans.extend((span, size_of(span)) for span in spans)


def _count(value: object, most: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return max(0, min(value, most))
    return 0
