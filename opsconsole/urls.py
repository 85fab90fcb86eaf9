from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from monitor_app import api as monitor_api
from monitor_app import views as monitor_views

urlpatterns = [
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/events", monitor_api.events, name="api-events"),
    path("api/hosts/report", monitor_api.hosts_report, name="api-hosts-report"),
    path("api/hosts", monitor_api.hosts, name="api-hosts"),
    path("api/hosts/actions/<int:action_id>", monitor_api.remote_action, name="api-remote-action"),
    path("api/sessions/<str:session_id>/stop", monitor_api.session_stop, name="api-session-stop"),
    path("hosts/", monitor_views.hosts, name="hosts"),
    path("sessions/<uuid:session_id>/stop/", monitor_views.session_stop, name="session-stop"),
    path("", include("sessions_app.urls")),
    path("", include("jobs_app.urls")),
]
