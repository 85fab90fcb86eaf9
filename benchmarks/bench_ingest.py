"""One reporting host's report, recorded by the console in process: `receive_report`
timed alone, without HTTP, the web workers or other load, on a fresh PostgreSQL
database of its own (`opsconsole_bench_ingest`). The reports are bench_hosts.py's
simulated hosts' (10 live runs each, a completion every tenth report).

    .venv/bin/python benchmarks/bench_ingest.py                 # 20 hosts x 30 reports
    .venv/bin/python benchmarks/bench_ingest.py --hosts 50 --rounds 20
    .venv/bin/python benchmarks/bench_ingest.py --history 20000  # ended runs per host on record
    .venv/bin/python benchmarks/bench_ingest.py --database opsconsole_bench_ingest_mine
    .venv/bin/python benchmarks/bench_ingest.py --deltas    # as this version's hosts report
    .venv/bin/python benchmarks/bench_ingest.py --deltas --runs 0    # idle hosts' heartbeats

--deltas: each report after the first is a delta of the sample the console holds, one
run's CPU changed (a run ends and another starts every tenth report, as without it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).parent)]
from serve_helpers import console_in_process  # noqa: E402

DATABASE = "opsconsole_bench_ingest"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument(
        "--history", type=int, default=0, help="ended runs on record per host, before the reports"
    )
    parser.add_argument(
        "--database",
        default=DATABASE,
        help="PostgreSQL database name (dropped and made again): one per checkout run side by side",
    )
    parser.add_argument("--deltas", action="store_true", help="report deltas, one run changed")
    parser.add_argument("--runs", type=int, default=10, help="live runs per host (0: heartbeats)")
    args = parser.parse_args()
    if not args.database.isidentifier():
        parser.error("--database is a plain name (letters, digits, _)")
    if not 1 <= args.hosts <= 500 or not 1 <= args.rounds <= 500:
        parser.error("--hosts and --rounds from 1 to 500")
    if not 0 <= args.runs <= 1000:
        parser.error("--runs from 0 to 1000")
    if not 0 <= args.history <= 200_000:
        parser.error("--history from 0 to 200000")
    console_in_process(args.database, "bench-ingest-")
    from bench_hosts import SimulatedHost

    from fleet.console import receive_report

    hosts = [SimulatedHost(f"host-{i:03d}", "", args.runs, 2.0) for i in range(args.hosts)]
    for host in hosts:
        host.deltas = args.deltas
        record_history(host.name, args.history)
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    times, cpu, statements = [], [], []
    for _ in range(args.rounds):
        for host in hosts:
            host.posts += 1
            if args.deltas and host.sessions:
                live = host.sessions[host.posts % len(host.sessions)]
                first = replace(live.processes[0], cpu_percent=host.posts % 97)
                live.processes = [first, *live.processes[1:]]
            payload = json.loads(host.body())
            started, started_cpu = time.perf_counter(), time.process_time()
            with CaptureQueriesContext(connection) as queries:
                answer = receive_report(payload, host.name)
            times.append(time.perf_counter() - started)
            cpu.append(time.process_time() - started_cpu)
            statements.append(len(queries))
            host.acknowledged(answer)
    times.sort()
    median, p90 = statistics.median(times) * 1000, times[int(len(times) * 0.9)] * 1000
    print(
        ("deltas: " if args.deltas else "full reports: ")
        + f"{len(times)} reports ({args.hosts} hosts x {args.rounds}, {args.history:,} ended runs "
        f"on record per host): receive_report median "
        f"{median:.1f} ms, p90 {p90:.1f} ms, this process's CPU median "
        f"{statistics.median(cpu) * 1000:.2f} ms, {statistics.mean(statements):.1f} statements "
        "a report"
    )


def record_history(host: str, count: int) -> None:
    """`count` ended runs of `host`, the oldest a year ago: a console that has run a while."""
    import uuid
    from datetime import UTC, datetime, timedelta

    from django.db import connection

    from sessions_app.models import Session, Status

    now = datetime.now(UTC)
    step = timedelta(days=365) / max(count, 1)
    for start in range(0, count, 5000):
        Session.objects.bulk_create(
            Session(
                session_id=uuid.uuid4(),
                script_tag=f"job-{n % 40}",
                platform="linux-bench",
                host=host,
                attempt=1,
                status=Status.SUCCEEDED,
                started_at=now - timedelta(days=365) + n * step,
                ended_at=now - timedelta(days=365) + n * step + timedelta(minutes=3),
            )
            for n in range(start, min(count, start + 5000))
        )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE sessions_app_session")


if __name__ == "__main__":
    main()
