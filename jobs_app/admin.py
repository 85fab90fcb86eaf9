from django.contrib import admin

from jobs_app.models import COLLECTED_FIELDS, AuditEntry, Job


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = (
        "label",
        "scheduler",
        "host",
        "platform",
        "schedule_text",
        "state",
        "last_exit_status",
        "enabled",
        "present",
    )
    list_filter = ("scheduler", "platform", "host", "enabled", "present")
    search_fields = ("label", "description", "owner", "command")
    # Collectors own these; editing them here would be overwritten at the next collection.
    readonly_fields = ("scheduler", "label", "host", *COLLECTED_FIELDS)
    fieldsets = (
        (None, {"fields": ("label", "scheduler", "host")}),
        (
            "Yours to edit",
            {
                "fields": (
                    "description",
                    "owner",
                    "platform",
                    "enabled",
                    "max_runtime_minutes",
                    "notes",
                )
            },
        ),
        ("Collected from the scheduler", {"fields": COLLECTED_FIELDS, "classes": ("collapse",)}),
    )


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    list_display = ("at", "actor", "action", "job", "target", "ok", "exit_code")
    list_filter = ("action", "ok", "actor")
    search_fields = ("target", "actor", "output")
    readonly_fields = [f.name for f in AuditEntry._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False  # the record of what was done is not edited afterwards
