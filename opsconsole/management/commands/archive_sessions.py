"""Bring history up to date from the command line (the console also does it on every read)."""

from __future__ import annotations

import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError
from tqdm import tqdm

from monitor_app.live import get_snapshot
from sessions_app import ingest


class Command(BaseCommand):
    help = (
        "Ingest the wrapper's completion records (spool) into history, idempotently, and "
        "record runs that vanished without one as killed."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--no-progress", action="store_true", help="No progress bar (default when not a TTY)."
        )

    def handle(self, *args, **options):
        paths = settings.OPSCONSOLE_STATE
        pending = len(ingest.pending_spool_files(paths))
        show_bar = pending > 0 and not options["no_progress"] and sys.stderr.isatty()
        bar = tqdm(total=pending, unit="record", disable=not show_bar, file=sys.stderr)

        def advance(done: int, total: int) -> None:
            bar.update(done - bar.n)

        try:
            result = ingest.ingest_spool(paths, progress=advance)
        except DatabaseError as exc:
            raise CommandError(f"database unavailable, nothing ingested: {exc}") from exc
        finally:
            bar.close()
        snapshot = get_snapshot(fresh=True)
        self.stdout.write(
            f"recorded {result.recorded} completion record(s) from {paths.spool}; "
            f"{len(snapshot.sessions)} session(s) live"
        )
        for name, reason in result.rejected:
            self.stderr.write(f"rejected {name}: {reason} (moved to spool/rejected/)")
        for skipped in snapshot.skipped:
            self.stderr.write(f"skipped sidecar {skipped.name}: {skipped.reason}")
        if snapshot.database_error:
            raise CommandError(f"database error: {snapshot.database_error}")
