from django.urls import path

from alerts_app import views

urlpatterns = [
    path("alerts/", views.alerts_page, name="alerts"),
    path("alerts/channels/<int:pk>/test", views.channel_test, name="channel-test"),
    path("alerts/deliveries/<int:pk>/retry", views.delivery_retry, name="delivery-retry"),
    path("jobs/<int:pk>/alerts/", views.job_alerts, name="job-alerts"),
    path("metrics", views.metrics_view, name="metrics"),
]
