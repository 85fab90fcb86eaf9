"""`opsconsole create_host_token HOSTNAME`: a token a remote monitor reports with."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from monitor_app.models import HostToken


class Command(BaseCommand):
    help = (
        "Make a host token bound to HOSTNAME (the host's OPSCONSOLE_HOST_NAME or hostname). "
        "It is printed once; only its hash is kept. The host keeps it in a 0600 file and runs "
        "`opsconsole monitor --report-to https://console --token-file PATH`."
    )

    def add_arguments(self, parser):
        parser.add_argument("host")

    def handle(self, *args, host, **options):
        host = host.strip()
        if not host or len(host) > 255 or any(c.isspace() for c in host):
            raise CommandError("HOSTNAME must be one word of at most 255 characters.")
        try:
            _row, plain = HostToken.issue(host)
        except ValueError as exc:  # the console's own host name
            raise CommandError(f"{exc}.") from exc
        self.stderr.write(f"host token for {host} (shown once; revoke: revoke_host_token):")
        self.stdout.write(plain)
