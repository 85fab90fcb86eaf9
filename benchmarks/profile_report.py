"""Where a host's report spends the console's CPU: the whole request through the real
WSGI app in process (middleware, token, budget, ingest, answer), beside
`receive_report` alone, on a fresh PostgreSQL database of its own; then cProfile's top
functions over the whole request.

The reports are bench_hosts.py's simulated hosts' as this version sends them: a delta
of one changed run (10 live runs a host), or with --runs 0 an idle host's heartbeat.

    .venv/bin/python benchmarks/profile_report.py                 # deltas, 20 hosts x 30
    .venv/bin/python benchmarks/profile_report.py --runs 0        # heartbeats
    .venv/bin/python benchmarks/profile_report.py --top 40
"""

from __future__ import annotations

import argparse
import cProfile
import gzip
import io
import json
import pstats
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).parent)]
from serve_helpers import console_in_process, wsgi_environ  # noqa: E402

DATABASE = "opsconsole_profile_report"


def environ(body: bytes, token: str) -> dict:
    """A host's gzipped report, as its monitor posts it."""
    headers = {
        "CONTENT_TYPE": "application/json",
        "HTTP_AUTHORIZATION": f"Bearer {token}",
        "HTTP_CONTENT_ENCODING": "gzip",
    }
    return wsgi_environ("POST", "/api/hosts/report", headers, body)


# Where a function's own time is counted, by the first of these its file's path holds.
PARTS = (
    ("Django's ORM (building statements, making rows)", "/django/db/models/"),
    ("Django's database layer", "/django/db/"),
    ("psycopg (the driver)", "/psycopg/"),
    ("Django's request handling, middleware", "/django/"),
    ("the other libraries (axes, whitenoise, csp, htmx)", "site-packages"),
    ("opsconsole's own code", "/opsconsole/|/fleet/|/monitor_app/|/sessions_app/|/jobs_app/"),
    ("the standard library (json, gzip, dataclasses...)", ""),
)


def where_the_time_goes(stats: pstats.Stats) -> str:
    """Each part's share of the CPU of the profiled requests (functions' own time)."""
    spent = dict.fromkeys([label for label, _ in PARTS], 0.0)
    for (path, _line, _name), (_cc, _nc, own, _cum, _callers) in stats.stats.items():
        for label, marks in PARTS:
            if any(mark in path for mark in marks.split("|")):
                spent[label] += own
                break
    total = sum(spent.values()) or 1.0
    return "\n".join(
        f"{share * 100:5.1f} %  {label}"
        for label, share in sorted(((k, v / total) for k, v in spent.items()), key=lambda x: -x[1])
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--runs", type=int, default=10, help="live runs per host (0: heartbeats)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--database", default=DATABASE)
    args = parser.parse_args()
    if not args.database.isidentifier():
        parser.error("--database is a plain name (letters, digits, _)")
    console_in_process(args.database, "profile-report-")
    from bench_hosts import SimulatedHost
    from django.core.wsgi import get_wsgi_application

    from fleet.console import receive_report
    from monitor_app.models import HostToken

    app = get_wsgi_application()
    hosts = []
    for i in range(args.hosts):
        name = f"host-{i:03d}"
        _row, token = HostToken.issue(name)
        host = SimulatedHost(name, token, args.runs, 2.0)
        host.deltas = True
        hosts.append(host)

    def next_body(host) -> bytes:
        host.posts += 1
        if host.sessions:
            live = host.sessions[host.posts % len(host.sessions)]
            first = replace(live.processes[0], cpu_percent=host.posts % 97)
            live.processes = [first, *live.processes[1:]]
        return host.body()

    def post(host) -> dict:
        body = gzip.compress(next_body(host), compresslevel=5)
        statuses = []
        answer = b"".join(
            app(environ(body, host.token), lambda status, headers: statuses.append(status))
        )
        assert statuses[0].startswith("200"), (statuses, answer[:300])
        return json.loads(answer)

    for host in hosts:  # each host's first report is a full one: not measured
        host.acknowledged(post(host))

    whole, alone = [], []
    for _ in range(args.rounds):
        for host in hosts:
            started = time.process_time()
            host.acknowledged(post(host))
            whole.append(time.process_time() - started)
            payload = json.loads(next_body(host))
            started = time.process_time()
            host.acknowledged(receive_report(payload, host.name))
            alone.append(time.process_time() - started)
    kind = "deltas of 1 changed run" if args.runs else "heartbeats"
    print(
        f"{kind}, {len(whole)} reports a mode: this process's CPU median, the whole "
        f"request {statistics.median(whole) * 1000:.2f} ms, receive_report alone "
        f"{statistics.median(alone) * 1000:.2f} ms"
    )

    # CPU time, not wall time: the database's round trips are PostgreSQL's CPU, not ours.
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    for _ in range(args.rounds):
        for host in hosts:
            host.acknowledged(post(host))
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    print(where_the_time_goes(stats))
    stats.sort_stats("cumulative").print_stats(args.top)
    stats.sort_stats("tottime").print_stats(args.top)
    print(out.getvalue())


if __name__ == "__main__":
    main()
