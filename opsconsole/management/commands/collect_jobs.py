"""Record the scheduled agent jobs and their last state (for cron or a timer of its own)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from jobs_app.collectors import collect_all, configured_schedulers
from jobs_app.models import Job
from monitor_app.job_status import record_collections


class Command(BaseCommand):
    help = "Read launchd / systemd / cron for jobs that run opsconsole-run, and record them."

    def handle(self, *args, **options):
        now = timezone.now()
        schedulers = configured_schedulers()
        if not schedulers:
            raise CommandError(
                "no scheduler found on this machine (launchctl, systemd, crontab); "
                "set OPSCONSOLE_SCHEDULERS"
            )
        known: dict[str, set[str]] = {}
        for scheduler, label in Job.objects.values_list("scheduler", "label"):
            known.setdefault(scheduler, set()).add(label)
        collections = collect_all(now, known)
        record_collections(collections, now)
        for collection in collections:
            self.stdout.write(f"{collection.scheduler}: {len(collection.jobs)} job(s)")
            for job in collection.jobs:
                tags = ",".join(job.tags) or "-"
                self.stdout.write(f"  {job.label}  [{tags}]  {job.schedule_text}  {job.state}")
            for error in collection.errors:
                self.stderr.write(f"  {collection.scheduler} error: {error}")
        if all(c.errors and not c.jobs for c in collections):
            raise CommandError("every collector failed")
