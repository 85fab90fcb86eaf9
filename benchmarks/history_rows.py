"""Realistic run history, fast: Session rows (and RunTelemetry for the recent ones) for
benchmarks/bench_history.py --database postgres.

A pool of 65,521 distinct run bodies (tag, host, status, costs, tokens, error, ...) is
drawn in Python and sent with COPY (psycopg's copy) to a temporary table; the server
then makes the rows from it in one INSERT ... SELECT per million: row i takes body
i * 7,919 mod 65,521 (a day's ~14,000 runs are a random sample of the pool), its own
session id (md5 of a seed and i), start time, paths and, for a retry, the previous
row's id. Making every row in Python measured 26 us of CPU a row, and the COPY as
much again: over an hour for 10 M on a busy 2-core machine.

    rows appended oldest first over `years` (ids follow start time, as real history
    does); ~200 tags on ~50 hosts, a few tags busy and most quiet (Zipf); 1 run in 20
    of a tag on another host than its own; statuses with the shares a fleet sees;
    CLI-reported costs, a few priced from the transcript or telemetry only, 1 in 33
    unknown; retries; failed runs with an error, some rate limited.

The table's indexes and unique constraint are dropped for the COPY and built again
after it, with triggers off (session_replication_role = replica: no foreign-key check
per row, no rollup per row); the rollups are then rebuilt from the rows in one pass.
Needs Django set up on a PostgreSQL DATABASE_URL.
"""

from __future__ import annotations

import bisect
import itertools
import random
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.db import connection

from jobs_app.models import Job
from sessions_app.models import RunTelemetry, Session

try:
    from sessions_app.rollups import rebuild_rollups
except ImportError:  # the code before the rollups: nothing to rebuild
    rebuild_rollups = None

TAGS = 200
HOSTS = 50
# Share of finished runs per status (per mille).
STATUS_SHARES = {
    "succeeded": 860,
    "failed": 60,
    "false_success": 15,
    "refused": 5,
    "quota_skip": 20,
    "killed": 10,
    "unknown": 5,
    "imported": 15,
    "exited": 10,
}
MODELS = ("claude-sonnet-4-5", "claude-opus-4-1", "claude-haiku-4-5")
PLATFORMS = ("systemd", "launchd", "ci")
BATCH = 50_000


def host_name(index: int) -> str:
    return f"host-{index:02d}"


def platform_of(host: int) -> str:
    return PLATFORMS[0] if host < 30 else PLATFORMS[1] if host < 45 else PLATFORMS[2]


def tag_name(index: int) -> str:
    return f"job-{index:03d}"


def home_host(tag: int) -> int:
    return (tag * 7) % HOSTS


def make_jobs() -> dict[tuple[int, int], int]:
    """One Job per tag on its home host: (tag, host) -> job id."""
    scheduler = {"systemd": "systemd", "launchd": "launchd", "ci": "cron"}
    ids = {}
    for tag in range(TAGS):
        host = home_host(tag)
        job, _ = Job.objects.get_or_create(
            scheduler=scheduler[platform_of(host)],
            host=host_name(host),
            label=f"agent-{tag_name(tag)}",
            defaults={"tags": [tag_name(tag)], "platform": platform_of(host)},
        )
        ids[(tag, host)] = job.pk
    return ids


def _stamp(moment: datetime) -> str:
    return moment.isoformat()


POOL = 65_521  # a prime: row i takes body i * STRIDE mod POOL
STRIDE = 7_919
POOL_COLUMNS = [
    "script_tag",
    "platform",
    "host",
    "attempt",
    "status",
    "end_reason",
    "exit_code",
    "error",
    "duration_ms",
    "num_turns",
    "cost_usd",
    "cost_computed_usd",
    "cost_telemetry_usd",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_creation_tokens",
    "is_error",
    "stop_reason",
    "api_error_status",
    "model",
    "wrapper_pid",
    "claude_pid",
    "job_id",
]


def _body(rng: random.Random, weights, order, jobs) -> tuple:
    """One run's columns but its ids, times and paths (POOL_COLUMNS)."""
    statuses = list(STATUS_SHARES)
    status_weights = list(itertools.accumulate(STATUS_SHARES.values()))
    tag = order[bisect.bisect(weights, rng.random() * weights[-1])]
    host = home_host(tag) if rng.random() > 0.05 else rng.randrange(HOSTS)
    status = statuses[bisect.bisect(status_weights, rng.random() * status_weights[-1])]
    exit_code = {"succeeded": 0, "false_success": 0, "quota_skip": 79}.get(
        status, None if status in ("unknown", "killed", "exited", "imported") else 1
    )
    error, api_status = "", None
    if status == "failed":
        if rng.random() < 0.1:
            api_status, error = 429, "API Error: 429 rate_limit_error"
        else:
            error = "claude exited 1: Error: tool call failed after 3 attempts"
    reported = computed = telemetry = None
    if status != "quota_skip":
        cost = Decimal(f"{rng.lognormvariate(-2.0, 1.2):.6f}")
        draw = rng.random()
        if status in ("imported", "killed", "unknown", "exited") or draw < 0.03:
            if draw < 0.5:
                computed = cost
        elif draw < 0.06:
            telemetry = cost
        else:
            reported = cost
            if draw < 0.5:
                computed = cost
    tokens = rng.randint(1_000, 200_000)
    return (
        tag_name(tag),
        platform_of(host),
        host_name(host),
        2 if status in ("succeeded", "failed") and rng.random() < 0.03 else 1,
        status,
        "exit" if exit_code is not None else "vanished",
        exit_code,
        error,
        int(rng.lognormvariate(11.5, 1.0)),  # ms: a median near 100 s
        rng.randint(1, 60),
        reported,
        computed,
        telemetry,
        tokens,
        tokens // rng.randint(8, 40),
        tokens * rng.randint(2, 20),
        tokens // 3,
        status == "false_success",
        "end_turn" if status == "succeeded" else "",
        api_status,
        MODELS[rng.random() < 0.3] if status != "quota_skip" else "",
        rng.randint(1000, 4_000_000),
        rng.randint(1000, 4_000_000),
        jobs.get((tag, host)),
    )


def _pool(jobs: dict, seed: int) -> list[tuple]:
    rng = random.Random(seed)
    weights = list(itertools.accumulate(1 / (rank + 1) ** 0.9 for rank in range(TAGS)))
    order = list(range(TAGS))
    rng.shuffle(order)  # which tag is busy has nothing to do with its number
    return [(k, *_body(rng, weights, order, jobs)) for k in range(POOL)]


SID = "md5(%(seed)s || ':' || {g})::uuid"
EXPAND = f"""
INSERT INTO sessions_app_session (
    session_id, retry_of, started_at, ended_at, created_at, updated_at, transcript_path,
    archive_path, cwd, claude_config_dir, subagent_files, stopped_by, wrapped, end_details,
    leftovers, recorded_from, {", ".join(POOL_COLUMNS)})
SELECT x.sid,
    CASE WHEN p.attempt = 2 THEN {SID.format(g="(g - 1)")} END,
    x.started,
    CASE WHEN x.live THEN NULL ELSE x.started + p.duration_ms * interval '1 millisecond' END,
    x.started, x.started,
    '/home/agent/.claude/projects/-srv-agents-' || p.script_tag || '/' || x.sid || '.jsonl',
    CASE WHEN x.live THEN '' ELSE '/var/lib/opsconsole/archive/'
        || to_char(x.started, 'YYYY-MM') || '/' || p.script_tag || '/' || x.sid || '.jsonl' END,
    '/srv/agents/' || p.script_tag, '/home/agent/.claude', 0, '', true, '{{}}', '[]', 'spool',
    p.script_tag, p.platform, p.host, p.attempt,
    CASE WHEN x.live THEN 'live' ELSE p.status END,
    CASE WHEN x.live THEN '' ELSE p.end_reason END,
    CASE WHEN x.live THEN NULL ELSE p.exit_code END,
    p.error, CASE WHEN x.live THEN NULL ELSE p.duration_ms END, p.num_turns,
    CASE WHEN x.live THEN NULL ELSE p.cost_usd END, p.cost_computed_usd,
    p.cost_telemetry_usd, p.input_tokens, p.output_tokens, p.cache_read_tokens,
    p.cache_creation_tokens, p.is_error, p.stop_reason, p.api_error_status, p.model,
    p.wrapper_pid, p.claude_pid, p.job_id
FROM generate_series(%(low)s::bigint, %(high)s::bigint) g
CROSS JOIN LATERAL (
    SELECT {SID.format(g="g")} AS sid,
        %(first)s::timestamptz
            + (g * %(step)s + (g %% 7) * %(step)s / 8) * interval '1 second' AS started,
        g >= %(rows)s - 20 AS live
) x
JOIN pg_temp.run_pool p ON p.k = (g * {STRIDE}) %% {POOL}
"""  # noqa: S608 (our constants)


def make_sessions(rows: int, now: datetime, years: float, jobs: dict, seed: int = 1) -> None:
    """`rows` sessions oldest first, ending at `now`; the newest 20 are still live."""
    began = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMP TABLE run_pool (k integer PRIMARY KEY, "
            "script_tag varchar(100), platform varchar(100), host varchar(255), "
            "attempt smallint, status varchar(16), end_reason varchar(32), exit_code integer, "
            "error text, duration_ms bigint, num_turns integer, cost_usd numeric(12, 6), "
            "cost_computed_usd numeric(12, 6), cost_telemetry_usd numeric(12, 6), "
            "input_tokens bigint, output_tokens bigint, cache_read_tokens bigint, "
            "cache_creation_tokens bigint, is_error boolean, stop_reason varchar(64), "
            "api_error_status integer, model varchar(100), wrapper_pid integer, "
            "claude_pid integer, job_id bigint)"
        )
        raw = cursor.cursor if hasattr(cursor, "cursor") else cursor
        with raw.copy(f"COPY pg_temp.run_pool (k, {', '.join(POOL_COLUMNS)}) FROM STDIN") as copy:
            for body in _pool(jobs, seed):
                copy.write_row(body)
        print(f"  {POOL:,} run bodies sent with COPY in {time.perf_counter() - began:.0f} s")
        span = years * 365 * 86400
        params = {
            "seed": str(seed),
            "first": now - timedelta(seconds=span),
            "step": span / rows,
            "rows": rows,
        }
        for low in range(0, rows, 1_000_000):
            params.update(low=low, high=min(rows, low + 1_000_000) - 1)
            cursor.execute(EXPAND, params)
            print(f"  {params['high'] + 1:,} sessions, {time.perf_counter() - began:.0f} s")
        cursor.execute("DROP TABLE pg_temp.run_pool")


def _indexes(table: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The table's secondary indexes (CREATE statements) and unique constraints."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = %s::regclass AND contype = 'u'",
            [table],
        )
        constraints = cursor.fetchall()
        names = {name for name, _ in constraints}
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s "
            "AND indexname NOT LIKE '%%_pkey'",
            [table],
        )
        indexes = [(name, sql) for name, sql in cursor.fetchall() if name not in names]
    return [sql for _, sql in indexes] + [name for name, _ in indexes], constraints


def _bulk(table: str, fill, label: str) -> None:
    """Drop the table's secondary indexes and unique constraints, fill it with triggers
    off (no foreign-key check, no rollup per row), build them again."""
    index_sql, constraints = _indexes(table)
    creates = [sql for sql in index_sql if sql.startswith("CREATE")]
    names = [name for name in index_sql if not name.startswith("CREATE")]
    began = time.perf_counter()
    with connection.cursor() as cursor:
        for name, _ in constraints:
            cursor.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
        for name in names:
            cursor.execute(f'DROP INDEX "{name}"')
        cursor.execute("SET session_replication_role = replica")
    fill()
    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = DEFAULT")
        filled = time.perf_counter()
        print(f"  {label}: rows made in {filled - began:.0f} s")
        cursor.execute("SET maintenance_work_mem = '512MB'")
        for sql in creates:
            cursor.execute(sql)
        for name, definition in constraints:
            cursor.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
        print(
            f"  {label}: {len(creates) + len(constraints)} indexes built in "
            f"{time.perf_counter() - filled:.0f} s"
        )


TELEMETRY = """
INSERT INTO sessions_app_runtelemetry (
    session_id, host, job_tag, trace_id, cost_usd, api_requests, api_errors, tool_calls,
    tool_failures, ttft_p50_ms, ttft_p95_ms, input_tokens, output_tokens, last_event_at,
    rollup, updated_at)
SELECT s.session_id, s.host, s.script_tag, md5(s.session_id::text),
    COALESCE(s.cost_usd, s.cost_telemetry_usd, s.cost_computed_usd, 0),
    1 + (s.id %% 60), (s.id %% 20 = 0)::int, s.id %% 80, (s.id %% 10 = 0)::int,
    600 + s.id %% 900, 1500 + s.id %% 2500, COALESCE(s.input_tokens, 0),
    COALESCE(s.output_tokens, 0), s.ended_at, '{}', s.ended_at
FROM sessions_app_session s WHERE s.started_at >= %s AND s.ended_at IS NOT NULL
"""


def make_telemetry(since: datetime) -> None:
    """A RunTelemetry row for every finished run since `since` (telemetry turned on)."""
    with connection.cursor() as cursor:
        cursor.execute(TELEMETRY, [since])


def load(rows: int, now: datetime, years: float = 2.0, telemetry_days: int = 180) -> None:
    """Append `rows` sessions ending at `now`, then their telemetry, then the rollups."""
    assert connection.vendor == "postgresql", "the COPY loader is for PostgreSQL"
    began = time.perf_counter()
    jobs = make_jobs()
    _bulk(Session._meta.db_table, lambda: make_sessions(rows, now, years, jobs), "sessions")
    if telemetry_days:
        since = now - timedelta(days=telemetry_days)
        _bulk(RunTelemetry._meta.db_table, lambda: make_telemetry(since), "telemetry")
    if rebuild_rollups is not None:
        rolled = time.perf_counter()
        rebuild_rollups()
        print(f"  rollups rebuilt in {time.perf_counter() - rolled:.0f} s")
    with connection.cursor() as cursor:
        cursor.execute("VACUUM (ANALYZE)")
    print(f"{rows:,} sessions loaded in {time.perf_counter() - began:.0f} s")


def fixed_now() -> datetime:
    return datetime(2026, 11, 24, tzinfo=UTC)
