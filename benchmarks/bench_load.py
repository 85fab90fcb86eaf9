"""Load: N live runs, C clients back to back on the live API and the live fragment, through
`opsconsole serve` (gunicorn) on loopback, for a bounded time. Prints errors, requests
per second and latency percentiles per endpoint.

Real processes stand in for the runs (a wrapper and an agent with a tool child each, and
a valid sidecar: tests/live_helpers.py). Loopback only; everything started is stopped.

    .venv/bin/python benchmarks/bench_load.py                      # 100 runs, 50 clients, 60 s
    .venv/bin/python benchmarks/bench_load.py --runs 10 --clients 10 --seconds 5
"""

from __future__ import annotations

import argparse
import http.client
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from serve_helpers import PASSWORD, percentile, serve  # noqa: E402

from tests.conftest import State  # noqa: E402
from tests.live_helpers import start_fake_run  # noqa: E402
from wrapper.formats import StatePaths  # noqa: E402

CSRF_RE = re.compile(rb'name="csrfmiddlewaretoken" value="([^"]+)"')


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)


def session_cookie(host: str, port: int) -> str:
    """Log in as a person does (form + CSRF); the `sessionid` cookie for the pages."""
    connection = http.client.HTTPConnection(host, port, timeout=30)
    connection.request("GET", "/login/")
    form = connection.getresponse()
    body = form.read()
    csrf = re.search(r"csrftoken=([^;]+)", form.getheader("Set-Cookie", "")).group(1)
    token = CSRF_RE.search(body).group(1).decode()
    connection.request(
        "POST",
        "/login/",
        body=f"csrfmiddlewaretoken={token}&username=ops&password={PASSWORD}",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": f"csrftoken={csrf}",
            "Referer": f"http://{host}:{port}/login/",
        },
    )
    response = connection.getresponse()
    response.read()
    cookie = re.search(r"sessionid=([^;]+)", response.getheader("Set-Cookie", "") or "")
    connection.close()
    if response.status != 302 or cookie is None:
        raise RuntimeError(f"login failed: {response.status}")
    return f"sessionid={cookie.group(1)}"


def client(host, port, path, headers, deadline, tally: Tally, expect: bytes) -> None:
    """Back to back on one keep-alive connection (a new one after an error)."""
    connection = None
    while time.monotonic() < deadline:
        if connection is None:
            connection = http.client.HTTPConnection(host, port, timeout=30)
        started = time.monotonic()
        try:
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            body = response.read()
            elapsed = time.monotonic() - started
            ok = response.status == 200 and expect in body
            with tally.lock:
                tally.latencies.append(elapsed)
                if not ok:
                    tally.errors[f"HTTP {response.status}"] += 1
        except (OSError, http.client.HTTPException) as exc:
            with tally.lock:
                tally.errors[type(exc).__name__] += 1
            connection.close()
            connection = None
    if connection is not None:
        connection.close()


def load(served, path: str, headers: dict, clients: int, seconds: float, expect: bytes):
    tally = Tally()
    deadline = time.monotonic() + seconds
    threads = [
        threading.Thread(
            target=client,
            args=(served.host, served.port, path, headers, deadline, tally, expect),
            daemon=True,
        )
        for _ in range(clients)
    ]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 60)
    return tally, time.monotonic() - began


def row(name: str, tally: Tally, elapsed: float) -> str:
    count = len(tally.latencies)
    errors = sum(tally.errors.values())
    detail = f" ({dict(tally.errors)})" if errors else ""
    return (
        f"| {name} | {count} | {errors}{detail} | {count / elapsed:.1f} | "
        f"{percentile(tally.latencies, 0.5) * 1000:.1f} | "
        f"{percentile(tally.latencies, 0.99) * 1000:.1f} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=100, help="live runs (default 100)")
    parser.add_argument("--clients", type=int, default=50, help="clients (default 50)")
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="per endpoint (default 60, at most 300)"
    )
    parser.add_argument("--threads", type=int, default=8, help="gunicorn threads (default 8)")
    args = parser.parse_args()
    seconds = min(max(args.seconds, 1.0), 300.0)

    work = Path(tempfile.mkdtemp(prefix="opsconsole-load-"))
    runs = []
    try:
        with serve(threads=args.threads, work=work) as served:
            home = work / "home"
            workdir = work / "agents"
            workdir.mkdir(exist_ok=True)
            state = State(
                paths=StatePaths(home=home, active=home / "active"),
                config_dir=work / "claude",
                workdir=workdir,
                env=served.env,
            )
            for index in range(args.runs):
                runs.append(start_fake_run(state, tag=f"load-{index % 20}"))
            bearer = {"Authorization": f"Bearer {served.token}"}
            cookie = {"Cookie": session_cookie(served.host, served.port)}
            # Wait until the console lists every run.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                status, body = served.get("/api/claude-active")
                if status == 200 and body.count(b'"session_id"') >= args.runs:
                    break
                time.sleep(0.5)
            print(
                f"{args.runs} live runs, {args.clients} clients back to back, "
                f"{seconds:g} s per endpoint, gunicorn 1 worker x {args.threads} threads"
            )
            print("| endpoint | requests | errors | req/s | p50 ms | p99 ms |")
            print("|---|---|---|---|---|---|")
            for name, path, headers, expect in (
                ("GET /api/claude-active", "/api/claude-active", bearer, b'"sessions"'),
                ("GET /live/rows/", "/live/rows/", cookie, b"load-"),
            ):
                tally, elapsed = load(served, path, headers, args.clients, seconds, expect)
                print(row(name, tally, elapsed), flush=True)
    finally:
        for run in runs:
            run.kill_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
