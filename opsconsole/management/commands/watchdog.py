"""Stop runs past their job's time limit: once, or every N seconds under launchd/systemd."""

from __future__ import annotations

import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand

from monitor_app.live import get_snapshot
from monitor_app.watchdog import run_watchdog


class Command(BaseCommand):
    help = (
        "Stop every run past its job's maximum runtime (admin-editable; default "
        "OPSCONSOLE_DEFAULT_MAX_RUNTIME_MINUTES), orphans included: its whole process tree, "
        "SIGTERM then SIGKILL after the grace period. Recorded with end reason 'watchdog'."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--every",
            type=float,
            metavar="SECONDS",
            help="keep running, checking this often (for a service unit)",
        )
        parser.add_argument("--dry-run", action="store_true", help="list what it would stop")
        parser.add_argument(
            "--grace",
            type=float,
            default=None,
            help="seconds between SIGTERM and SIGKILL (default OPSCONSOLE_STOP_GRACE_SECONDS)",
        )

    def handle(self, *args, every, dry_run, grace, **options):
        grace = settings.OPSCONSOLE_STOP_GRACE_SECONDS if grace is None else grace
        stop = threading.Event()
        if every:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: stop.set())
        while True:
            self.check_once(dry_run, grace)
            if not every or stop.wait(every):
                return

    def check_once(self, dry_run: bool, grace: float) -> None:
        report = run_watchdog(get_snapshot(fresh=True), dry_run=dry_run, grace=grace)
        verb = "would stop" if dry_run else "stopped"
        for item in report.overdue:
            self.stdout.write(f"{verb}: {item.describe()}")
        for outcome in report.stopped:
            self.stdout.write(f"  {outcome.summary}")
        for skipped in report.skipped:
            self.stderr.write(f"skipped {skipped}")
        if not report.overdue:
            self.stdout.write("no run is past its limit")
