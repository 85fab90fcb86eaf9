"""Scheduler collectors: each returns a Collection and never raises on bad input."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from datetime import datetime

from django.conf import settings

from jobs_app.collectors import cron, launchd, systemd
from jobs_app.collectors.base import Collection

log = logging.getLogger(__name__)

COLLECTORS = {"launchd": launchd.collect, "systemd": systemd.collect, "cron": cron.collect}


def platform_schedulers() -> list[str]:
    """What this machine has: launchd on macOS, systemd where it is PID 1, cron if installed."""
    found = []
    if sys.platform == "darwin" and shutil.which("launchctl"):
        found.append("launchd")
    if shutil.which("systemctl") and os.path.isdir("/run/systemd/system"):
        found.append("systemd")
    if shutil.which("crontab"):
        found.append("cron")
    return found


def configured_schedulers() -> list[str]:
    chosen = getattr(settings, "OPSCONSOLE_SCHEDULERS", None)
    return list(chosen) if chosen else platform_schedulers()


def collect_all(now: datetime, known_labels: dict[str, set[str]] | None = None) -> list[Collection]:
    """Run every configured collector; one failing never stops the others."""
    collections = []
    for name in configured_schedulers():
        collector = COLLECTORS.get(name)
        if collector is None:
            collections.append(Collection(name, errors=[f"unknown scheduler {name!r}"]))
            continue
        options = (
            {"plist_dirs": settings.OPSCONSOLE_LAUNCHD_PLIST_DIRS} if name == "launchd" else {}
        )
        try:
            collections.append(
                collector(
                    host=settings.OPSCONSOLE_HOST,
                    now=now,
                    known_labels=(known_labels or {}).get(name, set()),
                    **options,
                )
            )
        except Exception as exc:  # a collector bug must not take the dashboard down
            log.exception("collector %s failed", name)
            collections.append(Collection(name, errors=[f"{name} collector failed: {exc}"]))
    return collections
