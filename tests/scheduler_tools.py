"""Stand-ins for launchctl, systemctl, systemd-analyze and crontab (a pytest plugin):
real executables on PATH that record every call, for controls on any host."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO_ROOT
from tests.test_collectors import stand_in


@pytest.fixture
def tools(tmp_path, monkeypatch):
    """launchctl, systemctl, systemd-analyze and crontab stand-ins on PATH; calls.log
    records every call; a label containing 'broken' makes them fail like the real ones."""
    bin_dir = tmp_path / "tools"
    calls = tmp_path / "calls.log"
    crontab = tmp_path / "crontab.txt"
    recorder = (
        f'echo "$(basename "$0") $*" >> {calls}\n'
        'case "$*" in *broken*) echo "Unit broken.timer not found." >&2; exit 5;; esac\n'
    )
    stand_in(bin_dir, "launchctl", recorder)
    stand_in(bin_dir, "systemctl", recorder)
    stand_in(
        bin_dir,
        "systemd-analyze",
        recorder
        + 'case "$3" in garbage*) echo "Failed to parse" >&2; exit 1;; esac\n'
        # As the real one: without `--`, an option-like value is taken as an option.
        + 'case "$2" in -*) echo "systemd-analyze 257"; exit 0;; esac\n',
    )
    stand_in(
        bin_dir,
        "crontab",
        f'echo "crontab $*" >> {calls}\n'
        f'if [ "$1" = "-l" ]; then cat {crontab}; else cat > {crontab}; fi\n',
    )
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("HOME", str(tmp_path / "home-dir"))
    return {"calls": calls, "crontab": crontab, "dir": tmp_path}


def calls(tools) -> list[str]:
    return tools["calls"].read_text().splitlines() if tools["calls"].exists() else []


def own_crontab(root: Path, env: dict, fake_bin: Path) -> Path:
    """Each host's own crontab (a `crontab` on its PATH that reads and writes a file of
    its own): one nightly entry that runs the wrapper, as on a real machine."""
    name = env["OPSCONSOLE_HOST_NAME"]
    table = root / "crontab.txt"
    table.write_text(
        "\n".join(
            [
                "PATH=/usr/bin:/bin",
                f"PYTHONPATH={REPO_ROOT}",
                f"OPSCONSOLE_HOME={env['OPSCONSOLE_HOME']}",
                f"OPSCONSOLE_HOST_NAME={name}",
                f"CLAUDE_CONFIG_DIR={env['CLAUDE_CONFIG_DIR']}",
                f"OPSCONSOLE_CLAUDE_BIN={fake_bin}",
                "FAKE_CLAUDE_BEHAVIOUR=sleep:1",
                f"# opsconsole: nightly-{name}",
                f"0 3 * * * {PYTHON} -m wrapper --tag nightly-{name} -- -p x",
                "",
            ]
        )
    )
    tools = root / "tools"
    tools.mkdir()
    crontab = tools / "crontab"
    crontab.write_text(f'#!/bin/sh\nif [ "$1" = "-l" ]; then cat {table}; else cat > {table}; fi\n')
    crontab.chmod(0o755)
    return tools
