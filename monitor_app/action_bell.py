"""The doorbell of requests for other hosts: a held poll (fleet.action_push) waits on it
and is woken when a request for its host is queued, on this console or on another one
that shares the database.

`ring(host)` is called in the transaction that queues the request. On PostgreSQL it is
a NOTIFY on CHANNEL, which PostgreSQL delivers at commit to every console listening;
in this process the waiters of that host are also woken right after the commit.

Each process has one `Bell` and, while any poll waits, one thread that learns of
requests for every waiting host at once, so a held poll holds no database connection:
- on PostgreSQL it LISTENs on a connection of its own (one per process, not per poll);
- elsewhere (SQLite: one console, but several worker processes) it asks one indexed
  query every CHECK_SECONDS: which of the waiting hosts have a pending request.
The thread ends when nobody has waited for IDLE_SECONDS, and its connection with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, transaction

from monitor_app.duties import SESSION_SETTINGS, private_connection
from monitor_app.models import RemoteAction

log = logging.getLogger(__name__)

CHANNEL = "opsconsole_remote_actions"
# SQLite's fallback: one cheap query this often while a poll waits (the delay it adds).
CHECK_SECONDS = 0.15
# How long a PostgreSQL listener waits for a notification before looking at its waiters.
LISTEN_SECONDS = 1.0
# Without waiters for this long, the thread (and its connection) goes.
IDLE_SECONDS = 30.0
# After the listener's connection failed, how long before it connects again (polls
# waiting meanwhile are answered by their own timeout; the report path still delivers).
RETRY_SECONDS = 2.0


def ring(host: str, alias: str = DEFAULT_DB_ALIAS) -> None:
    """A request for `host` is being queued in the current transaction: wake its polls
    once it commits (every console's, through PostgreSQL; this process's directly)."""
    connection = connections[alias]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, host])
    transaction.on_commit(lambda: bell.wake(host), using=alias)


class Bell:
    """Who waits for a host's requests (held polls), by host, and the one thread that wakes them."""

    def __init__(self, alias: str = DEFAULT_DB_ALIAS, check_seconds: float = CHECK_SECONDS) -> None:
        self.alias = alias
        self.check_seconds = check_seconds
        self.checks = 0  # fallback looks made (SQLite)
        self.lock = threading.Lock()
        self.waiters: dict[str, set] = {}  # host -> waiters (anything with set())
        self.thread: threading.Thread | None = None
        self.last_waiter_at = time.monotonic()
        self.closed = threading.Event()  # set when the process stops (close())

    @property
    def closing(self) -> bool:
        """The process is stopping: no poll waits any more."""
        return self.closed.is_set()

    @contextlib.contextmanager
    def waiting(self, host: str) -> Iterator[threading.Event]:
        """An event set whenever a request for `host` may be pending. Enter before the
        first look at the table, so that a request queued in between is not missed."""
        event = threading.Event()
        self.add(host, event)
        try:
            yield event
        finally:
            self.discard(host, event)

    def add(self, host: str, waiter) -> None:
        """`waiter.set()` is called whenever a request for `host` may be pending (from
        the bell's thread, or a request's), until it is discarded: a thread's Event, or
        a poll parked in the web worker's event loop (opsconsole.web_worker.Parking)."""
        with self.lock:
            if self.closing:
                waiter.set()
            self.waiters.setdefault(host, set()).add(waiter)
            self.last_waiter_at = time.monotonic()
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self.watch, name="action-bell", daemon=True)
                self.thread.start()

    def discard(self, host: str, waiter) -> None:
        with self.lock:
            waiters = self.waiters.get(host, set())
            waiters.discard(waiter)
            if not waiters:
                self.waiters.pop(host, None)
            self.last_waiter_at = time.monotonic()

    def wake(self, host: str) -> None:
        with self.lock:
            for waiter in self.waiters.get(host, ()):
                waiter.set()

    def close(self) -> None:
        """Wake every waiting poll for good: the web worker is stopping, and a poll held
        to its end would keep the worker (and `serve`'s stop) waiting up to its timeout."""
        with self.lock:
            self.closed.set()
            for waiters in self.waiters.values():
                for waiter in waiters:
                    waiter.set()

    def waiting_hosts(self) -> list[str]:
        with self.lock:
            return list(self.waiters)

    def idle(self) -> bool:
        with self.lock:
            if self.closing:
                self.thread = None
                return True
            if self.waiters or time.monotonic() - self.last_waiter_at < IDLE_SECONDS:
                return False
            self.thread = None  # the next waiter starts another
            return True

    def watch(self) -> None:
        try:
            if connections[self.alias].vendor == "postgresql":
                self.listen()
            else:
                self.check()
        finally:
            connections.close_all()  # this thread's own Django connections, if any

    def check(self) -> None:
        """The fallback: which waiting hosts have a pending request, every CHECK_SECONDS."""
        while not self.idle():
            hosts = self.waiting_hosts()
            if hosts:
                try:
                    pending = set(
                        RemoteAction.objects.filter(
                            host__in=hosts, state=RemoteAction.State.PENDING
                        )
                        .order_by()
                        .values_list("host", flat=True)
                        .distinct()
                    )
                except DatabaseError as exc:
                    log.warning("pending requests not checked: %s", exc)
                    connections[self.alias].close()
                    pending = set()
                for host in pending:
                    self.wake(host)
                self.checks += 1
            self.closed.wait(self.check_seconds)

    def listen(self) -> None:
        """LISTEN on a connection of this thread's own; each notification names a host."""
        while not self.idle():
            db = None
            try:
                db = private_connection(
                    self.alias, f"opsconsole bell {os.getpid()}", SESSION_SETTINGS
                )
                db.ensure_connection()
                raw = db.connection
                raw.autocommit = True
                raw.execute(f"LISTEN {CHANNEL}")
                # Requests queued before the LISTEN took effect: their polls look once.
                for host in self.waiting_hosts():
                    self.wake(host)
                while not self.idle():
                    for note in raw.notifies(timeout=LISTEN_SECONDS):
                        self.wake(note.payload)
            except Exception as exc:  # the listener must outlive a lost connection
                log.warning("listening for requests failed (again in %g s): %s", RETRY_SECONDS, exc)
                time.sleep(RETRY_SECONDS)
            finally:
                if db is not None:
                    with contextlib.suppress(Exception):
                        db.close()


# One per process: a gunicorn worker's held polls share it (a fork starts with none).
bell = Bell()
os.register_at_fork(after_in_child=bell.__init__)
