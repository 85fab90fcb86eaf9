"""A stop in a second: how long a stop asked on a console takes to end a run on a
reporting host, from the request to the run's wrapper gone, over N stops.

    .venv/bin/python benchmarks/bench_fast_stop.py                 # SQLite, 20 stops
    .venv/bin/python benchmarks/bench_fast_stop.py --postgres      # two consoles
    .venv/bin/python benchmarks/bench_fast_stop.py --no-push       # the report path

Real processes (tests/fast_stop_fleet.py): `opsconsole serve` (with --postgres, two of
them on one PostgreSQL database, the host's poll held by the first and every stop
asked on the second), `opsconsole monitor --report-to` as host h1 sampling every 2 s,
and each run the wrapper around tests/fake_claude.py. --no-push turns the host's held
poll off (OPSCONSOLE_PUSH_ACTIONS=0): requests ride the report answers, as before.
Prints the Markdown row for docs/scale.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# The helpers import the project's modules; this process opens no database itself.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "opsconsole.settings")
os.environ["OPSCONSOLE_HOME"] = tempfile.mkdtemp(prefix="bench-fast-stop-self-")
os.environ.pop("DATABASE_URL", None)

import django  # noqa: E402

django.setup()

from tests.fast_stop_fleet import fleet, hops  # noqa: E402
from tests.test_replicas import admin, server_url  # noqa: E402

PG_DATABASE = "faststop_bench"


def host_env(root: Path) -> dict[str, str]:
    """The host's own home and Claude config dir, its runs the fake claude (as the
    suite's `state` and `fake_claude` fixtures make them)."""
    home, config = root / "home", root / "claude-config"
    for folder in (home, config, root / "fake-claude-state", root / "bin"):
        folder.mkdir(mode=0o700, parents=True)
    launcher = root / "bin" / "claude"
    launcher.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" "{REPO / "tests" / "fake_claude.py"}" "$@"\n'
    )
    launcher.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "CLAUDE_SESSION_ID"}
    env.update(
        OPSCONSOLE_HOME=str(home),
        OPSCONSOLE_ACTIVE_DIR=str(home / "active"),
        CLAUDE_CONFIG_DIR=str(config),
        OPSCONSOLE_CLAUDE_CONFIG_DIRS=str(config),
        OPSCONSOLE_CLAUDE_BIN=str(launcher),
        FAKE_CLAUDE_STATE=str(root / "fake-claude-state"),
        PYTHONPATH=str(REPO),
    )
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stops", type=int, default=20)
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--no-push", action="store_true")
    parser.add_argument("--sample-seconds", default="2", help="the host's (2: as deployed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-fast-stop-") as folder:
        root = Path(folder)
        env = host_env(root / "host")
        if args.postgres:
            admin(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)')
            admin(f'CREATE DATABASE "{PG_DATABASE}"')
            database, names = f"{server_url()}/{PG_DATABASE}", ("console-a", "console-b")
        else:
            database, names = f"sqlite:///{root / 'console.sqlite3'}", ("console-a",)
        extra = {"OPSCONSOLE_SAMPLE_SECONDS": args.sample_seconds}
        if args.no_push:
            extra["OPSCONSOLE_PUSH_ACTIONS"] = "0"
        figures, via = [], set()
        try:
            with fleet(root, env, database, names, **extra) as running:
                for n in range(args.stops):
                    latency, action = running.stop_latency(f"bench-stop-{n}")
                    figures.append(latency * 1000)
                    via.add(action["detail"].get("via"))
                    where = hops(action) if action.get("sent_at") else "not handed out"
                    print(f"stop {n + 1}: {latency * 1000:.0f} ms ({where})", flush=True)
        finally:
            if args.postgres:
                admin(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)')
    where = "two consoles on PostgreSQL, asked on B" if args.postgres else "one console on SQLite"
    figures.sort()
    p90 = figures[max(0, int(len(figures) * 0.9) - 1)]
    print(
        f"| {where} | {'report answer' if args.no_push else 'held poll'} ({', '.join(sorted(via))})"
        f" | {len(figures)} | {statistics.median(figures):.0f} | {p90:.0f} | {max(figures):.0f} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
