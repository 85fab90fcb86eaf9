"""The console's gunicorn worker: gthread, except that a request's head is read by the
worker's event loop, not by a thread.

gunicorn's gthread worker hands a connection to a thread as soon as its first byte
arrives, and the thread then blocks until the request's headers are complete. A client
that sends its headers a byte at a time (slowloris) holds a thread for as long as it
likes: a few hundred of them hold every thread and /login/ stops answering. Here the
event loop gathers the head without blocking (as nginx does) and gives a connection to
a thread only once the head is complete; a head not complete within HEAD_SECONDS, or
larger than HEAD_MAX_BYTES, is dropped. A buffering proxy in front (docs/operating.md)
also covers slow request bodies, which this does not.
"""

from __future__ import annotations

import contextlib
import selectors
import time
from functools import partial

from gunicorn.workers.gthread import TConn, ThreadWorker

# How long a client may take to send a request's headers, from its connection (or, on
# a kept-alive connection, from its next request's first byte).
HEAD_SECONDS = 15.0
# A head larger than this is refused (431): gunicorn's own limits are far above it.
HEAD_MAX_BYTES = 64 * 1024
HEAD_END = b"\r\n\r\n"
TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"Connection: close\r\nContent-Length: 0\r\n\r\n"
)


class HeadFirstWorker(ThreadWorker):
    """gthread with the request head gathered by the event loop (see the module)."""

    def init_process(self):
        # TLS and HTTP/2 prior knowledge read the socket before the HTTP/1 parser:
        # there the head cannot be gathered ahead, and gthread's own way is kept.
        self.gathers_heads = not self.cfg.is_ssl and self.cfg.http2_cleartext not in (
            "prior-knowledge",
            "both",
        )
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

    def gather_head(self, conn):
        conn.head = bytearray()
        conn.sock.setblocking(False)
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
        if data and 0 <= end <= HEAD_MAX_BYTES:
            conn.data_ready = True
            self.enqueue_req(conn)
            return
        if data:  # too large: say so, best effort
            with contextlib.suppress(OSError):
                conn.sock.send(TOO_LARGE)
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
        if self.alive:
            return super().murder_pending()
        # Stopping: a connection that has not sent a whole request loses nothing.
        for conn in list(self.pending_conns):
            conn.timeout = 0
        return super().murder_pending()
