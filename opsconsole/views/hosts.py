"""The Hosts page, requests to reporting hosts, and staff's stop for a run on any host."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpResponseBadRequest, HttpResponseForbidden
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_GET, require_POST

from fleet.hosts import expire_actions, host_rows
from jobs_app.models import AuditEntry, Job
from monitor_app.live import get_snapshot
from monitor_app.models import RefusedItem, RemoteAction
from monitor_app.remote_actions import ON_ITS_WAY, request_action
from monitor_app.stopping import stop_session
from sessions_app.costs import total_words
from sessions_app.models import LIVE_STATUSES, Session
from wrapper.formats import is_session_id

# A fleet of 2,000 hosts in one table was 1.4 MB of HTML and 0.3 s of template alone.
HOSTS_PER_PAGE = 100


@require_GET
def hosts(request):
    # Silence is recorded (monitor_silent) by the console's monitor; shown here as seen now.
    expire_actions()
    rows = host_rows()
    name = request.GET.get("q", "").strip()
    silent_only = request.GET.get("state") == "silent"
    shown = [
        row
        for row in rows
        if name.casefold() in row.host.casefold() and (row.silent or not silent_only)
    ]
    filters = {"q": name, "state": "silent" if silent_only else ""}
    query = urlencode({key: value for key, value in filters.items() if value})
    return render(
        request,
        "monitor_app/hosts.html",
        {
            "page": Paginator(shown, HOSTS_PER_PAGE).get_page(request.GET.get("page")),
            "query": query,
            "name": name,
            "silent_only": silent_only,
            "total_hosts": len(rows),
            "total_silent": sum(r.silent for r in rows),
            "total_live": sum(r.live_runs for r in rows),
            "total_runs_30d": sum(r.runs_30d for r in rows),
            "total_cost_30d": total_words(
                sum(r.cost_30d or 0 for r in rows),
                sum(r.unknown_cost_30d for r in rows),
                sum(r.runs_30d for r in rows),
            ),
            "actions": RemoteAction.objects.select_related("job")[:30],
            "refused": RefusedItem.objects.all()[:30],
            "console_host": settings.OPSCONSOLE_HOST,
        },
    )


def requests_context(actions, host: str, query: str) -> dict:
    """For monitor_app/_requests.html: the section polls itself while one is open."""
    actions = list(actions)
    return {
        "remote_actions": actions,
        "requests_host": host,
        "requests_url": f"{reverse('remote-requests')}?{query}",
        "requests_open": any(a.state in RemoteAction.OPEN_STATES for a in actions),
    }


def requests_for_job(job) -> dict:
    return requests_context(job.remote_actions.all()[:10], job.host, f"job={job.pk}")


def requests_for_session(session_id, host: str) -> dict:
    actions = RemoteAction.objects.filter(session_id=session_id)[:10]
    return requests_context(actions, host, f"session={session_id}")


@require_GET
def remote_requests(request):
    """The requests section of a job or session page, re-read while a request is open."""
    job_id, session_id = request.GET.get("job", ""), request.GET.get("session", "")
    if job_id.isdigit():
        context = requests_for_job(get_object_or_404(Job, pk=int(job_id)))
    elif is_session_id(session_id):
        session = get_object_or_404(Session, session_id=session_id)
        context = requests_for_session(session.session_id, session.host)
    else:
        return HttpResponseBadRequest("give job=<id> or session=<session id>")
    response = render(request, "monitor_app/_requests.html", context)
    if request.htmx and not context["requests_open"]:
        # The section polls only while a request is open: the host has answered them all,
        # so the whole page is read again (the job's state, the audit log, the buttons).
        response["HX-Refresh"] = "true"
    return response


@require_POST
def session_stop(request, session_id):
    """Staff: stop a live run; on another host it becomes a request its monitor picks up."""
    if not request.user.is_staff:
        return HttpResponseForbidden("Operator actions need admin rights (staff status).")
    session = get_object_or_404(Session, session_id=session_id)
    actor = request.user.get_username()
    if session.status not in LIVE_STATUSES:
        messages.error(request, f"stop: the run is not live ({session.status})")
    elif session.host != settings.OPSCONSOLE_HOST:
        action = request_action(RemoteAction.Kind.STOP, session, actor)
        messages.success(
            request,
            f"stop requested from {session.host} (request {action.pk}): {ON_ITS_WAY}; "
            "the Hosts page shows the outcome",
        )
    else:
        live = get_snapshot(fresh=True).get(str(session_id))
        if live is None:
            messages.error(request, "stop: the run is not live on this host")
        else:
            outcome = stop_session(
                live, actor=actor, reason="stopped", grace=settings.OPSCONSOLE_STOP_GRACE_SECONDS
            )
            AuditEntry.objects.create(
                actor=actor,
                action="stop",
                job=session.job,
                target=str(session_id),
                ok=not outcome.errors,
                output="\n".join(outcome.errors),
                detail={"terminated": outcome.terminated, "killed": outcome.killed},
            )
            messages.success(request, f"stop: {outcome.summary}")
    return redirect("session", session_id=session_id)
