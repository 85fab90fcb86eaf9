"""The zero-config join's cost per monitor sample at 200 live runs (real processes).

    .venv/bin/python benchmarks/bench_job_join.py [--runs 200] [--samples 200]

Prints wall-clock median and p95 per sample, and the same in CPU time (what a
shared machine's other load adds to the wall clock is not the join's).

Starts `--runs` real `sleep` processes standing for unwrapped agents: half under a
process named `cron` as `sh -c "sleep ...; :"` (the cron join: ancestor walk and the
shell's argv), half in a GitHub Actions environment (environ read, then cgroup read
for none of them: CI wins). Takes one real scan of the process table, then times what
the join adds to a sample (monitor_app.job_join.JobJoin): `read` of every run's root
process, `forget`, and `tie` (the database step; every origin tied already after the
first sample). The first sample (reads from /proc, jobs made in SQLite) is timed apart.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
WORK = Path(tempfile.mkdtemp(prefix="opsconsole-bj-"))
os.environ["OPSCONSOLE_HOME"] = str(WORK / "home")
os.environ["DJANGO_SETTINGS_MODULE"] = "opsconsole.settings"
os.environ["OPSCONSOLE_LOG_LEVEL"] = "WARNING"
os.environ.pop("DATABASE_URL", None)

import django  # noqa: E402

django.setup()

import psutil  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402

from jobs_app.models import Job  # noqa: E402
from monitor_app.job_join import JobJoin  # noqa: E402
from monitor_app.snapshot import LiveSession, Snapshot  # noqa: E402
from sessions_app.proctree import scan_process_table  # noqa: E402
from wrapper.formats import Sidecar  # noqa: E402

NOW = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)
CRON = (
    "import ctypes, subprocess, sys\n"
    "ctypes.CDLL(None).prctl(15, b'cron', 0, 0, 0)\n"
    "count = int(sys.argv[1])\n"
    "runs = [subprocess.Popen(['sh', '-c', f'sleep 600; : {i}']) for i in range(count)]\n"
    "[run.wait() for run in runs]\n"
)


def start(runs: int) -> tuple[list[subprocess.Popen], subprocess.Popen]:
    cron = subprocess.Popen([sys.executable, "-c", CRON, str(runs // 2)])
    env = {
        **os.environ,
        "GITHUB_ACTIONS": "true",
        "GITHUB_REPOSITORY": "acme/site",
        "GITHUB_WORKFLOW": "nightly",
    }
    ci = [
        subprocess.Popen(["sleep", "600"], env={**env, "GITHUB_JOB": f"agent-{i % 10}"})
        for i in range(runs - runs // 2)
    ]
    return ci, cron


def agents(ci: list[subprocess.Popen], cron: subprocess.Popen, runs: int) -> list[int]:
    """The `sleep` of each run: the CI ones, and the grandchildren of the cron stand-in."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        table = scan_process_table()
        shells = table.children.get(cron.pid, [])
        sleeps = [c for s in shells for c in table.children.get(s, [])]
        if len(sleeps) == runs // 2:
            return [p.pid for p in ci] + sleeps
        time.sleep(0.1)
    raise SystemExit("the cron stand-in's runs did not start")


def live_session(pid: int, started: float) -> LiveSession:
    sidecar = Sidecar(
        session_id=str(uuid.uuid4()),
        script_tag="unwrapped",
        wrapper_pid=pid,
        wrapper_started=started,
        started_at="2026-12-07T03:00:00.000Z",
        attempt=1,
        platform="",
        host=settings.OPSCONSOLE_HOST,
        cwd="/",
        claude_config_dir="/",
        transcript_path="/",
        claude_pid=pid,
        claude_started=started,
    )
    return LiveSession(sidecar, "unwrapped", [], wrapped=False)


def sample(join: JobJoin, table, sessions: list[LiveSession], tie: bool, clock=time.perf_counter):
    began = clock()
    snapshot = Snapshot(taken_at=NOW)
    for live in sessions:
        live.job_id = None
        join.read(live, live.sidecar.claude_pid, table)
        snapshot.sessions.append(live)
    join.forget(table, {s.session_id for s in sessions}, set())
    if tie:
        join.tie(snapshot, NOW, collect=False)
    return (clock() - began) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    ci, cron = start(args.runs)
    try:
        pids = agents(ci, cron, args.runs)
        began = time.perf_counter()
        table = scan_process_table()
        scan_ms = (time.perf_counter() - began) * 1000
        sessions = [live_session(pid, table.entries[pid].started) for pid in pids]
        join = JobJoin(settings.OPSCONSOLE_HOST)
        first = sample(join, table, sessions, tie=True)
        tied = sum(1 for s in sessions if s.job_id)
        times = sorted(sample(join, table, sessions, tie=True) for _ in range(args.samples))
        # CPU time of this thread: what the join costs, without the waits a shared machine's
        # other processes impose on the wall clock.
        cpu = sorted(
            sample(join, table, sessions, tie=True, clock=time.thread_time)
            for _ in range(args.samples)
        )
        reads_ms = []
        for _ in range(9):  # the /proc reads alone, as on a sample where every run is new
            fresh = JobJoin(settings.OPSCONSOLE_HOST)
            reads_ms.append(sample(fresh, table, sessions, tie=False))
    finally:
        stand_in = psutil.Process(cron.pid)
        started = stand_in.children(recursive=True)  # its shells and their sleeps
        for proc in [*ci, cron, *started]:
            proc.kill()
    p95 = times[int(0.95 * (len(times) - 1))]
    cpu_p95 = cpu[int(0.95 * (len(cpu) - 1))]
    print(f"| {args.runs} live runs, {len(table.entries)} processes in the table | |")
    print("|---|---|")
    print(f"| runs tied to a job | {tied} of {len(sessions)} ({Job.objects.count()} jobs) |")
    print(f"| join per sample, all known: median | {statistics.median(times):.2f} ms |")
    print(f"| join per sample, all known: p95 | {p95:.2f} ms |")
    print(f"| same, CPU time: median / p95 | {statistics.median(cpu):.2f} / {cpu_p95:.2f} ms |")
    print(f"| first sample (reads /proc, makes the jobs) | {first:.1f} ms |")
    print(f"| every run new: /proc reads alone, median | {statistics.median(reads_ms):.1f} ms |")
    print(f"| the process-table scan itself (not the join's) | {scan_ms:.1f} ms |")


if __name__ == "__main__":
    main()
