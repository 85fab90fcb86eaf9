from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_not_required
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

from monitor_app import api as monitor_api

# Browsers ask for /favicon.ico on their own (API responses, downloads): no 404 for it.
favicon = login_not_required(
    RedirectView.as_view(url=static("opsconsole/favicon.ico"), permanent=True)
)

urlpatterns = [
    path("favicon.ico", favicon, name="favicon"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/events", monitor_api.events, name="api-events"),
    path("", include("sessions_app.urls")),
    path("", include("jobs_app.urls")),
]
