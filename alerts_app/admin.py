from django import forms
from django.contrib import admin

from alerts_app.channel_urls import instantiate
from alerts_app.models import Alert, AlertPolicy, Channel, Delivery, Incident, JobAlertSettings
from jobs_app.admin import JobAdmin
from jobs_app.models import Job


class ChannelForm(forms.ModelForm):
    # Write-only: the stored URL holds secrets and is never rendered back into the page.
    url = forms.CharField(
        label="Apprise URL",
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"size": 80}),
        help_text="An Apprise URL (slack://…, mailto://…, json://…, ntfy://…). "
        "Leave empty to keep the saved one; it is never shown again.",
    )

    class Meta:
        model = Channel
        fields = ("name", "url", "enabled", "is_default")
        labels = {"is_default": "Default channel"}
        help_texts = {
            "name": "How alerts and the Alerts page name this channel",
            "enabled": "Untick to stop sending here without deleting the channel",
            "is_default": "Receives every alert (a job can opt out of the default channels)",
        }

    def clean_url(self):
        url = (self.cleaned_data.get("url") or "").strip()
        if not url:
            if self.instance.pk:
                return self.instance.url
            raise forms.ValidationError("An Apprise URL is required.")
        if instantiate(url) is None:
            raise forms.ValidationError("Apprise does not understand this URL.")
        return url


@admin.register(Channel)
class ChannelAdmin(admin.ModelAdmin):
    form = ChannelForm
    list_display = ("name", "saved_url", "enabled", "is_default", "from_environment", "last_test")
    list_filter = ("enabled", "is_default", "from_environment")
    readonly_fields = ("saved_url", "from_environment", "last_test")
    search_fields = ("name",)

    @admin.display(description="saved URL (secrets hidden)")
    def saved_url(self, obj):
        return obj.redacted or "none saved yet"

    # The saved URL (redacted) still holds json:// paths and ntfy topics: superusers only.
    def get_list_display(self, request):
        return self._url_column(request, super().get_list_display(request))

    def get_readonly_fields(self, request, obj=None):
        return self._url_column(request, super().get_readonly_fields(request, obj))

    @staticmethod
    def _url_column(request, names):
        if request.user.is_superuser:
            return names
        return tuple("address" if name == "saved_url" else name for name in names)

    @admin.display(description="URL (scheme and host)")
    def address(self, obj):
        return obj.address

    @admin.display(description="last test")
    def last_test(self, obj):
        if obj.last_test_at is None:
            return "never"
        return f"{'ok' if obj.last_test_ok else 'failed'} at {obj.last_test_at:%Y-%m-%d %H:%M}"


@admin.register(AlertPolicy)
class AlertPolicyAdmin(admin.ModelAdmin):
    list_display = ("__str__", "muted_until", "quiet_hours_start", "quiet_hours_end")

    def has_add_permission(self, request):
        return not AlertPolicy.objects.exists()


RULE_FIELDSETS = (
    ("Routing", {"fields": ("use_default_channels", "channels", "muted_until")}),
    (
        "Rules",
        {
            "fields": (
                ("alert_on_failure", "consecutive_failures"),
                "alert_on_false_success",
                "alert_on_late",
                ("alert_on_stall", "stall_minutes"),
                ("alert_on_runtime", "runtime_multiple", "runtime_floor_seconds"),
                ("cost_per_run_usd", "cost_per_day_usd", "stop_on_cost_cap"),
                "alert_on_leftovers",
            )
        },
    ),
)


@admin.register(JobAlertSettings)
class JobAlertSettingsAdmin(admin.ModelAdmin):
    list_display = (
        "job",
        "consecutive_failures",
        "stall_minutes",
        "runtime_multiple",
        "cost_per_run_usd",
        "cost_per_day_usd",
        "stop_on_cost_cap",
        "muted_until",
    )
    filter_horizontal = ("channels",)
    fieldsets = ((None, {"fields": ("job",)}), *RULE_FIELDSETS)


class JobAlertSettingsInline(admin.StackedInline):
    model = JobAlertSettings
    can_delete = False
    verbose_name_plural = "alerts"
    filter_horizontal = ("channels",)
    fieldsets = RULE_FIELDSETS


# The job's alert settings sit on its own admin page.
admin.site.unregister(Job)


@admin.register(Job)
class JobWithAlertsAdmin(JobAdmin):
    inlines = [*JobAdmin.inlines, JobAlertSettingsInline]


class DeliveryInline(admin.TabularInline):
    model = Delivery
    extra = 0
    can_delete = False
    fields = ("channel", "attempts", "next_try_at", "delivered_at", "given_up_at", "last_error")
    readonly_fields = fields


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    list_display = ("created_at", "rule", "phase", "job", "host", "title", "suppressed")
    list_filter = ("rule", "phase", "host")
    search_fields = ("title", "body")
    readonly_fields = [f.name for f in Alert._meta.fields]
    inlines = [DeliveryInline]

    def has_add_permission(self, request):
        return False


@admin.register(Incident)
class IncidentAdmin(admin.ModelAdmin):
    list_display = (
        "opened_at",
        "rule",
        "key",
        "job",
        "acknowledged_by",
        "resolved_at",
        "resolved_by",
        "notified",
    )
    list_filter = ("rule", "notified")
    search_fields = ("key", "summary")
    readonly_fields = [f.name for f in Incident._meta.fields]

    def has_add_permission(self, request):
        return False
