"""Held polls by the thousand: one console (`opsconsole serve`, default --workers 2
--threads 8, SQLite) holds N reporting hosts' polls; meanwhile ordinary requests
(/api/claude-active) keep answering, and a stop asked for one of the N reaches that
host's held poll.

    .venv/bin/python benchmarks/bench_held_polls.py               # 1,000 polls, 10 stops
    .venv/bin/python benchmarks/bench_held_polls.py --polls 2000

Each poll is a raw socket sending what a host's fleet.action_poll sends (tests/held_polls.py),
all watched by this one process. Prints: how long the console took to take every poll
in (each host token checked), the /api/claude-active median without and with the polls
held, how many polls were turned away (503), the time from each stop request to its
host's poll answered with it, and the web workers' RSS and CPU.

No --no-park: with threads holding the polls (OPSCONSOLE_PARK_HELD_POLLS=0) all but 4
are answered 503 at once, and these raw sockets, which read nothing until the end,
would stall gunicorn's loop (it lingers up to 2 s on each closing connection for the
client's close): a real host reads its 503 and closes at once.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "opsconsole.settings")
os.environ["OPSCONSOLE_HOME"] = tempfile.mkdtemp(prefix="bench-held-polls-self-")
os.environ.pop("DATABASE_URL", None)

import django  # noqa: E402

django.setup()

from tests.held_polls import (  # noqa: E402
    Polls,
    console_serving,
    hosts_with_tokens,
    live_runs_on,
    median_ms,
    stop_and_time,
    tokens_checked,
)
from tests.live_helpers import wait_until  # noqa: E402

ACTIVE_REQUESTS = 200


def web_workers(console) -> list[psutil.Process]:
    """The console's gunicorn workers: its gunicorn master's children."""

    def gunicorn(process: psutil.Process) -> bool:
        return "gunicorn" in " ".join(process.cmdline())

    tree = psutil.Process(console.process.pid).children(recursive=True)
    return [p for p in tree if gunicorn(p) and gunicorn(p.parent())]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--polls", type=int, default=1000)
    parser.add_argument("--stops", type=int, default=10)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "OPSCONSOLE_HOME"}
    with (
        tempfile.TemporaryDirectory(prefix="bench-held-polls-") as folder,
        console_serving(Path(folder), env) as console,
    ):
        tokens = hosts_with_tokens(console, args.polls)
        stopped = [f"p{n}" for n in range(0, args.polls, max(1, args.polls // args.stops))]
        runs = live_runs_on(console, stopped[: args.stops])
        workers = web_workers(console)
        alone = median_ms(console, "/api/claude-active", ACTIVE_REQUESTS)
        rss_before = sum(w.memory_info().rss for w in workers) / 2**20
        cpu_before = sum(w.cpu_times().user + w.cpu_times().system for w in workers)

        began = time.monotonic()
        polls = Polls(console, tokens, wait=25)
        wait_until(lambda: tokens_checked(console) == args.polls, timeout=120, interval=0.5)
        taken_in = time.monotonic() - began
        turned_away = polls.answered()
        held = median_ms(console, "/api/claude-active", ACTIVE_REQUESTS)
        rss_held = sum(w.memory_info().rss for w in workers) / 2**20
        latencies = [
            stop_and_time(console, polls, host, session_id) for host, session_id in runs.items()
        ]
        within = time.monotonic() - began
        cpu = sum(w.cpu_times().user + w.cpu_times().system for w in workers) - cpu_before
        polls.close()

    print(f"{args.polls} polls held, load {os.getloadavg()[0]:.1f}")
    print(f"  all taken in (tokens checked): {taken_in:.1f} s; answered 503: {len(turned_away)}")
    print(f"  /api/claude-active median: {alone:.1f} ms alone, {held:.1f} ms with the polls held")
    ms = sorted(s * 1000 for s in latencies)
    print(
        f"  stop -> held poll answered ({len(ms)}): median {statistics.median(ms):.0f} ms, "
        f"max {ms[-1]:.0f} ms ({', '.join(f'{m:.0f}' for m in ms)})"
    )
    print(
        f"  web workers: RSS {rss_before:.0f} -> {rss_held:.0f} MiB; "
        f"CPU {cpu:.1f} s in {within:.0f} s"
    )
    print(
        f"| {args.polls} | {len(turned_away)} | {alone:.1f} | {held:.1f} | "
        + f"{statistics.median(ms):.0f} / {ms[-1]:.0f}"
        + f" | {rss_before:.0f} → {rss_held:.0f} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
