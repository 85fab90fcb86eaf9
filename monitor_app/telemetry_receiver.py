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
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from monitor_app.telemetry_inbox import Inbox
from sessions_app.otlp import SIGNALS, OtlpError, decode
from wrapper.formats import (
    FormatError,
    StatePaths,
    UnsafeDirectory,
    ensure_private_dir,
    process_start_time,
    read_json_record,
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


class Headers(dict):
    """A request's headers by lower-cased name (the first of a repeated one), read by
    `.get` as http.server's message is."""

    def get(self, name: str, default=None):
        return super().get(name.lower(), default)

    def __getitem__(self, name: str):
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())


MAX_HEADER_LINE = 65536
MAX_HEADERS = 100


def read_headers(rfile) -> Headers:
    """The header lines up to the blank one, with http.client's bounds (a line, the count);
    Refused(431) past them."""
    headers = Headers()
    name = None
    for _ in range(MAX_HEADERS + 1):
        line = rfile.readline(MAX_HEADER_LINE + 1)
        if len(line) > MAX_HEADER_LINE:
            raise Refused(431, "header line too long")
        if line in (b"\r\n", b"\n", b""):
            return headers
        text = line.decode("iso-8859-1").rstrip("\r\n")
        if text[:1] in (" ", "\t"):  # a folded line continues the one before
            if name is not None:
                headers[name] = f"{headers[name]} {text.strip()}"
            continue
        key, colon, value = text.partition(":")
        if not colon:
            continue
        name = key.strip().lower()
        if name not in headers:
            dict.__setitem__(headers, name, value.strip())
        else:
            name = None  # the first of a repeated header is the one read
    raise Refused(431, f"more than {MAX_HEADERS} headers")


def parse_request(handler: BaseHTTPRequestHandler) -> bool:
    """http.server's parse_request for HTTP/1.x, with the headers read by `read_headers`:
    the stdlib's email parser was a quarter of the receiver's CPU at 240 exports a second
    (docs/benchmarks.md). False, with the answer sent, when the request is refused."""
    handler.command = None
    handler.request_version = handler.default_request_version
    handler.close_connection = True
    requestline = str(handler.raw_requestline, "iso-8859-1").rstrip("\r\n")
    handler.requestline = requestline
    words = requestline.split()
    if not words:
        return False
    if len(words) != 3 or words[2] not in ("HTTP/1.0", "HTTP/1.1"):
        handler.request_version = "HTTP/1.0"  # an answer with its status line, not HTTP/0.9's
        handler.send_error(400, f"Bad request line {requestline[:100]!r}: HTTP/1.x only")
        return False
    handler.command, handler.path, handler.request_version = words
    if handler.path.startswith("//"):  # as http.server: never an absolute URI
        handler.path = "/" + handler.path.lstrip("/")
    try:
        handler.headers = read_headers(handler.rfile)
    except Refused as refused:
        handler.send_error(refused.status, refused.reason)
        return False
    connection = handler.headers.get("Connection", "").lower()
    handler.close_connection = connection == "close" or (
        handler.request_version == "HTTP/1.0" and connection != "keep-alive"
    )
    expects = handler.headers.get("Expect", "").lower() == "100-continue"
    return not (expects and handler.request_version == "HTTP/1.1") or handler.handle_expect_100()


STATUS_TEXT = {status.value: status.phrase for status in HTTPStatus}
OK_BODY = b"{}"


class HttpDate:
    """The Date header's text, made once a second (formatdate was most of an answer's cost)."""

    def __init__(self) -> None:
        self.second, self.text = -1, ""

    def now(self) -> str:
        second = int(time.time())
        if second != self.second:  # threads may race here: each writes the same text
            self.text, self.second = formatdate(second, usegmt=True), second
        return self.text


HTTP_DATE = HttpDate()


def answer_bytes(status: int, payload: dict, *, close: bool) -> bytes:
    """A whole answer, status line to body, as one buffer."""
    body = OK_BODY if not payload else json.dumps(payload).encode()
    head = (
        f"HTTP/1.1 {status} {STATUS_TEXT.get(status, '')}\r\n"
        f"Server: opsconsole-otlp\r\nDate: {HTTP_DATE.now()}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        + ("Connection: close\r\n" if close else "")
        + "\r\n"
    )
    return head.encode("latin-1") + body


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

            def parse_request(self) -> bool:
                return parse_request(self)

            def do_POST(self):
                receiver.handle(self)

            def do_GET(self):
                self.answer(405, {"error": "POST OTLP to /v1/logs, /v1/metrics or /v1/traces"})

            def answer(self, status: int, payload: dict, *, close: bool = False) -> None:
                if close:
                    self.close_connection = True
                try:  # one write: headers and body in one segment
                    self.wfile.write(answer_bytes(status, payload, close=close))
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
