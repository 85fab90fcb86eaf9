from django import forms
from django.contrib import admin, messages

from monitor_app.models import (
    Event,
    HostSample,
    HostToken,
    RefusedItem,
    RemoteAction,
    own_host_problem,
)


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


class HostTokenForm(forms.ModelForm):
    class Meta:
        model = HostToken
        fields = ("host",)

    def clean_host(self):
        host = self.cleaned_data["host"].strip()
        problem = own_host_problem(host)
        if problem:
            raise forms.ValidationError(problem)
        return host


@admin.register(HostToken)
class HostTokenAdmin(admin.ModelAdmin):
    """Host tokens: add one (the token is shown once, here), revoke with the action."""

    form = HostTokenForm

    list_display = ("host", "key_prefix", "created_at", "last_used_at", "revoked_at")
    list_filter = ("host",)
    fields = ("host",)
    actions = ["revoke"]

    def has_change_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        row, plain = HostToken.issue(form.cleaned_data["host"])
        obj.pk = row.pk
        messages.warning(
            request,
            f"Host token for {row.host} (shown once, copy it now): {plain}  "
            f"— on the host: opsconsole monitor --report-to URL --token {plain}",
        )

    @admin.action(description="Revoke the selected host tokens")
    def revoke(self, request, queryset):
        for row in queryset.filter(revoked_at=None):
            row.revoke()


@admin.register(RemoteAction)
class RemoteActionAdmin(admin.ModelAdmin):
    list_display = ("requested_at", "host", "kind", "session_id", "requested_by", "state")
    list_filter = ("state", "kind", "host")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(RefusedItem)
class RefusedItemAdmin(admin.ModelAdmin):
    """What the console did not record from hosts' reports, and why (read only)."""

    list_display = ("last_at", "host", "kind", "key", "reason", "count")
    list_filter = ("host", "kind")
    search_fields = ("host", "key", "reason")
    readonly_fields = ("host", "kind", "key", "reason", "item", "first_at", "last_at", "count")

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
