from django.apps import AppConfig


class JobsAppConfig(AppConfig):
    name = "jobs_app"
    verbose_name = "Scheduled jobs"
    default_auto_field = "django.db.models.BigAutoField"
