"""What the monitor publishes: the latest sample of each host, and the event stream.

A `HostSample` row holds one host's latest sample, pre-serialised, so a web
process answers a poll without recomputing anything. `Event` is the record of
state changes (run started, ended, vanished, leftovers seen, quota stamp set,
...) that alerts, metrics and other hosts consume.
"""

from __future__ import annotations

from django.db import models


class EventKind(models.TextChoices):
    RUN_STARTED = "run_started", "run started"
    RUN_RETRIED = "run_retried", "run retried"
    RUN_ENDED = "run_ended", "run ended"  # detail: status, exit_code, end_reason, cost
    RUN_VANISHED = "run_vanished", "run vanished"  # owner gone without a completion record
    RUN_ORPHANED = "run_orphaned", "run orphaned"  # wrapper gone, agent still running
    RUN_STOPPED = "run_stopped", "run stopped"  # by a person or the watchdog
    LEFTOVERS_SEEN = "leftovers_seen", "leftovers seen"
    LEFTOVERS_GONE = "leftovers_gone", "leftovers gone"
    LEFTOVERS_KILLED = "leftovers_killed", "leftovers killed"
    QUOTA_SET = "quota_set", "quota stamp set"
    QUOTA_CLEARED = "quota_cleared", "quota stamp cleared"
    JOB_LATE = "job_late", "job late"
    COLLECTOR_ERROR = "collector_error", "collector error"
    MONITOR_STARTED = "monitor_started", "monitor started"
    MONITOR_STOPPED = "monitor_stopped", "monitor stopped"


class Event(models.Model):
    """One state change on one host. Written by the monitor; never edited."""

    at = models.DateTimeField(help_text="when the monitor saw the change")
    host = models.CharField(max_length=255)
    kind = models.CharField(max_length=32, choices=EventKind.choices)
    session_id = models.UUIDField(null=True, blank=True)
    job = models.ForeignKey(
        "jobs_app.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="events"
    )
    script_tag = models.CharField(max_length=100, blank=True, default="")
    # For run events: the run's status then (live, succeeded, failed, killed, ...).
    status = models.CharField(max_length=16, blank=True, default="")
    message = models.TextField(help_text="one line a person can act on")
    detail = models.JSONField(default=dict, blank=True)
    # The same change seen twice (a database blip, a monitor restart) is recorded once.
    dedupe_key = models.CharField(max_length=200, unique=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [
            models.Index(fields=["at"], name="event_at"),
            models.Index(fields=["kind", "at"], name="event_kind_at"),
            models.Index(fields=["session_id"], name="event_session"),
            models.Index(fields=["job", "at"], name="event_job_at"),
            models.Index(fields=["host", "at"], name="event_host_at"),
        ]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.host} {self.kind}: {self.message}"


class HostSample(models.Model):
    """The latest published sample of one host's monitor."""

    host = models.CharField(max_length=255, unique=True)
    seq = models.BigIntegerField(help_text="increases with every published sample")
    taken_at = models.DateTimeField()
    interval_seconds = models.FloatField()
    sample_ms = models.FloatField(help_text="how long the sample took")
    monitor_pid = models.IntegerField(null=True, blank=True)
    monitor_version = models.CharField(max_length=32, blank=True, default="")
    etag = models.CharField(max_length=64)
    # The /api/claude-active body, byte for byte: served as is.
    api_document = models.TextField()
    # Everything a page needs to rebuild the live snapshot (sidecars, trees, leftovers).
    state_document = models.TextField()

    def __str__(self) -> str:
        return f"{self.host} #{self.seq} at {self.taken_at:%H:%M:%S}"
