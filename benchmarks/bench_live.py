"""Listing latency with N live sidecars (cached and uncached), and transcript tail latency.

Real processes (one `sleep` per live session), real sidecars, a real SQLite
database, and the API view called through Django's test client with a bearer
token. Prints a Markdown table.

    .venv/bin/python benchmarks/bench_live.py            # 10, 100, 1000 sessions
    .venv/bin/python benchmarks/bench_live.py --sessions 10 100
    .venv/bin/python benchmarks/bench_live.py --sessions   # tail latency alone
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
WORK = Path(tempfile.mkdtemp(prefix="opsconsole-bench-"))
os.environ["OPSCONSOLE_HOME"] = str(WORK / "home")
os.environ["CLAUDE_CONFIG_DIR"] = str(WORK / "claude")
os.environ["OPSCONSOLE_ALLOWED_HOSTS"] = "testserver"
os.environ["DJANGO_SETTINGS_MODULE"] = "opsconsole.settings"
os.environ.pop("DATABASE_URL", None)

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.cache import cache  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.test import Client  # noqa: E402
from django.utils import timezone  # noqa: E402

from monitor_app.live import get_snapshot, take_snapshot  # noqa: E402
from opsconsole.models import ApiToken  # noqa: E402
from sessions_app.models import Session  # noqa: E402
from tests.live_helpers import sidecar_for  # noqa: E402
from wrapper.formats import (  # noqa: E402
    ensure_private_dir,
    new_session_id,
    transcript_path,
    write_json_atomic,
)

MB = 1024 * 1024


def median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 2)


def timed(fn, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - began)
    return median_ms(samples)


def start_sessions(count: int) -> list[subprocess.Popen]:
    paths = settings.OPSCONSOLE_STATE
    ensure_private_dir(paths.active)
    procs = [subprocess.Popen(["sleep", "600"]) for _ in range(count)]
    for proc in procs:
        sidecar = sidecar_for(
            proc.pid,
            tag=f"bench-{proc.pid}",
            cwd=str(WORK),
            config_dir=Path(os.environ["CLAUDE_CONFIG_DIR"]),
        )
        write_json_atomic(paths.sidecar_path(proc.pid), sidecar.to_dict())
    return procs


def stop_sessions(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.kill()
    for proc in procs:
        proc.wait()
    for sidecar in settings.OPSCONSOLE_STATE.active.glob("*.json"):
        sidecar.unlink()


def bench_listing(counts: list[int], client: Client, auth: dict) -> list[tuple]:
    rows = []
    for count in counts:
        procs = start_sessions(count)
        try:
            take_snapshot(settings.OPSCONSOLE_STATE)  # first sight writes the live rows
            uncached = timed(lambda: take_snapshot(settings.OPSCONSOLE_STATE), 5)

            def api_uncached():
                cache.clear()
                assert client.get("/api/claude-active", **auth).status_code == 200

            api_cold = timed(api_uncached, 5)
            get_snapshot(fresh=True)
            cached = timed(get_snapshot, 200)
            api_warm = timed(lambda: client.get("/api/claude-active", **auth), 20)
            listed = len(get_snapshot().sessions)
            assert listed == count, f"expected {count} live sessions, saw {listed}"
        finally:
            stop_sessions(procs)
            take_snapshot(settings.OPSCONSOLE_STATE)  # GC records them; not timed
        rows.append((count, uncached, cached, api_cold, api_warm))
    return rows


def bench_tail(client: Client, auth: dict) -> list[tuple]:
    """GET /api/claude-jsonl/<id> on a 1 MB and a (sparse) 1 GB transcript."""
    line = (
        b'{"type":"assistant","message":{"content":[{"type":"text","text":"'
        + b"x" * 400
        + b'"}]}}\n'
    )
    rows = []
    for label, size in (("1 MB", MB), ("1 GB", 1024 * MB)):
        session_id = new_session_id()
        path = transcript_path(Path(os.environ["CLAUDE_CONFIG_DIR"]), str(WORK), session_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:
            handle.truncate(size - 4 * MB if size > 4 * MB else 0)
            handle.seek(0, os.SEEK_END)
            while handle.tell() < size:
                handle.write(line)
        Session.objects.create(  # the common case: a run on record, with its cwd
            session_id=session_id,
            script_tag="bench",
            status="succeeded",
            started_at=timezone.now(),
            cwd=str(WORK),
            claude_config_dir=os.environ["CLAUDE_CONFIG_DIR"],
        )
        url = f"/api/claude-jsonl/{session_id}"
        tail_ms = timed(lambda url=url: client.get(url, **auth), 20)
        total = path.stat().st_size
        range_ms = timed(
            lambda url=url, total=total: client.get(
                url, HTTP_RANGE=f"bytes={total - 2000}-", **auth
            ),
            20,
        )
        rows.append((label, tail_ms, range_ms))
        path.unlink()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sessions",
        type=int,
        nargs="*",
        default=[10, 100, 1000],
        help="live-session counts to list; none: only the tail benchmark",
    )
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create_user("bench")
    auth = {"HTTP_AUTHORIZATION": f"Bearer {ApiToken.issue(user)[1]}"}
    client = Client()

    print(f"Machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, SQLite\n")
    if args.sessions:
        print(
            "| live sessions | snapshot, uncached (ms) | snapshot, cached (ms) "
            "| GET /api/claude-active, uncached (ms) | GET /api/claude-active, cached (ms) |"
        )
        print("|---:|---:|---:|---:|---:|")
        for count, uncached, cached, cold, warm in bench_listing(args.sessions, client, auth):
            print(f"| {count} | {uncached} | {cached} | {cold} | {warm} |")
    print("\n| transcript | GET tail, 200 KB (ms) | GET Range: last 2 KB (ms) |")
    print("|---|---:|---:|")
    for label, tail_ms, range_ms in bench_tail(client, auth):
        print(f"| {label} | {tail_ms} | {range_ms} |")


if __name__ == "__main__":
    main()
