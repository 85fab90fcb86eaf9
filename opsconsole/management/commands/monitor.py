"""`opsconsole monitor`: sample this host every OPSCONSOLE_SAMPLE_SECONDS until stopped."""

from __future__ import annotations

import os
import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from fleet.action_poll import ActionPoller
from fleet.report import TOKEN_ENV, TOKEN_FILE_ENV, Reporter, host_token
from fleet.reporting import reporting_monitor
from opsconsole.monitoring import console_monitor
from opsconsole.postgresql import CLIENT_TIMEOUT_KEY


class Command(BaseCommand):
    help = (
        "Run the monitor: every OPSCONSOLE_SAMPLE_SECONDS one sample of this host (sidecars, "
        "Claude Code's session registry, one process-table scan, the spool, GC), published "
        "for every web process; state changes recorded as events; jobs collected and the "
        "watchdog run on their own cadences. `opsconsole serve` starts and supervises it."
    )

    def add_arguments(self, parser):
        parser.add_argument("--interval", type=float, default=None, help="seconds between samples")
        parser.add_argument(
            "--once",
            action="store_true",
            help="take and publish (or report) one sample, then exit; with --report-to, "
            "exit 1 when the console does not take it",
        )
        parser.add_argument(
            "--report-to",
            default=os.environ.get("OPSCONSOLE_REPORT_TO", ""),
            metavar="URL",
            help="report each sample to this central console instead of writing a database "
            "here (env OPSCONSOLE_REPORT_TO)",
        )
        parser.add_argument(
            "--token-file",
            metavar="PATH",
            help="a file (mode 0600) holding the host token from `opsconsole create_host_token "
            f"HOSTNAME` on the console (env {TOKEN_FILE_ENV}); or set {TOKEN_ENV}",
        )
        parser.add_argument(
            "--token",
            help="the host token itself: shows in `ps` to every user here, prefer "
            f"--token-file or {TOKEN_ENV}",
        )
        parser.add_argument(
            "--insecure",
            action="store_true",
            help="allow --report-to http:// to a host that is not loopback (the token then "
            "travels in clear text)",
        )

    def handle(self, *args, interval, once, report_to, token, token_file, insecure, **options):
        interval = interval or settings.OPSCONSOLE_SAMPLE_SECONDS
        if report_to:
            try:
                token, warning = host_token(token, token_file, dict(os.environ))
            except ValueError as exc:
                raise CommandError(str(exc)) from exc
            if warning:
                self.stderr.write(warning)
            return self.report_mode(report_to, token, insecure, interval, once)
        shorten_database_timeouts(interval)
        monitor = console_monitor(interval=interval)
        if once:
            snapshot = monitor.tick()
            self.stdout.write(
                f"sample {monitor.seq - 1}: {len(snapshot.sessions)} live, "
                f"{len(snapshot.leftovers)} with leftovers, {snapshot.scan_ms} ms"
                + (f"; database: {snapshot.database_error}" if snapshot.database_error else "")
            )
            return
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, lambda *_: stop.set())
        self.stdout.write(
            f"opsconsole monitor: sampling {monitor.host} every {monitor.interval:g} s",
        )
        self.stdout.flush()
        monitor.run_forever(stop)

    def report_mode(self, url, token, insecure, interval, once):
        try:
            reporter = Reporter(url, token, insecure=insecure)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        monitor = reporting_monitor(reporter, interval=interval)
        if once:
            snapshot = monitor.tick()
            error = monitor.reporting.last_error
            if error is not None:
                raise CommandError(f"sample {monitor.seq - 1} not taken: {error}")
            self.stdout.write(
                f"sample {monitor.seq - 1} reported to {reporter.url}: "
                f"{len(snapshot.sessions)} live, {len(snapshot.leftovers)} with leftovers"
            )
            return
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, lambda *_: stop.set())
        self.stdout.write(
            f"opsconsole monitor: sampling {monitor.host} every {monitor.interval:g} s, "
            f"reporting to {reporter.url}",
        )
        self.stdout.flush()
        # Requests for this host come at once through a held poll, not a report later.
        poller = ActionPoller(reporter, monitor.reporting)
        if settings.OPSCONSOLE_PUSH_ACTIONS:
            poller.start()
        try:
            monitor.run_forever(stop)
        finally:
            poller.stop()


def shorten_database_timeouts(interval: float) -> None:
    """A database that is locked or silent must not stall sampling: fail fast, retry the
    next round. Each wait for PostgreSQL (connecting included) ends within two sample
    intervals (at least 2 s), inside the three after which the sample counts as stale."""
    connection = connections["default"]
    options = connection.settings_dict.setdefault("OPTIONS", {})
    if connection.vendor == "sqlite":
        options["timeout"] = min(float(options.get("timeout", 2)), 2.0)
    elif connection.vendor == "postgresql":
        bound = monitor_database_bound(interval, connection.settings_dict.get(CLIENT_TIMEOUT_KEY))
        connection.settings_dict[CLIENT_TIMEOUT_KEY] = bound
        options["connect_timeout"] = max(2, min(int(options.get("connect_timeout", 3)), int(bound)))
        # The server gives up first (a plain QueryCanceled, the connection kept), before
        # the client's bound shuts the socket and leaves the statement running there.
        statement_ms = max(500, int((bound - 0.5) * 1000))
        options["options"] = (
            options.get("options", "") + f" -c statement_timeout={statement_ms}"
        ).strip()


def monitor_database_bound(interval: float, configured: float | None) -> float:
    """The monitor's client-side bound on a wait for PostgreSQL: two intervals, at least
    2 s (libpq's shortest connect timeout), at most what the console is configured with."""
    bound = max(2.0, 2.0 * interval)
    return min(bound, configured) if configured else bound
