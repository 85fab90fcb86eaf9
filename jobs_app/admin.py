from django.contrib import admin

from jobs_app.models import COLLECTED_FIELDS, OUTPUT_CHECK_FIELDS, AuditEntry, Job


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
    readonly_fields = (
        "scheduler",
        "label",
        "host",
        *COLLECTED_FIELDS,
        "overlap_policy",
        "caught_up_through",
    )
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
        (
            "Output checks",
            {
                "fields": tuple(OUTPUT_CHECK_FIELDS),
                "description": "All optional. Judged on the run's host when it ends: a run "
                "that exited 0 and fails one is 'check failed' (and alerted as a failure).",
            },
        ),
        (
            "Overlap and catch-up",
            {
                "fields": (
                    "overlap_policy",
                    "catchup_policy",
                    "catchup_window_hours",
                    "caught_up_through",
                ),
                "description": "The overlap policy is the --overlap flag the job's command "
                "gives opsconsole-run (allow without one); change it in the scheduler.",
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
