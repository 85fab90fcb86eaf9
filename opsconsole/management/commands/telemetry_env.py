"""`opsconsole telemetry_env`: the shell lines that point a Claude Code session started by
hand (a terminal, CI, a job nobody wrapped) at this host's telemetry receiver, so its
telemetry joins its run by `session.id`. Wrapped runs need none of this."""

from __future__ import annotations

import shlex

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from wrapper.telemetry import read_receiver_address, receiver_env


class Command(BaseCommand):
    help = (
        "Print `export` lines that send a Claude Code session's own telemetry to this "
        "host's monitor (which must be running)."
    )

    def handle(self, *args, **options):
        address = read_receiver_address(settings.OPSCONSOLE_STATE)
        if address is None:
            raise CommandError(
                "no telemetry receiver on this host: start the monitor (`opsconsole serve` or "
                "`opsconsole monitor`) with OPSCONSOLE_TELEMETRY_RECEIVER on"
            )
        for name, value in receiver_env(address).items():
            self.stdout.write(f"export {name}={shlex.quote(value)}")
