"""A reporting host's held poll for its requests: the host's side of fleet.action_push.

A thread of its own keeps one `GET /api/hosts/actions/wait` open to the console. Each
request it brings is carried out at once by the report state's own `start_action`
(the same `carry_out` as a request that came with a report's answer), against the
latest sample; the outcome goes back with the next report, as for any request.

The poll is an addition: a console that does not answer it (an older console: 404;
every held slot taken: 503; unreachable) is asked again later, and meanwhile the
requests come with the report answers as before.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime

log = logging.getLogger(__name__)

WAIT_PATH = "/api/hosts/actions/wait"
# How long the console is asked to hold a poll: its longest (fleet.action_push).
WAIT_SECONDS = 25.0

# After a failed poll, the pause before the next, doubling up to the longest.
FIRST_BACKOFF_SECONDS = 1.0
LONGEST_BACKOFF_SECONDS = 60.0
# A console without the endpoint (older): asked again this rarely.
NOT_SUPPORTED_SECONDS = 600.0
# Until the first sample is taken there is nothing to act on: looked for this often.
NO_SAMPLE_YET_SECONDS = 0.2
# A poll answered empty sooner than this (a console stopping, a proxy cutting it short)
# is not asked again at once: a poll is never a busy loop.
SHORTEST_EMPTY_POLL_SECONDS = 1.0

Fetch = Callable[[float], tuple[int, dict[str, str], bytes]]


class ActionPoller:
    """Holds the poll open in a thread; `state` is the host's ReportState."""

    def __init__(self, reporter, state, fetch: Fetch | None = None) -> None:
        self.reporter = reporter
        self.state = state
        self.fetch = fetch or self._get
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.polls = 0  # answered polls, for tests and the log
        self.brought = 0  # requests the latest answered poll brought

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name="action-poll", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop asking; a poll held right now is left to end on its own (daemon thread)."""
        self.stopping.set()

    def run(self) -> None:
        backoff = FIRST_BACKOFF_SECONDS
        while not self.stopping.is_set():
            if self.state.latest is None:
                self.stopping.wait(NO_SAMPLE_YET_SECONDS)
                continue
            began = time.monotonic()
            pause = self.poll_once()
            if pause is None:
                backoff = FIRST_BACKOFF_SECONDS
                if not self.brought and time.monotonic() - began < SHORTEST_EMPTY_POLL_SECONDS:
                    self.stopping.wait(SHORTEST_EMPTY_POLL_SECONDS)
                continue
            if pause <= 0:  # failed without a word on when to come back
                pause, backoff = backoff, min(backoff * 2, LONGEST_BACKOFF_SECONDS)
            self.stopping.wait(pause)

    def poll_once(self) -> float | None:
        """One poll and what it brought carried out; None to ask again at once, else the
        pause before the next (0: the caller's backoff)."""
        try:
            status, headers, body = self.fetch(WAIT_SECONDS)
        except OSError as exc:
            log.info("poll for requests failed (they come with reports): %s", exc)
            return 0
        if status == 404:
            log.info("the console does not push requests: they come with reports")
            return NOT_SUPPORTED_SECONDS
        if status != 200:
            try:
                return max(1.0, float(headers.get("Retry-After", "")))
            except ValueError:
                return 0
        try:
            actions = json.loads(body)["actions"]
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("the console's answer to a poll is unreadable: %s", exc)
            return 0
        self.polls += 1
        landed_at = datetime.now(UTC).isoformat()
        actions = [a for a in actions if isinstance(a, dict)] if isinstance(actions, list) else []
        self.brought = len(actions)
        for action in actions:
            self.state.start_action(
                {**action, "via": "push", "landed_at": landed_at}, self.state.latest
            )
        return None

    def _get(self, wait: float) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(  # noqa: S310 - checked http(s) by the Reporter
            f"{self.reporter.url}{WAIT_PATH}?wait={wait:g}",
            headers={"Authorization": f"Bearer {self.reporter.token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=wait + 15) as response:  # noqa: S310
                return response.status, dict(response.headers), response.read(1024 * 1024)
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read(64 * 1024)
        except ValueError as exc:
            raise OSError(str(exc)) from exc
