from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from monitor_app import api as monitor_api

urlpatterns = [
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/events", monitor_api.events, name="api-events"),
    path("", include("sessions_app.urls")),
    path("", include("jobs_app.urls")),
]
