"""The alert engine's round and /metrics, timed in SQLite.

    .venv/bin/python benchmarks/bench_alerts.py [--history 100000]

`engine.tick()` runs once per monitor sample, so its cost is paid every 2 s:
timed idle (no new event) with 10 / 200 live runs, and with a burst of 100 run
endings to read. Delivery is excluded (no channel): that is bounded by its own
time budget. `/metrics` is timed over `--history` finished runs in 50 jobs.
Each figure is the median of 9 rounds.
"""

from __future__ import annotations

import argparse
import json
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
WORK = Path(tempfile.mkdtemp(prefix="opsconsole-ab-"))
os.environ["OPSCONSOLE_HOME"] = str(WORK / "home")
os.environ["OPSCONSOLE_ALLOWED_HOSTS"] = "testserver"
os.environ["DJANGO_SETTINGS_MODULE"] = "opsconsole.settings"
os.environ["OPSCONSOLE_LOG_LEVEL"] = "WARNING"
os.environ.pop("DATABASE_URL", None)
os.environ.pop("OPSCONSOLE_ALERT_URLS", None)

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402

from alerts_app import engine  # noqa: E402
from jobs_app.models import Job  # noqa: E402
from monitor_app.models import Event, HostSample  # noqa: E402
from monitor_app.snapshot import LiveSession, Snapshot  # noqa: E402
from sessions_app.models import Session, Status  # noqa: E402
from wrapper.formats import Sidecar  # noqa: E402

NOW = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)
HOST = settings.OPSCONSOLE_HOST


def median_ms(action, rounds: int = 9) -> float:
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        action()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def populate(history: int) -> list[Job]:
    rng = random.Random(1)
    jobs = [
        Job.objects.create(scheduler="cron", label=f"job-{i}", host=HOST, tags=[f"tag-{i}"])
        for i in range(50)
    ]
    rows = []
    for index in range(history):
        job = jobs[index % 50]
        started = NOW - timedelta(days=30) + timedelta(seconds=index * 20)
        rows.append(
            Session(
                session_id=uuid.uuid4(),
                script_tag=job.tags[0],
                host=HOST,
                status=rng.choice([Status.SUCCEEDED] * 9 + [Status.FAILED]),
                job=job,
                started_at=started,
                ended_at=started + timedelta(seconds=60),
                duration_ms=rng.randint(30_000, 90_000),
                cost_usd=Decimal("0.05"),
                input_tokens=1000,
                output_tokens=100,
            )
        )
        if len(rows) == 5000:
            Session.objects.bulk_create(rows)
            rows = []
    Session.objects.bulk_create(rows)
    return jobs


def live_snapshot(count: int, jobs: list[Job]) -> Snapshot:
    sessions = []
    for index in range(count):
        job = jobs[index % len(jobs)]
        session_id = str(uuid.uuid4())
        Session.objects.create(
            session_id=session_id,
            script_tag=job.tags[0],
            host=HOST,
            status=Status.LIVE,
            job=job,
            started_at=NOW - timedelta(minutes=1),
        )
        sidecar = Sidecar(
            session_id=session_id,
            script_tag=job.tags[0],
            wrapper_pid=100000 + index,
            wrapper_started=1.0,
            started_at=(NOW - timedelta(minutes=1)).isoformat(),
            attempt=1,
            platform="cron",
            host=HOST,
            cwd="/srv",
            claude_config_dir="/nonexistent",
            transcript_path="/nonexistent/t.jsonl",
        )
        live = LiveSession(sidecar=sidecar, state="live", processes=[])
        live.idle_since = None
        live.running_cost_usd = 0.01
        sessions.append(live)
    return Snapshot(taken_at=NOW, sessions=sessions)


def endings(count: int, jobs: list[Job], base: int) -> None:
    for index in range(count):
        job = jobs[index % len(jobs)]
        run = Session.objects.create(
            session_id=uuid.uuid4(),
            script_tag=job.tags[0],
            host=HOST,
            status=Status.FAILED if index % 3 else Status.SUCCEEDED,
            exit_code=1,
            job=job,
            started_at=NOW - timedelta(seconds=30),
            ended_at=NOW,
            duration_ms=30_000,
            cost_usd=Decimal("0.02"),
        )
        Event.objects.create(
            at=NOW,
            host=HOST,
            kind="run_ended",
            session_id=run.session_id,
            job=job,
            script_tag=run.script_tag,
            status=run.status,
            message="run ended",
            dedupe_key=f"bench:{base}:{index}",
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--history", type=int, default=100_000)
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    jobs = populate(args.history)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    engine.tick(NOW, Snapshot(taken_at=NOW))  # the cursor row, the environment sync
    print(f"history: {args.history:,} finished runs in 50 jobs (SQLite)")
    for count in (10, 200):
        snap = live_snapshot(count, jobs)
        idle = median_ms(lambda snap=snap: engine.tick(NOW, snap, background_delivery=False))
        print(f"tick, no new event, {count} live runs: {idle:.1f} ms")
    rounds = []
    for base in range(5):
        endings(100, jobs, base)
        began = time.perf_counter()
        engine.tick(NOW + timedelta(seconds=base), snap, background_delivery=False)
        rounds.append((time.perf_counter() - began) * 1000)
    print(f"tick reading 100 run endings, 200 live runs: {statistics.median(rounds):.0f} ms")
    HostSample.objects.create(  # what the monitor publishes; /metrics reads it
        host=HOST,
        seq=1,
        taken_at=NOW,
        interval_seconds=2,
        sample_ms=20,
        etag="bench",
        api_document=json.dumps(
            {"sessions": [{"host": HOST, "state": "live"} for _ in snap.sessions]}
        ),
        state_document="{}",
    )
    client = Client()
    client.force_login(get_user_model().objects.create_user("bench"))
    metrics = median_ms(lambda: client.get("/metrics"), rounds=5)
    size = len(client.get("/metrics").content)
    print(f"GET /metrics: {metrics:.0f} ms ({size:,} bytes)")


if __name__ == "__main__":
    main()
