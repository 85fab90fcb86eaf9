from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from opsconsole.models import ApiToken


class Command(BaseCommand):
    help = "Create an API token for USERNAME and print it (last line). Only its hash is stored."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="What the token is for, shown in the admin.")

    def handle(self, *args, username, name, **options):
        user = get_user_model().objects.filter(username=username, is_active=True).first()
        if user is None:
            raise CommandError(f"no active user {username!r}")
        token, plain = ApiToken.issue(user, name=name)
        self.stderr.write(
            f"token {token.key_prefix}… for {username}: store it now, it cannot be shown again"
        )
        self.stdout.write(plain)
