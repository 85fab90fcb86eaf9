"""The monitor as this console runs it: the host engine's round (monitor_app), then
the fleet's and the alerts' rounds, and the catch-up of jobs a quota stamp skipped, as
its steps. Assembled here, on the top floor,
because those layers sit above the engine and the engine may not name them."""

from __future__ import annotations

from alerts_app.engine import alert_round
from fleet.hosts import fleet_round
from monitor_app.catchup import catchup_round
from monitor_app.monitor import Monitor


def console_monitor(**options) -> Monitor:
    """A monitor that records this host's history and runs the console's rules."""
    return Monitor(steps=(fleet_round, alert_round, catchup_round), **options)
