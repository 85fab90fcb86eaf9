"""The fleet's reads in process: what one web worker spends building
/api/claude-active?host=all and the fleet live rows, by how many hosts reported
since its last read. No HTTP server and no concurrent load: the cost itself, which
under load is paid again in every worker.

bench_hosts.py's simulated hosts (10 live runs each) report through `receive_report`
into a fresh PostgreSQL database of the script's own (`opsconsole_bench_fleet_read`).

    .venv/bin/python benchmarks/bench_fleet_read.py              # 200 hosts
    .venv/bin/python benchmarks/bench_fleet_read.py --hosts 50
    .venv/bin/python benchmarks/bench_fleet_read.py --vary-cpu   # no row reads the same twice
    .venv/bin/python benchmarks/bench_fleet_read.py --workers 2 4  # worker processes

With --workers, N real processes (each a web worker's Django on the same database) are
asked for /api/claude-active?host=all's body at the same moment after every round of
reports: the CPU all of them spend on it per new state, and how many built it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).parent)]
from serve_helpers import console_in_process  # noqa: E402

DATABASE = "opsconsole_bench_fleet_read"
ROUNDS = 9


# One web worker of its own: each "read" line it is sent, the fleet's body once; it
# answers the CPU ms that took, and how many bodies this process has built so far.
WORKER = """
import json, sys, time
import django
django.setup()
from monitor_app.fleet_reader import fleet
for line in sys.stdin:
    began = time.thread_time()
    fleet.api_document()
    spent = (time.thread_time() - began) * 1000
    print(json.dumps([spent, getattr(fleet, "builds", None)]), flush=True)
"""


def workers_table(counts: list[int], hosts: list, report) -> None:
    """CPU of all the workers per new state, and builds per state, by worker count."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    print("\n| web workers | CPU ms per new state, all workers (median) | bodies built per state |")
    print("|---:|---:|---:|")
    for count in counts:
        workers = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(count)
        ]
        try:
            spent, built = [], []
            for round_ in range(ROUNDS + 2):
                for host in hosts[: max(1, len(hosts) // 4)]:
                    report(host)
                for worker in workers:
                    worker.stdin.write("read\n")
                    worker.stdin.flush()
                answers = [json.loads(worker.stdout.readline()) for worker in workers]
                if round_ < 2:  # each worker's first read parses every host: not steady
                    before = [a[1] for a in answers]
                    continue
                spent.append(sum(a[0] for a in answers))
                if answers[0][1] is not None:
                    built.append(sum(a[1] for a in answers) - sum(before))
                    before = [a[1] for a in answers]
            per_state = f"{statistics.mean(built):.2f}" if built else "(not counted)"
            print(f"| {count} | {statistics.median(spent):.1f} | {per_state} |", flush=True)
        finally:
            for worker in workers:
                worker.stdin.close()
                worker.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument(
        "--vary-cpu", action="store_true", help="every process's CPU changes in every sample"
    )
    parser.add_argument(
        "--workers", type=int, nargs="*", default=[], help="worker processes, e.g. 2 4"
    )
    args = parser.parse_args()
    if not 1 <= args.hosts <= 1000:
        parser.error("--hosts from 1 to 1000")
    console_in_process(DATABASE, "bench-fleet-read-")
    from bench_hosts import SimulatedHost
    from django.contrib.auth import get_user_model
    from django.test import Client

    from fleet.console import receive_report
    from monitor_app.fleet_reader import fleet
    from opsconsole.views.sessions import forget_live_sections

    hosts = [SimulatedHost(f"host-{i:03d}", "", 10, 2.0, args.vary_cpu) for i in range(args.hosts)]

    def report(host: SimulatedHost) -> None:
        host.posts += 1
        host.acknowledged(receive_report(json.loads(host.body()), host.name))

    for host in hosts:
        report(host)
    browser = Client(HTTP_HOST="127.0.0.1")
    browser.force_login(get_user_model().objects.create_user("ops", is_staff=True))

    def timed(read, changed: int) -> float:
        """CPU ms of `read` after `changed` hosts reported, median of ROUNDS."""
        spent = []
        for _ in range(ROUNDS):
            for host in hosts[:changed]:
                report(host)
            forget_live_sections()  # each read renders, as a worker under load does
            began = time.thread_time()
            read()
            spent.append((time.thread_time() - began) * 1000)
        return statistics.median(spent)

    def page() -> None:
        assert browser.get("/live/rows/?host=all").status_code == 200

    if args.workers:
        workers_table(args.workers, hosts, report)
        return
    runs = len(json.loads(fleet.api_document()[0])["sessions"])
    varied = "; every run's CPU changes in every sample" if args.vary_cpu else ""
    print(f"\n{args.hosts} hosts, {runs} live runs{varied}; CPU ms, median of {ROUNDS}\n")
    print(
        "| hosts reported since the last read | fleet API body | fleet live rows "
        "| fleet live rows page, through Django |"
    )
    print("|---:|---:|---:|---:|")
    for changed in sorted({0, 1, args.hosts // 4, args.hosts}):
        api = timed(fleet.api_document, changed)
        live = timed(lambda: fleet.live(200), changed)
        rows = timed(page, changed)
        print(f"| {changed} | {api:.1f} | {live:.1f} | {rows:.1f} |")


if __name__ == "__main__":
    main()
