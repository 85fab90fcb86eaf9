"""The console's view of the hosts that report to it: when each was last heard, which
have fallen silent (an event, once), the Hosts page's rows, and requests to them
that expire unanswered. `fleet_round` runs these as a step of the console's monitor."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count, Sum
from django.utils import timezone

from jobs_app.models import AuditEntry, Job
from monitor_app.models import Event, EventKind, HostSample, HostToken, RefusedItem, RemoteAction
from monitor_app.monitor import Monitor
from monitor_app.snapshot import Snapshot
from sessions_app.costs import total_words
from sessions_app.human_time import human_time
from sessions_app.models import Session, run_cost_expression, unknown_cost_q

log = logging.getLogger(__name__)


# An operator request not carried out within this long is expired, with the reason.
ACTION_TTL = timedelta(seconds=120)


# Hosts get a moment after the console's monitor (re)starts: web workers may still boot.
HOSTS_STARTUP_GRACE = timedelta(seconds=15)


def expire_actions(now: datetime | None = None) -> int:
    """Requests nobody will carry out: the host went silent, or never answered."""
    now = now or timezone.now()
    expired = 0
    open_rows = RemoteAction.objects.filter(state__in=RemoteAction.OPEN_STATES).select_related(
        "job"
    )
    hosts = {h.host: h for h in HostSample.objects.filter(host__in=open_rows.values("host"))}
    for action in open_rows:
        sample = hosts.get(action.host)
        silent_since = None
        if sample is None:
            silent_since = "it never reported"
        elif sample.is_silent(now):
            silent_since = f"its last report was at {human_time(sample.last_heard)}"
        too_old = now - (action.sent_at or action.requested_at) > ACTION_TTL
        if silent_since and action.state == RemoteAction.State.PENDING:
            message = (
                f"expired: host {action.host} is silent ({silent_since}); "
                "the request was never delivered and nothing was done"
            )
        elif too_old:
            message = (
                f"expired: host {action.host} was handed the request at "
                f"{human_time(action.sent_at)} and never reported an outcome"
                if action.sent_at
                else f"expired: host {action.host} did not collect the request within "
                f"{int(ACTION_TTL.total_seconds())} s"
            )
        else:
            continue
        updated = RemoteAction.objects.filter(pk=action.pk, state=action.state).update(
            state=RemoteAction.State.EXPIRED, finished_at=now, message=message
        )
        if updated:
            expired += 1
            AuditEntry.objects.create(
                actor=action.requested_by,
                action=action.kind,
                job=action.job,
                target=str(action.session_id or "") or (action.job.label if action.job else ""),
                ok=False,
                output=message,
                detail={"message": message, "host": action.host, "remote_action": action.pk},
            )
    return expired


def check_silent_hosts(
    now: datetime | None = None, watching_since: datetime | None = None
) -> list[str]:
    """A monitor_silent event once per silence (keyed by the last sample's seq).

    `watching_since`: when the console's monitor started. A host is not called silent
    for the time the console itself was down (its reports could not arrive)."""
    now = now or timezone.now()
    silent = []
    rows = HostSample.objects.only("seq", *HostSample.SILENCE_FIELDS)
    events = []
    for sample in rows:
        if not sample.is_silent(now):
            continue
        if watching_since is not None and not sample.is_silent(now, since=watching_since):
            continue
        silent.append(sample.host)
        heard = sample.last_heard
        events.append(
            Event(
                at=now,
                host=sample.host,
                kind=EventKind.MONITOR_SILENT,
                message=f"monitor on {sample.host} silent: last sample "
                f"{human_time(heard)}, {int((now - heard).total_seconds())} s ago",
                detail={"last_seq": sample.seq, "last_heard": heard.isoformat()},
                dedupe_key=f"{sample.host}:monitor_silent:{sample.seq}"[:200],
            )
        )
    if events:
        Event.objects.bulk_create(events, ignore_conflicts=True)
    return silent


def silent_hosts(now: datetime | None = None) -> list[str]:
    """Hosts that report here and have fallen silent, and hosts given a token that never
    reported: what the overview and the navigation count. Cheap (no sample document is
    read). A console that never ran a monitor of its own (on-demand sampling) is not
    counted: its live page says so."""
    now = now or timezone.now()
    samples = HostSample.objects.only(*HostSample.SILENCE_FIELDS)
    heard = {sample.host: sample for sample in samples}
    silent = {host for host, sample in heard.items() if sample.is_silent(now)}
    tokened = HostToken.objects.filter(revoked_at=None).values_list("host", flat=True)
    silent.update(host for host in tokened if host not in heard)
    return sorted(silent)


@dataclass
class HostRow:
    host: str
    sample: HostSample | None
    age_seconds: float | None
    silent: bool
    live_runs: int
    leftovers: int
    quota_until: str | None
    jobs: int
    this_host: bool
    tokens: int
    runs_30d: int = 0
    cost_30d: float | None = None
    refused_items: int = 0  # items of its reports the console did not record (RefusedItem)
    unknown_cost_30d: int = 0  # runs whose cost is unknown, not in cost_30d

    @property
    def cost_30d_words(self) -> str:
        return total_words(self.cost_30d, self.unknown_cost_30d, self.runs_30d)


def host_rows(now: datetime | None = None) -> list[HostRow]:
    now = now or timezone.now()
    # Totals across machines: runs and cost of the last 30 days, per host, one query.
    recent = {
        host: (runs, cost, unknown)
        for host, runs, cost, unknown in Session.objects.filter(
            started_at__gte=now - timedelta(days=30)
        )
        .values("host")
        .annotate(
            runs=Count("session_id"),
            cost=Sum(run_cost_expression()),
            unknown=Count("session_id", filter=unknown_cost_q()),
        )
        .values_list("host", "runs", "cost", "unknown")
    }
    # The state document (every run's sidecar and tree) is for pages of one host's runs.
    samples = {s.host: s for s in HostSample.objects.defer("state_document")}
    jobs = dict(Job.objects.values_list("host").annotate(n=Count("id")))
    tokens = dict(
        HostToken.objects.filter(revoked_at=None).values_list("host").annotate(n=Count("id"))
    )
    refused = dict(RefusedItem.objects.values_list("host").annotate(n=Count("id")))
    rows = []
    for host in sorted(set(samples) | set(tokens) | set(recent) | {settings.OPSCONSOLE_HOST}):
        sample = samples.get(host)
        live = leftovers = 0
        quota = None
        if sample is not None:
            try:
                api = json.loads(sample.api_document)
                live, leftovers = len(api.get("sessions", [])), len(api.get("leftovers", []))
                quota = api.get("quota_until")
            except ValueError:
                pass
        rows.append(
            HostRow(
                host=host,
                sample=sample,
                age_seconds=(now - sample.last_heard).total_seconds() if sample else None,
                silent=sample is None or sample.is_silent(now),
                live_runs=live,
                leftovers=leftovers,
                quota_until=quota,
                jobs=jobs.get(host, 0),
                this_host=host == settings.OPSCONSOLE_HOST,
                tokens=tokens.get(host, 0),
                runs_30d=recent.get(host, (0, None, 0))[0],
                cost_30d=float(c) if (c := recent.get(host, (0, None, 0))[1]) is not None else None,
                unknown_cost_30d=recent.get(host, (0, None, 0))[2],
                refused_items=refused.get(host, 0),
            )
        )
    return rows


def fleet_round(monitor: Monitor, snapshot: Snapshot, now: datetime) -> None:
    """The console's rules about other hosts, each sample: reporting hosts fall silent,
    and requests to them expire, without anyone looking."""
    if not monitor.publish:
        return
    check_silent_hosts(now, watching_since=monitor.watching_since + HOSTS_STARTUP_GRACE)
    expire_actions(now)
