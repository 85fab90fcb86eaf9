from django.apps import AppConfig


class MonitorAppConfig(AppConfig):
    name = "monitor_app"
    verbose_name = "Monitor"
    default_auto_field = "django.db.models.BigAutoField"
