from django.contrib import admin, messages

from opsconsole.models import ApiToken

# The console's own name on every admin page, not Django's.
admin.site.site_header = "opsconsole"
admin.site.site_title = "opsconsole admin"
admin.site.index_title = "Settings and records"
admin.site.site_url = "/"


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = (
        "key_prefix",
        "name",
        "user",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
    )
    list_filter = ("revoked_at", "expires_at")
    fields = (
        "key_prefix",
        "name",
        "user",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
    )
    search_fields = ("key_prefix", "name", "user__username")
    readonly_fields = ("key_prefix", "user", "created_at", "last_used_at", "revoked_at")
    actions = ["revoke"]

    def has_add_permission(self, request):
        return False  # tokens are made by `manage.py create_api_token`, which shows them once

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request, queryset):
        count = queryset.filter(revoked_at__isnull=True).count()
        for token in queryset.filter(revoked_at__isnull=True):
            token.revoke()
        self.message_user(request, f"Revoked {count} token(s).", messages.SUCCESS)
