from __future__ import annotations

import sys

from django.conf import settings
from django.core.management.base import BaseCommand
from tqdm import tqdm

from sessions_app.backfill import backfill, transcripts_on_disk


class Command(BaseCommand):
    help = (
        "Import the Claude Code transcripts already on disk (under each configured "
        "CLAUDE_CONFIG_DIR's projects/) into history and copy each into the archive. "
        "Subagent files count with their session; each run is priced from its transcripts "
        "and put in the search index. Files without a conversation are not runs. "
        "Idempotent. Claude Code deletes transcripts after cleanupPeriodDays (default 30)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, no_progress, **options):
        config_dirs = list(settings.OPSCONSOLE_CLAUDE_CONFIG_DIRS)
        total = sum(1 for _ in transcripts_on_disk(config_dirs))
        bar = tqdm(
            total=total,
            unit="transcript",
            file=sys.stderr,
            disable=no_progress or not sys.stderr.isatty(),
        )
        result = backfill(
            settings.OPSCONSOLE_STATE, config_dirs, progress=lambda _path: bar.update(1)
        )
        bar.close()
        self.stdout.write(
            f"imported {result.imported}, archived {result.archived} already on record, "
            f"refreshed {result.refreshed} (priced and indexed now), "
            f"skipped {result.skipped} (done before), "
            f"{result.phantoms} without a conversation (not runs), failed {len(result.failed)}"
        )
        for path, error in result.failed:
            self.stderr.write(f"failed {path}: {error}")
