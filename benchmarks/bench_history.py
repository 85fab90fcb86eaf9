"""History at scale: 1,000,000 sessions in SQLite, timed through the test client.

    .venv/bin/python benchmarks/bench_history.py [--rows 1000000]

Rows are spread over a year across 200 tags, inserted oldest first as real
history accumulates, with retries, failures, quota skips and unknown costs
(1 in 11). Each figure is the median of 5 requests; ANALYZE runs first, as
`opsconsole serve` does at start.
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

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, reset_queries  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from sessions_app.models import Session, Status  # noqa: E402

STATUSES = (
    [Status.SUCCEEDED] * 80
    + [Status.FAILED] * 8
    + [Status.REFUSED] * 5
    + [Status.QUOTA_SKIP] * 4
    + [Status.KILLED] * 3
)


def populate(rows: int) -> str:
    rng = random.Random(1)
    now = datetime(2026, 11, 24, tzinfo=UTC)
    batch = []
    probe = None
    for index in range(rows):
        status = rng.choice(STATUSES)
        # Appended in time order, as history accumulates: oldest first over a year.
        started = now - timedelta(seconds=(rows - index) * 365 * 86400 // rows)
        session_id = uuid.UUID(int=rng.getrandbits(128), version=4)
        probe = probe or str(session_id)
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
    return probe


def timed(client: Client, url: str) -> tuple[float, int]:
    samples, queries = [], 0
    for _ in range(5):
        reset_queries()
        with CaptureQueriesContext(connection) as captured:
            began = time.perf_counter()
            response = client.get(url)
            samples.append(time.perf_counter() - began)
        assert response.status_code == 200, (url, response.status_code)
        queries = len(captured.captured_queries)
    return round(statistics.median(samples) * 1000, 1), queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    if Session.objects.count() >= args.rows:
        probe = str(Session.objects.order_by("id").values_list("session_id", flat=True)[0])
        print(f"reusing {Session.objects.count():,} sessions in {WORK}\n")
    else:
        began = time.perf_counter()
        probe = populate(args.rows)
        seconds = time.perf_counter() - began
        print(
            f"{args.rows:,} sessions inserted in {seconds:.0f} s (SQLite, {os.cpu_count()} cores)\n"
        )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    client = Client()
    user, _ = get_user_model().objects.get_or_create(username="bench")
    client.force_login(user)
    deep = Session.objects.order_by("-started_at", "-id")[500_000 if args.rows > 500_000 else 0]
    cursor = f"{deep.started_at.isoformat()}~{deep.pk}"
    cases = [
        ("history, page 1", "/history/"),
        ("history, deep page (500,000 rows in)", f"/history/?before={cursor}"),
        ("filter by tag", "/history/?tag=job-042"),
        ("filter by status (killed)", "/history/?status=killed"),
        ("filter by date range (one week)", "/history/?date_from=2026-06-01&date_to=2026-06-07"),
        ("tag + status + dates", "/history/?tag=job-007&status=failed&date_from=2026-01-01"),
        ("session id prefix search", f"/history/?q={probe[:8]}"),
        ("API /api/sessions?tag=", "/api/sessions?tag=job-042"),
        ("costs, last 30 days", "/costs/?days=30"),
    ]
    print("| request | median (ms) | queries |")
    print("|---|---:|---:|")
    for label, url in cases:
        ms, queries = timed(client, url)
        print(f"| {label} | {ms} | {queries} |")


if __name__ == "__main__":
    main()
