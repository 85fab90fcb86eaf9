"""`opsconsole revoke_host_token HOSTNAME|PREFIX`: refuse a host's reports from now on."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Q

from monitor_app.models import HostToken


class Command(BaseCommand):
    help = "Revoke every active host token of HOSTNAME, or the one whose prefix is given."

    def add_arguments(self, parser):
        parser.add_argument("host_or_prefix")

    def handle(self, *args, host_or_prefix, **options):
        rows = HostToken.objects.filter(revoked_at=None).filter(
            Q(host=host_or_prefix) | Q(key_prefix=host_or_prefix[:14], host__isnull=False)
            if host_or_prefix.startswith("oc_host_")
            else Q(host=host_or_prefix)
        )
        count = 0
        for row in rows:
            row.revoke()
            count += 1
        if not count:
            raise CommandError(f"no active host token matches {host_or_prefix!r}")
        self.stdout.write(f"revoked {count} host token(s)")
