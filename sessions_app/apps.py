from django.apps import AppConfig
from django.db import connections
from django.db.models.signals import post_migrate


class SessionsAppConfig(AppConfig):
    name = "sessions_app"
    verbose_name = "Agent sessions"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        post_migrate.connect(keep_rollup_triggers, sender=self)


def keep_rollup_triggers(sender, using="default", **kwargs) -> None:
    """SQLite remakes a table to alter it, and its triggers go with it: after every
    migrate, put back the rollups' triggers that are missing and sum the rollups again."""
    from sessions_app.rollups import ensure_triggers  # it names the models

    ensure_triggers(connections[using])
