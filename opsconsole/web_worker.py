"""The console's gunicorn worker: gthread, except that a request's head is read by the
worker's event loop, not by a thread.

gunicorn's gthread worker hands a connection to a thread as soon as its first byte
arrives, and the thread then blocks until the request's headers are complete. A client
that sends its headers a byte at a time (slowloris) holds a thread for as long as it
likes: a few hundred of them hold every thread and /login/ stops answering. Here the
event loop gathers the head without blocking (as nginx does) and gives a connection to
a thread only once the head is complete, a pipelined request's head (already read
behind the previous request) too. A head not complete within HEAD_SECONDS is dropped,
one larger than HEAD_MAX_BYTES refused (431). A buffering proxy in front
(docs/operating.md) also covers slow request bodies, which this does not.

A request its view parks (a reporting host's held poll with nothing to hand out yet,
opsconsole.api.host_actions) waits in the event loop too: a socket, no thread, no
database connection. When its waker is set (the bell: a request for that host) it is
served again from its head, through Django like any request; when its deadline passes
it is answered from the loop with the answer its view left (nothing came).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial

from gunicorn.workers.gthread import TConn, ThreadWorker

# How long a client may take to send a request's headers, from its connection (or, on
# a kept-alive connection, from its next request's first byte, or from the end of the
# previous response when a pipelining client had already sent some of it).
HEAD_SECONDS = 15.0
# A head larger than this is refused (431): gunicorn's own limits are far above it.
HEAD_MAX_BYTES = 64 * 1024
HEAD_END = b"\r\n\r\n"
# After a 431, how long (at most) the rest of the client's request is read and dropped.
DRAIN_SECONDS = 5.0
DRAIN_CHUNK = 64 * 1024
TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"Connection: close\r\nContent-Length: 0\r\n\r\n"
)


# Called once when a worker starts stopping: what holds a thread waiting lets it go (a
# host's held poll, opsconsole.api.host_actions), so the worker stops at once instead
# of at the end of its graceful timeout.
stopping_hooks: list[Callable[[], None]] = []

# Connections kept for requests that are not parked: a worker parks at most
# worker_connections minus these (past that, a view serves its poll the threaded way),
# since gthread stops accepting at worker_connections.
UNPARKED_CONNECTIONS = 200

# The worker and connection a thread is serving, for a view that parks its request.
serving = threading.local()


class RequestParked(StopIteration):
    """Raised where gunicorn would write a parked request's response: gthread's handle()
    ends a connection's turn quietly on StopIteration (no answer, no 500), and
    finish_request then parks the connection."""


class Parking:
    """A view's way to park the request it serves; `set()` wakes it (a bell's waiter),
    from any thread, before or after it is parked."""

    def __init__(self, worker: HeadFirstWorker, conn: TConn) -> None:
        self.worker = worker
        self.conn = conn
        # A request served again after a wake keeps the deadline it was first parked with.
        self.deadline: float | None = getattr(conn, "park_deadline", None)
        self.rung = False
        self.release: Callable[[], None] = lambda: None
        self.due_answer = b""

    def set(self) -> None:
        self.rung = True
        self.worker.method_queue.defer(self.worker.wake_parked, self)

    def park(self, deadline: float, release: Callable[[], None], due_answer: bytes) -> None:
        """Hold the request (the view's response is not sent) until `set()`, then serve it
        again, or until `deadline` (time.monotonic()), then answer `due_answer` (a whole
        HTTP response, closing_answer()). `release` stops whatever would call `set()`."""
        self.deadline, self.release, self.due_answer = deadline, release, due_answer
        self.conn.park_deadline = deadline
        serving.parked = self


def parking_for_this_request() -> Parking | None:
    """How the request this thread serves can be parked; None when it cannot (not served
    by a HeadFirstWorker that gathers heads, a worker stopping, or parked polls at most)."""
    worker, conn = getattr(serving, "worker", None), getattr(serving, "conn", None)
    if worker is None or not worker.alive or len(worker.parked) >= worker.most_parked:
        return None
    return Parking(worker, conn)


def closing_answer(content_type: str, body: bytes) -> bytes:
    """A 200 with `body`, the connection closed after it: what the loop answers when a
    parked request's deadline passes."""
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


def serve_unless_parked(app, environ, start_response):
    """The WSGI app, except that a request its view parked is not answered."""
    serving.parked = None
    result = app(environ, start_response)
    if serving.parked is None:
        return result
    result.close()  # Django's request_finished: the request's connections let go
    raise RequestParked


class HeadFirstWorker(ThreadWorker):
    """gthread with the request head gathered by the event loop (see the module)."""

    def init_process(self):
        # TLS and HTTP/2 prior knowledge read the socket before the HTTP/1 parser:
        # there the head cannot be gathered ahead, and gthread's own way is kept.
        self.gathers_heads = not self.cfg.is_ssl and self.cfg.http2_cleartext not in (
            "prior-knowledge",
            "both",
        )
        # Connections refused with 431, read until the client closes (see head_gathered).
        self.draining_conns = deque()
        # Parked requests by connection, and their deadlines (a heap; stale entries skipped).
        self.parked: dict[TConn, Parking] = {}
        self.park_deadlines: list[tuple[float, int, Parking]] = []
        self.park_order = itertools.count()
        most = self.cfg.worker_connections - UNPARKED_CONNECTIONS
        self.most_parked = max(0, most) if self.gathers_heads else 0
        super().init_process()

    def load_wsgi(self):
        super().load_wsgi()
        self.wsgi = partial(serve_unless_parked, self.wsgi)

    def accept(self, listener):
        if not self.gathers_heads:
            return super().accept(listener)
        try:
            client_sock, client_addr = listener.accept()
        except BlockingIOError:
            return
        except ConnectionAbortedError:
            return
        self.nr_conns += 1
        self.gather_head(TConn(self.cfg, client_sock, client_addr, listener.getsockname()))

    def on_client_socket_readable(self, conn, client):
        """A kept-alive connection's next request: its head is gathered the same way."""
        if not self.gathers_heads:
            return super().on_client_socket_readable(conn, client)
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self.gather_head(conn)

    def finish_request(self, conn, fs):
        parking = getattr(conn, "parking", None)
        if parking is not None:
            conn.parking = None
            self.park(parking)
            return
        # A pipelining client's next request may already sit in the parser's buffer;
        # gthread would hand it straight to a thread, which would then block on the
        # rest of its head (slowloris, one request later): its head is gathered too.
        if not (self.gathers_heads and kept_alive_with_bytes(conn, fs)):
            return super().finish_request(conn, fs)
        self.gather_head(conn, conn.parser.unreader.take_buffered())

    def gather_head(self, conn, buffered=b""):
        """Hand `conn` to a thread once its head is complete; `buffered` is its start."""
        conn.head = bytearray(buffered)
        conn.sock.setblocking(False)
        if buffered:
            end = conn.head.find(HEAD_END)
            if end >= 0 or len(conn.head) > HEAD_MAX_BYTES:
                self.head_gathered(conn, end)
                return
        # pending_conns stays sorted by deadline (all are now + HEAD_SECONDS), so
        # gthread's murder_pending drops the late ones first.
        conn.timeout = time.monotonic() + HEAD_SECONDS
        self.pending_conns.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_head_readable, conn))

    def on_head_readable(self, conn, client):
        try:
            data = conn.sock.recv(HEAD_MAX_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        # Only the new bytes (and the 3 before them) are searched: a head sent a byte at
        # a time must not cost its length squared (an earlier end was handed over).
        conn.head += data
        end = conn.head.find(HEAD_END, max(0, len(conn.head) - len(data) - len(HEAD_END) + 1))
        if data and end < 0 and len(conn.head) <= HEAD_MAX_BYTES:
            return  # not all there yet
        self.poller.unregister(client)
        self.pending_conns.remove(conn)
        if data:
            self.head_gathered(conn, end)
        else:
            self.nr_conns -= 1
            conn.close()

    def head_gathered(self, conn, end):
        """The head ends at `end` (-1: not within HEAD_MAX_BYTES): serve it or refuse it."""
        if 0 <= end <= HEAD_MAX_BYTES:
            conn.data_ready = True
            self.enqueue_req(conn)
            return
        # Too large: say so, then read what the client still sends before closing, as
        # closing with unread bytes makes Linux send a reset, which can destroy the
        # answer before the client reads it.
        conn.head = None
        with contextlib.suppress(OSError):
            conn.sock.send(TOO_LARGE)
            conn.sock.shutdown(socket.SHUT_WR)
        conn.timeout = time.monotonic() + DRAIN_SECONDS
        self.draining_conns.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_drain_readable, conn))

    def on_drain_readable(self, conn, client):
        try:
            if conn.sock.recv(DRAIN_CHUNK):
                return  # discarded; the client's end (or DRAIN_SECONDS) closes it
        except BlockingIOError:
            return
        except OSError:
            pass
        self.poller.unregister(client)
        self.draining_conns.remove(conn)
        self.nr_conns -= 1
        conn.close()

    def murder_draining(self):
        now = time.monotonic()
        while self.draining_conns and self.draining_conns[0].timeout <= now:
            conn = self.draining_conns.popleft()
            with contextlib.suppress(OSError, KeyError, ValueError):
                self.poller.unregister(conn.sock)
            self.nr_conns -= 1
            conn.close()

    def handle(self, conn):
        head = getattr(conn, "head", None)
        if head is not None:
            conn.head = None
            conn.request_head = bytes(head)  # to serve it again if its view parks it
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader.unread(conn.request_head)
        serving.worker, serving.conn, serving.parked = self, conn, None
        try:
            return super().handle(conn)
        finally:
            conn.parking, serving.parked = serving.parked, None
            if conn.parking is None:  # answered: a next poll on this connection is new
                conn.park_deadline = None
            serving.worker = serving.conn = None

    def park(self, parking: Parking) -> None:
        """Hold a request its view parked (in the loop, after its thread let it go)."""
        if parking.rung or not self.alive:
            self.parked[parking.conn] = parking
            self.serve_again(parking)
            return
        conn = parking.conn
        conn.sock.setblocking(False)
        self.parked[conn] = parking
        heapq.heappush(self.park_deadlines, (parking.deadline, next(self.park_order), parking))
        # Readable while parked: the client has gone (or sent more than it should).
        watch = partial(self.on_parked_readable, parking)
        self.poller.register(conn.sock, selectors.EVENT_READ, watch)

    def unpark(self, parking: Parking) -> bool:
        if self.parked.get(parking.conn) is not parking:
            return False  # already served again, answered or gone
        del self.parked[parking.conn]
        with contextlib.suppress(OSError, KeyError, ValueError):
            self.poller.unregister(parking.conn.sock)
        parking.release()
        return True

    def wake_parked(self, parking: Parking) -> None:
        """Its waker was set (in the loop, through the method queue). Not parked yet: its
        thread is still on it, and park() serves it again as it comes (parking.rung)."""
        if self.parked.get(parking.conn) is parking:
            self.serve_again(parking)

    def serve_again(self, parking: Parking) -> None:
        """Serve a parked request once more, from its head, in a thread (or, stopping,
        answer it as due)."""
        if not self.alive:
            self.answer_due(parking)
            return
        if not self.unpark(parking):
            return
        conn = parking.conn
        head = conn.request_head + conn.parser.unreader.take_buffered()
        conn.parser, conn.initialized = None, False
        self.gather_head(conn, head)

    def answer_due(self, parking: Parking) -> None:
        if not self.unpark(parking):
            return
        conn = parking.conn
        with contextlib.suppress(OSError):
            conn.sock.send(parking.due_answer)  # a few hundred bytes to an empty buffer
        self.nr_conns -= 1
        conn.close()

    def on_parked_readable(self, parking: Parking, client):
        try:
            more = parking.conn.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return
        except OSError:
            more = b""
        if more:  # left unread until the request is served again; not watched meanwhile
            self.poller.unregister(client)
            return
        if self.unpark(parking):
            self.nr_conns -= 1
            parking.conn.close()

    def answer_due_polls(self) -> None:
        now = time.monotonic()
        while self.park_deadlines and self.park_deadlines[0][0] <= now:
            _deadline, _order, parking = heapq.heappop(self.park_deadlines)
            self.answer_due(parking)

    def murder_pending(self):
        # gthread calls this once a loop, running and stopping alike.
        self.murder_draining()
        self.answer_due_polls()
        if self.alive:
            return super().murder_pending()
        if not getattr(self, "hooks_called", False):
            self.hooks_called = True
            for hook in stopping_hooks:
                hook()
        # Stopping: parked requests are answered now (they ask again, elsewhere).
        for parking in list(self.parked.values()):
            self.answer_due(parking)
        # Stopping: a connection that has not sent a whole request loses nothing.
        for conn in list(self.pending_conns):
            conn.timeout = 0
        return super().murder_pending()


def kept_alive_with_bytes(conn, fs) -> bool:
    """Whether a served request left `conn` kept alive with its next bytes already read."""
    if fs.cancelled() or fs.exception() is not None or fs.result() is not True:
        return False
    return conn.parser is not None and bool(conn.parser.unreader.buf.getvalue())
