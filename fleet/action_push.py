"""Requests pushed to a reporting host: the console's side of its held poll.

A reporting host keeps one request open to `GET /api/hosts/actions/wait` (fleet.action_poll
on the host). The console answers at once with the host's pending requests, or holds
the request until one is queued (monitor_app.action_bell wakes it) or `wait` seconds
pass, then answers with none. Requests are handed out by `deliver_actions`, the same
SKIP LOCKED hand-out as a report's answer, so each goes out once whichever path (this
poll, a report, another console's) takes it first; the report answer stays the
fallback for a host whose poll is not held.

While waiting, the request holds no database connection: each look at the table is a
short transaction, and the connection is closed before the wait.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime

from django.db import DEFAULT_DB_ALIAS, connections
from django.utils import timezone

from fleet.host_requests import deliver_actions
from monitor_app.action_bell import Bell, bell

# How long a poll is held when nothing comes (the host asks again at once): under the
# idle timeouts of common proxies (60 s), and short enough that a poll's thread is soon
# back for a console that stops.
LONGEST_WAIT_SECONDS = 25.0


# One hand-out at a time in a process: polls woken together would only contend for the
# same rows, or for SQLite's one writer. (Other processes: SKIP LOCKED, SQLite's lock.)
handing_out = threading.Lock()


def hand_out(host: str, now: datetime) -> list[dict]:
    """The host's pending requests, marked sent (deliver_actions), then the connection let
    go: a held poll keeps none between looks."""
    connection = connections[DEFAULT_DB_ALIAS]
    try:
        with handing_out:
            return deliver_actions(host, now)
    finally:
        if not connection.in_atomic_block:  # a caller's transaction is the caller's
            connection.close()


def wait_for_actions(
    host: str,
    wait: float,
    *,
    doorbell: Bell = bell,
    clock: Callable[[], datetime] = timezone.now,
) -> list[dict]:
    """The host's requests as soon as there are any, or [] after `wait` seconds."""
    if wait <= 0:  # one look: no waiting, so no bell
        return hand_out(host, clock())
    deadline = time.monotonic() + max(0.0, min(wait, LONGEST_WAIT_SECONDS))
    with doorbell.waiting(host) as rung:
        while True:
            rung.clear()  # cleared before the look: a ring during it is not lost
            actions = hand_out(host, clock())
            left = deadline - time.monotonic()
            if actions or left <= 0 or doorbell.closing:
                return actions
            rung.wait(left)


class HeldPolls:
    """How many polls this process holds at once: each holds one of the web server's
    threads, so at most `most` of them, and the others are told to come back later (the
    report path delivers their requests meanwhile)."""

    def __init__(self, most: int) -> None:
        self.most = most
        self.slots = threading.BoundedSemaphore(most) if most > 0 else None

    def take(self) -> bool:
        return self.slots is not None and self.slots.acquire(blocking=False)

    def give_back(self) -> None:
        if self.slots is not None:
            self.slots.release()
