"""`serve` in `opsconsole --help` and `opsconsole help serve`.

`opsconsole serve` itself is handled by opsconsole.cli before Django's command
line; this command is how Django's own list (and manage.py) knows of it.
"""

from __future__ import annotations

import os

from django.core.management.base import BaseCommand

from opsconsole.cli import main


class Command(BaseCommand):
    help = (
        "Migrate, make sure someone can log in (creates 'admin' on a fresh database), "
        "then serve the console with gunicorn on --bind (default 127.0.0.1:8000)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--bind",
            default=os.environ.get("OPSCONSOLE_BIND", "127.0.0.1:8000"),
            help="address:port to listen on (default 127.0.0.1:8000, or $OPSCONSOLE_BIND)",
        )
        parser.add_argument("--threads", type=int, default=8)

    def handle(self, *args, **options):
        main(["serve", "--bind", options["bind"], "--threads", str(options["threads"])])
