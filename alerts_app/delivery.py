"""Sending alerts: Apprise does every provider; this module owns the outbox around it.

`enqueue()` routes an alert to its channels (defaults, the job's own, mutes, quiet
hours) as outbox rows, inside the caller's transaction. `deliver_due()` sends what
is due, outside any transaction, with short socket timeouts and a time budget, so
the monitor's sample loop is never held up for long; a failure is written down and
retried with exponential backoff until it is delivered or given up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import apprise
from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import Q

from alerts_app.channel_urls import instantiate, scrub
from alerts_app.models import Alert, AlertPolicy, Channel, Delivery, url_fingerprint
from sessions_app.human_time import human_time

log = logging.getLogger(__name__)

# Apprise's own log lines can carry a URL, and so a token: they reach only the
# per-send capture in send(), which is scrubbed, never the console's log.
_apprise_log = logging.getLogger("apprise")
_apprise_log.propagate = False
_apprise_log.addHandler(logging.NullHandler())

ATTEMPT_LOG_KEPT = 20
ERROR_CHARS = 500


@dataclass
class SendResult:
    ok: bool
    error: str = ""


def send(url: str, title: str, body: str) -> SendResult:
    """One notification through Apprise, with this console's timeouts. Never raises."""
    plugin = instantiate(url)
    if plugin is None:
        return SendResult(False, "not a URL Apprise understands")
    plugin.socket_connect_timeout = settings.OPSCONSOLE_ALERT_CONNECT_TIMEOUT
    plugin.socket_read_timeout = settings.OPSCONSOLE_ALERT_READ_TIMEOUT
    with apprise.LogCapture(level=logging.WARNING, fmt="%(message)s") as captured:
        try:
            ok = bool(plugin.notify(body=body, title=title))
        except Exception as exc:
            ok = False
            log.warning("alert delivery raised %s", type(exc).__name__)
            captured.write(f"{type(exc).__name__}: {exc}\n")
        text = captured.getvalue()
    if ok:
        return SendResult(True)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    error = scrub(" / ".join(lines[-3:]) or "the service did not accept it", url)
    return SendResult(False, error[:ERROR_CHARS])


# ----------------------------------------------------------------------------- routing


def sync_environment_channels() -> None:
    """OPSCONSOLE_ALERT_URLS as default channels, so they show and retry like the rest."""
    urls = [u for u in settings.OPSCONSOLE_ALERT_URLS if u.strip()]
    wanted = {url_fingerprint(u): u for u in urls}
    existing = {c.url_hash: c for c in Channel.objects.filter(from_environment=True)}
    for index, (fingerprint, url) in enumerate(wanted.items(), start=1):
        channel = existing.get(fingerprint)
        if channel is None:
            channel = Channel(
                name=f"environment #{index}",
                url=url,
                from_environment=True,
                is_default=True,
            )
            channel.save()
        elif not channel.enabled:
            Channel.objects.filter(pk=channel.pk).update(enabled=True)
    gone = [c.pk for h, c in existing.items() if h not in wanted and c.enabled]
    if gone:  # removed from the environment: kept for the record, sent nothing more
        Channel.objects.filter(pk__in=gone).update(enabled=False)


BASE_URL_WARNING = (
    "OPSCONSOLE_BASE_URL is not set, but alerts are sent ({channels}): their links are "
    "paths (/sessions/...) a phone cannot open. Set it to the console's address as "
    "people reach it, e.g. OPSCONSOLE_BASE_URL=https://ops.example.com"
)


def base_url_warning() -> str | None:
    """What `serve` and `doctor` say when messages go out with links nobody can follow."""
    if settings.OPSCONSOLE_BASE_URL:
        return None
    from_env = [u for u in settings.OPSCONSOLE_ALERT_URLS if u.strip()]
    try:
        stored = Channel.objects.filter(enabled=True, from_environment=False).count()
    except DatabaseError:
        stored = 0  # the database's own problem is reported elsewhere
    if not from_env and not stored:
        return None
    where = []
    if from_env:
        where.append(f"{len(from_env)} in OPSCONSOLE_ALERT_URLS")
    if stored:
        where.append(f"{stored} channel(s) under Admin -> Channels")
    return BASE_URL_WARNING.format(channels=", ".join(where))


def channels_for(job) -> list[Channel]:
    settings_row = getattr(job, "alert_settings", None) if job is not None else None
    query = Q(pk__in=[])
    if settings_row is None or settings_row.use_default_channels:
        query |= Q(is_default=True)
    if settings_row is not None:
        query |= Q(pk__in=settings_row.channels.values("pk"))
    return list(Channel.objects.filter(query, enabled=True).distinct())


def in_quiet_hours(policy: AlertPolicy, moment: datetime) -> datetime | None:
    """When the quiet hours around `moment` end, or None outside them (local time)."""
    start, end = policy.quiet_hours_start, policy.quiet_hours_end
    if start is None or end is None or start == end:
        return None
    from django.utils import timezone

    local = timezone.localtime(moment)
    now_t = local.time()
    inside = start <= now_t < end if start < end else (now_t >= start or now_t < end)
    if not inside:
        return None
    end_at = local.replace(hour=end.hour, minute=end.minute, second=0, microsecond=0)
    if end_at <= local:
        end_at += timedelta(days=1)
    return end_at


def enqueue(alert: Alert, now: datetime, channels: list[Channel] | None = None) -> int:
    """Put one alert's deliveries in the outbox (in the caller's transaction)."""
    policy = AlertPolicy.current()
    if channels is None:
        job_settings = getattr(alert.job, "alert_settings", None) if alert.job else None
        if policy.muted_until and policy.muted_until > now:
            alert.suppressed = f"muted until {human_time(policy.muted_until)}"
        elif job_settings and job_settings.muted_until and job_settings.muted_until > now:
            alert.suppressed = f"job muted until {human_time(job_settings.muted_until)}"
        channels = [] if alert.suppressed else channels_for(alert.job)
        if not channels and not alert.suppressed:
            alert.suppressed = "no channel"
        quiet_end = in_quiet_hours(policy, now)
    else:
        quiet_end = None  # a test message goes now
    if alert.suppressed:
        alert.save(update_fields=["suppressed"])
        return 0
    Delivery.objects.bulk_create(
        Delivery(alert=alert, channel=channel, created_at=now, next_try_at=quiet_end or now)
        for channel in channels
    )
    return len(channels)


# ----------------------------------------------------------------------------- the outbox


def backoff(attempts: int) -> timedelta:
    base = settings.OPSCONSOLE_ALERT_RETRY_SECONDS
    return timedelta(seconds=min(base * 2 ** (attempts - 1), settings.OPSCONSOLE_ALERT_RETRY_MAX))


def due_deliveries(now: datetime, limit: int = 50):
    return (
        Delivery.objects.filter(
            delivered_at__isnull=True, given_up_at__isnull=True, next_try_at__lte=now
        )
        .select_related("alert", "channel")
        .order_by("next_try_at", "id")[:limit]
    )


def claim(delivery: Delivery, now: datetime) -> bool:
    """Take a delivery for this process (another ticker may be running): a short lease."""
    lease = now + timedelta(
        seconds=settings.OPSCONSOLE_ALERT_CONNECT_TIMEOUT
        + settings.OPSCONSOLE_ALERT_READ_TIMEOUT
        + 30
    )
    with transaction.atomic():
        taken = Delivery.objects.filter(
            pk=delivery.pk, next_try_at=delivery.next_try_at, delivered_at__isnull=True
        ).update(next_try_at=lease)
    return taken == 1


def attempt(delivery: Delivery, now: datetime) -> bool:
    """Send one outbox item and write down what happened. True when delivered."""
    channel = delivery.channel
    if not channel.enabled:
        result = SendResult(False, "channel disabled")
    else:
        result = send(channel.url, delivery.alert.title, delivery.alert.body)
    delivery.attempts += 1
    entry = {"at": now.isoformat(), "ok": result.ok, "error": result.error}
    delivery.attempt_log = [*delivery.attempt_log, entry][-ATTEMPT_LOG_KEPT:]
    if result.ok:
        delivery.delivered_at = now
        delivery.next_try_at = None
        delivery.last_error = ""
    else:
        delivery.last_error = result.error
        if delivery.attempts >= settings.OPSCONSOLE_ALERT_MAX_ATTEMPTS or not channel.enabled:
            delivery.given_up_at = now
            delivery.next_try_at = None
        else:
            delivery.next_try_at = now + backoff(delivery.attempts)
        log.warning(
            "alert %s to channel %r: attempt %d failed: %s",
            delivery.alert_id,
            channel.name,
            delivery.attempts,
            result.error,
        )
    delivery.save(
        update_fields=[
            "attempts",
            "attempt_log",
            "delivered_at",
            "next_try_at",
            "last_error",
            "given_up_at",
        ]
    )
    return result.ok


@dataclass
class DeliveryRound:
    attempted: int = 0
    delivered: int = 0
    failed: int = 0


def deliver_due(
    now: datetime, budget_seconds: float | None = None, clock: Callable[[], float] = time.monotonic
) -> DeliveryRound:
    """Send what is due, until the budget is spent (the rest waits for the next tick).

    The budget is real time, the process's own (`clock`): it keeps a round short. It
    never stops the first attempt, so a round slowed before it sent anything (a loaded
    host, a locked database) still moves the outbox on; what is due is `now`'s."""
    budget = settings.OPSCONSOLE_ALERT_TICK_BUDGET if budget_seconds is None else budget_seconds
    began = clock()
    outcome = DeliveryRound()
    for delivery in list(due_deliveries(now)):
        if outcome.attempted and clock() - began > budget:
            break
        if not claim(delivery, now):
            continue
        outcome.attempted += 1
        if attempt(delivery, now):
            outcome.delivered += 1
        else:
            outcome.failed += 1
    return outcome


def send_test(channel: Channel, now: datetime, actor: str) -> Delivery:
    """A test message to one channel, sent at once and kept like any other alert."""
    alert = Alert.objects.create(
        created_at=now,
        rule="test",
        phase=Alert.Phase.TEST,
        host=settings.OPSCONSOLE_HOST,
        title=f"[opsconsole] Test message for {channel.name}",
        body=(
            f"A test sent by {actor} from the opsconsole on {settings.OPSCONSOLE_HOST}.\n"
            f"If you read this, alerts reach channel {channel.name!r}.\n"
            f"{alert_page_url()}"
        ),
    )
    enqueue(alert, now, channels=[channel])
    delivery = alert.deliveries.get()
    claim(delivery, now)
    delivery.refresh_from_db()
    ok = attempt(delivery, now)
    if not ok:  # a test is answered now, not retried behind the person's back
        Delivery.objects.filter(pk=delivery.pk).update(given_up_at=now, next_try_at=None)
    Channel.objects.filter(pk=channel.pk).update(
        last_test_at=now, last_test_ok=ok, last_test_error=delivery.last_error
    )
    delivery.refresh_from_db()
    return delivery


def alert_page_url() -> str:
    base = settings.OPSCONSOLE_BASE_URL.rstrip("/")
    return f"{base}/alerts/" if base else "/alerts/"
