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

import contextlib
import hmac
import json
import logging
import os
import queue
import re
import secrets
import threading
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import islice
from pathlib import Path
from typing import Any

from sessions_app.otlp import SIGNALS, OtlpError, Records, decode
from sessions_app.telemetry import Rollup, session_key, span_row
from wrapper.formats import (
    FormatError,
    StatePaths,
    UnsafeDirectory,
    ensure_private_dir,
    process_start_time,
    read_json_record,
    write_json_atomic,
)
from wrapper.telemetry import (
    TEE_HEADER,
    ReceiverAddress,
    Tee,
    receiver_file,
    write_receiver_address,
)

log = logging.getLogger(__name__)

# Requests handled at once; more are told busy (503), and OTLP exporters retry.
MAX_CONCURRENT_REQUESTS = 16
LISTEN_BACKLOG = 128
READ_TIMEOUT_SECONDS = 10.0
PENDING_SPANS_LIMIT = 50_000
ROLLUPS_KEPT = 5_000  # runs whose rollups the inbox holds (the oldest are let go)
NEW_RUNS_PER_BODY = 100
EVICTION_LOOKS = 256  # rollups looked at for one to let go (the changed ones wait to be written)
TEE_QUEUE_LIMIT = 1_000
TEE_TIMEOUT_SECONDS = 5.0
CHUNK_SIZE_RE = re.compile(rb"[0-9A-Fa-f]{1,8}")
CONTENT_TYPES = {"application/json": False, "application/x-protobuf": True}


# A body this small is read (and let go) before a refusal is answered: closing a
# connection with unread data resets it, and the client would never see the answer.
SMALL_BODY_BYTES = 64 * 1024


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A collector answers; it does not send the body on elsewhere (a redirect would make
    the monitor fetch any URL, as GET, from where it runs)."""

    def redirect_request(self, *args, **kwargs):
        return None


NO_REDIRECTS = urllib.request.build_opener(_NoRedirect)


class Refused(Exception):
    def __init__(self, status: int, reason: str, *, unread: bool = False, framing: bool = False):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.unread = unread  # refused before its body was read
        # Only a body read whole, and bad, leaves the stream where the next request begins.
        self.keep_open = status == 400 and not framing


@dataclass
class Drained:
    rollups: list[Rollup] = field(default_factory=list)
    spans: list[dict[str, Any]] = field(default_factory=list)


class Inbox:
    """What the receiver took, kept until the monitor's round writes it (thread-safe)."""

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


# --------------------------------------------------------------------------- HTTP


def read_body(handler: BaseHTTPRequestHandler, limit: int) -> bytes:
    """The request body, Content-Length or chunked, never more than `limit` bytes."""
    if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
        parts, size = [], 0
        while True:
            line = handler.rfile.readline(1024)
            # Hex digits only: int() would take "-1" (read to EOF) or "+0x10".
            size_field = line.split(b";")[0].strip()
            if not CHUNK_SIZE_RE.fullmatch(size_field):
                raise Refused(400, "bad chunked encoding", framing=True)
            chunk = int(size_field, 16)
            if chunk == 0:
                while handler.rfile.readline(1024).strip():  # trailers
                    pass
                return b"".join(parts)
            size += chunk
            if size > limit:
                raise Refused(413, f"body over {limit} bytes")
            data = handler.rfile.read(chunk)
            if len(data) != chunk or handler.rfile.readline(8) != b"\r\n":
                raise Refused(400, "bad chunked encoding", framing=True)
            parts.append(data)
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


def skip_small_body(handler: BaseHTTPRequestHandler) -> None:
    """Read a small Content-Length body that is refused, so the refusal reaches the client."""
    try:
        length = int(handler.headers.get("Content-Length", ""))
    except ValueError:
        return
    if (
        0 < length <= SMALL_BODY_BYTES
        and "chunked" not in handler.headers.get("Transfer-Encoding", "").lower()
    ):
        with contextlib.suppress(OSError):
            handler.rfile.read(length)


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


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # Connections waiting to be accepted (socketserver's default is 5: a burst of runs
    # exporting at once would see connections dropped or reset).
    request_queue_size = LISTEN_BACKLOG


class Receiver:
    """The HTTP server on loopback, its threads, and the tee's forwarder."""

    def __init__(
        self,
        inbox: Inbox,
        token: str,
        *,
        port: int = 0,
        max_body: int = 8 * 1024 * 1024,
        forwards: bool = True,
    ):
        self.inbox = inbox
        # Whether a job's own exporter gets what it sent (OPSCONSOLE_TELEMETRY_TEE).
        self.forwards = forwards
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
            # An answer goes out in two writes (headers, body): with Nagle's algorithm a
            # kept-alive connection waits for the client's delayed ACK, 40 ms an export.
            disable_nagle_algorithm = True
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
                try:
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the client has gone: nobody to tell
                    self.close_connection = True

        try:
            self.server = Server(("127.0.0.1", port), Handler)
        except OSError:
            if not port:
                raise
            log.warning("OTLP port %s is taken; listening on an ephemeral port", port)
            self.server = Server(("127.0.0.1", 0), Handler)
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
            skip_small_body(request)
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
            if refused.unread:
                skip_small_body(request)
            request.answer(refused.status, {"error": refused.reason}, close=not refused.keep_open)
        except (OSError, TimeoutError):
            request.close_connection = True
            self.inbox.count("refused: connection")
        finally:
            self.slots.release()

    def read(self, request: BaseHTTPRequestHandler) -> tuple[str, bool, bytes]:
        path = request.path.split("?", 1)[0].rstrip("/")
        signal = path.removeprefix("/v1/")
        if not path.startswith("/v1/") or signal not in SIGNALS:
            raise Refused(404, f"no OTLP signal at {path}", unread=True)
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
            raise Refused(401, "wrong or missing token", unread=True)
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type not in CONTENT_TYPES:
            raise Refused(
                415, f"Content-Type {content_type or 'none'}: send JSON or protobuf", unread=True
            )
        raw = read_body(request, self.max_body)
        body = inflate(raw, request.headers.get("Content-Encoding", ""), self.max_body)
        return signal, CONTENT_TYPES[content_type], body

    # ------------------------------------------------------------------ the tee

    def tee(self, request: BaseHTTPRequestHandler, signal: str, body: bytes) -> None:
        header = request.headers.get(TEE_HEADER)
        if not header:
            return
        if not self.forwards:
            self.inbox.count("tee: off on this host")
            return
        try:
            tee = Tee.decode(header)
        except FormatError as exc:
            self.inbox.count("tee: bad header")
            log.info("tee header ignored: %s", exc)
            return
        if not tee.exports(signal):  # the job never sent this signal there: nor do we
            return
        headers = {
            **tee.headers_for(signal),
            "Content-Type": request.headers.get("Content-Type", ""),
        }
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
                with NO_REDIRECTS.open(request, timeout=TEE_TIMEOUT_SECONDS) as answer:
                    answer.read(65536)
                self.inbox.count("tee: forwarded")
            except (urllib.error.URLError, OSError, ValueError) as exc:
                self.inbox.count("tee: failed")
                # By host: the URL's path or query may carry a credential.
                log.info(
                    "telemetry not forwarded to %s: %s", urllib.parse.urlsplit(url).hostname, exc
                )


def kept_token(paths: StatePaths) -> str | None:
    """The token an earlier monitor of this host wrote (kept across restarts, so sessions
    configured with `opsconsole telemetry_env` stay joined); None if there is none."""
    try:
        token = read_json_record(receiver_file(paths), max_bytes=4096).get("token")
    except FormatError:
        return None
    return token if isinstance(token, str) and 16 <= len(token) <= 128 else None


def start_receiver(
    paths: StatePaths, inbox: Inbox, *, port: int, max_body: int, forwards: bool = True
) -> Receiver:
    """Listen, then say where (and with which token) in otlp.json for the wrapper. The
    token is kept across restarts, so an unwrapped session configured with it stays joined."""
    try:
        ensure_private_dir(paths.home / "monitor")
    except UnsafeDirectory as exc:
        raise OSError(str(exc)) from exc
    token = kept_token(paths) or secrets.token_urlsafe(24)
    receiver = Receiver(inbox, token, port=port, max_body=max_body, forwards=forwards).start()
    pid = os.getpid()
    started = process_start_time(pid) or 0.0
    write_receiver_address(paths, ReceiverAddress(receiver.endpoint, token, pid, started))
    return receiver
