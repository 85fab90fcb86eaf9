"""Alerting state: where alerts go (channels, routing, mutes), what each job tolerates
(JobAlertSettings), the incidents the rules open and close, and the outbox.

An alert is written once, in the same transaction as the incident change that caused
it; each of its deliveries (one per channel) is an outbox row retried with backoff
until it is delivered or given up. Nothing is sent from inside a transaction.
"""

from __future__ import annotations

import hashlib

from django.core.validators import MinValueValidator
from django.db import models

from alerts_app.channel_urls import redact_url, shown_url


class Rule(models.TextChoices):
    RUN_FAILED = "run_failed", "run failed"  # failed, killed or refused on the last attempt
    FALSE_SUCCESS = "false_success", "false success"
    QUOTA = "quota", "quota hit"
    LATE = "late", "late or missed"
    STALLED = "stalled", "stalled"
    RUNTIME = "runtime", "runtime outside the usual"
    COST_RUN = "cost_run", "run cost over budget"
    COST_DAY = "cost_day", "daily cost over budget"
    # Two costs of one run disagree (reported, telemetry, computed): off unless
    # OPSCONSOLE_COST_DRIFT_ALERT is set.
    COST_DRIFT = "cost_drift", "costs of a run disagree"
    LEFTOVERS = "leftovers", "leftover processes"
    COLLECTOR_ERROR = "collector_error", "collector error"
    MONITOR_SILENT = "monitor_silent", "monitor silent"
    TEST = "test", "test message"


class Channel(models.Model):
    """One Apprise URL. The URL holds secrets: it is stored, never shown back nor logged."""

    name = models.CharField(max_length=100)
    url = models.TextField(
        help_text="An Apprise URL (slack://…, mailto://…, json://…, ntfy://…). "
        "Never shown again after saving."
    )
    # A safe fingerprint of the URL, so environment channels are matched without reading it.
    url_hash = models.CharField(max_length=64, editable=False, db_index=True)
    redacted = models.CharField(
        max_length=500, editable=False, blank=True, default="", help_text="the URL, secrets hidden"
    )
    enabled = models.BooleanField(default=True)
    is_default = models.BooleanField(
        default=True, help_text="Receives every alert (jobs can opt out of the defaults)"
    )
    from_environment = models.BooleanField(
        default=False, editable=False, help_text="from OPSCONSOLE_ALERT_URLS"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_test_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_test_ok = models.BooleanField(null=True, blank=True, editable=False)
    last_test_error = models.TextField(blank=True, default="", editable=False)

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs):
        self.url = self.url.strip()
        self.url_hash = url_fingerprint(self.url)
        self.redacted = redact_url(self.url)[:500]
        super().save(*args, **kwargs)

    def url_shown_to(self, user) -> str:
        """The URL as this person may see it (paths and topics for superusers only)."""
        return shown_url(self.redacted, superuser=bool(getattr(user, "is_superuser", False)))

    @property
    def address(self) -> str:
        """Scheme and host only: safe for anyone, and for audit rows."""
        return shown_url(self.redacted, superuser=False)


def url_fingerprint(url: str) -> str:
    return hashlib.sha256(url.strip().encode("utf-8")).hexdigest()


class AlertPolicy(models.Model):
    """Console-wide switches (one row): mute everything until a time, quiet hours."""

    muted_until = models.DateTimeField(
        null=True, blank=True, help_text="No alert is sent before this time (they are recorded)"
    )
    quiet_hours_start = models.TimeField(
        null=True, blank=True, help_text="Deliveries due in quiet hours wait until they end"
    )
    quiet_hours_end = models.TimeField(null=True, blank=True)

    class Meta:
        verbose_name = "alert policy"
        verbose_name_plural = "alert policy"

    def __str__(self) -> str:
        return "Alert policy"

    @classmethod
    def current(cls) -> AlertPolicy:
        policy, _ = cls.objects.get_or_create(pk=1)
        return policy


class JobAlertSettings(models.Model):
    """What one job tolerates before someone is told, and who is told."""

    job = models.OneToOneField(
        "jobs_app.Job", on_delete=models.CASCADE, related_name="alert_settings"
    )
    channels = models.ManyToManyField(
        Channel, blank=True, related_name="jobs", help_text="Also send this job's alerts here"
    )
    use_default_channels = models.BooleanField(default=True)
    muted_until = models.DateTimeField(null=True, blank=True)

    alert_on_failure = models.BooleanField(
        default=True, help_text="failed, killed or refused on its last attempt"
    )
    consecutive_failures = models.PositiveSmallIntegerField(
        default=1, help_text="Alert once this many runs in a row have failed"
    )
    alert_on_false_success = models.BooleanField(default=True)
    alert_on_late = models.BooleanField(default=True)
    alert_on_stall = models.BooleanField(default=True)
    stall_minutes = models.FloatField(
        default=10,
        validators=[MinValueValidator(0.05)],
        help_text="A live run idle (no transcript growth, no CPU) this long is stalled",
    )
    alert_on_runtime = models.BooleanField(default=True)
    runtime_multiple = models.FloatField(
        default=3.0,
        help_text="Alert when a run takes longer than this times the median of the last 20",
    )
    runtime_floor_seconds = models.PositiveIntegerField(
        null=True, blank=True, help_text="Alert when a successful run is shorter than this"
    )
    cost_per_run_usd = models.DecimalField(
        "run budget (USD)",
        max_digits=10,
        decimal_places=4,
        null=True,
        blank=True,
        help_text="Budget of one run",
    )
    cost_per_day_usd = models.DecimalField(
        "daily budget (USD)",
        max_digits=10,
        decimal_places=4,
        null=True,
        blank=True,
        help_text="Budget of a day's runs",
    )
    stop_on_cost_cap = models.BooleanField(
        default=False, help_text="Stop a live run once its running cost passes the run budget"
    )
    alert_on_leftovers = models.BooleanField(default=True)

    class Meta:
        verbose_name = "job alert settings"
        verbose_name_plural = "job alert settings"

    def __str__(self) -> str:
        return f"alerts for {self.job}"


class Incident(models.Model):
    """One thing that went wrong, from the moment a rule opens it until it is resolved.

    A person hears once when it opens and once when it resolves, and again every
    OPSCONSOLE_ALERT_REPEAT_MINUTES while it stays open and nobody owns it. `key` names
    what it is about (a job and a rule, a host's quota stamp, one run's stall).

    A person owns it by acknowledging it (no more repeats), snoozing it (no repeats
    until a time), or resolving it with a note (closed; the condition coming back
    opens a new one).
    """

    key = models.CharField(max_length=200, db_index=True)
    rule = models.CharField(max_length=32, choices=Rule.choices)
    job = models.ForeignKey(
        "jobs_app.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="incidents"
    )
    host = models.CharField(max_length=255, blank=True, default="")
    session_id = models.UUIDField(null=True, blank=True)
    opened_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)
    summary = models.TextField(blank=True, default="")
    # Flapping: re-opened soon after it resolved, it waits before telling anyone again;
    # an incident nobody was told about resolves silently too.
    notified = models.BooleanField(default=False)
    notify_after = models.DateTimeField(null=True, blank=True)
    recovery_told = models.BooleanField(default=False)
    # When people were last told it is open (its opening or a repeat).
    last_told_at = models.DateTimeField(null=True, blank=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.CharField(max_length=150, blank=True, default="")
    snoozed_until = models.DateTimeField(null=True, blank=True)
    snoozed_by = models.CharField(max_length=150, blank=True, default="")
    # Empty when a rule resolved it (the condition cleared); a username when a person did.
    resolved_by = models.CharField(max_length=150, blank=True, default="")
    resolution_note = models.TextField(blank=True, default="")
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-opened_at", "-id"]
        indexes = [models.Index(fields=["resolved_at", "rule"], name="incident_open_rule")]
        constraints = [
            models.UniqueConstraint(
                fields=["key"],
                condition=models.Q(resolved_at__isnull=True),
                name="incident_one_open_per_key",
            )
        ]

    def __str__(self) -> str:
        state = "open" if self.resolved_at is None else "resolved"
        return f"{self.rule} {self.key} ({state})"


class Alert(models.Model):
    """One message to people: an incident opened or resolved, or a test."""

    class Phase(models.TextChoices):
        OPENED = "opened", "opened"
        REPEATED = "repeated", "still open"
        RESOLVED = "resolved", "resolved"
        TEST = "test", "test"

    created_at = models.DateTimeField(db_index=True)
    rule = models.CharField(max_length=32, choices=Rule.choices)
    phase = models.CharField(max_length=16, choices=Phase.choices)
    incident = models.ForeignKey(
        Incident, null=True, blank=True, on_delete=models.SET_NULL, related_name="alerts"
    )
    job = models.ForeignKey(
        "jobs_app.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="alerts"
    )
    host = models.CharField(max_length=255, blank=True, default="")
    session_id = models.UUIDField(null=True, blank=True)
    title = models.CharField(max_length=250)
    body = models.TextField()
    # Why nothing was sent: "muted", "job muted", "no channel".
    suppressed = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.title}"

    @property
    def state(self) -> str:
        """delivered, retrying, failed, pending or suppressed: the word on the Alerts page."""
        if self.suppressed:
            return "suppressed"
        states = {d.state for d in self.deliveries.all()}
        for word in ("failed", "retrying", "pending"):
            if word in states:
                return word
        return "delivered" if states else "suppressed"


class Delivery(models.Model):
    """The outbox: one alert to one channel, retried with backoff until delivered."""

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="deliveries")
    channel = models.ForeignKey(Channel, on_delete=models.CASCADE, related_name="deliveries")
    created_at = models.DateTimeField()
    next_try_at = models.DateTimeField(db_index=True, null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    # [{"at": iso, "ok": bool, "error": str}] for the Alerts page, newest last, capped.
    attempt_log = models.JSONField(default=list, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    given_up_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        verbose_name_plural = "deliveries"
        indexes = [models.Index(fields=["delivered_at", "given_up_at", "next_try_at"])]

    def __str__(self) -> str:
        return f"alert {self.alert_id} → {self.channel} ({self.state})"

    @property
    def state(self) -> str:
        if self.delivered_at:
            return "delivered"
        if self.given_up_at:
            return "failed"
        return "retrying" if self.attempts else "pending"


class EngineCursor(models.Model):
    """Where the rules are in the event stream (one row), and outcomes still undecided."""

    last_event_id = models.BigIntegerField(default=0)
    # Event ids of refusals whose wrapper was still alive (a retry may follow).
    deferred = models.JSONField(default=list, blank=True)
    last_tick_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"alert rules at event {self.last_event_id}"

    @classmethod
    def current(cls) -> EngineCursor:
        cursor, _ = cls.objects.get_or_create(pk=1)
        return cursor
