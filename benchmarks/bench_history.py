"""History at scale: History, Costs and /metrics over 1 M sessions in SQLite or 10 M in
PostgreSQL, timed through the test client.

    .venv/bin/python benchmarks/bench_history.py [--rows 1000000]
    .venv/bin/python benchmarks/bench_history.py --database postgres --rows 10000000 \
        [--database-url postgres://postgres@127.0.0.1:5432/opsconsole_history_bench] \
        [--explain] [--sizes] [--drop]

SQLite: rows are spread over a year across 200 tags, inserted oldest first as real
history accumulates, with retries, failures, quota skips and unknown costs (1 in 11).
PostgreSQL: benchmarks/history_rows.py generates them with COPY over two years, ~200
tags (Zipf: a few busy, most quiet) on ~50 hosts with a Job each, realistic status
shares and costs, and a RunTelemetry row for every run of the last 180 days; a
database that already holds the rows is reused. Each figure is the median of 5
requests, with the CPU time the console process and, on a local server, its database
backend spent on it (/proc/PID/schedstat): on a loaded machine the wall clock also
counts the time spent waiting for a core. ANALYZE runs first, as `opsconsole serve`
does at start. --explain prints EXPLAIN ANALYZE of each request's slowest query;
--sizes the bytes per row and per index; --drop drops the database at the end.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# OPSCONSOLE_BENCH_HOME=DIR keeps the populated database there for another run.
WORK = Path(os.environ.get("OPSCONSOLE_BENCH_HOME") or tempfile.mkdtemp(prefix="opsconsole-hb-"))
os.environ["OPSCONSOLE_HOME"] = str(WORK / "home")
os.environ["OPSCONSOLE_ALLOWED_HOSTS"] = "testserver"
os.environ["DJANGO_SETTINGS_MODULE"] = "opsconsole.settings"
os.environ.pop("DATABASE_URL", None)
PG_DEFAULT = "postgres://postgres@127.0.0.1:5432/opsconsole_history_bench"
if "--database" in sys.argv and sys.argv[sys.argv.index("--database") + 1] == "postgres":
    url = PG_DEFAULT
    if "--database-url" in sys.argv:
        url = sys.argv[sys.argv.index("--database-url") + 1]
    os.environ["DATABASE_URL"] = url
    # A GROUP BY over millions of rows may take longer than a page's deadline.
    # The load's COPY and index builds run for minutes: no statement deadline here.
    os.environ.setdefault("OPSCONSOLE_DB_STATEMENT_TIMEOUT", "0")
    os.environ.setdefault("OPSCONSOLE_DB_TIMEOUT_SECONDS", "0")

import django  # noqa: E402
import psycopg  # noqa: E402

django.setup()

import history_rows  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, reset_queries  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from jobs_app.models import Job  # noqa: E402
from sessions_app.models import Session, Status  # noqa: E402

STATUSES = (
    [Status.SUCCEEDED] * 80
    + [Status.FAILED] * 8
    + [Status.REFUSED] * 5
    + [Status.QUOTA_SKIP] * 4
    + [Status.KILLED] * 3
)


def populate(rows: int) -> None:
    rng = random.Random(1)
    now = datetime(2026, 11, 24, tzinfo=UTC)
    batch = []
    for index in range(rows):
        status = rng.choice(STATUSES)
        # Appended in time order, as history accumulates: oldest first over a year.
        started = now - timedelta(seconds=(rows - index) * 365 * 86400 // rows)
        session_id = uuid.UUID(int=rng.getrandbits(128), version=4)
        batch.append(
            Session(
                session_id=session_id,
                script_tag=f"job-{index % 200:03d}",
                platform=f"platform-{index % 7}",
                host=f"host-{index % 3}",
                attempt=2 if status == Status.SUCCEEDED and index % 17 == 0 else 1,
                status=status,
                exit_code=0 if status == Status.SUCCEEDED else 1,
                started_at=started,
                ended_at=started + timedelta(seconds=rng.randint(5, 900)),
                duration_ms=rng.randint(5000, 900000),
                num_turns=rng.randint(1, 40),
                cost_usd=None if index % 11 == 0 else Decimal(rng.randint(1, 90000)) / 100000,
                input_tokens=rng.randint(1000, 90000),
                output_tokens=rng.randint(100, 9000),
            )
        )
        if len(batch) == 20_000:
            Session.objects.bulk_create(batch)
            batch = []
    Session.objects.bulk_create(batch)


def database_cpu() -> float:
    """Seconds of CPU the connection's PostgreSQL backend has used, when the server runs
    on this machine (its /proc/PID/schedstat); NaN when it cannot be read."""
    connection.ensure_connection()
    try:
        pid = connection.connection.info.backend_pid
        with open(f"/proc/{pid}/schedstat") as stat:
            return int(stat.read().split()[0]) / 1e9
    except (AttributeError, OSError, ValueError):
        return float("nan")


def timed(client: Client, url: str) -> tuple[float, float, float, float, int, str]:
    """Median of 5 requests: the whole request, the time its queries took, and the CPU
    time of this process (the console's Python) and of its database backend. The test
    client keeps one connection across requests, so the backend is the same one."""
    samples, sql, cpu, db_cpu, queries, slowest = [], [], [], [], 0, ""
    for _ in range(5):
        reset_queries()
        with CaptureQueriesContext(connection) as captured:
            began, began_cpu, began_db = time.perf_counter(), time.process_time(), database_cpu()
            response = client.get(url)
            samples.append(time.perf_counter() - began)
            cpu.append(time.process_time() - began_cpu)
            db_cpu.append(database_cpu() - began_db)
        assert response.status_code == 200, (url, response.status_code)
        queries = len(captured.captured_queries)
        sql.append(sum(float(q["time"]) for q in captured.captured_queries))
        slowest = max(captured.captured_queries, key=lambda q: float(q["time"]))["sql"]
    return (
        round(statistics.median(samples) * 1000, 1),
        round(statistics.median(sql) * 1000, 1),
        round(statistics.median(cpu) * 1000, 1),
        round(statistics.median(db_cpu) * 1000, 1),
        queries,
        slowest,
    )


def explain(sql: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}")
        return "\n".join(row[0] for row in cursor.fetchall())


def sizes() -> None:
    """Bytes per row of the sessions table and of each of its indexes (PostgreSQL)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM sessions_app_session")
        rows = cursor.fetchone()[0]
        cursor.execute(
            "SELECT c.relname, pg_relation_size(c.oid), pg_total_relation_size(c.oid), "
            "i.indrelid = 'sessions_app_session'::regclass OR c.relname = 'sessions_app_session' "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN pg_index i ON i.indexrelid = c.oid "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'i') "
            "AND pg_total_relation_size(c.oid) > 1048576 ORDER BY 4 DESC, 2 DESC"
        )
        found = cursor.fetchall()
    print(f"\n{rows:,} sessions\n")
    print("| relation | size (MiB) | with indexes, TOAST (MiB) | bytes per session |")
    print("|---|---:|---:|---:|")
    for name, size, total, of_sessions in found:
        per_row = f"{size / rows:.1f}" if of_sessions else ""
        print(f"| {name} | {size / 2**20:,.1f} | {total / 2**20:,.1f} | {per_row} |")


def cases(args, probe: str) -> list[tuple[str, str]]:
    deep_at = min(args.rows // 2, 5_000_000 if args.database == "postgres" else 500_000)
    deep = Session.objects.order_by("-started_at", "-id")[deep_at]
    cursor = f"{deep.started_at.isoformat()}~{deep.pk}"
    if args.database != "postgres":
        return [
            ("history, page 1", "/history/"),
            (f"history, deep page ({deep_at:,} rows in)", f"/history/?before={cursor}"),
            ("filter by tag", "/history/?tag=job-042"),
            ("filter by status (killed)", "/history/?status=killed"),
            (
                "filter by date range (one week)",
                "/history/?date_from=2026-06-01&date_to=2026-06-07",
            ),
            ("tag + status + dates", "/history/?tag=job-007&status=failed&date_from=2026-01-01"),
            ("session id prefix search", f"/history/?q={probe[:8]}"),
            ("API /api/sessions?tag=", "/api/sessions?tag=job-042"),
            ("costs, last 30 days", "/costs/?days=30"),
            ("/metrics", "/metrics"),
        ]
    job = Job.objects.filter(tags=["job-042"]).values_list("pk", flat=True).first()
    quiet = Session.objects.filter(script_tag="job-042").order_by("-started_at", "-id")
    quiet_deep = quiet.values_list("started_at", "pk")[min(quiet.count() - 1, 2_000)]
    quiet_cursor = f"{quiet_deep[0].isoformat()}~{quiet_deep[1]}"
    return [
        ("history, page 1", "/history/"),
        (f"history, deep page ({deep_at:,} rows in)", f"/history/?before={cursor}"),
        ("filter by tag (a quiet one)", "/history/?tag=job-042"),
        ("filter by tag, 2,000 rows in", f"/history/?tag=job-042&before={quiet_cursor}"),
        ("filter by status (killed)", "/history/?status=killed"),
        ("filter by status (rate limited)", "/history/?status=rate_limited"),
        ("filter by status, deep page", f"/history/?status=failed&before={cursor}"),
        ("filter by host", "/history/?host=host-07"),
        ("filter by platform", "/history/?platform=ci"),
        ("filter by job", f"/history/?job={job}"),
        ("filter by date range (one week)", "/history/?date_from=2026-06-01&date_to=2026-06-07"),
        ("tag + status + dates", "/history/?tag=job-007&status=failed&date_from=2026-01-01"),
        ("host + status (refused)", "/history/?host=host-03&status=refused"),
        ("session id prefix search", f"/history/?q={probe[:8]}"),
        ("API /api/sessions?tag=", "/api/sessions?tag=job-042"),
        ("costs, last 30 days", "/costs/?days=30"),
        ("costs, last 90 days", "/costs/?days=90"),
        ("costs, last 30 days, one host", "/costs/?days=30&host=host-07"),
        ("/metrics", "/metrics"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--database-url", default=PG_DEFAULT)
    parser.add_argument("--explain", action="store_true")
    parser.add_argument("--sizes", action="store_true")
    parser.add_argument("--drop", action="store_true", help="drop the PostgreSQL database")
    args = parser.parse_args()
    if args.database == "postgres":
        ensure_database(args.database_url)
    call_command("migrate", verbosity=0)
    on_record = Session.objects.count()
    if on_record >= args.rows:
        print(f"reusing {on_record:,} sessions in {connection.settings_dict['NAME']}\n")
    elif args.database == "postgres":
        history_rows.load(args.rows - on_record, history_rows.fixed_now())
    else:
        began = time.perf_counter()
        populate(args.rows)
        seconds = time.perf_counter() - began
        print(
            f"{args.rows:,} sessions inserted in {seconds:.0f} s (SQLite, {os.cpu_count()} cores)\n"
        )
    probe = str(Session.objects.order_by("id").values_list("session_id", flat=True)[0])
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    client = Client()
    user, _ = get_user_model().objects.get_or_create(username="bench")
    client.force_login(user)
    print(f"load average {' '.join(f'{load:.1f}' for load in os.getloadavg())}\n")
    print(
        "| request | median (ms) | of which SQL (ms) | console CPU (ms) | database CPU (ms) "
        "| queries |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    plans = []
    for label, url in cases(args, probe):
        ms, sql_ms, cpu_ms, db_ms, queries, slowest = timed(client, url)
        print(f"| {label} | {ms} | {sql_ms} | {cpu_ms} | {db_ms} | {queries} |")
        plans.append((label, url, slowest))
    if args.explain and args.database == "postgres":
        for label, url, sql in plans:
            print(f"\n### {label}: {url}\n{sql}\n{explain(sql)}")
    if args.sizes and args.database == "postgres":
        sizes()
    if args.drop and args.database == "postgres":
        drop_database(args.database_url)


def _server(url: str) -> tuple[str, str]:
    base, _, name = url.rpartition("/")
    return f"{base}/postgres", name


def ensure_database(url: str) -> None:
    server, name = _server(url)
    with psycopg.connect(server, autocommit=True) as admin:
        if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            admin.execute(f'CREATE DATABASE "{name}"')


def drop_database(url: str) -> None:
    connection.close()
    server, name = _server(url)
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(f"dropped {name}")


if __name__ == "__main__":
    main()
