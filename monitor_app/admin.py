from django.contrib import admin

from monitor_app.models import Event, HostSample


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    """The event stream, read-only: the monitor writes it, nobody edits history."""

    list_display = ("at", "host", "kind", "script_tag", "status", "message")
    list_filter = ("kind", "host", "status")
    search_fields = ("message", "script_tag", "=session_id")
    date_hierarchy = "at"
    list_select_related = ("job",)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(HostSample)
class HostSampleAdmin(admin.ModelAdmin):
    list_display = ("host", "taken_at", "seq", "sample_ms", "interval_seconds", "monitor_pid")
    exclude = ("api_document", "state_document")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
