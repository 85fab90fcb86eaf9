"""A host's report, item by item: what may be recorded, and what is refused and why.

A report is refused whole only when it is not a report of the token's host at all (not
an object, an unknown format, another host's name). Everything else is an item (the
sample, each live run in it and its origin, each completion record, sidecar, ending,
event, chunk of transcript, job, stop and audit entry), checked against the same limits
as the files a host writes (wrapper.formats) and against the host's own runs. An item that fails is
refused with its reason, the others are recorded, and the answer names what was
refused, so the host drops it instead of sending it again every two seconds.

One piece: every kind of item a report carries, checked into the one `Parsed` the console
records from; a new kind is read beside the others so it is held to the same rules.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from django.db import transaction

from fleet.item_checks import (
    ItemRefused,
    check,
    check_live_figures,
    check_processes,
    check_snapshot_fields,
    collected_job,
    fits,
    origin_item,
    own,
)
from fleet.report import (
    HOST_RULE_ACTIONS,
    HOST_RULE_ACTOR,
    MAX_HEARTBEAT_SECONDS,
    MAX_ORIGINS_PER_REPORT,
    MAX_ROLLUPS_PER_REPORT,
    MAX_SPANS_PER_REPORT,
)
from fleet.sample_delta import Applied, HeldSample, apply_state_delta
from fleet.telemetry_items import rollup_item, span_item, span_key
from jobs_app.collectors.base import Collection
from monitor_app import published
from monitor_app.events import PendingEvent
from monitor_app.models import EventKind
from monitor_app.snapshot import Snapshot
from sessions_app.database import DATABASE_AWAY
from sessions_app.models import LIVE_STATUSES, Status
from sessions_app.origins import Origin
from sessions_app.remote_transcripts import MAX_CHUNK_BYTES
from sessions_app.telemetry import Rollup
from wrapper.formats import (
    FormatError,
    Sidecar,
    SpoolRecord,
    is_session_id,
    parse_iso,
)

log = logging.getLogger(__name__)

MAX_DETAIL_BYTES = 64 * 1024  # an event's detail, as JSON
MAX_ITEM_CHARS_KEPT = 10_000  # of a refused item, for the Hosts page


class ReportRejected(Exception):
    """The whole report is refused (`status` is the HTTP answer)."""

    def __init__(self, message: str, status: int, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


@dataclass
class Refusal:
    kind: str  # sample, live, leftovers, completion, vanished, ending, event, ...
    key: str  # what the host knows the item by: a session id, an event key, a seq
    reason: str
    item: object = None
    status: int = 400  # 429: over a budget, send it later; anything else: never again

    def answer(self) -> dict:
        return {"kind": self.kind, "key": self.key, "reason": self.reason, "status": self.status}

    def item_text(self) -> str:
        try:
            text = json.dumps(self.item, default=str, ensure_ascii=False)
        except (TypeError, ValueError):
            text = repr(self.item)[:MAX_ITEM_CHARS_KEPT]
        except RecursionError:
            text = "(nested too deeply to keep)"
        return text[:MAX_ITEM_CHARS_KEPT]


@dataclass
class Parsed:
    sample: dict | None = None
    snapshot: Snapshot | None = None
    # When the host sent the report, by its clock; None when it did not say (readably).
    sent_at: datetime | None = None
    completions: list[SpoolRecord] = field(default_factory=list)
    vanished: list[Sidecar] = field(default_factory=list)
    endings: list[tuple[Sidecar, str, datetime]] = field(default_factory=list)
    leftovers: dict[str, list] = field(default_factory=dict)
    events: list[PendingEvent] = field(default_factory=list)
    results: list[dict] = field(default_factory=list)
    transcripts: list[tuple[str, int, bytes]] = field(default_factory=list)
    jobs: list[Collection] | None = None
    stops: list[dict] = field(default_factory=list)
    audits: list[dict] = field(default_factory=list)
    rollups: list[Rollup] = field(default_factory=list)  # a run's telemetry (fleet.telemetry_items)
    spans: list[dict] = field(default_factory=list)
    # (session id, the scheduler job its processes name, its root's command line):
    # the console makes the join (fleet.report_origins).
    origins: list[tuple[str, Origin, str]] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    # A sample sent as a delta (fleet.sample_delta): the sample the console held, and
    # what the delta changed of it; None for a full sample.
    held: HeldSample | None = None
    applied: Applied | None = None
    # Recorded whole in one savepoint (False), or again item by item, a savepoint each,
    # after the database refused something (fleet.console).
    one_by_one: bool = False

    @property
    def snapshot_pid(self) -> int | None:
        """The sample's monitor PID, when it is one."""
        pid = self.sample.get("monitor_pid")
        return pid if isinstance(pid, int) and not isinstance(pid, bool) else None

    def refuse(self, kind: str, key: object, reason: str, item: object, status: int = 400):
        self.refused.append(Refusal(kind, str(key)[:200], reason[:2000], item, status))

    def named_sessions(self) -> set[str]:
        """Every session id an item names: each must be this host's."""
        ids = {r.session_id for r in self.completions} | {s.session_id for s in self.vanished}
        ids |= {s.session_id for s, _, _ in self.endings} | set(self.leftovers)
        ids |= {session_id for session_id, _, _ in self.transcripts}
        ids |= {stop["session_id"] for stop in self.stops}
        ids |= {audit["target"] for audit in self.audits}
        ids |= {e.session_id for e in self.events if e.session_id}
        ids |= {r.session_id for r in self.rollups}
        ids |= {s["session_id"] for s in self.spans if s["session_id"]}
        ids |= {session_id for session_id, _, _ in self.origins}
        if self.snapshot is not None:
            # A delta's runs held already were this host's when they came: only its new ones.
            ids |= (
                self.applied.added
                if self.applied is not None
                else {live.session_id for live in self.snapshot.sessions}
            )
        return ids

    def drop_sessions(self, owners: dict[str, str]) -> None:
        """Refuse every item naming a session another host recorded first (`owners`:
        session id -> that host). Only those items: never the host."""
        if not owners:
            return

        def foreign(kind: str, session_id: str, item: object, key: str | None = None) -> bool:
            """Refused when it names another host's session; `key` is what the host
            knows the item by, when not the session id (an event: its dedupe key)."""
            if session_id not in owners:
                return False
            reason = f"session {session_id} is on record for host {owners[session_id]!r}"
            self.refuse(kind, key or session_id, reason, item, 409)
            return True

        self.completions = [
            r for r in self.completions if not foreign("completion", r.session_id, asdict(r))
        ]
        self.vanished = [
            s for s in self.vanished if not foreign("vanished", s.session_id, s.to_dict())
        ]
        self.endings = [
            e for e in self.endings if not foreign("ending", e[0].session_id, e[0].to_dict())
        ]
        for session_id in [s for s in self.leftovers if s in owners]:
            foreign("leftovers", session_id, self.leftovers.pop(session_id))
        self.transcripts = [
            t for t in self.transcripts if not foreign("transcript", t[0], {"offset": t[1]})
        ]
        self.stops = [s for s in self.stops if not foreign("stop", s["session_id"], s)]
        self.audits = [a for a in self.audits if not foreign("audit", a["target"], a)]
        self.events = [
            e
            for e in self.events
            if not (e.session_id and foreign("event", e.session_id, asdict(e), e.dedupe_key))
        ]
        self.origins = [
            o for o in self.origins if not foreign("origin", o[0], {"session_id": o[0]})
        ]
        self.drop_telemetry(owners)
        if self.snapshot is not None:
            self.snapshot.sessions = [
                live
                for live in self.snapshot.sessions
                if not foreign("live", live.session_id, live.sidecar.to_dict())
            ]

    def drop_telemetry(self, owners: dict[str, str]) -> None:
        """Refuse each rollup and span naming a session another host owns, and each span
        of no session (a wrapper's fire) in a trace another host's telemetry is in
        (`owners`: session id or trace id -> that host); only those. A run's own spans
        may share a trace with another host's (a caller's TRACEPARENT across hosts)."""
        if not owners:
            return

        def foreign(kind: str, named: tuple, item: object, key: str) -> bool:
            owned = next((n for n in named if n in owners), None)
            if owned is None:
                return False
            what = "session" if "-" in owned else "trace"
            reason = f"{what} {owned} is on record for host {owners[owned]!r}"
            self.refuse(kind, key, reason, item, 409)
            return True

        self.rollups = [
            r
            for r in self.rollups
            if not foreign("telemetry_rollup", (r.session_id,), asdict(r), r.session_id)
        ]
        self.spans = [
            s
            for s in self.spans
            if not foreign("telemetry_span", (s["session_id"] or s["trace_id"],), s, span_key(s))
        ]


def one_item(
    parsed: Parsed, kind: str, key: object, item: object, write: Callable, *args: Any
) -> Any:
    """`write(*args)`; when the report is taken item by item, in a savepoint: what it
    returns, or None with the item refused when the database (or our code) will not
    take it. A database that is away propagates."""
    if not parsed.one_by_one:
        return write(*args)
    try:
        with transaction.atomic():
            return write(*args)
    except DATABASE_AWAY:
        raise
    except Exception as exc:
        log.warning("%s %s of a report not recorded: %s", kind, key, exc, exc_info=True)
        parsed.refuse(kind, key, f"not recorded: {type(exc).__name__}: {exc}", item)
        return None


def parse_report(
    payload: object,
    host: str,
    *,
    sessions_per_report: int,
    jobs_per_report: int,
    held: HeldSample | None = None,
) -> Parsed:
    """Check a report of `host` before anything is written: ReportRejected when it is
    not one, otherwise what may be recorded and what is refused. `held`: the host's
    sample on record, which a sample sent as a delta changes."""
    if not isinstance(payload, dict):
        raise ReportRejected("a report is a JSON object", 400)
    if payload.get("format") != 1:
        raise ReportRejected("unknown report format", 400)
    if payload.get("host") != host:
        raise ReportRejected(
            f"this token is for host {host!r}; the report names host {payload.get('host')!r}",
            403,
        )
    parsed = Parsed(held=held)
    # Only the clock skew shown needs it; without it, the sample's time stands in.
    with contextlib.suppress(ValueError, OverflowError):
        parsed.sent_at = parse_iso(payload.get("sent_at"))
    _parse_sample(parsed, payload.get("sample"), host, sessions_per_report)
    for name, parse_one, key_of in ITEMS:
        items = payload.get(name)
        if items is None:
            continue
        if not isinstance(items, list):
            parsed.refuse(name, name, f"{name} is not a list", None)
            continue
        most = MOST_PER_REPORT.get(name)
        if most is not None and len(items) > most:
            reason = f"{len(items)} {name} in one report (at most {most})"
            parsed.refuse(KINDS[name], name, reason, None, 413)
            items = items[:most]
        for item in items:
            try:
                parse_one(parsed, item, host)
            except ItemRefused as exc:
                parsed.refuse(KINDS[name], _safe_key(key_of, item), str(exc), item, exc.status)
            except Exception as exc:
                reason = f"unreadable: {type(exc).__name__}: {exc}"
                parsed.refuse(KINDS[name], _safe_key(key_of, item), reason, item)
    for name, parse_part in (("leftovers", _parse_leftovers), ("jobs", _parse_jobs)):
        try:
            parse_part(parsed, payload.get(name), host)
        except Exception as exc:
            parsed.refuse(name, name, f"unreadable: {type(exc).__name__}: {exc}", None)
    _bound_jobs(parsed, jobs_per_report)
    return parsed


def _bound_jobs(parsed: Parsed, most: int) -> None:
    """At most `most` jobs in one report (no host may have more on record): the rest
    are refused in one refusal. A collection cut short says nothing of the jobs it no
    longer names (an error of its own: none of them is called gone)."""
    if parsed.jobs is None:
        return
    named = sum(len(collection.jobs) for collection in parsed.jobs)
    if named <= most:
        return
    reason = f"{named} jobs in one report (at most {most})"
    room = most
    for collection in parsed.jobs:
        if len(collection.jobs) > room:
            collection.jobs = collection.jobs[:room]
            collection.errors.append(reason)
        room -= len(collection.jobs)
    parsed.refuse("job", "jobs", reason, None, 413)


def _safe_key(key_of, item: object) -> str:
    try:
        return str(key_of(item))
    except Exception:
        return ""


def _key(item: object, name: str = "session_id") -> str:
    return str(item.get(name, "")) if isinstance(item, dict) else ""


# ----------------------------------------------------------------------------- the sample


def _parse_sample(parsed: Parsed, sample: object, host: str, most: int) -> None:
    seq = sample.get("seq") if isinstance(sample, dict) else None
    try:
        check(isinstance(sample, dict), "sample missing")
        check(isinstance(seq, int) and not isinstance(seq, bool), "seq is not a whole number")
        fits({"seq": seq, "monitor_pid": sample.get("monitor_pid")})
        interval = sample.get("interval_seconds")
        check(
            isinstance(interval, int | float) and math.isfinite(interval) and 0 < interval < 3600,
            "interval_seconds is not a number of seconds",
        )
        heartbeat = sample.get("heartbeat_seconds")
        check(
            heartbeat is None
            or (
                isinstance(heartbeat, int | float)
                and math.isfinite(heartbeat)
                and 0 < heartbeat <= MAX_HEARTBEAT_SECONDS
            ),
            f"heartbeat_seconds is not a number of seconds up to {MAX_HEARTBEAT_SECONDS}",
        )
        if "base" in sample:
            state = _applied_delta(parsed, sample, seq)
        try:
            if "base" not in sample:
                api = json.loads(sample["api_document"])
                state = json.loads(sample["state_document"])
                check(isinstance(api, dict), "api_document is not an object")
                own(api.get("host"), host, "the sample")
            parse_iso(sample["taken_at"])
            snapshot = published.snapshot_from_state(state, seq=seq, source="monitor")
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise ItemRefused(f"sample unreadable: {exc}") from exc
        check_snapshot_fields(snapshot)
        check(
            len(snapshot.sessions) <= most,
            f"{len(snapshot.sessions)} live sessions in one sample (at most {most})",
            413,
        )
    except ItemRefused as exc:
        parsed.refuse("sample", seq, str(exc), sample, exc.status)
        return
    except Exception as exc:
        parsed.refuse("sample", seq, f"unreadable: {type(exc).__name__}: {exc}", sample)
        return
    kept = []
    changed = parsed.applied.changed if parsed.applied is not None else None
    for live in snapshot.sessions:
        if changed is not None and live.session_id not in changed:
            kept.append(live)  # held as it was checked when it came
            continue
        try:
            own(live.sidecar.host, host, f"live session {live.session_id}")
            Sidecar.from_dict(live.sidecar.to_dict())  # the limits of a sidecar file
            check(live.state in LIVE_STATUSES, f"state {live.state!r} is not a live state")
            check_live_figures(live)
            live.job_id = None  # the console ties a run to a job, never the host's word
            kept.append(live)
        except Exception as exc:
            status = exc.status if isinstance(exc, ItemRefused) else 400
            parsed.refuse("live", live.session_id, str(exc), live.sidecar.to_dict(), status)
    snapshot.sessions = kept
    leftovers = []
    for run in snapshot.leftovers:
        try:
            own(run.host, host, f"leftovers of {run.session_id}")
            check(is_session_id(run.session_id), "leftovers name a session id")
            fits({"script_tag": run.script_tag})
            check_processes(run.processes)
            leftovers.append(run)
        except Exception as exc:
            status = exc.status if isinstance(exc, ItemRefused) else 400
            parsed.refuse("leftovers", _safe_key(str, run.session_id), str(exc), None, status)
    snapshot.leftovers = leftovers
    parsed.sample, parsed.snapshot = sample, snapshot


def _applied_delta(parsed: Parsed, sample: dict, seq: int) -> dict:
    """The state document a delta makes of the sample the console holds, or ItemRefused:
    409 when the console holds another sample than the one it changes (the console's
    database was restored, an answer was lost): the host sends a full report next."""
    base, held = sample["base"], parsed.held
    check(isinstance(base, dict), "a delta's base is an object")
    named = (base.get("seq"), base.get("monitor_pid"))
    if held is None or named != (held.seq, held.monitor_pid):
        holding = f"sample {held.seq} of monitor {held.monitor_pid}" if held else "no sample"
        raise ItemRefused(
            f"a delta of sample {named[0]} of monitor {named[1]}, and the console holds "
            f"{holding} of this host: send a full report",
            409,
        )
    check(sample.get("monitor_pid") == held.monitor_pid, "a delta's monitor is its base's")
    check(seq > held.seq, f"a delta's seq {seq} is not after its base's {held.seq}")
    try:
        parsed.applied = apply_state_delta(json.loads(held.state_document), sample)
    except (ValueError, TypeError) as exc:
        raise ItemRefused(f"delta unreadable: {exc}") from exc
    return parsed.applied.state


# ----------------------------------------------------------------------------- runs


def _completion(parsed: Parsed, item: object, host: str) -> None:
    try:
        record = SpoolRecord.from_dict(item)
    except (FormatError, TypeError, AttributeError) as exc:
        raise ItemRefused(f"completion record unreadable: {exc}") from exc
    own(record.host, host, f"completion record {record.session_id}")
    parsed.completions.append(record)


def _sidecar(item: object, host: str) -> Sidecar:
    try:
        sidecar = Sidecar.from_dict(item)
    except (FormatError, TypeError, AttributeError) as exc:
        raise ItemRefused(f"sidecar unreadable: {exc}") from exc
    own(sidecar.host, host, f"session {sidecar.session_id}")
    return sidecar


def _vanished(parsed: Parsed, item: object, host: str) -> None:
    parsed.vanished.append(_sidecar(item, host))


def _ending(parsed: Parsed, item: object, host: str) -> None:
    check(isinstance(item, dict), "an ending is an object")
    check(item.get("status") in (Status.EXITED, Status.KILLED), "ending status")
    try:
        ended_at = parse_iso(item["ended_at"])
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise ItemRefused(f"ending unreadable: {exc}") from exc
    parsed.endings.append((_sidecar(item.get("sidecar"), host), item["status"], ended_at))


def _transcript(parsed: Parsed, item: object, host: str) -> None:
    try:
        session_id, offset = item["session_id"], item["offset"]
        data = base64.b64decode(item["data"], validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise ItemRefused(f"transcript chunk unreadable: {exc}") from exc
    check(is_session_id(session_id), "a transcript chunk names a session id")
    check(
        isinstance(offset, int) and not isinstance(offset, bool) and 0 <= offset < 2**62,
        "a chunk's offset is a byte count",
    )
    check(len(data) <= MAX_CHUNK_BYTES, "transcript chunk too large", 413)
    parsed.transcripts.append((session_id, offset, data))


def _origin(parsed: Parsed, item: object, host: str) -> None:
    parsed.origins.append(origin_item(item, host))


def _rollup(parsed: Parsed, item: object, host: str) -> None:
    parsed.rollups.append(rollup_item(item, host))


def _span(parsed: Parsed, item: object, host: str) -> None:
    parsed.spans.append(span_item(item, host))


def _parse_leftovers(parsed: Parsed, value: object, host: str) -> None:
    if not value:
        return
    if not isinstance(value, dict):
        parsed.refuse("leftovers", "leftovers", "leftovers is not an object", None)
        return
    for session_id, members in value.items():
        if is_session_id(session_id) and isinstance(members, list):
            parsed.leftovers[session_id] = members
        else:
            parsed.refuse("leftovers", session_id, "not a session id and a list", members)


# ----------------------------------------------------------------------------- the rest


def _event(parsed: Parsed, item: object, host: str) -> None:
    try:
        event = PendingEvent(**item)
        parse_iso(event.at)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ItemRefused(f"event unreadable: {exc}") from exc
    own(event.host, host, f"event {event.dedupe_key}")
    check(isinstance(event.dedupe_key, str), "an event's key is text")
    check(event.dedupe_key.startswith(f"{host}:"), "an event's key starts with its host", 403)
    check(event.kind in EventKind.values, f"unknown event kind {event.kind!r}")
    check(
        event.session_id is None or is_session_id(event.session_id),
        "an event's session_id is a session id",
    )
    check(isinstance(event.detail, dict), "an event's detail is an object")
    check(len(json.dumps(event.detail, default=str)) <= MAX_DETAIL_BYTES, "event detail too large")
    for name in ("message", "script_tag", "status"):
        check(isinstance(getattr(event, name), str), f"an event's {name} is text")
    fits(asdict(event) | {"detail": None})
    parsed.events.append(event)


def _result(parsed: Parsed, item: object, host: str) -> None:
    check(isinstance(item, dict), "an action result is an object")
    parsed.results.append(item)


def _stop(parsed: Parsed, item: object, host: str) -> None:
    check(isinstance(item, dict), "a stop is an object")
    check(is_session_id(item.get("session_id")), "a stop names a session id")
    check(item.get("actor", HOST_RULE_ACTOR) == HOST_RULE_ACTOR, "a host's stop is its watchdog's")
    parsed.stops.append(item)


def _audit(parsed: Parsed, item: object, host: str) -> None:
    """What a host's own rules did: only those rules may be the actor, only on its runs."""
    check(isinstance(item, dict), "an audit entry is an object")
    check(
        item.get("actor") == HOST_RULE_ACTOR,
        f"a host's audit entry is its {HOST_RULE_ACTOR}'s, not {item.get('actor')!r}'s",
        403,
    )
    check(item.get("action") in HOST_RULE_ACTIONS, f"unknown action {item.get('action')!r}")
    check(is_session_id(item.get("target")), "an audit entry's target is a session id")
    fits({k: v for k, v in item.items() if k in ("script_tag", "output", "target")})
    parsed.audits.append(item)


def _parse_jobs(parsed: Parsed, value: object, host: str) -> None:
    """A host's latest scheduler collection (jobs_app collectors, run on the host)."""
    if value is None:
        return
    if not isinstance(value, list):
        parsed.refuse("job", "jobs", "jobs is not a list of collections", None)
        return
    parsed.jobs = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("jobs") or [], list):
            parsed.refuse("job", "collection", "a collection is an object with jobs", item)
            continue
        collection = Collection(
            scheduler=str(item.get("scheduler"))[:16],
            errors=[str(e)[:500] for e in item.get("errors") or []][:100],
        )
        for job in item.get("jobs") or []:
            try:
                collection.jobs.append(collected_job(job, host))
            except ItemRefused as exc:
                parsed.refuse("job", _key(job, "label"), str(exc), job, exc.status)
        parsed.jobs.append(collection)


# name in the report, what parses one item, the item's key; KINDS: its refusal's kind
ITEMS = (
    ("completions", _completion, _key),
    ("vanished", _vanished, _key),
    ("endings", _ending, lambda item: _key(item.get("sidecar")) if isinstance(item, dict) else ""),
    ("events", _event, lambda item: _key(item, "dedupe_key")),
    ("action_results", _result, lambda item: _key(item, "id")),
    ("transcripts", _transcript, _key),
    ("stops", _stop, _key),
    ("audits", _audit, lambda item: _key(item, "target")),
    ("telemetry_rollups", _rollup, _key),
    ("telemetry_spans", _span, span_key),
    ("origins", _origin, _key),
)
MOST_PER_REPORT = {
    "origins": MAX_ORIGINS_PER_REPORT,
    "telemetry_rollups": MAX_ROLLUPS_PER_REPORT,
    "telemetry_spans": MAX_SPANS_PER_REPORT,
}
KINDS = {
    "completions": "completion",
    "vanished": "vanished",
    "endings": "ending",
    "events": "event",
    "action_results": "result",
    "transcripts": "transcript",
    "stops": "stop",
    "audits": "audit",
    "telemetry_rollups": "telemetry_rollup",
    "telemetry_spans": "telemetry_span",
    "origins": "origin",
}
