"""Django's PostgreSQL backend, with a client-side bound on every wait for an answer.

A server that accepts connections and then never answers (hung, or a proxy in front
of a dead one) is invisible to every server-side timeout: `statement_timeout` is
enforced by the server that is not answering, and TCP keepalives and
`tcp_user_timeout` are answered by the kernel of whatever holds the socket. libpq's
`connect_timeout` bounds only the connection's start. So each wait for an answer on
an open connection (a query, a fetch, a commit, the health check) gets a deadline
of its own: past it, the socket is shut down, the wait returns at once with an
OperationalError (a 503 for the web, "retry next round" for the monitor), and the
broken connection is dropped by Django like any other.

The deadline is enforced from one thread per process (`Deadlines`) rather than by
the waiting thread: the waiting thread is inside psycopg, blocked on the socket.
psycopg's `Connection.wait()` is the one place every operation on an open
connection waits, pooled (psycopg_pool) or not.

The bound comes from DATABASES["default"]["CLIENT_TIMEOUT"] (seconds; settings.py
sets it from OPSCONSOLE_DB_TIMEOUT_SECONDS); None or 0 waits without a bound.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
import types

import psycopg
from django.db.backends.postgresql import base

from opsconsole.postgresql import CLIENT_TIMEOUT_KEY


class Deadlines:
    """Sockets armed with a deadline; a socket still armed at its deadline is shut down,
    which wakes the thread waiting on it (the read sees end-of-file)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._armed: dict[int, tuple[float, int]] = {}  # token -> (deadline, fd)
        self._fired: set[int] = set()
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, fd: int, seconds: float) -> int:
        with self._changed:
            token = next(self._tokens)
            self._armed[token] = (time.monotonic() + seconds, fd)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._watch, name="db-deadlines", daemon=True
                )
                self._thread.start()
            self._changed.notify()
            return token

    def disarm(self, token: int) -> bool:
        """Forget the deadline; True if it had passed and the socket was shut down."""
        with self._changed:
            self._armed.pop(token, None)
            if token in self._fired:
                self._fired.discard(token)
                return True
            return False

    def pending(self) -> int:
        """How many waits are armed now (none once every wait has ended)."""
        with self._changed:
            return len(self._armed)

    def _watch(self) -> None:
        with self._changed:
            while True:
                now = time.monotonic()
                for token, (deadline, fd) in list(self._armed.items()):
                    if deadline <= now:
                        del self._armed[token]
                        self._fired.add(token)
                        shut_down(fd)
                if self._armed:
                    earliest = min(deadline for deadline, _ in self._armed.values())
                    self._changed.wait(max(0.01, earliest - now))
                else:
                    self._changed.wait()


def shut_down(fd: int) -> None:
    """Shut the connection's socket down (both ways) without closing its descriptor,
    which libpq still owns: the blocked read returns end-of-file."""
    try:
        with socket.socket(fileno=os.dup(fd)) as duplicate:
            duplicate.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed: the wait has ended anyway


deadlines = Deadlines()
# A forked child (a gunicorn worker) starts with none armed and its own watching thread.
os.register_at_fork(after_in_child=deadlines.__init__)


class DeadlineConnection(psycopg.Connection):
    """A psycopg connection whose every wait for the server ends within `answer_timeout`
    seconds (None: no bound)."""

    answer_timeout: float | None = None

    def wait(self, gen, *args, **kwargs):
        # A caller with a timeout of its own (notifies) already bounds its wait.
        if not self.answer_timeout or kwargs.get("timeout") is not None or self.closed:
            return super().wait(gen, *args, **kwargs)
        token = deadlines.arm(self.fileno(), self.answer_timeout)
        try:
            return super().wait(gen, *args, **kwargs)
        except psycopg.Error as exc:
            if deadlines.disarm(token):
                raise psycopg.OperationalError(
                    f"the database did not answer within {self.answer_timeout:g} s "
                    "(client-side timeout); connection dropped"
                ) from exc
            raise
        finally:
            deadlines.disarm(token)


class _Psycopg(types.ModuleType):
    """psycopg as Django's backend sees it, connecting with DeadlineConnection."""

    def __getattr__(self, name):
        return getattr(psycopg, name)

    @staticmethod
    def connect(*args, **kwargs):
        return DeadlineConnection.connect(*args, **kwargs)


class DatabaseWrapper(base.DatabaseWrapper):
    Database = _Psycopg("psycopg")

    @property
    def pool(self):
        options = self.settings_dict["OPTIONS"]
        if options.get("pool"):
            if options["pool"] is True:
                options["pool"] = {}
            options["pool"].setdefault("connection_class", DeadlineConnection)
        return base.DatabaseWrapper.pool.fget(self)

    def get_new_connection(self, conn_params):
        connection = super().get_new_connection(conn_params)
        if isinstance(connection, DeadlineConnection):
            connection.answer_timeout = self.settings_dict.get(CLIENT_TIMEOUT_KEY) or None
        return connection
