from django.urls import path

from jobs_app import views

urlpatterns = [
    path("jobs/", views.dashboard, name="jobs"),
    path("jobs/rows/", views.dashboard_rows, name="jobs-rows"),
    path("api/status", views.status, name="api-status"),
]
