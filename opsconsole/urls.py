from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_not_required
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

from monitor_app import api as monitor_api
from monitor_app import views as monitor_views
from opsconsole.auth import ThrottledLoginView

# Browsers ask for /favicon.ico on their own (API responses, downloads): no 404 for it.
favicon = login_not_required(
    RedirectView.as_view(url=static("opsconsole/favicon.ico"), permanent=True)
)

urlpatterns = [
    path("favicon.ico", favicon, name="favicon"),
    path("login/", ThrottledLoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/events", monitor_api.events, name="api-events"),
    path("api/hosts/report", monitor_api.hosts_report, name="api-hosts-report"),
    path("api/hosts", monitor_api.hosts, name="api-hosts"),
    path("api/hosts/actions/<int:action_id>", monitor_api.remote_action, name="api-remote-action"),
    path("api/sessions/<str:session_id>/stop", monitor_api.session_stop, name="api-session-stop"),
    path("hosts/", monitor_views.hosts, name="hosts"),
    path("hosts/requests/", monitor_views.remote_requests, name="remote-requests"),
    path("sessions/<uuid:session_id>/stop/", monitor_views.session_stop, name="session-stop"),
    path("", include("sessions_app.urls")),
    path("", include("jobs_app.urls")),
    path("", include("alerts_app.urls")),
]

# A database outage met outside a view (session or token lookup) is a 503, not a 500.
handler500 = "opsconsole.middleware.server_error"
