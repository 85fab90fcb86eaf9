"""Where a request to /api/claude-active spends its time: through the real WSGI app in
process (per middleware, the view, Django's handler around them; cProfile's top
functions) and through gunicorn's HeadFirstWorker over new connections, the console's
app beside a bare WSGI app that answers the same bytes (the server's own floor).

bench_monitor.py's setup: N live runs (real `sleep` processes, real sidecars and
transcripts), a real SQLite database, one monitor sample published to the local file
as `opsconsole monitor` does, a bearer token. Three request conditions:

- warm: the token remembered and the sample already read (a poller every 50 ms);
- new token check: the remembered token expired (a poller every few seconds);
- new token check and new sample: the worker re-reads the sample too (a poller at a
  tab's pace, every 2.1 s, meets a new sample almost every time).

    .venv/bin/python benchmarks/profile_active.py                # 200 runs
    .venv/bin/python benchmarks/profile_active.py --runs 10 --requests 500 --top 30
"""

from __future__ import annotations

import argparse
import cProfile
import http.client
import io
import os
import pstats
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent)]
from bench_monitor import REFERENCE, REPO, WORK, start_runs, stop_runs  # noqa: E402 (sets Django up)
from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.db import connection  # noqa: E402
from serve_helpers import free_port, wsgi_environ  # noqa: E402

from monitor_app import published  # noqa: E402
from monitor_app.monitor import Monitor  # noqa: E402
from opsconsole import auth  # noqa: E402
from opsconsole.models import ApiToken  # noqa: E402

# ----------------------------------------------------------------------------- probes

_marks = threading.local()
if __name__ == "__main__":  # the probes are named as this module's: one module, one _marks
    sys.modules.setdefault("profile_active", sys.modules[__name__])


def probe(index: int):
    """A middleware factory that notes when a request passes it going in and coming out:
    between two probes lies one middleware, its own time both ways."""

    def factory(get_response):
        def middleware(request):
            began = time.perf_counter()
            response = get_response(request)
            _marks.spans[index] = time.perf_counter() - began
            return response

        return middleware

    return factory


for _i in range(64):
    globals()[f"probe_{_i}"] = probe(_i)


MIDDLEWARE = list(settings.MIDDLEWARE)  # as configured, before the probes go in


def probed_middleware() -> list[str]:
    """MIDDLEWARE with a probe before each middleware and one before the view."""
    chain = []
    for index, name in enumerate(MIDDLEWARE):
        chain += [f"profile_active.probe_{index}", name]
    chain.append(f"profile_active.probe_{len(MIDDLEWARE)}")
    return chain


def environ(token: str) -> dict:
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}", "HTTP_ACCEPT": "*/*"}
    return wsgi_environ("GET", "/api/claude-active", headers)


def call(app, token: str) -> bytes:
    _marks.spans = [0.0] * (len(MIDDLEWARE) + 1)
    statuses = []
    body = b"".join(app(environ(token), lambda status, headers: statuses.append(status)))
    assert statuses[0].startswith("200"), statuses
    return body


class Publisher:
    """The monitor's last sample, published again as new (a new seq, taken now) on
    demand, as the monitor publishes one every interval."""

    def __init__(self, monitor: Monitor, snapshot) -> None:
        self.monitor, self.snapshot = monitor, snapshot
        self.last = 0.0

    def fresh(self) -> None:
        """Keep the published sample fresh (a monitor publishes every 2 s): at most one
        new sample a second, so the warm conditions mostly meet the one already read."""
        if time.monotonic() - self.last >= 1.0:
            self.again()

    def again(self) -> None:
        """In a thread of its own, with a database connection of its own, as the monitor
        is a process of its own: the request's thread never holds the writer's connection."""
        self.last = time.monotonic()
        self.monitor.seq += 1
        self.snapshot.taken_at = datetime.now(UTC)

        def publish() -> None:
            try:
                self.monitor.publish_sample(self.snapshot)
            finally:
                connection.close()

        writer = threading.Thread(target=publish)
        writer.start()
        writer.join()


CONDITIONS = {
    "warm": lambda publisher: publisher.fresh(),
    "new token check": lambda publisher: (publisher.fresh(), auth._token_cache.clear()),
    "new token check and new sample": lambda publisher: (
        auth._token_cache.clear(),
        publisher.again(),
    ),
}


def breakdown(app, token: str, publisher: Publisher, condition, requests: int) -> list[tuple]:
    """Median ms of each layer, and of the whole WSGI call, over `requests` requests."""
    count = len(MIDDLEWARE)
    spans: dict[str, list[float]] = {name: [] for name in MIDDLEWARE}
    spans["the view (URL resolved, process_view hooks, the view itself)"] = []
    spans["Django's handler around the middleware (request, signals, response)"] = []
    whole = []
    for _ in range(requests):
        condition(publisher)
        began = time.perf_counter()
        call(app, token)
        elapsed = time.perf_counter() - began
        whole.append(elapsed)
        marks = _marks.spans
        for index, name in enumerate(MIDDLEWARE):
            spans[name].append(marks[index] - marks[index + 1])
        spans["the view (URL resolved, process_view hooks, the view itself)"].append(marks[count])
        spans["Django's handler around the middleware (request, signals, response)"].append(
            elapsed - marks[0]
        )
    rows = [(name, statistics.median(values) * 1000) for name, values in spans.items()]
    rows.append(("**the whole WSGI call**", statistics.median(whole) * 1000))
    return rows


def profile(app, token: str, publisher: Publisher, condition, requests: int, top: int) -> str:
    profiler = cProfile.Profile()
    for _ in range(requests):
        condition(publisher)
        profiler.enable()
        call(app, token)
        profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


# ----------------------------------------------------------------------------- over HTTP


def bare_app(body: bytes):
    """The server's floor: a WSGI app that answers the same bytes and does nothing else."""

    def app(environ, start_response):
        start_response(
            "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        )
        return [body]

    return app


def bare_application(environ, start_response):  # gunicorn loads it by name
    return bare_app(Path(os.environ["OPSCONSOLE_PROFILE_BODY"]).read_bytes())(
        environ, start_response
    )


SOURCES: dict[int, set] = {}  # port -> the X-Sample-Source values it answered


def new_connection_get(port: int, headers: dict) -> float:
    began = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/api/claude-active", headers=headers)
    response = conn.getresponse()
    response.read()
    conn.close()
    elapsed = time.perf_counter() - began
    assert response.status == 200, response.status
    SOURCES.setdefault(port, set()).add(response.getheader("X-Sample-Source"))
    return elapsed


def gunicorn(app: str, port: int, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            app,
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "--worker-class",
            "opsconsole.web_worker.HeadFirstWorker",
            "--threads",
            "8",
        ],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def over_http(token: str, body: bytes, publisher: Publisher, requests: int) -> list[tuple]:
    """Median ms of a GET over a new connection every 50 ms: one gunicorn worker serving
    the console's app (a sample published every 2 s meanwhile, as the monitor does), the
    same worker serving the bare app, and the reference handler, in turns."""
    (WORK / "body.json").write_bytes(body)
    env = dict(
        os.environ,
        OPSCONSOLE_ALLOWED_HOSTS="127.0.0.1",
        OPSCONSOLE_PROFILE_BODY=str(WORK / "body.json"),
        PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'benchmarks'}",
    )
    bare, console, reference = free_port(), free_port(), free_port()
    servers = [
        gunicorn("profile_active:bare_application", bare, env),
        gunicorn("opsconsole.wsgi:application", console, env),
        subprocess.Popen(
            ["node", str(REFERENCE), str(reference), str(settings.OPSCONSOLE_STATE.active)],
            start_new_session=True,
        ),
    ]
    targets = (
        ("gunicorn + HeadFirstWorker, a bare WSGI app answering the same bytes", bare, {}),
        (
            "gunicorn + HeadFirstWorker, the console's app",
            console,
            {"Authorization": f"Bearer {token}"},
        ),
        ("the reference handler (node)", reference, {}),
    )
    stop = threading.Event()

    def publish() -> None:
        while not stop.wait(2.0):
            publisher.again()

    publishing = threading.Thread(target=publish, daemon=True)
    publishing.start()
    try:
        for _label, port, headers in targets:
            deadline = time.monotonic() + 60
            while True:
                try:
                    new_connection_get(port, headers)
                    break
                except (OSError, AssertionError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        samples: dict[str, list[float]] = {label: [] for label, _port, _headers in targets}
        for _ in range(requests):
            for label, port, headers in targets:
                samples[label].append(new_connection_get(port, headers))
            time.sleep(0.05)
    finally:
        stop.set()
        publishing.join()
        for server in servers:
            os.killpg(server.pid, 15)
            server.wait(30)
    assert SOURCES[console] == {"monitor"}, SOURCES[console]  # never sampled on demand
    return [(label, statistics.median(values) * 1000) for label, values in samples.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--top", type=int, default=25, help="cProfile rows per condition")
    parser.add_argument("--no-http", action="store_true")
    parser.add_argument("--no-profile", action="store_true", help="the tables only")
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create_user("profile")
    token = ApiToken.issue(user)[1]
    procs = start_runs(args.runs)
    try:
        monitor = Monitor(cadences=False, publish=True)
        monitor.tick()
        publisher = Publisher(monitor, monitor.tick())
        settings.MIDDLEWARE = probed_middleware()
        app = get_wsgi_application()
        body = call(app, token)
        assert published.reader.published(settings.OPSCONSOLE_HOST)[1] == "monitor"
        print(f"{args.runs} live runs, body {len(body):,} bytes, {args.requests} requests each\n")
        tables = {
            name: breakdown(app, token, publisher, condition, args.requests)
            for name, condition in CONDITIONS.items()
        }
        print("| layer | " + " | ".join(f"{name} (ms)" for name in tables) + " |")
        print("|---|" + "---:|" * len(tables))
        for index, (layer, _ms) in enumerate(next(iter(tables.values()))):
            cells = " | ".join(f"{rows[index][1]:.3f}" for rows in tables.values())
            print(f"| {layer} | {cells} |")
        for name, condition in CONDITIONS.items() if not args.no_profile else ():
            print(f"\n### cProfile, {name}, by own time\n\n```")
            print(profile(app, token, publisher, condition, args.requests, args.top).strip())
            print("```")
        if not args.no_http:
            print("\n| a new connection every 50 ms (gunicorn: 1 worker x 8 threads) | median ms |")
            print("|---|---:|")
            for label, value in over_http(token, body, publisher, args.requests):
                print(f"| {label} | {value:.3f} |")
    finally:
        stop_runs(procs)


if __name__ == "__main__":
    main()
