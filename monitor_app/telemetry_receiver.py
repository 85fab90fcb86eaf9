"""The host's OTLP/HTTP receiver: Claude Code's own telemetry, taken on loopback.

`/v1/logs`, `/v1/metrics` and `/v1/traces`, JSON or protobuf, gzip or not, with a
Content-Length or chunked (Claude Code sends chunked bodies), behind the host's token.
A body is bounded while it is read and while it is inflated; one that is not OTLP gets a
400 with the reason, and every refusal is counted by reason. What is taken goes into the
`Inbox` (rollups per run, spans waiting to be written), which the monitor's round drains
once a sample: the receiver's threads never touch the database, and a request costs the
sample loop only the lock around one dict update per record.

A body whose request carries a tee header (wrapper.telemetry.Tee: the job's own OTLP
exporter) is also forwarded there, from a queue on a thread of its own, so a slow or dead
collector never slows the receiver; a full queue drops and counts.
"""

from __future__ import annotations

import hmac
import json
import logging
import queue
import secrets
import threading
import urllib.error
import urllib.request
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from sessions_app.otlp import SIGNALS, OtlpError, Records, decode
from sessions_app.telemetry import Rollup, session_key, span_row
from wrapper.formats import (
    FormatError,
    StatePaths,
    UnsafeDirectory,
    ensure_private_dir,
    read_json_record,
    write_json_atomic,
)
from wrapper.telemetry import (
    TEE_HEADER,
    ReceiverAddress,
    Tee,
    read_receiver_address,
    write_receiver_address,
)

log = logging.getLogger(__name__)

# Requests handled at once; more wait in the listen backlog.
MAX_CONCURRENT_REQUESTS = 16
READ_TIMEOUT_SECONDS = 10.0
PENDING_SPANS_LIMIT = 50_000
ROLLUPS_KEPT = 5_000  # runs whose rollups the inbox holds (the oldest are let go)
TEE_QUEUE_LIMIT = 1_000
TEE_TIMEOUT_SECONDS = 5.0
CONTENT_TYPES = {"application/json": False, "application/x-protobuf": True}


class Refused(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class Drained:
    rollups: list[Rollup] = field(default_factory=list)
    spans: list[dict[str, Any]] = field(default_factory=list)


class Inbox:
    """What the receiver took, kept until the monitor's round writes it (thread-safe)."""

    def __init__(self, rollups: dict[str, Rollup] | None = None) -> None:
        self.lock = threading.Lock()
        self.rollups: dict[str, Rollup] = dict(rollups or {})
        self.changed: set[str] = set()
        self.spans: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()

    def take(self, records: Records) -> None:
        with self.lock:
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
        if rollup is None:
            if len(self.rollups) >= ROLLUPS_KEPT:
                oldest = min(self.rollups, key=lambda k: self.rollups[k].last_ns)
                del self.rollups[oldest]
            rollup = self.rollups[key] = Rollup(key)
        self.changed.add(key)
        return rollup

    def drain(self) -> Drained:
        """Copies of the rollups changed since the last drain, and the spans waiting."""
        with self.lock:
            drained = Drained(
                [self.rollups[k].copy() for k in self.changed if k in self.rollups],
                self.spans,
            )
            self.changed = set()
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
        data = {"rollups": {k: r.to_dict() for k, r in inbox.rollups.items()}}
    try:
        write_json_atomic(rollups_file(paths), data)
    except OSError as exc:
        log.warning("telemetry rollups not kept: %s", exc)


# --------------------------------------------------------------------------- HTTP


def read_body(handler: BaseHTTPRequestHandler, limit: int) -> bytes:
    """The request body, Content-Length or chunked, never more than `limit` bytes."""
    if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
        parts, size = [], 0
        while True:
            line = handler.rfile.readline(1024)
            try:
                chunk = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise Refused(400, "bad chunked encoding") from None
            if chunk == 0:
                while handler.rfile.readline(1024).strip():  # trailers
                    pass
                return b"".join(parts)
            size += chunk
            if size > limit:
                raise Refused(413, f"body over {limit} bytes")
            parts.append(handler.rfile.read(chunk))
            handler.rfile.readline(8)
    try:
        length = int(handler.headers.get("Content-Length", ""))
    except ValueError:
        raise Refused(411, "Content-Length or chunked encoding needed") from None
    if length < 0 or length > limit:
        raise Refused(413, f"body over {limit} bytes")
    body = handler.rfile.read(length)
    if len(body) != length:
        raise Refused(400, "body shorter than its Content-Length")
    return body


def inflate(body: bytes, encoding: str, limit: int) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise Refused(415, f"Content-Encoding {encoding} not supported")
    inflater = zlib.decompressobj(wbits=47 if encoding == "gzip" else 15)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise Refused(400, f"bad {encoding} body: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise Refused(413, f"inflated body over {limit} bytes")
    return out


class Receiver:
    """The HTTP server on loopback, its threads, and the tee's forwarder."""

    def __init__(self, inbox: Inbox, token: str, *, port: int = 0, max_body: int = 8 * 1024 * 1024):
        self.inbox = inbox
        self.token = token
        self.max_body = max_body
        self.slots = threading.BoundedSemaphore(MAX_CONCURRENT_REQUESTS)
        self.tee_queue: queue.Queue[tuple[str, bytes, dict[str, str]]] = queue.Queue(
            TEE_QUEUE_LIMIT
        )
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = READ_TIMEOUT_SECONDS
            server_version = "opsconsole-otlp"
            sys_version = ""

            def log_message(self, *args):
                pass

            def do_POST(self):
                receiver.handle(self)

            def do_GET(self):
                self.answer(405, {"error": "POST OTLP to /v1/logs, /v1/metrics or /v1/traces"})

            def answer(self, status: int, payload: dict, *, close: bool = False) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if close:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(body)

        try:
            self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        except OSError:
            if not port:
                raise
            log.warning("OTLP port %s is taken; listening on an ephemeral port", port)
            self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.threads = [
            threading.Thread(target=self.server.serve_forever, name="otlp-receiver", daemon=True),
            threading.Thread(target=self.forward_forever, name="otlp-tee", daemon=True),
        ]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Receiver:
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.tee_queue.put(("", b"", {}))  # wakes the forwarder to end

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        if not self.slots.acquire(blocking=False):
            self.inbox.count("refused: busy")
            request.answer(503, {"error": "busy"}, close=True)
            return
        try:
            signal, protobuf, body = self.read(request)
            try:
                records = decode(signal, body, protobuf=protobuf)
            except OtlpError as exc:
                raise Refused(400, str(exc)) from None
            self.inbox.take(records)
            self.tee(request, signal, body)
            request.answer(200, {})
        except Refused as refused:
            self.inbox.count(f"refused: {refused.status}")
            # Anything but a bad body leaves the stream in an unknown state: close it.
            request.answer(refused.status, {"error": refused.reason}, close=refused.status != 400)
        except (OSError, TimeoutError):
            request.close_connection = True
            self.inbox.count("refused: connection")
        finally:
            self.slots.release()

    def read(self, request: BaseHTTPRequestHandler) -> tuple[str, bool, bytes]:
        path = request.path.split("?", 1)[0].rstrip("/")
        signal = path.removeprefix("/v1/")
        if not path.startswith("/v1/") or signal not in SIGNALS:
            raise Refused(404, f"no OTLP signal at {path}")
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
            raise Refused(401, "wrong or missing token")
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type not in CONTENT_TYPES:
            raise Refused(415, f"Content-Type {content_type or 'none'}: send JSON or protobuf")
        raw = read_body(request, self.max_body)
        body = inflate(raw, request.headers.get("Content-Encoding", ""), self.max_body)
        return signal, CONTENT_TYPES[content_type], body

    # ------------------------------------------------------------------ the tee

    def tee(self, request: BaseHTTPRequestHandler, signal: str, body: bytes) -> None:
        header = request.headers.get(TEE_HEADER)
        if not header:
            return
        try:
            tee = Tee.decode(header)
        except FormatError as exc:
            self.inbox.count("tee: bad header")
            log.info("tee header ignored: %s", exc)
            return
        headers = {**tee.headers, "Content-Type": request.headers.get("Content-Type", "")}
        try:
            self.tee_queue.put_nowait((tee.url(signal), body, headers))
        except queue.Full:
            self.inbox.count("tee: dropped, queue full")

    def forward_forever(self) -> None:
        while True:
            url, body, headers = self.tee_queue.get()
            if not url:
                return
            # Tee.decode allows http(s) URLs only.
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
            try:
                with urllib.request.urlopen(request, timeout=TEE_TIMEOUT_SECONDS) as answer:  # noqa: S310
                    answer.read(65536)
                self.inbox.count("tee: forwarded")
            except (urllib.error.URLError, OSError, ValueError) as exc:
                self.inbox.count("tee: failed")
                log.info("telemetry not forwarded to %s: %s", url, exc)


def start_receiver(paths: StatePaths, inbox: Inbox, *, port: int, max_body: int) -> Receiver:
    """Listen, then say where (and with which token) in otlp.json for the wrapper. The
    token is kept across restarts, so an unwrapped session configured with it stays joined."""
    try:
        ensure_private_dir(paths.home / "monitor")
    except UnsafeDirectory as exc:
        raise OSError(str(exc)) from exc
    known = read_receiver_address(paths)
    token = known.token if known else secrets.token_urlsafe(24)
    receiver = Receiver(inbox, token, port=port, max_body=max_body).start()
    write_receiver_address(paths, ReceiverAddress(receiver.endpoint, token))
    return receiver
