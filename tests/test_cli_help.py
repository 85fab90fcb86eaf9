"""`opsconsole --help` lists the console's own commands, one line each, and says how to
see Django's; `serve --help` says what serve does."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import PYTHON, REPO_ROOT


def opsconsole(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OPSCONSOLE_HOME=str(tmp_path / "home"))
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return subprocess.run(
        [PYTHON, "-m", "opsconsole.cli", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("flag", ["--help", "-h", "help"])
def test_help_lists_our_commands_one_line_each(tmp_path, flag):
    """Before: Django's ~60 commands (dumpdata, sqlflush, ...) and no word on ours."""
    result = opsconsole(tmp_path, flag)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    listed = {line.split()[0]: line for line in lines if line.startswith("  ") and line.split()}
    for command in ("serve", "monitor", "doctor", "create_host_token", "watchdog"):
        assert command in listed, result.stdout
        assert len(listed[command].split(None, 1)[1]) > 10, listed[command]
    assert "dumpdata" not in result.stdout and "sqlflush" not in result.stdout
    assert "opsconsole help --django" in result.stdout
    assert all(len(line) <= 100 for line in lines), max(lines, key=len)


def test_help_django_still_lists_django_s_commands(tmp_path):
    result = opsconsole(tmp_path, "help", "--django")
    assert result.returncode == 0, result.stderr
    assert "dumpdata" in result.stdout and "createsuperuser" in result.stdout


def test_serve_help_says_what_serve_does_not_manage_py(tmp_path):
    result = opsconsole(tmp_path, "serve", "--help")
    assert result.returncode == 0, result.stderr
    assert "manage.py" not in result.stdout
    assert "--bind" in result.stdout and "monitor" in result.stdout
