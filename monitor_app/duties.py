"""Fleet-wide duties, run by one console at a time when several share one PostgreSQL.

Any number of `opsconsole serve` may run on one database behind a load balancer. Each
samples its own host; what concerns the whole fleet (the alert rules and their outbox,
the reporting hosts' silence and expiring requests, retention) must run once, not once
per console. Each such duty has a PostgreSQL advisory lock: the console that holds it
does the duty, every other console asks again each round.

The locks are session locks on a connection of their own, opened for nothing else: a
console that dies (SIGKILL, a crashed machine) loses its connection, PostgreSQL releases
its locks, and a survivor takes the duty at its next round, within one sample interval.
A transaction-scoped lock would hold a transaction open for a whole round (the alert
rules commit event by event, and deliver outside any transaction), so it is not used.
The server is asked to probe this connection (TCP keepalives, set per session), so a
holder whose machine vanished without closing its socket is given up within a minute.

On SQLite (one console's process tree by definition) every duty is this console's. A
monitor driven round by round by a test or a benchmark is `Alone`: it opens nothing.
"""

from __future__ import annotations

import contextlib
import logging
import zlib

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections
from django.db.utils import load_backend

log = logging.getLogger(__name__)

# The advisory lock space is shared with every other application on the database: ours
# is the pair (LOCK_CLASS, crc32 of the duty's name), LOCK_CLASS spelling "opsc".
LOCK_CLASS = 0x6F707363

# The duties, by name (docs/scale.md, "Replicas"): what each one's holder does.
ALERTS = "alerts"  # alert rules on events and timers, the outbox's delivery, alert pruning
FLEET = "fleet"  # reporting hosts' silence, requests for hosts that expire
RETENTION = "retention"  # events and telemetry spans past their retention

# Asked of the server for this connection only: idle sessions are not cut (that would
# hand the duties around for nothing), and a peer that vanished is found by probes.
SESSION_SETTINGS = (
    "SET idle_session_timeout = 0",
    "SET idle_in_transaction_session_timeout = 0",
    "SET tcp_keepalives_idle = 10",
    "SET tcp_keepalives_interval = 5",
    "SET tcp_keepalives_count = 3",
)


def lock_key(duty: str) -> tuple[int, int]:
    """The advisory lock of a duty: two int4s, the second crc32 of its name, signed."""
    crc = zlib.crc32(duty.encode())
    return LOCK_CLASS, crc - (1 << 32) if crc >= 1 << 31 else crc


class Alone:
    """The duties of a monitor that shares them with nobody: every one is its own."""

    def held(self, duty: str, round_id: object = None) -> bool:
        return True

    def release(self) -> None:
        pass


class DutyLocks:
    """The fleet duties this process holds, on a PostgreSQL connection of their own.

    `held(duty)` is asked once per round: True while this process holds the duty's
    lock (the connection is checked alive), else it tries to take it without waiting.
    Used from one thread (the monitor's loop)."""

    def __init__(self, alias: str = DEFAULT_DB_ALIAS, name: str = "opsconsole") -> None:
        self.alias = alias
        self.name = name  # application_name: who holds a duty, in pg_stat_activity
        self.held_now: set[str] = set()
        self._db = None
        self._checked_round: object = None
        self._failed_round: object = None

    @property
    def exclusive(self) -> bool:
        """Whether duties need a lock at all: only consoles that can share a database."""
        return connections[self.alias].vendor == "postgresql"

    def held(self, duty: str, round_id: object = None) -> bool:
        """Whether this process does `duty` this round. `round_id` (the sample's time,
        say) lets several duties of one round share one liveness check."""
        if not self.exclusive:
            return True
        if round_id is not None and round_id == self._failed_round:
            return False  # the database did not answer this round: no second wait on it
        try:
            if duty in self.held_now:
                if round_id is None or round_id != self._checked_round:
                    self._query("SELECT 1")
                    self._checked_round = round_id
                return True
            taken = self._query("SELECT pg_try_advisory_lock(%s, %s)", lock_key(duty))
        except DatabaseError as exc:
            # The connection is gone, and with it every lock it held: ask again next round.
            self._failed_round = round_id
            self._drop(f"duty locks lost: {exc}")
            return False
        if taken:
            self.held_now.add(duty)
            log.info("this console now runs the fleet duty %r", duty)
        return bool(taken)

    def release(self) -> None:
        """Give every duty up now (a clean stop): a survivor takes them at its next round.
        Unlocked before the connection closes: a closing backend lets go a moment later."""
        if self._db is not None and self.held_now:
            with contextlib.suppress(DatabaseError):
                self._query("SELECT pg_advisory_unlock_all()")
        self._drop(None)

    def _query(self, sql: str, params: tuple = ()):
        if self._db is None:
            self._db = self._open()
        with self._db.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone()[0]

    def _open(self):
        return private_connection(self.alias, self.name, SESSION_SETTINGS)

    def _drop(self, why: str | None) -> None:
        if why and self.held_now:
            log.warning("%s; given up: %s", why, ", ".join(sorted(self.held_now)))
        self.held_now.clear()
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(DatabaseError):
                db.close()


def private_connection(alias: str, name: str, session_settings: tuple[str, ...] = ()):
    """A connection like Django's own, for one purpose only (the duty locks, the action
    bell's LISTEN): never pooled (a pooled connection would keep its locks or its LISTEN
    after being handed back), never closed by Django's request cycle; `name` is its
    application_name, what pg_stat_activity shows."""
    settings_dict = {**connections.settings[alias]}
    settings_dict["OPTIONS"] = {
        key: value for key, value in (settings_dict.get("OPTIONS") or {}).items() if key != "pool"
    }
    settings_dict["CONN_MAX_AGE"] = None
    settings_dict["CONN_HEALTH_CHECKS"] = False
    db = load_backend(settings_dict["ENGINE"]).DatabaseWrapper(settings_dict, alias)
    try:
        with db.cursor() as cursor:
            cursor.execute("SELECT set_config('application_name', %s, false)", [name])
            for statement in session_settings:
                try:
                    cursor.execute(statement)
                except DatabaseError as exc:  # a setting an older server lacks
                    log.info("%s: %s not set: %s", name, statement, exc)
    except DatabaseError:
        db.close()
        raise
    return db
