from django.apps import AppConfig


class OpsconsoleConfig(AppConfig):
    name = "opsconsole"
    verbose_name = "Console access"
    default_auto_field = "django.db.models.BigAutoField"
