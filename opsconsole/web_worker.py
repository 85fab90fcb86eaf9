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
"""

from __future__ import annotations

import contextlib
import selectors
import socket
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
        super().init_process()

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
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader.unread(bytes(head))
        return super().handle(conn)

    def murder_pending(self):
        # gthread calls this once a loop, running and stopping alike.
        self.murder_draining()
        if self.alive:
            return super().murder_pending()
        if not getattr(self, "hooks_called", False):
            self.hooks_called = True
            for hook in stopping_hooks:
                hook()
        # Stopping: a connection that has not sent a whole request loses nothing.
        for conn in list(self.pending_conns):
            conn.timeout = 0
        return super().murder_pending()


def kept_alive_with_bytes(conn, fs) -> bool:
    """Whether a served request left `conn` kept alive with its next bytes already read."""
    if fs.cancelled() or fs.exception() is not None or fs.result() is not True:
        return False
    return conn.parser is not None and bool(conn.parser.unreader.buf.getvalue())
