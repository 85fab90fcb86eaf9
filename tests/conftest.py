"""Shared fixtures: an isolated state root and Claude config dir per test."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings

from sessions_app.origins import CI_PROVIDERS
from wrapper.formats import StatePaths

REPO_ROOT = Path(__file__).resolve().parent.parent
pytest_plugins = [
    "tests.realcli_fixtures",
    "tests.server_fixtures",
    "tests.browser_fixtures",
    "tests.scheduler_tools",
]
PYTHON = sys.executable
CI_MARKERS = tuple(sorted({provider[1] for provider in CI_PROVIDERS}))


@dataclass
class State:
    """The directories a wrapper and the console share in one test."""

    paths: StatePaths
    config_dir: Path  # CLAUDE_CONFIG_DIR
    workdir: Path  # the cwd the agents run in
    env: dict[str, str]  # environment for subprocesses (wrapper, stand-in claude)

    @property
    def home(self) -> Path:
        return self.paths.home

    @property
    def active(self) -> Path:
        return self.paths.active


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    config_dir = tmp_path / "claude-config"
    config_dir.mkdir(mode=0o700)
    workdir = tmp_path / "work"
    workdir.mkdir()
    paths = StatePaths(home=home, active=home / "active")
    env = dict(os.environ)
    env.update(
        OPSCONSOLE_HOME=str(home),
        OPSCONSOLE_ACTIVE_DIR=str(paths.active),
        CLAUDE_CONFIG_DIR=str(config_dir),
        PYTHONPATH=str(REPO_ROOT),
    )
    env.pop("CLAUDE_SESSION_ID", None)
    # The suite run by a CI job: its agents are not that job's runs (sessions_app.origins).
    for marker in CI_MARKERS:
        env.pop(marker, None)
    for key in ("OPSCONSOLE_HOME", "OPSCONSOLE_ACTIVE_DIR", "CLAUDE_CONFIG_DIR"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.delenv("CLAUDE_SESSION_ID", raising=False)
    yield State(paths=paths, config_dir=config_dir, workdir=workdir, env=env)
    kill_leftovers(config_dir)


def kill_leftovers(config_dir: Path) -> None:
    """Kill what a test's agents left running (tools outlive a killed agent: the real CLI
    starts them in sessions of their own). Every such process carries this test's
    CLAUDE_CONFIG_DIR in its environment, and nothing else does."""
    import psutil

    for proc in psutil.process_iter(["environ"]):
        try:
            if (proc.info.get("environ") or {}).get("CLAUDE_CONFIG_DIR") == str(config_dir):
                proc.kill()
        except psutil.Error:
            continue


@pytest.fixture(scope="session")
def django_db_modify_db_settings(
    django_db_modify_db_settings_parallel_suffix,  # PostgreSQL's: a database per worker
    tmp_path_factory,
) -> None:
    """The SQLite test database on a file, in WAL mode as a console runs it, not Django's
    in-memory one: that is one shared cache, where a write that meets another thread's
    read or write fails at once ("database table is locked") instead of waiting out the
    busy timeout, and the tests that run the monitor's threads or a held poll beside
    their own writes failed by chance."""
    database = settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3":
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        folder = tmp_path_factory.mktemp(f"test-database-{worker}")
        database.setdefault("TEST", {})["NAME"] = str(folder / "test.sqlite3")


@pytest.fixture(autouse=True)
def _live_sections_rendered_afresh():
    """A process shares a rendered live section for up to a second: a test must not be
    served the one an earlier test rendered within the same second."""
    from opsconsole.views import sessions as views

    views.forget_live_sections()


@pytest.fixture
def console_state(state: State, settings) -> State:
    """`state`, with the Django settings pointed at it and the snapshot cache empty."""
    from django.core.cache import cache

    settings.OPSCONSOLE_STATE = state.paths
    settings.OPSCONSOLE_HOME = state.home
    settings.OPSCONSOLE_ACTIVE_DIR = state.active
    settings.OPSCONSOLE_CLAUDE_CONFIG_DIRS = [state.config_dir]
    cache.clear()
    yield state
    cache.clear()


@pytest.fixture
def fake_claude(state: State, tmp_path: Path) -> Path:
    """Point the wrapper at tests/fake_claude.py; `state.env` carries the knobs."""
    calls = tmp_path / "fake-claude-state"
    calls.mkdir()
    launcher = tmp_path / "bin" / "claude"
    launcher.parent.mkdir()
    launcher.write_text(
        f'#!/bin/sh\nexec "{PYTHON}" "{REPO_ROOT / "tests" / "fake_claude.py"}" "$@"\n'
    )
    launcher.chmod(0o755)
    state.env.update(OPSCONSOLE_CLAUDE_BIN=str(launcher), FAKE_CLAUDE_STATE=str(calls))
    return calls


def wrapper_command(tag: str, *claude_args: str, extra: tuple[str, ...] = ()) -> list[str]:
    return [PYTHON, "-m", "wrapper", "--tag", tag, *extra, "--", *claude_args]


def wrapper_start_seconds(env: dict) -> float:
    """How long the wrapper takes to start and exit having done nothing, measured now:
    the yardstick for "at once" on this machine at this moment, loaded or not."""
    began = time.monotonic()
    subprocess.run([PYTHON, "-m", "wrapper", "--help"], env=env, capture_output=True, check=True)
    return time.monotonic() - began


def at_once(elapsed: float, env: dict) -> bool:
    """`elapsed` is no more than a wrapper's start and exit, measured side by side (with
    room for the stamp's read and the record's write): nothing waited or retried."""
    return elapsed < 2 * max(wrapper_start_seconds(env), wrapper_start_seconds(env)) + 0.5


@pytest.fixture
def runs():
    """Fake runs started by a test (tests.live_helpers); killed at the end, pass or fail."""
    started = []
    yield started
    for run in started:
        run.kill_all()


def pytest_collection_modifyitems(items):
    """Mark the tests that use the Django test database (`-m database`): CI's second pass,
    on PostgreSQL, runs those. The rest run their consoles on SQLite files of their own
    (or no database), and the first pass already ran them."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & {"db", "transactional_db"} or item.get_closest_marker("django_db"):
            item.add_marker(pytest.mark.database)
