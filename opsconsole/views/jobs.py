"""The jobs dashboard and /api/status. Thin: monitor_app.job_status answers."""

from __future__ import annotations

from collections import Counter
from itertools import groupby

from django.conf import settings
from django.contrib import messages
from django.http import HttpResponseForbidden, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from jobs_app.linking import wrapping_suggestion
from jobs_app.models import POLICY_ACTORS, Job
from jobs_app.runs import recent_runs
from monitor_app.job_controls import ControlError, perform
from monitor_app.job_status import job_statuses, status_payload
from monitor_app.live import current_report, get_snapshot
from opsconsole.auth import api_view, json_error
from opsconsole.views.hosts import requests_for_job
from opsconsole.views.job_charts import cost_chart, duration_chart


def _dashboard_context(request) -> dict:
    report = current_report()
    statuses = job_statuses(get_snapshot())
    # Jobs of every host, counted per host; ?host=NAME shows one host's.
    hosts = Counter(status.job.host for status in statuses)
    host = request.GET.get("host", "")[:255]
    if host:
        statuses = [status for status in statuses if status.job.host == host]
    groups = [
        (platform or "(no platform)", list(rows))
        for platform, rows in groupby(statuses, key=lambda s: s.platform)
    ]
    return {
        "report": report,
        "groups": groups,
        "count": len(statuses),
        "hosts": sorted(hosts.items()),
        "host_filter": host,
    }


@require_GET
def dashboard(request):
    return render(request, "jobs_app/dashboard.html", _dashboard_context(request))


@require_GET
def dashboard_rows(request):
    return render(request, "jobs_app/_jobs_section.html", _dashboard_context(request))


@api_view
@require_GET
def status(request):
    report = current_report()
    return JsonResponse(
        {
            "jobs": [status_payload(s) for s in job_statuses(get_snapshot())],
            "collector_errors": report.errors,
            "schedulers": report.schedulers,
            "collected_at": report.taken_at.isoformat(),
        }
    )


@require_GET
def job_page(request, pk: int):
    job = get_object_or_404(Job, pk=pk)
    status = next(s for s in job_statuses(get_snapshot()) if s.job.pk == job.pk)
    runs = recent_runs(job)
    return render(
        request,
        "jobs_app/job.html",
        {
            "row": status,
            "job": job,
            "runs": runs,
            "newest_first": runs[::-1][:10],
            "duration_chart": duration_chart(runs),
            "cost_chart": cost_chart(runs),
            "audit": job.audit.all()[:50],
            "policy_actions": job.audit.filter(actor__in=POLICY_ACTORS)[:20],
            **requests_for_job(job),
            "console_host": settings.OPSCONSOLE_HOST,
            "can_act": request.user.is_staff,
            "wrap_line": wrapping_suggestion(job),
        },
    )


@require_POST
def job_action(request, pk: int, action: str):
    if not request.user.is_staff:
        return HttpResponseForbidden("Operator actions need admin rights (staff status).")
    job = get_object_or_404(Job, pk=pk)
    try:
        result = perform(job, action, request.user.get_username(), request.POST.get("schedule", ""))
    except ControlError as exc:
        messages.error(request, str(exc))
    else:
        if result.ok:
            messages.success(request, f"{action}: {result.message}")
        else:
            messages.error(request, f"{action} failed: {result.message}")
    return redirect("job", pk=job.pk)


@api_view
@require_POST
def api_job_action(request, pk: int, action: str):
    if not request.user.is_staff:
        return json_error("Operator actions need admin rights (staff status).", 403)
    job = Job.objects.filter(pk=pk).first()
    if job is None:
        return json_error(f"No job {pk}.", 404)
    try:
        result = perform(job, action, request.user.get_username(), request.POST.get("schedule", ""))
    except ControlError as exc:
        return json_error(str(exc), 400)
    # 200 only for what was done; 202 for what another host's monitor will do (follow
    # `url`); 400 for what cannot be done as asked (the reason says why); 502 when the
    # scheduler or the command was tried and failed.
    status = 202 if result.pending else 200 if result.ok else 400 if result.refused else 502
    body = {
        "ok": result.ok,
        "message": result.message,
        "error": None if result.ok else result.message,
        "exit_code": result.exit_code,
        "output": result.output,
        "detail": result.detail,
    }
    if result.pending and "remote_action" in result.detail:
        body["state"] = "pending"
        body["url"] = reverse("api-remote-action", args=[result.detail["remote_action"]])
    return JsonResponse(body, status=status)
