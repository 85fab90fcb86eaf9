"""Issue 21, the web-facing findings: channel URL secrets shown only to superusers, login
throttling per account and address together, and slow clients that cannot starve the
server's threads."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

from alerts_app.models import Channel
from jobs_app.models import AuditEntry

pytest_plugins = ["tests.alert_receivers"]

PASSWORD = "correct horse battery staple"
PATH_SECRET = "hooks-Xk2p9PATHsecret"
QUERY_SECRET = "Qv7QUERYsecretValue"
TOPIC_SECRET = "opsTopicSECRET42"
USER_SECRET = "pw-Zr8USERsecret"


def login(client, username: str, password: str, address: str):
    return client.post("/login/", {"username": username, "password": password}, REMOTE_ADDR=address)


@pytest.mark.django_db
def test_finding7_one_address_cannot_lock_out_everyone(client, settings):
    """Five wrong passwords for A from X lock A from X, not everyone behind X (a NAT, an
    office, a proxy) and not A from elsewhere."""
    users = get_user_model().objects
    users.create_user("alice", password=PASSWORD)
    users.create_user("bob", password=PASSWORD)
    office = "10.0.0.9"
    for _ in range(settings.AXES_FAILURE_LIMIT):
        login(client, "alice", "guess", office)
    assert login(client, "alice", PASSWORD, office).status_code == 429
    assert login(client, "bob", PASSWORD, office).status_code == 302
    client.logout()
    assert login(client, "alice", PASSWORD, "10.0.0.10").status_code == 302


def secrets_in(text: str) -> list[str]:
    return [s for s in (PATH_SECRET, QUERY_SECRET, TOPIC_SECRET, USER_SECRET) if s in text]


@pytest.mark.django_db
def test_finding7_channel_url_secrets_shown_only_to_superusers(client, webhook, console_state):
    """A json:// path, its query, its user:password and an ntfy topic are secrets: a staff
    user who is not a superuser sees scheme and host only, on /alerts/, in the admin, and
    the 'Send test' audit row never holds them at all."""
    receiver = webhook()
    hook = Channel(
        name="team hook",
        url=f"json://ops:{USER_SECRET}@127.0.0.1:{receiver.port}/{PATH_SECRET}"
        f"?token={QUERY_SECRET}",
    )
    hook.save()
    Channel(name="phone", url=f"ntfy://{TOPIC_SECRET}").save()
    origin = f"json://127.0.0.1:{receiver.port}/…"

    staff = get_user_model().objects.create_user("staff", password=PASSWORD, is_staff=True)
    staff.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="alerts_app", codename__in=["view_channel", "change_channel"]
        )
    )
    client.force_login(staff)
    page = client.get("/alerts/").content.decode()
    assert origin in page and "ntfys://…" in page
    assert secrets_in(page) == []
    changelist = client.get("/admin/alerts_app/channel/")
    assert changelist.status_code == 200
    assert origin in changelist.content.decode()
    assert secrets_in(changelist.content.decode()) == []
    form = client.get(f"/admin/alerts_app/channel/{hook.pk}/change/")
    assert form.status_code == 200
    assert origin in form.content.decode()
    assert secrets_in(form.content.decode()) == []

    sent = client.post(f"/alerts/channels/{hook.pk}/test", follow=True).content.decode()
    assert "Test message delivered to team hook" in sent and secrets_in(sent) == []
    [post] = receiver.accepted
    assert PATH_SECRET in post.path  # the secret reaches the receiver, where it belongs
    audit = AuditEntry.objects.get(action="alert_test")
    assert audit.target == f"channel team hook ({origin})"
    assert secrets_in(f"{audit.target} {audit.output} {audit.detail}") == []

    # A superuser still sees the path and the topic (Apprise hides the password).
    client.force_login(get_user_model().objects.create_superuser("root", password=PASSWORD))
    for path in ("/alerts/", "/admin/alerts_app/channel/"):
        shown = client.get(path).content.decode()
        assert PATH_SECRET in shown and TOPIC_SECRET in shown, path
        assert USER_SECRET not in shown, path
