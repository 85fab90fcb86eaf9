"""'Send test' audit rows written before issue 21 name the channel's redacted URL, which
still held a json:// path or an ntfy topic: keep only its scheme and host, as new rows do."""

import re

from django.db import migrations

from alerts_app.channel_urls import shown_url

# What channel_test wrote: "channel <name> (<redacted URL>)".
OLD_TARGET = re.compile(r"^(channel .*) \((.*)\)$", re.DOTALL)


def forget_channel_secrets(apps, schema_editor):
    audit_entries = apps.get_model("jobs_app", "AuditEntry").objects
    for entry in audit_entries.filter(action="alert_test").only("pk", "target").iterator():
        match = OLD_TARGET.match(entry.target)
        if match:
            safe = f"{match[1]} ({shown_url(match[2], superuser=False)})"
            if safe != entry.target:
                audit_entries.filter(pk=entry.pk).update(target=safe)


class Migration(migrations.Migration):
    dependencies = [
        ("alerts_app", "0001_alerts_channels_rules_outbox"),
        ("jobs_app", "0003_job_kill_leftovers"),
    ]

    operations = [migrations.RunPython(forget_channel_secrets, migrations.RunPython.noop)]
