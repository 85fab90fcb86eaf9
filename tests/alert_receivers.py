"""Real receivers on loopback for alert delivery tests: an HTTP webhook (answers
json://, Mattermost/Slack-style incoming webhooks, and anything else that POSTs)
and an SMTP server (aiosmtpd) for mailto://."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@dataclass
class Received:
    path: str
    headers: dict
    body: bytes

    @property
    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """Answers each POST with the next status in `script` (then 200), and keeps them all."""

    server: ThreadingHTTPServer
    script: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    answered: list[int] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def accepted(self) -> list[Received]:
        return [r for r, status in zip(self.received, self.answered, strict=True) if status < 300]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.accepted) >= count:
                return self.accepted
            time.sleep(0.05)
        raise AssertionError(f"wanted {count} accepted posts, got {len(self.accepted)}")


def start_webhook(script: list[int] | None = None) -> WebhookReceiver:
    receiver: WebhookReceiver

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            status = receiver.script.pop(0) if receiver.script else 200
            receiver.received.append(Received(self.path, dict(self.headers), body))
            receiver.answered.append(status)
            payload = b"ok" if status < 300 else b"receiver says no"
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver = WebhookReceiver(server, list(script or []))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return receiver


@pytest.fixture
def webhook():
    receivers: list[WebhookReceiver] = []

    def make(script: list[int] | None = None) -> WebhookReceiver:
        receiver = start_webhook(script)
        receivers.append(receiver)
        return receiver

    yield make
    for receiver in receivers:
        receiver.server.shutdown()
        receiver.server.server_close()


class MailBox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd's handler hook
        message = message_from_bytes(envelope.content, policy=default_policy)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_server():
    """A real SMTP server on loopback; yields (port, mailbox)."""
    from aiosmtpd.controller import Controller

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mailbox = MailBox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield port, mailbox
    controller.stop()
