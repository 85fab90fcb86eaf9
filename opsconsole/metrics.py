"""`GET /metrics`: the console's state in the Prometheus text format.

Everything is read at scrape time from what the monitor already published (the
latest HostSample per host, the event stream) and from history; nothing here
scans processes. A scrape needs a bearer token, a logged-in session, or a client
address inside OPSCONSOLE_METRICS_ALLOW.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from decimal import Decimal
from ipaddress import ip_address, ip_network

from django.conf import settings
from django.db.models import Count, Max, OuterRef, Q, Subquery, Sum
from django.utils import timezone

from alerts_app.models import Alert, Channel, Delivery
from alerts_app.outcome_rules import VERDICT_STATUSES, consecutive_failures
from jobs_app.models import Job
from monitor_app.live import get_snapshot
from monitor_app.models import Event, EventKind, HostSample
from opsconsole.models import ApiToken
from opsconsole.prometheus_text import CONTENT_TYPE, counter, exposition, gauge
from sessions_app.models import (
    LIVE_STATUSES,
    MICROS,
    RunTelemetry,
    RunTotal,
    Session,
    Status,
    TelemetryTotal,
)
from wrapper.formats import parse_iso, read_quota_stamp

log = logging.getLogger(__name__)

TOKEN_COLUMNS = {
    "input": "input_tokens",
    "output": "output_tokens",
    "cache_read": "cache_read_tokens",
    "cache_creation": "cache_creation_tokens",
}


def scrape_allowed(request) -> bool:
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and ApiToken.authenticate(token.strip()) is not None
    if request.user.is_authenticated:
        return True
    try:
        client = ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    for cidr in settings.OPSCONSOLE_METRICS_ALLOW:
        try:
            if client in ip_network(cidr, strict=False):
                return True
        except ValueError:
            log.warning("OPSCONSOLE_METRICS_ALLOW: %r is not an address or network", cidr)
    return False


def render() -> tuple[bytes, str]:
    return exposition(ConsoleCollector(timezone.now()).collect()), CONTENT_TYPE


def epoch(moment: datetime | None) -> float:
    return moment.timestamp() if moment else 0.0


class ConsoleCollector:
    def __init__(self, now: datetime):
        self.now = now

    def collect(self):
        yield from self.monitor()
        yield from self.jobs()
        yield from self.runs()
        yield from self.telemetry()
        yield from self.quota()
        yield from self.alerts()

    # -------------------------------------------------------------- live and monitor
    def monitor(self):
        live = gauge(
            "opsconsole_live_sessions",
            "Claude Code sessions alive now, from the monitor's latest sample",
            labels=["host", "state"],
        )
        duration = gauge(
            "opsconsole_monitor_sample_duration_seconds",
            "How long the monitor's latest sample took",
            labels=["host"],
        )
        age = gauge(
            "opsconsole_monitor_sample_age_seconds",
            "Seconds since the monitor's latest sample",
            labels=["host"],
        )
        interval = gauge(
            "opsconsole_monitor_interval_seconds", "The monitor's sample interval", labels=["host"]
        )
        counts: dict[tuple[str, str], int] = {}
        samples = list(HostSample.objects.all())
        for sample in samples:
            duration.add_metric([sample.host], sample.sample_ms / 1000)
            age.add_metric([sample.host], max(0.0, (self.now - sample.taken_at).total_seconds()))
            interval.add_metric([sample.host], sample.interval_seconds)
            try:
                sessions = json.loads(sample.api_document).get("sessions") or []
            except (ValueError, AttributeError):
                sessions = []
            for entry in sessions:
                if isinstance(entry, dict):
                    key = (str(entry.get("host") or sample.host), str(entry.get("state") or "live"))
                    counts[key] = counts.get(key, 0) + 1
        if not samples:  # no monitor has published yet: the in-process snapshot
            try:
                for entry in get_snapshot().sessions:
                    key = (entry.sidecar.host, entry.state)
                    counts[key] = counts.get(key, 0) + 1
            except Exception as exc:
                log.warning("metrics: no live snapshot: %s", exc)
        for (host, state), count in sorted(counts.items()):
            live.add_metric([host, state], count)
        yield from (live, duration, age, interval)

    # -------------------------------------------------------------- jobs
    def jobs(self):
        labels = ["job", "host", "scheduler"]
        last_status = gauge(
            "opsconsole_job_last_run_status",
            "1 for the status of the job's latest finished run",
            labels=[*labels, "status"],
        )
        last_success = gauge(
            "opsconsole_job_last_success_timestamp_seconds",
            "When the job's latest successful run ended (0: never)",
            labels=labels,
        )
        failures = gauge(
            "opsconsole_job_consecutive_failures",
            "Failed runs in a row, latest first (retried attempts count once)",
            labels=labels,
        )
        runs = Session.objects.filter(job=OuterRef("pk")).order_by("-started_at", "-id")
        newest = runs.exclude(status__in=LIVE_STATUSES)
        jobs = Job.objects.filter(present=True).order_by("label").only("label", "host", "scheduler")
        # One statement for every job: each subquery reads the job's newest runs by index.
        for job in jobs.annotate(
            last_status=Subquery(newest.values("status")[:1]),
            last_success=Subquery(newest.filter(status=Status.SUCCEEDED).values("ended_at")[:1]),
            last_verdict=Subquery(runs.filter(status__in=VERDICT_STATUSES).values("status")[:1]),
        ):
            values = [job.label, job.host, job.scheduler]
            if job.last_status:
                last_status.add_metric([*values, job.last_status], 1)
            last_success.add_metric(values, epoch(job.last_success))
            # A job whose latest verdict is a success has no streak: no query for it.
            streak = (
                0 if job.last_verdict in (None, Status.SUCCEEDED) else consecutive_failures(job)
            )
            failures.add_metric(values, streak)
        yield from (last_status, last_success, failures)

    # -------------------------------------------------------------- runs, cost, tokens
    def runs(self):
        """Counters from the all-time rollup (sessions_app.rollups): a scrape reads a row
        per tag, host and status, not every run. A run is counted once it has ended
        (opsconsole_live_sessions counts the live ones), so a series only grows: a live
        status would fall when its run ended, and rate() would read that as a reset."""
        runs = counter(
            "opsconsole_runs",
            "Runs that ended, by tag and status (the live ones: opsconsole_live_sessions)",
            labels=["tag", "status"],
        )
        cost = counter(
            "opsconsole_cost_usd", "Cost of runs whose cost is known, in USD", labels=["tag"]
        )
        unknown = counter(
            "opsconsole_runs_unknown_cost",
            "Finished runs whose cost is unknown (never counted as $0)",
            labels=["tag"],
        )
        tokens = counter(
            "opsconsole_tokens", "Tokens used, by tag and kind", labels=["tag", "kind"]
        )
        sums = {f"sum_{kind}": Sum(column) for kind, column in TOKEN_COLUMNS.items()}
        rows = RunTotal.objects.values("script_tag", "status").annotate(
            n=Sum("runs"), micros=Sum("cost_micros"), unknown=Sum("unknown_cost_runs"), **sums
        )
        tags: dict[str, dict] = {}
        for row in rows.order_by("script_tag", "status"):
            tag = tags.setdefault(
                row["script_tag"], {"micros": 0, "unknown": 0, **dict.fromkeys(sums, 0)}
            )
            tag["micros"] += row["micros"] or 0
            for name in sums:
                tag[name] += row[name] or 0
            if row["status"] in LIVE_STATUSES:
                continue
            tag["unknown"] += row["unknown"] or 0
            runs.add_metric([row["script_tag"], row["status"]], row["n"])
        for name, tag in tags.items():
            cost.add_metric([name], float(Decimal(tag["micros"]) / MICROS))
            unknown.add_metric([name], tag["unknown"])
            for kind in TOKEN_COLUMNS:
                tokens.add_metric([name, kind], tag[f"sum_{kind}"])
        yield from (runs, cost, unknown, tokens)

    # -------------------------------------------------------------- Claude Code's telemetry
    def telemetry(self):
        """Per-job rollups of the runs' own telemetry (never a series per session)."""
        labels = ["tag"]
        families = {
            "api_requests": counter(
                "opsconsole_telemetry_api_requests",
                "API requests the runs' telemetry reported, auxiliary ones included",
                labels=labels,
            ),
            "api_errors": counter(
                "opsconsole_telemetry_api_errors",
                "API errors the runs' telemetry reported (429, 529, ...)",
                labels=labels,
            ),
            "tool_calls": counter(
                "opsconsole_telemetry_tool_calls", "Tool calls of the runs", labels=labels
            ),
            "tool_failures": counter(
                "opsconsole_telemetry_tool_failures", "Tool calls that failed", labels=labels
            ),
            "cost": counter(
                "opsconsole_telemetry_cost_usd",
                "Cost the runs' telemetry reported, in USD",
                labels=labels,
            ),
        }
        ttft = gauge(
            "opsconsole_telemetry_ttft_p95_seconds",
            "The worst p95 time to first token of the job's runs in the last day",
            labels=labels,
        )
        rows = TelemetryTotal.objects.values("job_tag").annotate(
            api_requests=Sum("api_requests"),
            api_errors=Sum("api_errors"),
            tool_calls=Sum("tool_calls"),
            tool_failures=Sum("tool_failures"),
            cost=Sum("cost_micros"),
        )
        for row in rows.order_by("job_tag"):
            row["cost"] = Decimal(row["cost"] or 0) / MICROS
            for name, family in families.items():
                family.add_metric([row["job_tag"]], float(row[name] or 0))
        recent = RunTelemetry.objects.filter(
            last_event_at__gte=self.now - timedelta(days=1), ttft_p95_ms__isnull=False
        )
        for row in recent.values("job_tag").annotate(worst=Max("ttft_p95_ms")):
            ttft.add_metric([row["job_tag"]], (row["worst"] or 0) / 1000)
        yield from (*families.values(), ttft)

    # -------------------------------------------------------------- quota stamp
    def quota(self):
        blocked = gauge(
            "opsconsole_quota_blocked",
            "1 while a quota stamp makes every run skip with exit 79",
            labels=["host"],
        )
        until = gauge(
            "opsconsole_quota_until_timestamp_seconds",
            "When the quota stamp in force ends (0: none)",
            labels=["host"],
        )
        hosts: dict[str, datetime | None] = {}
        # Other hosts: the latest stamp event each reported. This host: the stamp itself.
        for event in Event.objects.filter(
            kind__in=[EventKind.QUOTA_SET, EventKind.QUOTA_CLEARED]
        ).order_by("host", "-at", "-id"):
            if event.host in hosts:
                continue
            when = None
            if event.kind == EventKind.QUOTA_SET:
                try:
                    when = parse_iso(str(event.detail.get("until")))
                except (ValueError, TypeError):
                    when = None
            hosts[event.host] = when
        stamp = read_quota_stamp(settings.OPSCONSOLE_STATE)
        hosts[settings.OPSCONSOLE_HOST] = parse_iso(stamp.until) if stamp else None
        for host, when in sorted(hosts.items()):
            holds = when is not None and when > self.now
            blocked.add_metric([host], 1 if holds else 0)
            until.add_metric([host], epoch(when) if holds else 0)
        yield from (blocked, until)

    # -------------------------------------------------------------- alerts
    def alerts(self):
        alerts = counter(
            "opsconsole_alerts", "Alerts raised, by rule and phase", labels=["rule", "phase"]
        )
        for row in Alert.objects.values("rule", "phase").annotate(n=Count("id")):
            alerts.add_metric([row["rule"], row["phase"]], row["n"])
        sent = counter(
            "opsconsole_alert_deliveries_sent",
            "Alert deliveries a channel accepted",
            labels=["channel", "channel_id"],
        )
        failed = counter(
            "opsconsole_alert_deliveries_failed",
            "Alert deliveries given up after every retry",
            labels=["channel", "channel_id"],
        )
        attempts_failed = counter(
            "opsconsole_alert_delivery_attempts_failed",
            "Delivery attempts that failed (each is retried with backoff)",
            labels=["channel", "channel_id"],
        )
        pending = gauge(
            "opsconsole_alert_deliveries_pending",
            "Alert deliveries waiting in the outbox",
            labels=["channel", "channel_id"],
        )
        rows = {
            row["channel"]: row
            for row in Delivery.objects.values("channel").annotate(
                sent=Count("id", filter=Q(delivered_at__isnull=False)),
                failed=Count("id", filter=Q(given_up_at__isnull=False)),
                waiting=Count("id", filter=Q(delivered_at__isnull=True, given_up_at__isnull=True)),
                tries=Sum("attempts"),
            )
        }
        for channel in Channel.objects.order_by("name", "id"):
            row = rows.get(channel.pk, {"sent": 0, "failed": 0, "waiting": 0, "tries": 0})
            sent.add_metric([channel.name, str(channel.pk)], row["sent"])
            failed.add_metric([channel.name, str(channel.pk)], row["failed"])
            pending.add_metric([channel.name, str(channel.pk)], row["waiting"])
            attempts_failed.add_metric(
                [channel.name, str(channel.pk)], max(0, (row["tries"] or 0) - row["sent"])
            )
        yield from (alerts, sent, failed, attempts_failed, pending)
