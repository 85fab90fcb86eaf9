"""What the monitor publishes: the latest sample of each host, and the event stream.

A `HostSample` row holds one host's latest sample, pre-serialised, so a web
process answers a poll without recomputing anything. `Event` is the record of
state changes (run started, ended, vanished, leftovers seen, quota stamp set,
...) that alerts, metrics and other hosts consume.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, models
from django.utils import timezone

from monitor_app.snapshot import sample_is_stale
from sessions_app.fields import CleanCharField, CleanJSONField, CleanTextField

HOST_TOKEN_PREFIX = "oc_host_"  # noqa: S105 - a marker, not a secret


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
    # A reporting host's monitor sent nothing for three of its intervals (once per silence).
    MONITOR_SILENT = "monitor_silent", "monitor silent"
    REMOTE_ACTION = "remote_action", "remote action"  # an operator's request answered by a host
    # A reporting host went past one of its budgets (once per host, budget and window).
    HOST_OVER_BUDGET = "host_over_budget", "host over budget"
    # A job's catch-up policy started it after a quota stamp cleared (monitor_app.catchup).
    CATCH_UP = "catch_up", "catch-up run"


class Event(models.Model):
    """One state change on one host. Written by the monitor; never edited."""

    at = models.DateTimeField(help_text="when the monitor saw the change")
    host = CleanCharField(max_length=255)
    kind = CleanCharField(max_length=32, choices=EventKind.choices)
    session_id = models.UUIDField(null=True, blank=True)
    job = models.ForeignKey(
        "jobs_app.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="events"
    )
    script_tag = CleanCharField(max_length=100, blank=True, default="")
    # For run events: the run's status then (live, succeeded, failed, killed, ...).
    status = CleanCharField(max_length=16, blank=True, default="")
    message = CleanTextField(help_text="one line a person can act on")
    detail = CleanJSONField(default=dict, blank=True)
    # The same change seen twice (a database blip, a monitor restart) is recorded once.
    dedupe_key = CleanCharField(max_length=200, unique=True)

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

    host = CleanCharField(max_length=255, unique=True)
    seq = models.BigIntegerField(help_text="increases with every published sample")
    taken_at = models.DateTimeField()
    interval_seconds = models.FloatField()
    sample_ms = models.FloatField(help_text="how long the sample took")
    monitor_pid = models.IntegerField(null=True, blank=True)
    monitor_version = CleanCharField(max_length=32, blank=True, default="")
    etag = CleanCharField(max_length=64)
    # The /api/claude-active body, byte for byte: served as is.
    api_document = CleanTextField()
    # Everything a page needs to rebuild the live snapshot (sidecars, trees, leftovers).
    state_document = CleanTextField()
    # For a sample a host reported (not this host's own): when the console received it,
    # and how far the host's clock is ahead of the console's (taken_at - received_at).
    received_at = models.DateTimeField(null=True, blank=True)
    clock_skew_seconds = models.FloatField(null=True, blank=True)
    reported = models.BooleanField(default=False, help_text="sent by a remote monitor")
    # Declared by a reporting host with nothing live or pending: it reports this often
    # instead of every sample (fleet.reporting), and is silent only past it.
    heartbeat_seconds = models.FloatField(null=True, blank=True)

    # What `is_silent` reads: the fields to load when only silence is asked.
    SILENCE_FIELDS = ("host", "taken_at", "received_at", "interval_seconds", "heartbeat_seconds")

    def __str__(self) -> str:
        return f"{self.host} #{self.seq} at {self.taken_at:%H:%M:%S}"

    @property
    def last_heard(self) -> datetime:
        """The console's clock when it has one (a reported sample), else the host's own."""
        return self.received_at or self.taken_at

    def is_silent(self, now: datetime, since: datetime | None = None) -> bool:
        """Unheard for three of its intervals, after its heartbeat if it declared one, at
        `now` (counted from `since` if later): the one definition the Hosts page, the
        fleet's API and the alerts share."""
        heard = self.last_heard if since is None else max(self.last_heard, since)
        return sample_is_stale(heard, self.interval_seconds, now, self.heartbeat_seconds)


def hash_host_token(token: str) -> str:
    # 256 bits of randomness: a fast hash is enough, as for API tokens.
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def own_host_problem(host: str) -> str | None:
    """Why `host` may not report to this console: it is the console's own host name, whose
    runs only the console's own monitor samples. A token bound to it could mark the
    console's live runs lost with an empty sample, and its leftovers would be signalled
    here. None when it may."""
    if host.strip().casefold() == settings.OPSCONSOLE_HOST.strip().casefold():
        return (
            f"{host} is this console's own host name (OPSCONSOLE_HOST_NAME): its runs are "
            "sampled by the console's own monitor, never reported with a host token"
        )
    return None


class HostToken(models.Model):
    """What a remote monitor presents: bound to one host name, it writes only that host's
    rows. Only a hash is stored; the token is shown once."""

    host = CleanCharField(max_length=255, db_index=True)
    key_prefix = CleanCharField(max_length=20, help_text="first characters, to tell apart")
    token_hash = CleanCharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["host", "-created_at"]

    def __str__(self) -> str:
        return f"{self.key_prefix}… ({self.host})" + (" revoked" if self.revoked_at else "")

    @classmethod
    def issue(cls, host: str) -> tuple[HostToken, str]:
        """A new token for `host`; ValueError for the console's own host name."""
        problem = own_host_problem(host)
        if problem:
            raise ValueError(problem)
        plain = HOST_TOKEN_PREFIX + secrets.token_urlsafe(32)
        row = cls.objects.create(
            host=host, key_prefix=plain[:14], token_hash=hash_host_token(plain)
        )
        return row, plain

    @classmethod
    def authenticate(cls, plain: str) -> HostToken | None:
        """The active token for a plain token (its id and host loaded), or None
        (unknown or revoked). Its last use is put on record at most once a minute."""
        if not plain.startswith(HOST_TOKEN_PREFIX):
            return None
        now = timezone.now()
        # Every report and held poll asks this: one statement as written, not built by
        # the ORM each time, which cost more CPU than the query did (docs/scale.md).
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT id, host, (last_used_at IS NULL OR last_used_at < %s) "  # noqa: S608 - the model's own table
                f"FROM {cls._meta.db_table} WHERE token_hash = %s AND revoked_at IS NULL",
                [
                    connection.ops.adapt_datetimefield_value(now - timedelta(minutes=1)),
                    hash_host_token(plain),
                ],
            )
            found = cursor.fetchone()
        if found is None:
            return None
        token_id, host, used_long_ago = found
        if used_long_ago:
            cls.objects.filter(pk=token_id).update(last_used_at=now)
        return cls.from_db(connection.alias, ["id", "host"], [token_id, host])

    def revoke(self) -> None:
        self.revoked_at = timezone.now()
        self.save(update_fields=["revoked_at"])


class RemoteAction(models.Model):
    """An operator's request for a host the console does not run on: the host's monitor
    receives it in the answer to its next report, carries it out with the same code it
    uses locally, and reports the outcome with the report after."""

    class Kind(models.TextChoices):
        STOP = "stop", "stop the run"
        KILL_LEFTOVERS = "kill_leftovers", "kill leftovers"
        # A job's scheduler actions (monitor_app.job_controls.execute on the host).
        RUN = "run", "run the job now"
        ENABLE = "enable", "enable the job"
        DISABLE = "disable", "disable the job"
        SCHEDULE = "schedule", "change the job's schedule"

    class State(models.TextChoices):
        PENDING = "pending", "pending"  # waiting for the host's next report
        SENT = "sent", "sent"  # handed to the host; its outcome not reported yet
        DONE = "done", "done"
        FAILED = "failed", "failed"
        EXPIRED = "expired", "expired"  # never delivered or never answered

    OPEN_STATES = (State.PENDING, State.SENT)

    host = CleanCharField(max_length=255)
    kind = CleanCharField(max_length=32, choices=Kind.choices)
    session_id = models.UUIDField(null=True, blank=True)
    job = models.ForeignKey(
        "jobs_app.Job",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="remote_actions",
    )
    # What the action needs besides its target (a new schedule).
    arguments = CleanJSONField(default=dict, blank=True)
    requested_by = CleanCharField(max_length=150)
    requested_at = models.DateTimeField(default=timezone.now)
    state = CleanCharField(max_length=16, choices=State.choices, default=State.PENDING)
    sent_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    message = CleanTextField(blank=True, default="", help_text="what the host answered")
    detail = CleanJSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-requested_at", "-id"]
        indexes = [models.Index(fields=["host", "state"], name="remoteaction_host_state")]

    def __str__(self) -> str:
        target = self.session_id or (self.job.label if self.job_id else "")
        return f"{self.kind} {target} on {self.host}: {self.state}"

    @property
    def is_job_action(self) -> bool:
        return self.kind in JOB_ACTION_KINDS


JOB_ACTION_KINDS = (
    RemoteAction.Kind.RUN,
    RemoteAction.Kind.ENABLE,
    RemoteAction.Kind.DISABLE,
    RemoteAction.Kind.SCHEDULE,
)


class RefusedItem(models.Model):
    """One item of a host's report the console did not record (a field out of its
    limits, another host's session, an unknown kind), kept with why. The rest of that
    report was recorded; the host was told and does not send this item again. One row
    per host, kind and key: a live run refused every sample counts up, not out."""

    host = CleanCharField(max_length=255)
    kind = CleanCharField(max_length=32, help_text="sample, live, completion, event, ...")
    key = CleanCharField(max_length=200, help_text="the item's session id or event key")
    reason = CleanTextField()
    item = CleanTextField(blank=True, default="", help_text="the item as sent (clipped)")
    first_at = models.DateTimeField()
    last_at = models.DateTimeField(db_index=True)
    count = models.PositiveIntegerField(default=1)

    class Meta:
        ordering = ["-last_at"]
        constraints = [
            models.UniqueConstraint(fields=["host", "kind", "key"], name="refused_item_once")
        ]

    def __str__(self) -> str:
        return f"{self.host} {self.kind} {self.key}: {self.reason}"


class HostBudget(models.Model):
    """What a host's token has spent in the current windows (fleet.budgets decides)."""

    host = CleanCharField(max_length=255, unique=True)
    minute_started_at = models.DateTimeField(null=True, blank=True)
    minute_reports = models.PositiveIntegerField(default=0)
    hour_started_at = models.DateTimeField(null=True, blank=True)
    hour_transcript_bytes = models.BigIntegerField(default=0)
    transcript_bytes_total = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.host}: {self.minute_reports} reports this minute"
