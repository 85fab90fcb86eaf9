from __future__ import annotations

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from opsconsole.models import ApiToken


class Command(BaseCommand):
    help = "Create an API token for USERNAME and print it (last line). Only its hash is stored."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="What the token is for, shown in the admin.")
        parser.add_argument(
            "--expires-in-days",
            type=float,
            default=None,
            help="Refuse the token after this many days (default: never; set or change it "
            "in the admin).",
        )

    def handle(self, *args, username, name, expires_in_days=None, **options):
        user = get_user_model().objects.filter(username=username, is_active=True).first()
        if user is None:
            raise CommandError(f"no active user {username!r}")
        expires_at = None
        if expires_in_days is not None:
            if not 0 < expires_in_days <= 36_500:
                raise CommandError("--expires-in-days must be between 0 and 36500")
            expires_at = timezone.now() + timedelta(days=expires_in_days)
        token, plain = ApiToken.issue(user, name=name, expires_at=expires_at)
        self.stderr.write(
            f"token {token.key_prefix}… for {username}: store it now, it cannot be shown again"
        )
        self.stdout.write(plain)
