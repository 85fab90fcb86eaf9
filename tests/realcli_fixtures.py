"""Fixtures that run the real Claude Code CLI offline against tests/messages_api.py."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, State
from tests.messages_api import ScriptedApi

INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install-claude-cli"


@pytest.fixture(scope="session")
def real_claude_bin() -> Path:
    """The pinned real CLI, installed from npm on first use (CI requires it)."""
    configured = os.environ.get("OPSCONSOLE_REAL_CLAUDE")
    if configured:
        return Path(configured)
    required = os.environ.get("OPSCONSOLE_REQUIRE_REAL_CLI") == "1"
    if shutil.which("npm") is None or shutil.which("node") is None:
        if required:
            pytest.fail("OPSCONSOLE_REQUIRE_REAL_CLI=1 but node/npm are not on PATH")
        pytest.skip("the real Claude Code CLI needs node and npm on PATH")
    result = subprocess.run([str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        message = f"could not install the real Claude Code CLI:\n{result.stderr[-2000:]}"
        if required:
            pytest.fail(message)
        pytest.skip(message)
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def messages_api():
    api = ScriptedApi().start()
    yield api
    api.stop()


@pytest.fixture
def real_claude(state: State, real_claude_bin: Path, messages_api: ScriptedApi, tmp_path: Path):
    """`state.env` set up so the wrapper (or a test) runs the real CLI offline."""
    home = tmp_path / "user-home"
    home.mkdir()
    state.env.update(
        OPSCONSOLE_CLAUDE_BIN=str(real_claude_bin),
        ANTHROPIC_BASE_URL=messages_api.url,
        ANTHROPIC_API_KEY="sk-ant-offline-test",
        HOME=str(home),  # nothing of the real user's ~/.claude is read or written
        DISABLE_TELEMETRY="1",
        DISABLE_AUTOUPDATER="1",
        DISABLE_ERROR_REPORTING="1",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
    )
    return messages_api
