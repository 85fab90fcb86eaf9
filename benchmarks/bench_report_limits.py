"""What one host's report can cost the console: the memory of taking a gzip report that
inflates to 64 MiB, and the time to mark a host's live runs lost.

Memory: one gzip report (about 65 KB on the wire) whose body inflates to 64 MiB of
valid JSON, many small objects under a key the console does not read, so the figure
is what taking the body costs (inflating and parsing it), not recording items. It is
posted through the console's real endpoint (Django's test client, middleware and
view: /api/hosts/report with a host token) in a fresh subprocess on SQLite, with the
inflate limit (OPSCONSOLE_HOST_REPORT_MAX_INFLATED_BYTES) at 64 MiB, the old fixed
figure, and at 16 MiB, the default. The peak is the process's RSS high-water mark
(VmHWM), reset just before the request (/proc/self/clear_refs).

Lost runs: N live runs of one host on record, and a sample that names none of them.
`fleet.report_sample.close_lost_rows` (one UPDATE) against the old per-row loop, written
below as the reference, each in one transaction as `receive_report` runs it, on
SQLite and on PostgreSQL (a database of the script's own, dropped and made again).

    .venv/bin/python benchmarks/bench_report_limits.py                  # both, N=100,000
    .venv/bin/python benchmarks/bench_report_limits.py --runs 20000 --repeat 1
    .venv/bin/python benchmarks/bench_report_limits.py --no-lost        # memory only
    .venv/bin/python benchmarks/bench_report_limits.py --no-memory --database-url \\
        postgres://postgres@127.0.0.1:5432/opsconsole_bench_report_limits
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).parent)]
from serve_helpers import console_in_process  # noqa: E402

MIB = 1024 * 1024
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/opsconsole_bench_report_limits"
HOST = "host-bench"
SMALL_OBJECT = b'{"n":1}'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inflated-mib", type=int, default=64, help="the report's inflated size")
    parser.add_argument("--runs", type=int, default=100_000, help="live runs marked lost")
    parser.add_argument("--repeat", type=int, default=2, help="rounds of each measurement")
    parser.add_argument(
        "--database-url",
        default=DEFAULT_DATABASE_URL,
        help="PostgreSQL database for the lost runs (dropped and made again)",
    )
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-lost", action="store_true")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--child", choices=["memory", "lost"], help=argparse.SUPPRESS)
    parser.add_argument("--database", help=argparse.SUPPRESS)
    parser.add_argument("--order", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 1 <= args.inflated_mib <= 1024 or not 1 <= args.runs <= 2_000_000:
        parser.error("--inflated-mib from 1 to 1024, --runs from 1 to 2000000")
    if not 1 <= args.repeat <= 20:
        parser.error("--repeat from 1 to 20")
    if args.child == "memory":
        print(json.dumps(memory_of_one_report(args.inflated_mib)))
        return
    if args.child == "lost":
        print(json.dumps(lost_runs(args.database or None, args.runs, args.order.split(","))))
        return
    if not args.no_memory:
        memory_table(args)
    if not args.no_lost:
        lost_table(args)


# ----------------------------------------------------------------------------- memory


def memory_table(args: argparse.Namespace) -> None:
    limits = (64, 16)
    rows: dict[int, list[dict]] = {limit: [] for limit in limits}
    for round_ in range(args.repeat):
        for limit in limits if round_ % 2 == 0 else reversed(limits):
            env = {"OPSCONSOLE_HOST_REPORT_MAX_INFLATED_BYTES": str(limit * MIB)}
            rows[limit].append(child(args, "--child", "memory", env=env))
    first = rows[limits[0]][0]
    print(
        f"\nOne gzip report, {first['gzip_bytes'] / 1024:.0f} KB on the wire, inflating to "
        f"{first['inflated_bytes'] / MIB:.0f} MiB of JSON ({first['objects']:,} objects "
        f"{SMALL_OBJECT.decode()}), through /api/hosts/report; {args.repeat} fresh "
        "processes each, median (min-max):\n"
    )
    print(
        "| inflate limit | answer | peak RSS during the request (MiB) "
        "| above the RSS before it (MiB) | time (s) |"
    )
    print("|---|---|---:|---:|---:|")
    for limit in limits:
        got = rows[limit]
        print(
            f"| {limit} MiB | {got[0]['status']} | {spread([r['peak_mib'] for r in got])} | "
            f"{spread([r['peak_mib'] - r['before_mib'] for r in got])} | "
            f"{spread([r['seconds'] for r in got], 2)} |"
        )


def memory_of_one_report(inflated_mib: int) -> dict:
    console_in_process(None, "bench-report-limits-")
    from django.test import Client

    from monitor_app.models import HostToken

    _row, token = HostToken.issue(HOST)
    body, inflated, objects = bomb(inflated_mib * MIB)
    client = Client(HTTP_HOST="127.0.0.1")
    gc.collect()
    before = reset_high_water_mark()
    started = time.perf_counter()
    response = client.generic(
        "POST",
        "/api/hosts/report",
        body,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
        HTTP_CONTENT_ENCODING="gzip",
    )
    seconds = time.perf_counter() - started
    return {
        "status": response.status_code,
        "gzip_bytes": len(body),
        "inflated_bytes": inflated,
        "objects": objects,
        "before_mib": before,
        "peak_mib": memory_mib("VmHWM"),
        "seconds": seconds,
    }


def bomb(size: int) -> tuple[bytes, int, int]:
    """A report of this host whose body inflates to just under `size` bytes, made without
    ever holding it inflated: the gzip body, its inflated size and its object count."""
    head = json.dumps({"format": 1, "host": HOST}).encode()[:-1] + b', "padding": ['
    tail = b"]}"
    objects = (size - 64 - len(head) - len(tail)) // (len(SMALL_OBJECT) + 1)
    deflater = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [deflater.compress(head + SMALL_OBJECT)]
    block = (b"," + SMALL_OBJECT) * 8192
    left = objects - 1
    while left:
        count = min(left, 8192)
        parts.append(
            deflater.compress(block if count == 8192 else block[: count * (len(SMALL_OBJECT) + 1)])
        )
        left -= count
    parts += [deflater.compress(tail), deflater.flush()]
    inflated = len(head) + objects * (len(SMALL_OBJECT) + 1) - 1 + len(tail)
    return b"".join(parts), inflated, objects


def reset_high_water_mark() -> float:
    """Start VmHWM again from the present RSS (Linux: clear_refs 5); the RSS in MiB."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    return memory_mib("VmRSS")


def memory_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


# ----------------------------------------------------------------------------- lost runs


def lost_table(args: argparse.Namespace) -> None:
    databases = [("SQLite", "")]
    if not args.no_postgres:
        databases.append(("PostgreSQL", args.database_url))
    print(
        f"\n{args.runs:,} live runs of one host, a sample naming none of them: the time to "
        f"mark them lost, in one transaction; {args.repeat} rounds each, median (min-max):\n"
    )
    print(
        "| database | old: one UPDATE per row (s) | close_lost_rows: one UPDATE (s) | old / new |"
    )
    print("|---|---:|---:|---:|")
    for name, url in databases:
        pairs = [("per_row", "one_update"), ("one_update", "per_row")]
        order = ",".join(",".join(pairs[n % 2]) for n in range(args.repeat))
        got = child(args, "--child", "lost", "--database", url, "--order", order)
        old, new = got["per_row"], got["one_update"]
        print(
            f"| {name} | {spread(old, 2)} | {spread(new, 3)} | "
            f"{statistics.median(old) / statistics.median(new):.0f}x |"
        )


def lost_runs(database_url: str | None, runs: int, order: list[str]) -> dict:
    if database_url:
        server, _, name = database_url.rpartition("/")
        os.environ["OPSCONSOLE_BENCH_PG"] = server
        console_in_process(name, "bench-report-limits-")
    else:
        console_in_process(None, "bench-report-limits-")
    from django.db import connection, transaction

    from fleet.report_sample import close_lost_rows
    from monitor_app.snapshot import Snapshot
    from sessions_app.models import Session, Status

    record_live_runs(runs)
    methods = {"per_row": close_lost_rows_per_row, "one_update": close_lost_rows}
    times: dict[str, list[float]] = {name: [] for name in methods}
    for name in order:
        Session.objects.filter(host=HOST).update(
            status=Status.LIVE, end_reason="", ended_at=None, error=""
        )
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("VACUUM ANALYZE sessions_app_session")
        now = datetime.now(UTC)
        started = time.perf_counter()
        with transaction.atomic():
            methods[name](Snapshot(taken_at=now), HOST, set(), now)
        times[name].append(time.perf_counter() - started)
        lost = Session.objects.filter(host=HOST, status=Status.UNKNOWN, end_reason="lost").count()
        if lost != runs:
            raise RuntimeError(f"{name} marked {lost} of {runs} runs lost")
    return times


def close_lost_rows_per_row(snapshot, host: str, recorded: set[str], now) -> None:
    """The old reference (before issue 21): the lost rows' keys, then one UPDATE each."""
    from monitor_app.monitor import STALE_LIVE_ROW_GRACE
    from sessions_app.models import LIVE_STATUSES, Session, Status

    live_ids = {s.session_id for s in snapshot.sessions} | recorded
    lost = (
        Session.objects.filter(
            status__in=LIVE_STATUSES, host=host, started_at__lt=now - STALE_LIVE_ROW_GRACE
        )
        .exclude(session_id__in=live_ids)
        .values_list("pk", flat=True)
    )
    for pk in lost:
        Session.objects.filter(pk=pk, status__in=LIVE_STATUSES).update(
            status=Status.UNKNOWN,
            end_reason="lost",
            ended_at=now,
            error=f"The console lost sight of this run: {host}'s monitor no longer reports it "
            "and sent no completion record.",
        )


def record_live_runs(count: int) -> None:
    """`count` runs of HOST marked live, started an hour ago (past the grace)."""
    from sessions_app.models import Session, Status

    started = datetime.now(UTC) - timedelta(hours=1)
    for first in range(0, count, 5000):
        Session.objects.bulk_create(
            Session(
                session_id=uuid.uuid4(),
                script_tag=f"job-{n % 40}",
                platform="linux-bench",
                host=HOST,
                attempt=1,
                status=Status.LIVE,
                started_at=started,
                wrapper_pid=10_000 + n,
            )
            for n in range(first, min(count, first + 5000))
        )


# ----------------------------------------------------------------------------- helpers


def child(args: argparse.Namespace, *argv: str, env: dict[str, str] | None = None) -> dict:
    """One measurement in a fresh process (Django set up once per process)."""
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--runs",
            str(args.runs),
            "--inflated-mib",
            str(args.inflated_mib),
            *argv,
        ],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def spread(values: list[float], digits: int = 0) -> str:
    low, high = min(values), max(values)
    median = statistics.median(values)
    if len(values) == 1:
        return f"{median:.{digits}f}"
    return f"{median:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


if __name__ == "__main__":
    main()
