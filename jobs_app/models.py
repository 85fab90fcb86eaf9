"""Scheduled agent jobs. Collectors own the collected fields; people own the rest."""

from __future__ import annotations

from django.db import models

from sessions_app.fields import CleanCharField, CleanJSONField, CleanTextField


class Scheduler(models.TextChoices):
    LAUNCHD = "launchd", "launchd"
    SYSTEMD = "systemd", "systemd"
    CRON = "cron", "cron"
    # A CI job (GitHub Actions, GitLab CI, ...), found from a run's environment.
    CI = "ci", "CI"


# Written by collectors (collect_jobs, the live status read); read-only in the admin.
COLLECTED_FIELDS = (
    "tags",
    "command",
    "schedule_raw",
    "schedule_text",
    "interval_seconds",
    "next_run_at",
    "previous_run_at",
    "pids",
    "last_exit_status",
    "state",
    "scheduler_enabled",
    "source",
    "scope",
    "collector_error",
    "collected_at",
    "present",
    "wrapped",
)


class Job(models.Model):
    scheduler = CleanCharField(max_length=16, choices=Scheduler.choices)
    label = CleanCharField(
        max_length=255, help_text="launchd label, systemd unit, or the cron entry's name"
    )
    host = CleanCharField(max_length=255)

    # ---- collected
    tags = CleanJSONField(default=list, blank=True, help_text="wrapper --tag values it runs")
    command = CleanTextField(blank=True, default="")
    schedule_raw = CleanTextField(blank=True, default="", help_text="as the scheduler states it")
    schedule_text = CleanCharField(max_length=255, blank=True, default="")
    interval_seconds = models.IntegerField(null=True, blank=True)
    next_run_at = models.DateTimeField(null=True, blank=True)
    previous_run_at = models.DateTimeField(
        null=True, blank=True, help_text="the latest time the schedule said it should have run"
    )
    pids = CleanJSONField(default=list, blank=True)
    last_exit_status = models.IntegerField(
        null=True, blank=True, help_text="negative: killed by that signal (launchd)"
    )
    state = CleanCharField(max_length=64, blank=True, default="")
    scheduler_enabled = models.BooleanField(default=True)
    source = CleanTextField(blank=True, default="", help_text="plist, unit or crontab file")
    scope = CleanCharField(
        max_length=16,
        blank=True,
        default="",
        help_text="systemd: user or system manager; launchd: gui (agent) or system (daemon)",
    )
    collector_error = CleanTextField(blank=True, default="")
    collected_at = models.DateTimeField(null=True, blank=True)
    # The first collection that found it: a run due before then is not "late".
    first_seen_at = models.DateTimeField(null=True, blank=True)
    present = models.BooleanField(
        default=True, help_text="seen by the latest collection (gone jobs are kept, not deleted)"
    )
    wrapped = models.BooleanField(
        default=True,
        help_text="its command runs opsconsole-run (False: it runs claude directly, and was "
        "found from its runs' processes or its command line)",
    )

    # ---- edited by people in the admin
    description = CleanTextField(blank=True, default="")
    owner = CleanCharField(max_length=150, blank=True, default="")
    platform = CleanCharField(max_length=100, blank=True, default="")
    enabled = models.BooleanField(
        default=True, help_text="Unticked: expected not to run (no 'late' badge)"
    )
    max_runtime_minutes = models.PositiveIntegerField(
        default=45, help_text="A run past this is hung (and the watchdog's to stop)"
    )
    kill_leftovers = models.BooleanField(
        default=True,
        help_text="Let the watchdog kill processes a run left behind (after "
        "OPSCONSOLE_LEFTOVER_GRACE_SECONDS)",
    )
    notes = CleanTextField(blank=True, default="")

    class Meta:
        ordering = ["platform", "label"]
        constraints = [
            models.UniqueConstraint(
                fields=["scheduler", "host", "label"], name="job_unique_per_scheduler_host"
            )
        ]

    def __str__(self) -> str:
        return f"{self.label} ({self.scheduler} on {self.host})"


class AuditEntry(models.Model):
    """Every operator action and every watchdog stop: who, what, when, and what came back."""

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = CleanCharField(max_length=150, help_text="a user name, or 'watchdog'")
    action = CleanCharField(max_length=32)
    job = models.ForeignKey(
        Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit"
    )
    target = CleanTextField(help_text="what was acted on: a label, unit, entry or session")
    ok = models.BooleanField()
    exit_code = models.IntegerField(null=True, blank=True)
    output = CleanTextField(blank=True, default="", help_text="the scheduler's own output")
    detail = CleanJSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.target}"
