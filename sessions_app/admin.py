from django.contrib import admin

from sessions_app.models import Session


@admin.register(Session)
class SessionAdmin(admin.ModelAdmin):
    list_display = (
        "started_at",
        "script_tag",
        "status",
        "attempt",
        "exit_code",
        "cost_usd",
        "host",
    )
    list_filter = ("status", "platform", "host")
    search_fields = ("session_id", "script_tag")
    date_hierarchy = "started_at"
    readonly_fields = [f.name for f in Session._meta.fields]
    show_full_result_count = False  # counting a million rows on every page view is slow

    def has_add_permission(self, request):
        return False
