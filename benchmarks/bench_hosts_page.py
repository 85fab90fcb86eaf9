"""The Hosts page of a large fleet: --hosts simulated hosts (one in ten with --runs live
runs, the rest idle) report once to a console in process (SQLite in a throwaway state
root, or --database on PostgreSQL), then a staff user's /hosts/ is asked --requests
times through the whole Django stack (test client): its median, the bytes of HTML, and
the rows' data (fleet.hosts.host_rows) alone.

    .venv/bin/python benchmarks/bench_hosts_page.py                    # 2,000 hosts
    .venv/bin/python benchmarks/bench_hosts_page.py --hosts 500 --requests 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).parent)]
from serve_helpers import console_in_process  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=10, help="live runs of one host in ten")
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--database", help="a PostgreSQL database name (dropped and made again)")
    args = parser.parse_args()
    if not 1 <= args.hosts <= 20_000 or not 1 <= args.requests <= 1000:
        parser.error("--hosts from 1 to 20000, --requests from 1 to 1000")
    if args.database is not None and not args.database.isidentifier():
        parser.error("--database is a plain name (letters, digits, _)")
    console_in_process(args.database, "bench-hosts-page-")
    from bench_hosts import SimulatedHost
    from django.contrib.auth import get_user_model
    from django.test import Client

    from fleet.console import receive_report
    from fleet.hosts import host_rows

    for n in range(args.hosts):
        host = SimulatedHost(f"host-{n:05d}", "", args.runs if n % 10 == 0 else 0, 2.0)
        receive_report(json.loads(host.body()), host.name)
    staff = Client(HTTP_HOST="127.0.0.1")
    staff.force_login(get_user_model().objects.create_user("ops", is_staff=True))

    def timed(ask) -> tuple[float, object]:
        started = time.perf_counter()
        answer = ask()
        return (time.perf_counter() - started) * 1000, answer

    ask_page = lambda: staff.get("/hosts/")  # noqa: E731
    timed(ask_page)  # templates compiled, connections open
    pages = [timed(ask_page) for _ in range(args.requests)]
    assert all(page.status_code == 200 for _, page in pages)
    rows = [timed(host_rows)[0] for _ in range(args.requests)]
    print(
        f"{args.hosts:,} hosts, {args.hosts // 10:,} with {args.runs} live runs; "
        f"/hosts/ median {statistics.median(ms for ms, _ in pages):.0f} ms "
        f"({len(pages[-1][1].content):,} bytes), host_rows alone median "
        f"{statistics.median(rows):.0f} ms, over {args.requests} requests"
    )


if __name__ == "__main__":
    main()
