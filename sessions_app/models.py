"""Every run on record: one row per attempt, live or finished."""

from __future__ import annotations

from decimal import Decimal

from django.db import models
from django.db.models import Case, Q, Value, When
from django.db.models.functions import Coalesce

from sessions_app.fields import CleanCharField, CleanJSONField, CleanTextField


class Status(models.TextChoices):
    LIVE = "live", "live"
    ORPHANED = "orphaned", "orphaned"
    SUCCEEDED = "succeeded", "succeeded"
    # Exit 0, but the result says it was not a success (is_error, an "API Error", no
    # result at all, or no turn made): never counted or shown as succeeded.
    FALSE_SUCCESS = "false_success", "false success"
    # Exit 0, but one of the job's output checks failed (no file written, no commit, a
    # result that does not match...): end_details["output_check"] says which, and what
    # was seen. Never counted or shown as succeeded.
    CHECK_FAILED = "check_failed", "check failed"
    FAILED = "failed", "failed"
    REFUSED = "refused", "refused"
    QUOTA_SKIP = "quota_skip", "quota skip"
    # --overlap skip (or queue, after its wait): the job's previous run was still live,
    # claude was not started (exit 80).
    OVERLAP_SKIP = "overlap_skip", "overlap skip"
    KILLED = "killed", "killed"
    # A Claude Code session no wrapper started (a terminal, an IDE, CI), seen live in
    # Claude Code's own registry; "exited" once it is gone with no registry file left.
    UNWRAPPED = "unwrapped", "unwrapped"
    EXITED = "exited", "exited"
    # The console lost sight of a run without evidence of how it ended (its sidecar went
    # and no completion record came): not called killed on a guess.
    UNKNOWN = "unknown", "unknown"
    # Backfilled from a transcript on disk: how it ended was never recorded.
    IMPORTED = "imported", "imported"


LIVE_STATUSES = (Status.LIVE, Status.ORPHANED, Status.UNWRAPPED)
# Runs whose claude the wrapper never started, on purpose: they cost nothing.
NOT_RUN_STATUSES = (Status.QUOTA_SKIP, Status.OVERLAP_SKIP)


class Session(models.Model):
    """One attempt of one wrapped `claude` run, keyed by its pre-assigned session UUID."""

    session_id = models.UUIDField(unique=True)
    script_tag = CleanCharField(max_length=100, db_index=True)
    platform = CleanCharField(max_length=100, blank=True, default="")
    host = CleanCharField(max_length=255, blank=True, default="")
    attempt = models.PositiveSmallIntegerField(default=1)
    retry_of = models.UUIDField(null=True, blank=True, db_index=True)
    status = CleanCharField(max_length=16, choices=Status.choices)
    end_reason = CleanCharField(max_length=32, blank=True, default="")
    exit_code = models.IntegerField(null=True, blank=True)
    error = CleanTextField(blank=True, default="")
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.BigIntegerField(null=True, blank=True)
    num_turns = models.IntegerField(null=True, blank=True)
    # Unknown cost stays NULL: a run we could not price is never shown as free.
    # What the CLI reported in its `result` event, when there was one.
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    # Priced by us from the transcript's usage (main file + subagents) and the price
    # table (sessions_app.pricing); NULL when some response's model has no price.
    cost_computed_usd = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    # Summed from Claude Code's own telemetry (`api_request` events, auxiliary requests such
    # as the session title included: the transcript never sees those); NULL: none came.
    cost_telemetry_usd = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    input_tokens = models.BigIntegerField(null=True, blank=True)
    output_tokens = models.BigIntegerField(null=True, blank=True)
    cache_read_tokens = models.BigIntegerField(null=True, blank=True)
    cache_creation_tokens = models.BigIntegerField(null=True, blank=True)
    subagent_files = models.PositiveIntegerField(
        default=0, help_text="subagent transcripts counted in its tokens and computed cost"
    )
    # Byte size of the transcripts when they were put in the search index; NULL: not yet.
    search_indexed_bytes = models.BigIntegerField(null=True, blank=True)
    is_error = models.BooleanField(null=True, blank=True)
    stop_reason = CleanCharField(max_length=64, blank=True, default="")
    api_error_status = models.IntegerField(null=True, blank=True)
    model = CleanCharField(max_length=100, blank=True, default="")
    cwd = CleanTextField(blank=True, default="")
    wrapper_pid = models.IntegerField(null=True, blank=True)
    claude_pid = models.IntegerField(null=True, blank=True)
    claude_config_dir = CleanTextField(blank=True, default="")
    transcript_path = CleanTextField(blank=True, default="")  # where claude wrote it
    archive_path = CleanTextField(blank=True, default="")  # the copy that outlives claude's
    job = models.ForeignKey(
        "jobs_app.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="sessions"
    )
    stopped_by = CleanCharField(
        max_length=150, blank=True, default="", help_text="who stopped it: a user, or watchdog"
    )
    wrapped = models.BooleanField(
        default=True, help_text="started by opsconsole-run (False: seen in Claude Code's registry)"
    )
    # Why the run ended, as the wrapper saw it (wrapper.formats.REASON_FIELDS: stderr and
    # stdout tails, the result event's text and error fields, the last API error, whether
    # claude started and wrote a transcript); {} for records from before format 2.
    end_details = CleanJSONField(default=dict, blank=True)
    # Processes of this run's tree that outlived its agent: [{pid, started, cmdline}].
    leftovers = CleanJSONField(default=list, blank=True)
    recorded_from = CleanCharField(
        max_length=16,
        blank=True,
        default="",
        help_text="spool (completion record), sidecar (seen live or vanished), registry, "
        "or backfill",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [
            models.Index(fields=["-started_at", "-id"], name="session_newest"),
            models.Index(fields=["script_tag", "-started_at"], name="session_tag_newest"),
            models.Index(fields=["status", "-started_at"], name="session_status_newest"),
            models.Index(fields=["platform", "-started_at"], name="session_platform_newest"),
            models.Index(fields=["host", "-started_at"], name="session_host_newest"),
            models.Index(fields=["job", "-started_at"], name="session_job_newest"),
            # A host's runs still marked live (its monitor and the console look for lost
            # ones every sample): a handful of rows, however long the host's history.
            models.Index(
                fields=["host", "started_at"],
                name="session_live_host",
                condition=models.Q(status__in=LIVE_STATUSES),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.script_tag} {self.session_id} ({self.status})"

    @property
    def is_live(self) -> bool:
        return self.status in LIVE_STATUSES

    @property
    def shown_cost_usd(self) -> Decimal | None:
        """The run's cost: the one rule every page, chart, alert, total and the API use
        (run_cost_expression() is the same rule for a query). The CLI's own figure when it
        reported one, else the sum its telemetry reported (auxiliary requests included),
        else ours from the transcript; $0 for a quota or overlap skip (claude never ran);
        None (unknown) otherwise, never made up."""
        if self.cost_usd is not None:
            return self.cost_usd
        if self.cost_telemetry_usd is not None:
            return self.cost_telemetry_usd
        if self.cost_computed_usd is not None:
            return self.cost_computed_usd
        return NOT_RUN_COST if self.status in NOT_RUN_STATUSES else None

    @property
    def shown_cost_source(self) -> str:
        """reported, telemetry, computed, not run (a quota skip), or "" when unknown."""
        if self.cost_usd is not None:
            return "reported"
        if self.cost_telemetry_usd is not None:
            return "telemetry"
        if self.cost_computed_usd is not None:
            return "computed"
        return "not run" if self.status in NOT_RUN_STATUSES else ""


# A run whose claude never started (exit 79, a quota skip) cost nothing.
NOT_RUN_COST = Decimal("0")


def run_cost_expression():
    """Session.shown_cost_usd as a query expression, for sums over many runs."""
    return Coalesce(
        "cost_usd",
        "cost_telemetry_usd",
        "cost_computed_usd",
        Case(
            When(status__in=NOT_RUN_STATUSES, then=Value(NOT_RUN_COST)),
            default=None,
            output_field=models.DecimalField(max_digits=12, decimal_places=6),
        ),
    )


def unknown_cost_q() -> Q:
    """The runs whose Session.shown_cost_usd is None (unknown)."""
    return Q(
        cost_usd__isnull=True, cost_telemetry_usd__isnull=True, cost_computed_usd__isnull=True
    ) & ~Q(status__in=NOT_RUN_STATUSES)


def leftover_members(record, *, limit: int | None = None) -> dict[tuple[int, float], str]:
    """The processes a `Session.leftovers` record names: (pid, start time) -> command
    line. Entries that are not {pid, started, cmdline} are skipped; `limit` caps how
    many are read (a record from another host)."""
    members: dict[tuple[int, float], str] = {}
    if not isinstance(record, list):
        return members
    for member in record[:limit]:
        try:
            key = (int(member["pid"]), float(member["started"]))
            members[key] = str(member.get("cmdline", ""))
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    return members


def leftover_record(members: dict[tuple[int, float], str]) -> list[dict]:
    """What `Session.leftovers` keeps of them: [{pid, started, cmdline}]."""
    return [
        {"pid": pid, "started": started, "cmdline": cmdline}
        for (pid, started), cmdline in members.items()
    ]


class RunTelemetry(models.Model):
    """One run's telemetry rolled up (sessions_app.telemetry.Rollup), by its session id.

    Not a foreign key: telemetry may come before the run's row, and an unwrapped session
    that points its telemetry at the receiver is joined by `session.id` alone."""

    session_id = models.UUIDField(unique=True)
    host = CleanCharField(max_length=255)
    job_tag = CleanCharField(max_length=100, blank=True, default="", db_index=True)
    trace_id = CleanCharField(max_length=32, blank=True, default="", db_index=True)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal("0"))
    api_requests = models.IntegerField(default=0)
    api_errors = models.IntegerField(default=0)
    tool_calls = models.IntegerField(default=0)
    tool_failures = models.IntegerField(default=0)
    ttft_p50_ms = models.FloatField(null=True, blank=True)
    ttft_p95_ms = models.FloatField(null=True, blank=True)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    last_event_at = models.DateTimeField(null=True, blank=True)
    rollup = CleanJSONField(default=dict, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "run telemetry"
        # /metrics' time to first token reads the last day's rows only.
        indexes = [models.Index(fields=["last_event_at"], name="telemetry_last_event")]

    def __str__(self) -> str:
        return f"telemetry of {self.session_id}"


class Rollup(models.Model):
    """Sums kept by the database's triggers (sessions_app.rollups); never written here."""

    runs = models.BigIntegerField(default=0)
    # Millionths of a dollar: exact on every backend (Session.cost_usd has six places).
    cost_micros = models.BigIntegerField(default=0)

    class Meta:
        abstract = True

    @property
    def cost_usd(self) -> Decimal:
        return Decimal(self.cost_micros) / MICROS


MICROS = Decimal(1_000_000)


class RunSums(Rollup):
    """Run cost and tokens, summed as Session.shown_cost_usd rules them."""

    unknown_cost_runs = models.BigIntegerField(default=0)
    computed_cost_runs = models.BigIntegerField(default=0)
    telemetry_cost_runs = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cache_read_tokens = models.BigIntegerField(default=0)
    cache_creation_tokens = models.BigIntegerField(default=0)

    class Meta:
        abstract = True


class RunDay(RunSums):
    """Finished runs per UTC day of their start, tag and host: what the Costs page sums."""

    day = models.DateField()
    script_tag = CleanCharField(max_length=100)
    host = CleanCharField(max_length=255)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["day", "script_tag", "host"], name="runday_key")
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.script_tag} on {self.host}: {self.runs} runs"


class RunTotal(RunSums):
    """Every run on record per tag, host and status: what /metrics counts."""

    script_tag = CleanCharField(max_length=100)
    host = CleanCharField(max_length=255)
    status = CleanCharField(max_length=16, choices=Status.choices)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["script_tag", "host", "status"], name="runtotal_key")
        ]

    def __str__(self) -> str:
        return f"{self.script_tag} on {self.host}, {self.status}: {self.runs} runs"


class TelemetryTotal(Rollup):
    """RunTelemetry per job tag and host, all time: /metrics' telemetry counters."""

    job_tag = CleanCharField(max_length=100, blank=True, default="")
    host = CleanCharField(max_length=255)
    api_requests = models.BigIntegerField(default=0)
    api_errors = models.BigIntegerField(default=0)
    tool_calls = models.BigIntegerField(default=0)
    tool_failures = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["job_tag", "host"], name="telemetrytotal_key")
        ]

    def __str__(self) -> str:
        return f"telemetry of {self.job_tag} on {self.host}: {self.runs} runs"


class TelemetrySpan(models.Model):
    """A span of a run's trace (Claude Code's, or the wrapper's root and attempt spans);
    kept OPSCONSOLE_TELEMETRY_SPAN_DAYS."""

    trace_id = CleanCharField(max_length=32)
    span_id = CleanCharField(max_length=16)
    parent_span_id = CleanCharField(max_length=16, blank=True, default="")
    session_id = models.UUIDField(null=True, blank=True, db_index=True)
    host = CleanCharField(max_length=255)
    name = CleanCharField(max_length=100)
    start_at = models.DateTimeField(db_index=True)
    duration_ms = models.FloatField()
    error = models.BooleanField(default=False)
    attributes = CleanJSONField(default=dict, blank=True)

    class Meta:
        ordering = ["start_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["trace_id", "span_id"], name="span_unique_in_trace")
        ]
        indexes = [models.Index(fields=["trace_id", "start_at"], name="span_trace_start")]

    def __str__(self) -> str:
        return f"{self.name} {self.span_id}"
