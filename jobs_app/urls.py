from django.urls import path

from jobs_app import views

urlpatterns = [
    path("jobs/", views.dashboard, name="jobs"),
    path("jobs/rows/", views.dashboard_rows, name="jobs-rows"),
    path("jobs/<int:pk>/", views.job_page, name="job"),
    path("jobs/<int:pk>/<str:action>", views.job_action, name="job-action"),
    path("api/jobs/<int:pk>/<str:action>", views.api_job_action, name="api-job-action"),
    path("api/status", views.status, name="api-status"),
]
