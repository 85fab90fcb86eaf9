from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from opsconsole.auth import ThrottledLoginView

urlpatterns = [
    path("login/", ThrottledLoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("", include("sessions_app.urls")),
    path("", include("jobs_app.urls")),
]

# A database outage met outside a view (session or token lookup) is a 503, not a 500.
handler500 = "opsconsole.middleware.server_error"
