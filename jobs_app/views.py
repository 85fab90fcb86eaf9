"""The jobs dashboard and /api/status. Thin: jobs_app.status answers."""

from __future__ import annotations

from itertools import groupby

from django.http import JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from jobs_app.status import current_report, job_statuses, status_payload
from opsconsole.auth import api_view


def _dashboard_context() -> dict:
    report = current_report()
    statuses = job_statuses()
    groups = [
        (platform or "(no platform)", list(rows))
        for platform, rows in groupby(statuses, key=lambda s: s.job.platform)
    ]
    return {"report": report, "groups": groups, "count": len(statuses)}


@require_GET
def dashboard(request):
    return render(request, "jobs_app/dashboard.html", _dashboard_context())


@require_GET
def dashboard_rows(request):
    return render(request, "jobs_app/_jobs_section.html", _dashboard_context())


@api_view
@require_GET
def status(request):
    report = current_report()
    return JsonResponse(
        {
            "jobs": [status_payload(s) for s in job_statuses()],
            "collector_errors": report.errors,
            "schedulers": report.schedulers,
            "collected_at": report.taken_at.isoformat(),
        }
    )
