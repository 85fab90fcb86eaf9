"""Scheduled agent jobs. Collectors own the collected fields; people own the rest."""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError
from django.db import models

from sessions_app.fields import CleanCharField, CleanJSONField, CleanTextField
from wrapper.formats import overlap_policy_of


class Scheduler(models.TextChoices):
    LAUNCHD = "launchd", "launchd"
    SYSTEMD = "systemd", "systemd"
    CRON = "cron", "cron"
    # A CI job (GitHub Actions, GitLab CI, ...), found from a run's environment.
    CI = "ci", "CI"


class CatchUp(models.TextChoices):
    NONE = "none", "none"
    ONCE = "once", "once"
    ALL_MISSED = "all_missed", "all missed"


def validate_pattern(value: str) -> None:
    """A check's pattern must compile (Python `re`), or it could never be judged."""
    try:
        re.compile(value)
    except re.error as exc:
        raise ValidationError(f"not a regular expression: {exc}") from exc


# The output checks of a job: Job field -> the name a verdict and a host's rules use.
OUTPUT_CHECK_FIELDS = {
    "check_result_matches": "result_matches",
    "check_result_not_matches": "result_not_matches",
    "check_files_changed": "files_changed",
    "check_git_commit": "git_commit",
    "check_min_turns": "min_turns",
    "check_min_tool_calls": "min_tool_calls",
    "check_max_cost_usd": "max_cost_usd",
}


# Who a job's own policies act as, in the audit log: catch-up runs, overlap skips,
# failed output checks (monitor_app.catchup, sessions_app.ingest).
POLICY_ACTORS = ("catch-up", "overlap-policy", "output-check")


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

    # ---- output checks (all optional): judged by the host's monitor when a run ends
    # (sessions_app.output_checks); a run that exited 0 and fails one is check_failed.
    check_result_matches = CleanCharField(
        max_length=500,
        blank=True,
        default="",
        validators=[validate_pattern],
        help_text="The result text must match this regular expression (Python re.search)",
    )
    check_result_not_matches = CleanCharField(
        max_length=500,
        blank=True,
        default="",
        validators=[validate_pattern],
        help_text="The result text must not match this regular expression",
    )
    check_files_changed = CleanTextField(
        blank=True,
        default="",
        help_text="A file under this path (absolute, or relative to the run's working "
        "directory) must be modified during the run",
    )
    check_git_commit = models.BooleanField(
        default=False, help_text="A git commit must land in the run's working directory"
    )
    check_min_turns = models.PositiveIntegerField(
        null=True, blank=True, help_text="At least this many turns (the result's num_turns)"
    )
    check_min_tool_calls = models.PositiveIntegerField(
        null=True, blank=True, help_text="At least this many tool calls (from the transcript)"
    )
    check_max_cost_usd = models.DecimalField(
        max_digits=12,
        decimal_places=6,
        null=True,
        blank=True,
        help_text="The run's reported cost must stay under this cap (USD)",
    )

    # ---- catch-up after a quota stamp clears (monitor_app.catchup)
    catchup_policy = CleanCharField(
        max_length=16,
        choices=CatchUp.choices,
        default=CatchUp.NONE,
        help_text="After a quota stamp clears: none; once (one run for all the fires it "
        "skipped); all missed (one run per skipped fire within the window)",
    )
    catchup_window_hours = models.PositiveIntegerField(
        default=24, help_text="Skipped fires older than this are not caught up"
    )
    caught_up_through = models.DateTimeField(
        null=True,
        blank=True,
        help_text="The latest skipped fire the catch-up rule has dealt with (never twice)",
    )

    class Meta:
        ordering = ["platform", "label"]
        constraints = [
            models.UniqueConstraint(
                fields=["scheduler", "host", "label"], name="job_unique_per_scheduler_host"
            )
        ]

    def __str__(self) -> str:
        return f"{self.label} ({self.scheduler} on {self.host})"

    @property
    def overlap_policy(self) -> str:
        """What its wrapper does when the previous run is still live: the --overlap flag
        its command carries (allow without one), read from what the scheduler runs."""
        return overlap_policy_of(self.command)

    def output_checks(self) -> dict:
        """The checks set on this job, by check name (JSON: what a host's rules carry)."""
        checks = {}
        for field_name, check in OUTPUT_CHECK_FIELDS.items():
            value = getattr(self, field_name)
            if value in (None, "", False):
                continue
            checks[check] = str(value) if field_name == "check_max_cost_usd" else value
        return checks


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
