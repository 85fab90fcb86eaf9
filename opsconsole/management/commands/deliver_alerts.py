"""Run the alert rules and deliver the outbox: once, or as a loop of ticks.

The monitor calls `alerts_app.engine.tick` once per sample; this command is the
same round on its own, for setups without the monitor and for tests.
"""

from __future__ import annotations

import logging
import signal
import threading

from django.core.management.base import BaseCommand
from django.db import DatabaseError, close_old_connections, connection

from alerts_app import engine
from monitor_app.live import get_snapshot

log = logging.getLogger(__name__)


class Command(BaseCommand):
    help = (
        "Evaluate the alert rules on the monitor's events and deliver due alerts "
        "(retrying with backoff). Loops until SIGTERM unless --once."
    )

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="one round, then exit")
        parser.add_argument(
            "--every", type=float, default=2.0, metavar="SECONDS", help="pause between rounds"
        )
        parser.add_argument(
            "--no-live",
            action="store_true",
            help="events only: do not take a live snapshot (no stall or cost-cap checks)",
        )

    def handle(self, *args, once, every, no_live, **options):
        stop = threading.Event()
        if not once:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: stop.set())
        while not stop.is_set():
            result = self.tick(no_live)
            if result:
                self.stdout.write(
                    f"events {result.events}, alerts {result.alerts}, "
                    f"delivered {result.delivered}, failed {result.failed}"
                )
                self.stdout.flush()
            if once or stop.wait(every):
                return

    def tick(self, no_live: bool):
        if not connection.in_atomic_block:  # a long-running loop: drop a broken connection
            close_old_connections()
        snapshot = None
        if not no_live:
            try:
                snapshot = get_snapshot()
            except Exception as exc:  # rules on events still run
                log.warning("no live snapshot this round: %s", exc)
        try:
            return engine.tick(snapshot=snapshot, background_delivery=False)
        except DatabaseError as exc:  # a blip: the cursor did not move; next round retries
            log.warning("alert round failed on the database: %s", exc)
            return None
