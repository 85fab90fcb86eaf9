"""Many reporting hosts' held polls on one real console (`opsconsole serve`), as raw
sockets that one thread watches: for tests/test_fast_stop.py and
benchmarks/bench_held_polls.py. Each poll is what a host's fleet.action_poll sends."""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from tests.console_processes import Console
from tests.server_fixtures import free_port

POLL_PATH = "/api/hosts/actions/wait"
# A host's own reading bound on a poll's answer (ample for a status line and a body).
ANSWER_BYTES = 64 * 1024


def hosts_with_tokens(console: Console, count: int) -> dict[str, str]:
    """`count` hosts (p0, p1, ...) with a host token each: {host: token}."""
    out = console.manage(
        "shell",
        "--no-imports",
        "-c",
        "from monitor_app.models import HostToken\n"
        f"for n in range({count}):\n"
        "    print(f'p{n}', HostToken.issue(f'p{n}')[1])",
    )
    return dict(line.split() for line in out.splitlines() if line.startswith("p"))


def live_runs_on(console: Console, hosts: list[str]) -> dict[str, str]:
    """A live run on record for each of `hosts`, each host heard from just now with an
    hour's heartbeat (else the console's fleet round expires a request for a host that
    never reported before its poll is woken): {host: its session id}."""
    runs = {host: str(uuid.uuid4()) for host in hosts}
    console.manage(
        "shell",
        "--no-imports",
        "-c",
        "from django.utils import timezone; from sessions_app.models import Session\n"
        "from monitor_app.models import HostSample\n"
        "now = timezone.now()\n"
        f"for host, session_id in {runs!r}.items():\n"
        "    Session.objects.create(session_id=session_id, host=host, script_tag='parked', "
        "status='live', started_at=now)\n"
        "    HostSample.objects.create(host=host, seq=1, taken_at=now, received_at=now, "
        "interval_seconds=2, sample_ms=1, etag='x', api_document='{}', state_document='{}', "
        "reported=True, heartbeat_seconds=3600)",
    )
    return runs


def tokens_checked(console: Console) -> int:
    """How many host tokens the console has checked (a poll it has taken in)."""
    checked = (
        "from monitor_app.models import HostToken; "
        "print(HostToken.objects.exclude(last_used_at=None).count())"
    )
    return int(console.manage("shell", "--no-imports", "-c", checked))


class Polls:
    """One poll per host held open on `console`, `wait` seconds each."""

    def __init__(self, console: Console, tokens: dict[str, str], wait: float) -> None:
        self.sockets: dict[str, socket.socket] = {}
        for host, token in tokens.items():
            sock = socket.create_connection(("127.0.0.1", console.port), timeout=10)
            sock.sendall(
                f"GET {POLL_PATH}?wait={wait:g} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {token}\r\nConnection: close\r\n\r\n".encode()
            )
            self.sockets[host] = sock

    def answered(self) -> list[str]:
        """The hosts whose poll has an answer waiting to be read (not blocking)."""
        with selectors.DefaultSelector() as selector:
            for host, sock in self.sockets.items():
                selector.register(sock, selectors.EVENT_READ, host)
            return [key.data for key, _ in selector.select(timeout=0)]

    def answer(self, host: str, timeout: float) -> tuple[int, dict]:
        """(status, JSON body) of `host`'s poll, read to the end (the console closes)."""
        sock = self.sockets.pop(host)
        sock.settimeout(timeout)
        data = b""
        with sock:
            while chunk := sock.recv(ANSWER_BYTES):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(body)

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()


def stop_and_time(console: Console, polls: Polls, host: str, session_id: str) -> float:
    """Seconds from asking to stop `session_id` (on `host`) to its poll's answer with it."""
    began = time.monotonic()
    status, _, body = console.request(f"/api/sessions/{session_id}/stop", b"")
    assert status == 202, (status, body[:300])
    answer_status, answer = polls.answer(host, timeout=30)
    took = time.monotonic() - began
    assert answer_status == 200, (answer_status, answer)
    assert [a["session_id"] for a in answer["actions"]] == [session_id], answer
    return took


def median_ms(console: Console, path: str, count: int) -> float:
    """The median time of `count` answers to `path` (each on a new connection), in ms."""
    times = []
    for _ in range(count):
        began = time.monotonic()
        console.json(path)
        times.append(time.monotonic() - began)
    return sorted(times)[len(times) // 2] * 1000


@contextlib.contextmanager
def console_serving(
    root: Path, env: dict, serve_args: tuple[str, ...] = (), **settings: str
) -> Iterator[Console]:
    """A console (`opsconsole serve`, its own SQLite and home) answering, with an API
    user 'ops' whose token it uses; `env` without OPSCONSOLE_ settings is its base,
    `settings` (OPSCONSOLE_...) are added."""
    base = {k: v for k, v in env.items() if not k.startswith(("OPSCONSOLE_", "FAKE_"))}
    base.pop("DATABASE_URL", None)
    root.mkdir(parents=True, exist_ok=True)
    console = Console(
        "parked",
        dict(
            base,
            DATABASE_URL=f"sqlite:///{root / 'console.sqlite3'}",
            OPSCONSOLE_HOME=str(root / "home"),
            OPSCONSOLE_HOST_NAME="console-p",
            CLAUDE_CONFIG_DIR=str(root / "claude"),
            OPSCONSOLE_CLAUDE_CONFIG_DIRS=str(root / "claude"),
            OPSCONSOLE_SCHEDULERS="cron",
            OPSCONSOLE_TELEMETRY_RECEIVER="0",
            DJANGO_SETTINGS_MODULE="opsconsole.settings",
            **settings,
        ),
        free_port(),
        root / "console.log",
    )
    console.set_up()
    console.start(*serve_args)
    try:
        console.wait_answering()
        yield console
    finally:
        console.kill()
