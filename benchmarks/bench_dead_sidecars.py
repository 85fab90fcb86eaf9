"""Thousands of dead runs' sidecars found at once: how long each sample round takes.

Real sidecar files (runs whose wrapper is gone and that left no completion record), a
real SQLite database, the monitor's own `tick()`, rounds run back to back until every
dead run is on record. Reports the first round (which also parses every sidecar once),
the slowest and the median round after it, how many runs each round recorded, and how
many rounds it took to record them all. Nothing leaves this machine.

    .venv/bin/python benchmarks/bench_dead_sidecars.py                # 10,000 dead runs
    .venv/bin/python benchmarks/bench_dead_sidecars.py --count 2000
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
WORK = Path(tempfile.mkdtemp(prefix="opsconsole-bench-dead-"))
os.environ["OPSCONSOLE_HOME"] = str(WORK / "home")
os.environ["CLAUDE_CONFIG_DIR"] = str(WORK / "claude")
os.environ["OPSCONSOLE_CLAUDE_CONFIG_DIRS"] = str(WORK / "claude")
os.environ["DJANGO_SETTINGS_MODULE"] = "opsconsole.settings"
os.environ["DATABASE_URL"] = f"sqlite:///{WORK / 'bench.sqlite3'}"
os.environ["OPSCONSOLE_SCHEDULERS"] = "cron"

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402

from monitor_app.models import Event  # noqa: E402
from monitor_app.monitor import Monitor  # noqa: E402
from sessions_app.models import Session  # noqa: E402
from tests.live_helpers import write_dead_sidecars  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="dead runs' sidecars")
    parser.add_argument("--max-rounds", type=int, default=1000)
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    (WORK / "claude").mkdir(parents=True, exist_ok=True)
    write_dead_sidecars(
        settings.OPSCONSOLE_STATE, count=args.count, cwd=str(WORK), config_dir=WORK / "claude"
    )
    monitor = Monitor(cadences=False, publish=True)
    rounds: list[tuple[float, int, int]] = []  # (seconds, runs recorded, events written)
    recorded = events = 0
    while len(rounds) < args.max_rounds:
        began = time.perf_counter()
        monitor.tick()
        took = time.perf_counter() - began
        now_recorded, now_events = Session.objects.count(), Event.objects.count()
        rounds.append((took, now_recorded - recorded, now_events - events))
        recorded, events = now_recorded, now_events
        if recorded >= args.count:
            break
    first, rest = rounds[0], rounds[1:] or rounds
    interval = settings.OPSCONSOLE_SAMPLE_SECONDS
    print(f"dead runs: {args.count} (sample interval {interval:g} s)")
    print(f"first round: {first[0] * 1000:.0f} ms, recorded {first[1]}, events {first[2]}")
    print(
        f"later rounds: median {statistics.median(r[0] for r in rest) * 1000:.0f} ms, "
        f"max {max(r[0] for r in rest) * 1000:.0f} ms, "
        f"max recorded per round {max(r[1] for r in rest)}, "
        f"max events per round {max(r[2] for r in rest)}"
    )
    print(f"rounds until all on record: {len(rounds)} (recorded {recorded} of {args.count})")
    over = sum(1 for r in rounds if r[0] > interval)
    print(f"rounds longer than the interval: {over} of {len(rounds)}")


if __name__ == "__main__":
    main()
