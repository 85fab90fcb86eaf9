"""`opsconsole doctor [--job LABEL]`: what each job will meet when its scheduler starts it."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from alerts_app.delivery import base_url_warning
from jobs_app.doctor import PROBLEM, WARNING, Report, diagnose_console, diagnose_job
from jobs_app.models import Job
from monitor_app.job_status import collect_and_record

MARKS = {"ok": "ok     ", WARNING: "WARNING", PROBLEM: "PROBLEM"}


class Command(BaseCommand):
    help = (
        "Check what a job meets when its scheduler starts it: claude on the scheduler's PATH "
        "(or OPSCONSOLE_CLAUDE_BIN), private writable state dirs, a readable config dir, the "
        "scheduler reachable, no quota stamp holding. Says what to fix; exits 1 on problems."
    )

    def add_arguments(self, parser):
        parser.add_argument("--job", metavar="LABEL", help="only this job (its label)")

    def handle(self, *args, **options):
        try:
            collect_and_record()
            jobs = Job.objects.filter(host=settings.OPSCONSOLE_HOST, present=True)
            if options["job"]:
                jobs = jobs.filter(label=options["job"])
                if not jobs.exists():
                    known = ", ".join(Job.objects.values_list("label", flat=True)) or "none"
                    raise CommandError(f"no job {options['job']!r} on this host (known: {known})")
            jobs = list(jobs.order_by("label"))
        except DatabaseError as exc:
            self.stderr.write(f"database unavailable ({exc}); checking this environment only")
            jobs = []
        reports = [diagnose_job(job) for job in jobs] or [diagnose_console()]
        warning = base_url_warning()
        if warning:
            reports.append(Report("alert messages"))
            reports[-1].add(WARNING, "links in alerts", warning, "set OPSCONSOLE_BASE_URL")
        for report in reports:
            self.show(report)
        problems = sum(report.problems for report in reports)
        if problems:
            self.stdout.write(f"{problems} problem(s) found.")
            raise SystemExit(1)
        self.stdout.write("No problems found.")

    def show(self, report: Report) -> None:
        self.stdout.write(f"== {report.title}")
        for check in report.checks:
            self.stdout.write(f"  {MARKS[check.level]}  {check.what}: {check.found}")
            if check.fix and check.level != "ok":
                self.stdout.write(f"           fix: {check.fix}")
