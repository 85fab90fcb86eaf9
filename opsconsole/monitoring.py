"""The monitor as this console runs it: the host engine's round (monitor_app), then
the fleet's and the alerts' rounds, and the catch-up of jobs a quota stamp skipped, as
its steps. Assembled here, on the top floor, because those layers sit above the engine
and the engine may not name them.

Several consoles may share one PostgreSQL (docs/scale.md, "Replicas"): the rules on
this host's own live runs are every console's, the fleet-wide rounds run on the one
console holding their duty's lock (monitor_app.duties). The catch-up starts this
host's own jobs: every console's; that of the reporting hosts' jobs (a request to each
host's monitor) is the fleet's, one console's."""

from __future__ import annotations

from datetime import datetime

from django.conf import settings

from alerts_app.engine import alert_round, live_round
from fleet.hosts import fleet_round
from monitor_app.catchup import catchup_round, remote_catchup_round
from monitor_app.duties import ALERTS, FLEET, DutyLocks
from monitor_app.monitor import Monitor, Step
from monitor_app.snapshot import Snapshot


def exclusive(duty: str, step: Step) -> Step:
    """`step`, run only on the console that holds `duty` this round."""

    def run(monitor: Monitor, snapshot: Snapshot, now: datetime) -> None:
        if monitor.database_ok and monitor.duties.held(duty, now):
            step(monitor, snapshot, now)

    run.__name__ = step.__name__
    run.__doc__ = step.__doc__
    return run


def console_monitor(**options) -> Monitor:
    """A monitor that records this host's history and runs the console's rules; on
    PostgreSQL, the fleet's rules only while it holds their locks."""
    host = options.get("host") or settings.OPSCONSOLE_HOST
    return Monitor(
        steps=(
            live_round,
            exclusive(FLEET, fleet_round),
            exclusive(ALERTS, alert_round),
            catchup_round,
            exclusive(FLEET, remote_catchup_round),
        ),
        duties=DutyLocks(name=f"opsconsole {host}"[:63]),
        **options,
    )
