"""Every host's latest published sample, read back for the console: the fleet's
/api/claude-active body, the all-hosts live page and one Snapshot of any hosts.
Each host's document is parsed once per version and shared by every thread."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import heapq
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

from django.conf import settings

from monitor_app import published
from monitor_app.models import HostSample
from monitor_app.runs import run_from_listing
from monitor_app.snapshot import Snapshot
from wrapper.formats import atomic_file, ensure_private_dir


@dataclass
class FleetLive:
    """What the all-hosts live page shows: every host's most recent runs, as listed in
    their API documents, and the banners and leftovers of the hosts that have any."""

    runs: list  # monitor_app.runs.Run, most recent first, at most `limit`
    runs_total: int
    snapshot: Snapshot  # banners and leftovers only: its `sessions` are not the fleet's


class HostListing:
    """One host's API document, parsed once per version. Its sessions and leftovers are
    serialised as JSON array items when the fleet's body first needs them: the body is
    these pieces joined, never 2,000 runs encoded again."""

    def __init__(self, version: tuple[int, str], text: str, sample: HostSample) -> None:
        self.version = version  # (seq, ETag): a restarted monitor may send a seq again
        self.document = json.loads(text)
        self.sample = sample  # the row without its documents: when it was heard, how often

    @cached_property
    def sessions_json(self) -> bytes:
        return _array_items(self.document.get("sessions", []))

    @cached_property
    def leftovers_json(self) -> bytes:
        return _array_items(self.document.get("leftovers", []))


def _array_items(items: list) -> bytes:
    return json.dumps(items, separators=(",", ":")).encode()[1:-1]


class FleetReader:
    """Every host's latest sample, parsed once per version; what is combined from them
    is built once per change of any host and shared by every thread of the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._api: dict[str, HostListing] = {}
        self._snapshots: dict[str, tuple[tuple[int, str], Snapshot]] = {}
        self._combined: tuple[list, bytes, str] | None = None
        self.builds = 0  # fleet bodies this process built (the rest it read)
        self._live: tuple[tuple, FleetLive] | None = None

    def _heads(self) -> list[tuple[str, tuple[int, str]]]:
        """(host, version) of every host's latest sample: one narrow query."""
        rows = HostSample.objects.order_by("host").values_list("host", "seq", "etag")
        return [(host, (seq, etag)) for host, seq, etag in rows]

    def _rows(self, hosts: list[str], fields: tuple[str, ...]):
        return HostSample.objects.filter(host__in=hosts).values_list("host", "seq", "etag", *fields)

    def _listings(self, heads: list[tuple[str, tuple[int, str]]]) -> list[tuple[str, HostListing]]:
        """Each host's parsed API document; only those whose version changed are read again."""
        stale = [h for h, version in heads if (h in self._api and self._api[h].version) != version]
        fields = ("api_document", *HostSample.SILENCE_FIELDS[1:])
        for host, seq, etag, text, taken, received, interval, heartbeat in (
            self._rows(stale, fields) if stale else ()
        ):
            sample = HostSample(
                host=host,
                taken_at=taken,
                received_at=received,
                interval_seconds=interval,
                heartbeat_seconds=heartbeat,
            )
            try:
                self._api[host] = HostListing((seq, etag), text, sample)
            except (ValueError, KeyError, TypeError):
                continue
        return [(host, self._api[host]) for host, _version in heads if host in self._api]

    def _states(self, now: datetime) -> list[tuple[str, tuple[int, str], bool]]:
        """(host, version, silent at `now`) of every host's latest sample: one narrow
        query, and all the fleet's body depends on."""
        rows = HostSample.objects.order_by("host").values_list(
            "host", "seq", "etag", *HostSample.SILENCE_FIELDS[1:]
        )
        return [
            (
                host,
                (seq, etag),
                HostSample(
                    taken_at=taken,
                    received_at=received,
                    interval_seconds=interval,
                    heartbeat_seconds=heartbeat,
                ).is_silent(now),
            )
            for host, seq, etag, taken, received, interval, heartbeat in rows
        ]

    def api_document(self, now: datetime | None = None) -> tuple[bytes, str]:
        """The fleet's /api/claude-active body (every host's sessions) and its ETag.

        One per state of the hosts' samples (their versions and silence): kept in this
        process, and in a private cache file for the console's other workers, so it is
        built once per state and console, not once per worker. The ETag is the state's
        digest: any console answers the same body and ETag for the same state."""
        now = now or datetime.now(UTC)
        states = self._states(now)
        etag = '"' + hashlib.blake2b(repr(states).encode(), digest_size=12).hexdigest() + '"'
        combined = self._combined
        if combined is not None and combined[2] == etag:
            return combined[1], combined[2]
        body = shared_listing(etag, lambda: self._build(states))
        with self._lock:
            self._combined = (states, body, etag)
        return body, etag

    def _build(self, states: list[tuple[str, tuple[int, str], bool]]) -> bytes:
        """The fleet's body from every host's document: the hosts' own pieces joined as
        they are, so a build costs the changed documents parsed and the bytes copied."""
        self.builds += 1
        silent = {host: flag for host, _version, flag in states}
        listings = self._listings([(host, version) for host, version, _silent in states])
        hosts = [
            {
                "host": host,
                "seq": listing.document["seq"],
                "taken_at": listing.document["taken_at"],
                "silent": silent[host],
                "live": len(listing.document.get("sessions", [])),
            }
            for host, listing in listings
        ]
        return b"".join(
            (
                b'{"host":"all","hosts":',
                json.dumps(hosts, separators=(",", ":")).encode(),
                b',"sessions":[',
                b",".join(item.sessions_json for _host, item in listings if item.sessions_json),
                b'],"leftovers":[',
                b",".join(item.leftovers_json for _host, item in listings if item.leftovers_json),
                b"]}",
            )
        )

    def live(self, limit: int) -> FleetLive:
        """The all-hosts live page's runs: the `limit` most recent of the fleet.

        Built from the API documents (a tenth of the state documents' bytes, and parsed
        for /api/claude-active?host=all anyway); only the listed runs become Run objects.
        Leftovers, skipped sidecars and quota stamps come from the state documents of
        the few hosts that report any."""
        heads = self._heads()
        key = (tuple(heads), limit)
        cached = self._live
        if cached is not None and cached[0] == key:
            return cached[1]
        documents = [(host, listing.document) for host, listing in self._listings(heads)]
        listed = [item for _host, doc in documents for item in doc.get("sessions", [])]
        # As sorted(..., reverse=True)[:limit], host order kept among equal start times.
        recent = heapq.nlargest(limit, listed, key=lambda item: item["started_at"])
        noted = [
            host
            for host, doc in documents
            if doc.get("leftovers") or doc.get("skipped_sidecars") or doc.get("quota_until")
        ]
        snapshot = Snapshot(taken_at=datetime.now(UTC), source="monitor")
        if noted:
            noted_snapshot = self.snapshot(noted)
            snapshot.leftovers = noted_snapshot.leftovers
            snapshot.skipped = noted_snapshot.skipped
            snapshot.quota_until = noted_snapshot.quota_until
            snapshot.quota_reason = noted_snapshot.quota_reason
        view = FleetLive(
            runs=[run_from_listing(item) for item in recent],
            runs_total=len(listed),
            snapshot=snapshot,
        )
        with self._lock:
            self._live = (key, view)
        return view

    def snapshot(self, hosts: list[str] | None = None) -> Snapshot:
        """One Snapshot of every host's live sessions (or of the named hosts)."""
        heads = [(h, v) for h, v in self._heads() if hosts is None or h in hosts]
        stale = [h for h, version in heads if self._snapshots.get(h, (None,))[0] != version]
        if stale:
            fields = ("state_document", "taken_at", "heartbeat_seconds")
            for host, seq, etag, document, taken_at, heartbeat in self._rows(stale, fields):
                try:
                    snap = published.snapshot_from_state(
                        json.loads(document), seq=seq, source="monitor"
                    )
                except (ValueError, KeyError, TypeError):
                    continue
                snap.taken_at, snap.heartbeat_seconds = taken_at, heartbeat
                self._snapshots[host] = ((seq, etag), snap)
        combined = Snapshot(taken_at=datetime.now(UTC), source="monitor")
        oldest = None
        for host, _version in heads:
            item = self._snapshots.get(host)
            if item is None:
                continue
            snap = item[1]
            combined.sessions.extend(snap.sessions)
            combined.leftovers.extend(snap.leftovers)
            combined.skipped.extend(snap.skipped)
            if snap.quota_until and not combined.quota_until:
                combined.quota_until, combined.quota_reason = snap.quota_until, snap.quota_reason
            if oldest is None or snap.taken_at < oldest.taken_at:
                oldest = snap
        if oldest is not None and hosts is not None and len(hosts) == 1:
            combined.taken_at, combined.interval_seconds = oldest.taken_at, oldest.interval_seconds
            combined.heartbeat_seconds = oldest.heartbeat_seconds
            combined.seq = oldest.seq
            # PIDs mean something within one host only: ancestry joins for one host's view.
            combined.sessions_by_ancestor = dict(oldest.sessions_by_ancestor)
        combined.sessions.sort(key=lambda s: s.sidecar.started_at, reverse=True)
        return combined


def listing_dir() -> Path:
    return settings.OPSCONSOLE_HOME / "cache" / "fleet"


def shared_listing(state: str, build: Callable[[], bytes]) -> bytes:
    """The fleet's body for `state` (its ETag), built once per console: read from this
    host's private cache file when another worker built it already; else built here
    under a file lock, so the workers asking for the same state at once wait for the
    one building it (without spinning) and then read what it wrote."""
    directory = ensure_private_dir(listing_dir())
    path = directory / (state.strip('"') + ".json")
    body = _read(path)
    if body is not None:
        return body
    with open(directory / "build.lock", "ab") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            body = _read(path)
            if body is not None:
                return body
            body = build()
            with atomic_file(path) as handle:
                handle.write(body)
            for older in directory.glob("*.json"):
                if older != path:
                    with contextlib.suppress(OSError):
                        older.unlink()
            return body
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


fleet = FleetReader()
