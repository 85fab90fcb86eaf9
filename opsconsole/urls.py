from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_not_required
from django.templatetags.static import static
from django.urls import path
from django.views.generic import RedirectView

from opsconsole.api import host_actions
from opsconsole.api import hosts as host_api
from opsconsole.api import incidents as incident_api
from opsconsole.api import sessions as session_api
from opsconsole.auth import ThrottledLoginView
from opsconsole.views import alerts as alert_views
from opsconsole.views import hosts as host_views
from opsconsole.views import jobs as job_views
from opsconsole.views import overview as overview_views
from opsconsole.views import sessions as session_views

# Browsers ask for /favicon.ico on their own (API responses, downloads): no 404 for it.
favicon = login_not_required(
    RedirectView.as_view(url=static("opsconsole/favicon.ico"), permanent=True)
)

urlpatterns = [
    path("favicon.ico", favicon, name="favicon"),
    path("login/", ThrottledLoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/events", host_api.events, name="api-events"),
    path("api/hosts/report", host_api.hosts_report, name="api-hosts-report"),
    path("api/hosts", host_api.hosts, name="api-hosts"),
    path("api/hosts/actions/wait", host_actions.wait_for_requests, name="api-hosts-wait"),
    path("api/hosts/actions/<int:action_id>", host_api.remote_action, name="api-remote-action"),
    path("api/sessions/<str:session_id>/stop", host_api.session_stop, name="api-session-stop"),
    path("hosts/", host_views.hosts, name="hosts"),
    path("hosts/requests/", host_views.remote_requests, name="remote-requests"),
    path("sessions/<uuid:session_id>/stop/", host_views.session_stop, name="session-stop"),
    # sessions: live, history, costs, transcripts
    path("", overview_views.overview_page, name="overview"),
    path("live/", session_views.live, name="live"),
    path("live/rows/", session_views.live_rows, name="live-rows"),
    path("history/", session_views.history, name="history"),
    path("history/export.csv", session_views.history_csv, name="history-csv"),
    path("costs/", session_views.costs, name="costs"),
    path(
        "sessions/<uuid:session_id>/transcript.jsonl",
        session_views.transcript_download,
        name="session-download",
    ),
    path("sessions/<uuid:session_id>/", session_views.session_page, name="session"),
    path("sessions/<uuid:session_id>/header/", session_views.session_header, name="session-header"),
    path(
        "sessions/<uuid:session_id>/timeline/",
        session_views.session_timeline,
        name="session-timeline",
    ),
    path(
        "sessions/<uuid:session_id>/kill-leftovers/",
        session_views.kill_leftovers_view,
        name="session-kill-leftovers",
    ),
    path(
        "sessions/<uuid:session_id>/transcript/",
        session_views.transcript_follow,
        name="session-transcript",
    ),
    # JSON API (paths kept from the seed)
    path("api/claude-active", session_api.claude_active, name="api-active"),
    path("api/claude-jsonl/<str:session_id>", session_api.transcript_tail, name="api-transcript"),
    path("api/sessions", session_api.session_list, name="api-sessions"),
    path("api/history/export.json", session_api.history_json, name="api-history-json"),
    path("api/sessions/<str:session_id>", session_api.session_detail, name="api-session"),
    path(
        "api/sessions/<str:session_id>/kill-leftovers",
        session_api.session_kill_leftovers,
        name="api-session-kill-leftovers",
    ),
    # jobs
    path("jobs/", job_views.dashboard, name="jobs"),
    path("jobs/rows/", job_views.dashboard_rows, name="jobs-rows"),
    path("jobs/<int:pk>/", job_views.job_page, name="job"),
    path("jobs/<int:pk>/<str:action>", job_views.job_action, name="job-action"),
    path("api/jobs/<int:pk>/<str:action>", job_views.api_job_action, name="api-job-action"),
    path("api/status", job_views.status, name="api-status"),
    # alerts
    path("alerts/", alert_views.alerts_page, name="alerts"),
    path(
        "alerts/incidents/<int:pk>/<str:action>",
        alert_views.incident_action,
        name="incident-action",
    ),
    path("api/incidents", incident_api.incidents, name="api-incidents"),
    path(
        "api/incidents/<int:pk>/<str:action>",
        incident_api.incident_action,
        name="api-incident-action",
    ),
    path("alerts/channels/<int:pk>/test", alert_views.channel_test, name="channel-test"),
    path("alerts/deliveries/<int:pk>/retry", alert_views.delivery_retry, name="delivery-retry"),
    path("jobs/<int:pk>/alerts/", alert_views.job_alerts, name="job-alerts"),
    path("metrics", alert_views.metrics_view, name="metrics"),
]

# A database outage met outside a view (session or token lookup) is a 503, not a 500.
handler500 = "opsconsole.middleware.server_error"
