"""What `opsconsole serve` runs: the web server and the monitor, kept alive together.

The web server is the product's front: if it exits, everything stops with its
exit code. The monitor is restarted when it dies, and also when it is alive but
silent (no sample for three intervals: stuck), with a back-off so a monitor that
cannot start does not spin. SIGTERM, SIGINT and SIGHUP stop both. The supervisor's
loop never touches the database (a silent one would stop it supervising): the
alert about a silent monitor is written from a thread of its own.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

from django.conf import settings
from django.db import connections

from alerts_app.delivery import base_url_warning
from alerts_app.engine import monitor_silent  # the alerts app, when installed
from monitor_app.published import read_local_sample
from monitor_app.snapshot import sample_is_stale

log = logging.getLogger("opsconsole.supervise")

# A monitor that dies sooner than this after starting counts towards the back-off.
QUICK_DEATH_SECONDS = 10.0
MAX_BACKOFF_SECONDS = 60.0
# A freshly started monitor gets this long before silence counts against it.
STARTUP_GRACE_SECONDS = 20.0


class Supervisor:
    def __init__(self, *, web: list[str], monitor: list[str] | None) -> None:
        self.web_argv = web
        self.monitor_argv = monitor
        self.stop = threading.Event()
        self.monitor: subprocess.Popen | None = None
        self.monitor_started = 0.0
        self.backoff = 1.0
        self.restarts = 0
        self.silent_reported = False
        self.reporter: threading.Thread | None = None

    def run(self) -> int:
        warning = base_url_warning()
        if warning:
            print(f"opsconsole: WARNING: {warning}", file=sys.stderr, flush=True)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, lambda *_: self.stop.set())
        web = subprocess.Popen(self.web_argv)
        if self.monitor_argv:
            self.start_monitor()
        try:
            while not self.stop.wait(1.0):
                if web.poll() is not None:
                    log.error("web server exited with %s; stopping", web.returncode)
                    return web.returncode or 1
                if self.monitor_argv:
                    self.check_monitor()
            return 0
        finally:
            self.terminate(web)
            if self.monitor is not None:
                self.terminate(self.monitor)

    def start_monitor(self) -> None:
        self.monitor = subprocess.Popen(self.monitor_argv)
        self.monitor_started = time.monotonic()
        print(f"opsconsole: monitor started (pid {self.monitor.pid})", flush=True)

    def check_monitor(self) -> None:
        assert self.monitor is not None
        now = time.monotonic()
        code = self.monitor.poll()
        if code is None:
            if now - self.monitor_started > STARTUP_GRACE_SECONDS and self.silent():
                log.error("monitor (pid %s) alive but silent; restarting it", self.monitor.pid)
                self.report_silent()
                self.terminate(self.monitor)
                code = self.monitor.returncode
            else:
                if now - self.monitor_started > QUICK_DEATH_SECONDS:
                    self.backoff = 1.0
                return
        if now - self.monitor_started < QUICK_DEATH_SECONDS:
            time.sleep(min(self.backoff, MAX_BACKOFF_SECONDS))
            self.backoff = min(self.backoff * 2, MAX_BACKOFF_SECONDS)
        self.restarts += 1
        log.error("monitor exited (%s); restart #%d", code, self.restarts)
        self.start_monitor()

    def silent(self) -> bool:
        """No sample in the monitor's local file for three intervals."""
        sample = read_local_sample()
        if sample is None:
            return True
        silent = sample_is_stale(sample.taken_at, settings.OPSCONSOLE_SAMPLE_SECONDS)
        if not silent:
            self.silent_reported = False
        return silent

    def report_silent(self) -> None:
        """Open the alert about the silent monitor, in a thread of its own: the database
        may be why the monitor fell silent, and the supervisor must never wait on it."""
        if self.silent_reported:
            return
        self.silent_reported = True
        if self.reporter is not None and self.reporter.is_alive():
            return  # the last report still waits for the database
        sample = read_local_sample()
        self.reporter = threading.Thread(
            target=self._report_silent,
            args=(sample.taken_at if sample else None,),
            name="report-silent-monitor",
            daemon=True,
        )
        self.reporter.start()

    @staticmethod
    def _report_silent(last_sample_at: datetime | None) -> None:
        try:
            monitor_silent(settings.OPSCONSOLE_HOST, last_sample_at, datetime.now(UTC))
        except Exception:
            log.exception("could not report the silent monitor")
        finally:
            connections.close_all()

    @staticmethod
    def terminate(process: subprocess.Popen, grace: float = 10.0) -> None:
        if process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run `opsconsole serve`")
