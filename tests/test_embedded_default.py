"""The embedded default (SQLite, `pip install -e .`) has no PostgreSQL driver: nothing
the console runs on it may import one. Found on a fresh clone: the monitor command
imported the PostgreSQL backend, and `serve`'s monitor died at start."""

from __future__ import annotations

import subprocess

from tests.conftest import PYTHON, REPO_ROOT

# psycopg as if not installed: importing it raises ImportError.
WITHOUT_DRIVER = "import sys; sys.modules['psycopg'] = None; sys.modules['psycopg2'] = None\n"


def opsconsole_without_driver(env: dict, *args: str) -> subprocess.CompletedProcess:
    code = (
        WITHOUT_DRIVER + f"from opsconsole.cli import main; raise SystemExit(main({list(args)!r}))"
    )
    return subprocess.run(
        [PYTHON, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_console_runs_on_sqlite_without_a_postgresql_driver(state):
    env = {k: v for k, v in state.env.items() if k != "DATABASE_URL"}
    migrated = opsconsole_without_driver(env, "migrate", "--no-input")
    assert migrated.returncode == 0, migrated.stderr[-2000:]
    sampled = opsconsole_without_driver(env, "monitor", "--once")
    assert sampled.returncode == 0, sampled.stderr[-2000:]
    checked = opsconsole_without_driver(env, "check")
    assert checked.returncode == 0, checked.stderr[-2000:]
