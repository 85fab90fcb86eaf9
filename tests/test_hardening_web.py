"""Issue 21, the web-facing findings: channel URL secrets shown only to superusers, login
throttling per account and address together, and slow clients that cannot starve the
server's threads."""

from __future__ import annotations

import contextlib
import importlib
import select
import socket
import threading
import time
import urllib.request

import pytest
from django.apps import apps
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

from alerts_app.channel_urls import scrub
from alerts_app.models import Channel
from jobs_app.models import AuditEntry
from opsconsole.web_worker import HEAD_SECONDS

pytest_plugins = ["tests.alert_receivers", "tests.server_fixtures"]

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


SLOW_CLIENTS = 200


class SlowClients:
    """`count` connections that send a request head one byte at a time and never finish
    it (slowloris), from one thread, for at most `seconds`. A pipelining client first
    sends a whole request and the start of the next in one write (`opening`), reads the
    answer to the first, then trickles the rest of the second."""

    HEAD = b"GET /login/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "

    def __init__(
        self, port: int, count: int = SLOW_CLIENTS, seconds: float = 90.0, opening: bytes = b""
    ):
        # No later than the server starts any head's deadline (HEAD_SECONDS).
        self.opened = time.monotonic()
        self.sockets = [socket.create_connection(("127.0.0.1", port), 20) for _ in range(count)]
        self.trickled = b"a" if opening else self.HEAD
        if opening:
            for sock in self.sockets:
                sock.sendall(opening)
            for sock in self.sockets:
                assert response_head(sock).startswith(b"HTTP/1.1 200")
        for sock in self.sockets:
            sock.setblocking(False)
        self.rounds = 0
        self.deadline = self.opened + seconds
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.trickle, daemon=True)
        self.thread.start()

    def trickle(self) -> None:
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            i = self.rounds
            byte = self.trickled[i : i + 1] or b"a"
            for sock in self.sockets:
                # A connection the server dropped is counted by still_open().
                with contextlib.suppress(OSError):
                    sock.send(byte)
            self.rounds += 1
            self.stop.wait(0.5)

    def wait_rounds(self, rounds: int) -> None:
        """Until every connection has had `rounds` bytes trickled (each one is begun)."""
        deadline = time.monotonic() + 30
        while self.rounds < rounds and time.monotonic() < deadline:
            time.sleep(0.1)
        assert self.rounds >= rounds

    def still_open(self) -> int:
        """Connections the server has not closed (a closed one reads as EOF)."""
        readable, _, _ = select.select(self.sockets, [], [], 0)
        return len(self.sockets) - len(readable)

    def assert_open_while(self, request) -> None:
        """`request()` is answered while the slow connections are open: they were before
        it, and any closed after it was closed by the head deadline, not earlier (on a
        loaded machine the answer can rightly come after that deadline)."""
        assert self.still_open() >= len(self.sockets) * 0.9
        request()
        held = time.monotonic() - self.opened
        assert self.still_open() >= len(self.sockets) * 0.9 or held >= HEAD_SECONDS

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        for sock in self.sockets:
            sock.close()


def login_page_answers(console) -> None:
    with urllib.request.urlopen(console.url + "/login/", timeout=20) as response:
        assert response.status == 200
        assert b"password" in response.read()


def response_head(sock: socket.socket) -> bytes:
    """One response read off a connection, whole (its Content-Length says how long)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head


SLACK_TOKENS = ("T1AbCdEfGh", "B2IjKlMnOp", "Zr8SLACKtokenC3")


@pytest.mark.parametrize(
    ("url", "error", "secrets"),
    [
        (
            f"ntfy://{TOPIC_SECRET}",
            f"Failed to send to topic {TOPIC_SECRET}: 429",
            [TOPIC_SECRET],
        ),
        (
            "slack://{}/{}/{}".format(*SLACK_TOKENS),
            "Slack rejected {} (/{}/{})".format(*SLACK_TOKENS),
            list(SLACK_TOKENS),
        ),
    ],
)
def test_finding7_delivery_errors_lose_a_host_that_is_a_secret(url, error, secrets):
    """An ntfy topic or a Slack token sits where a host would: shown_url hides it, so the
    error kept on a Delivery or a Channel (shown to every user on /alerts/) must too,
    whatever its case (urlsplit lower-cases hostnames)."""
    scrubbed = scrub(error, url)
    assert [s for s in secrets if s in scrubbed or s.lower() in scrubbed] == [], scrubbed
    assert scrubbed.startswith(error.split()[0])


def test_finding7_delivery_errors_keep_a_network_host():
    url = f"json://user:{USER_SECRET}@hooks.Example.com:8443/{PATH_SECRET}"
    scrubbed = scrub(f"Timeout to hooks.example.com:8443 for {PATH_SECRET}", url)
    assert scrubbed == "Timeout to hooks.example.com:8443 for …"


def test_finding7_slow_clients_cannot_starve_the_workers(console_without_monitor):
    """200 connections sending their headers a byte at a time held every thread of
    `serve` (gthread reads a head in a thread): /login/ did not answer. Now the event
    loop gathers heads and only whole requests reach a thread."""
    console = console_without_monitor
    port = int(console.url.rsplit(":", 1)[1])
    slow = SlowClients(port)
    try:
        # Every connection has begun its head (the first bytes make gthread hand each
        # one to a thread) before the login page is asked for.
        slow.wait_rounds(4)
        slow.assert_open_while(lambda: login_page_answers(console))
        # A head that arrives in pieces, on a kept-alive connection, is still served; one
        # larger than any real request's is refused.
        with socket.create_connection(("127.0.0.1", port), 20) as sock:
            head = b"GET /login/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            for _ in range(2):
                sock.sendall(head)
                time.sleep(0.2)  # the rest comes later, as over a slow link
                sock.sendall(b"\r\n")
                assert response_head(sock).startswith(b"HTTP/1.1 200")
        # The refusal reaches a client still sending (a small send buffer keeps it
        # sending): closing on its unread bytes would reset the connection instead.
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            sock.settimeout(20)
            sock.connect(("127.0.0.1", port))
            sock.sendall(head + b"X-Big: " + b"a" * 1_000_000 + b"\r\n\r\n")
            assert response_head(sock).startswith(b"HTTP/1.1 431")
    finally:
        slow.close()


PIPELINING_CLIENTS = 60  # more than the threads of `serve` (2 workers x 8 threads)


def test_finding7_pipelined_slow_heads_cannot_starve_the_workers(console_without_monitor):
    """A client that sends a whole request and the start of the next in one write, then
    the rest a byte at a time: gthread hands a request already read behind the previous
    one straight to a thread, which then waited for its head forever. Its head is
    gathered by the event loop too, so /login/ still answers."""
    console = console_without_monitor
    port = int(console.url.rsplit(":", 1)[1])
    request = b"GET /login/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    slow = SlowClients(
        port, PIPELINING_CLIENTS, opening=request + b"GET /login/ HTTP/1.1\r\nHost: x\r\nX-a: "
    )
    try:
        slow.wait_rounds(2)
        slow.assert_open_while(lambda: login_page_answers(console))
    finally:
        slow.close()


@pytest.mark.django_db
def test_finding7_send_test_audit_rows_written_before_lose_their_secrets():
    """The data migration rewrites what channel_test wrote before: scheme and host stay."""
    forget = importlib.import_module(
        "alerts_app.migrations.0002_audit_rows_without_channel_secrets"
    ).forget_channel_secrets
    old = AuditEntry.objects.create(
        actor="ops",
        action="alert_test",
        target=f"channel team (hook) (json://127.0.0.1:9/{PATH_SECRET}?method=POST)",
        ok=True,
    )
    other = AuditEntry.objects.create(actor="ops", action="stop", target=PATH_SECRET, ok=True)
    forget(apps, None)
    old.refresh_from_db()
    other.refresh_from_db()
    assert old.target == "channel team (hook) (json://127.0.0.1:9/…)"
    assert other.target == PATH_SECRET  # only Send test rows are touched
