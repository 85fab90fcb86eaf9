"""Retention for archived transcripts (and, with --records, their history rows)."""

from __future__ import annotations

import os
import shutil
from datetime import date, timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from sessions_app import search
from sessions_app.models import LIVE_STATUSES, Session
from sessions_app.remote_transcripts import cache_root
from wrapper.formats import is_session_id


class Command(BaseCommand):
    help = (
        "List (default) or delete (--apply) archived transcripts whose day folder is older "
        "than --older-than DAYS, and reporting hosts' transcripts last written before then. "
        "With --records, also delete the history rows of runs that "
        "ended before then. Live runs and anything outside the archive are never touched."
    )

    def add_arguments(self, parser):
        parser.add_argument("--older-than", type=int, required=True, metavar="DAYS")
        parser.add_argument("--apply", action="store_true", help="delete; without it, a dry run")
        parser.add_argument("--records", action="store_true", help="delete history rows too")

    def handle(self, *args, older_than, apply, records, **options):
        if older_than < 1:
            raise CommandError("--older-than must be at least 1 day")
        cutoff = timezone.now() - timedelta(days=older_than)
        archive = settings.OPSCONSOLE_STATE.archive
        folders = self.expired_folders(archive, cutoff.date())
        files = [
            entry
            for folder in folders
            for entry in os.scandir(folder)
            if entry.is_file(follow_symlinks=False)
        ]
        host_copies = self.expired_host_copies(cutoff)
        files += host_copies
        size = sum(entry.stat(follow_symlinks=False).st_size for entry in files)
        rows = Session.objects.exclude(status__in=LIVE_STATUSES).filter(ended_at__lt=cutoff)
        verb = "removed" if apply else "would remove"
        self.stdout.write(
            f"{verb} {len(files)} archived transcript(s), {size / 1e6:.1f} MB, in "
            f"{len(folders)} day folder(s) older than {cutoff.date()}"
        )
        row_count = rows.count() if records else 0
        if records:
            self.stdout.write(f"{verb} {row_count} history record(s) that ended before then")
        if not apply:
            self.stdout.write("dry run: nothing deleted (add --apply)")
            return
        removed_paths = [entry.path for entry in files]
        for folder in folders:
            shutil.rmtree(folder)
        for entry in host_copies:
            os.unlink(entry.path)
        if records:
            search.forget_sessions(rows.values_list("session_id", flat=True))
            rows.delete()
        else:
            Session.objects.filter(archive_path__in=removed_paths).update(archive_path="")

    @staticmethod
    def expired_host_copies(cutoff) -> list[os.DirEntry]:
        """Transcripts of reporting hosts' runs kept as files (archive/hosts/<host>/, and
        the private copies of those in object storage), last written before the cutoff;
        a run still live is kept. Objects in object storage are the bucket's lifecycle
        rules' to expire."""
        limit = cutoff.timestamp()
        found = []
        for root in (settings.OPSCONSOLE_STATE.archive / "hosts", cache_root()):
            try:
                hosts = [e for e in os.scandir(root) if e.is_dir(follow_symlinks=False)]
            except FileNotFoundError:
                continue
            for host in hosts:
                for entry in os.scandir(host.path):
                    if (
                        entry.is_file(follow_symlinks=False)
                        and entry.name.endswith(".jsonl")
                        and entry.stat(follow_symlinks=False).st_mtime < limit
                    ):
                        # "<anything>_<session id>.jsonl", the archive's naming
                        session_id = entry.name.removesuffix(".jsonl").rpartition("_")[2]
                        found.append((session_id, entry))
        ids = [session_id for session_id, _ in found if is_session_id(session_id)]
        live = {
            str(session_id)
            for session_id in Session.objects.filter(
                session_id__in=ids, status__in=LIVE_STATUSES
            ).values_list("session_id", flat=True)
        }
        return [entry for session_id, entry in found if session_id not in live]

    @staticmethod
    def expired_folders(archive, cutoff: date) -> list[str]:
        """Day folders (YYYY-MM-DD) strictly before the cutoff; links are never followed."""
        try:
            entries = list(os.scandir(archive))
        except FileNotFoundError:
            return []
        expired = []
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                continue
            try:
                day = date.fromisoformat(entry.name)
            except ValueError:
                continue
            if day < cutoff:
                expired.append(entry.path)
        return sorted(expired)
