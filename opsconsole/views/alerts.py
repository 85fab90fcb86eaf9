"""Alerts pages, the per-channel test, a job's alert settings, and /metrics. Thin."""

from __future__ import annotations

from django import forms
from django.contrib import messages as flash
from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Prefetch
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from alerts_app import delivery
from alerts_app.incidents import (
    INCIDENT_ACTIONS,
    SNOOZE_CHOICES_MINUTES,
    IncidentActionError,
    act,
    next_repeat_at,
    repeat_every,
)
from alerts_app.models import Alert, AlertPolicy, Channel, Delivery, Incident, JobAlertSettings
from jobs_app.models import AuditEntry, Job
from opsconsole import metrics

ALERTS_PER_PAGE = 50
RESOLVED_SHOWN = 20


def alerts_page(request):
    alerts = Alert.objects.select_related("job").prefetch_related(
        Prefetch("deliveries", queryset=Delivery.objects.select_related("channel"))
    )
    page = Paginator(alerts, ALERTS_PER_PAGE).get_page(request.GET.get("page"))
    channels = list(Channel.objects.all())
    for channel in channels:
        channel.shown_url = channel.url_shown_to(request.user)
    open_incidents = list(Incident.objects.filter(resolved_at__isnull=True).select_related("job"))
    every = repeat_every()
    for incident in open_incidents:
        incident.next_repeat_at = next_repeat_at(incident, every)
    return render(
        request,
        "alerts_app/alerts.html",
        {
            "page": page,
            "channels": channels,
            "open_incidents": open_incidents,
            "resolved_by_people": Incident.objects.exclude(resolved_by="").select_related("job")[
                :RESOLVED_SHOWN
            ],
            "snooze_choices": SNOOZE_CHOICES_MINUTES,
            "policy": AlertPolicy.current(),
            "now": timezone.now(),
        },
    )


@require_POST
def incident_action(request, pk: int, action: str):
    """Acknowledge, snooze or resolve an open incident (staff; audited in alerts_app)."""
    if not request.user.is_staff:
        raise PermissionDenied("Only staff can acknowledge, snooze or resolve incidents.")
    if action not in INCIDENT_ACTIONS:
        raise Http404(f"No incident action {action!r}.")
    with transaction.atomic():
        incident = get_object_or_404(Incident.objects.select_for_update(), pk=pk)
        try:
            done = act(incident, action, request.user.get_username(), timezone.now(), request.POST)
        except IncidentActionError as exc:
            flash.error(request, str(exc))
        else:
            flash.success(request, done)
    return redirect("alerts")


@require_POST
def channel_test(request, pk: int):
    if not request.user.is_staff:
        raise PermissionDenied("Only staff can send test messages.")
    channel = get_object_or_404(Channel, pk=pk)
    result = delivery.send_test(channel, timezone.now(), request.user.get_username())
    AuditEntry.objects.create(
        actor=request.user.get_username(),
        action="alert_test",
        # Scheme and host only: audit rows are read by every staff user.
        target=f"channel {channel.name} ({channel.address})",
        ok=result.delivered_at is not None,
        output=result.last_error,
        detail={"channel_id": channel.pk, "alert_id": result.alert_id},
    )
    if result.delivered_at:
        flash.success(request, f"Test message delivered to {channel.name}.")
    else:
        flash.error(request, f"Test message to {channel.name} failed: {result.last_error}")
    return redirect("alerts")


@require_POST
def delivery_retry(request, pk: int):
    """Put a given-up delivery back in the outbox, due now (the monitor sends it)."""
    if not request.user.is_staff:
        raise PermissionDenied("Only staff can retry deliveries.")
    item = get_object_or_404(Delivery.objects.select_related("channel"), pk=pk)
    if item.delivered_at is None:
        Delivery.objects.filter(pk=item.pk).update(given_up_at=None, next_try_at=timezone.now())
        AuditEntry.objects.create(
            actor=request.user.get_username(),
            action="alert_retry",
            target=f"alert {item.alert_id} to channel {item.channel.name}",
            ok=True,
            detail={"delivery_id": item.pk, "attempts_before": item.attempts},
        )
        flash.success(request, f"Delivery to {item.channel.name} is due again.")
    return redirect("alerts")


class JobAlertSettingsForm(forms.ModelForm):
    class Meta:
        model = JobAlertSettings
        fields = [
            "use_default_channels",
            "channels",
            "muted_until",
            "alert_on_failure",
            "consecutive_failures",
            "alert_on_false_success",
            "alert_on_late",
            "alert_on_stall",
            "stall_minutes",
            "alert_on_runtime",
            "runtime_multiple",
            "runtime_floor_seconds",
            "cost_per_run_usd",
            "cost_per_day_usd",
            "stop_on_cost_cap",
            "alert_on_leftovers",
        ]
        widgets = {
            "muted_until": forms.DateTimeInput(attrs={"type": "datetime-local"}),
            "channels": forms.CheckboxSelectMultiple,
        }


def job_alerts(request, pk: int):
    job = get_object_or_404(Job, pk=pk)
    settings_row = JobAlertSettings.objects.filter(job=job).first() or JobAlertSettings(job=job)
    if request.method == "POST":
        if not request.user.is_staff:
            raise PermissionDenied("Only staff can change alert settings.")
        form = JobAlertSettingsForm(request.POST, instance=settings_row)
        if form.is_valid():
            form.save()
            AuditEntry.objects.create(
                actor=request.user.get_username(),
                action="alert_settings",
                job=job,
                target=job.label,
                ok=True,
                detail={"changed": form.changed_data},
            )
            flash.success(request, "Alert settings saved.")
            return redirect("job-alerts", pk=job.pk)
    else:
        form = JobAlertSettingsForm(instance=settings_row)
    return render(
        request,
        "alerts_app/job_alerts.html",
        {
            "job": job,
            "form": form,
            "can_edit": request.user.is_staff,
            "alerts": Alert.objects.filter(job=job).prefetch_related("deliveries__channel")[:20],
        },
    )


@require_GET
@login_not_required  # authenticated below: bearer token, allowed address, or a session
def metrics_view(request):
    if not metrics.scrape_allowed(request):
        response = HttpResponse(
            "Unauthorized: send 'Authorization: Bearer <token>' or scrape from an address "
            "in OPSCONSOLE_METRICS_ALLOW.\n",
            status=401,
            content_type="text/plain",
        )
        response["WWW-Authenticate"] = 'Bearer realm="opsconsole"'
        return response
    body, content_type = metrics.render()
    return HttpResponse(body, content_type=content_type)
