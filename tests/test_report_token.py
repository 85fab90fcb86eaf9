"""A reporting host's token comes from a 0600 file or the environment, never needs the
command line (where `ps` shows it to every user); --token still works, with a warning."""

from __future__ import annotations

import os
import subprocess

import pytest

from fleet.report import TOKEN_ON_COMMAND_LINE, host_token, read_token_file
from tests.conftest import PYTHON, REPO_ROOT

# Plain http to a host that is not loopback is refused after the token is read: the
# command stops there, so these tests need no console.
UNREACHABLE = "http://10.1.2.3"


def private_file(path, text: str, mode: int = 0o600):
    path.write_text(text)
    path.chmod(mode)
    return path


def test_token_from_a_private_file_wins_over_the_environment(tmp_path):
    token_file = private_file(tmp_path / "host-token", "oc_host_from_file\n")
    environ = {"OPSCONSOLE_REPORT_TOKEN": "oc_host_from_env"}
    assert host_token(None, str(token_file), environ) == ("oc_host_from_file", None)
    environ["OPSCONSOLE_REPORT_TOKEN_FILE"] = str(token_file)
    assert host_token(None, None, environ) == ("oc_host_from_file", None)
    assert host_token(None, None, {"OPSCONSOLE_REPORT_TOKEN": "oc_env"}) == ("oc_env", None)
    assert host_token("oc_flag", None, {}) == ("oc_flag", TOKEN_ON_COMMAND_LINE)


@pytest.mark.parametrize(
    ("mode", "text", "error"),
    [(0o644, "oc_host_x\n", "readable by others"), (0o600, "\n", "is empty")],
)
def test_a_token_file_others_can_read_or_an_empty_one_is_refused(tmp_path, mode, text, error):
    token_file = private_file(tmp_path / "host-token", text, mode)
    with pytest.raises(ValueError, match=error):
        read_token_file(str(token_file))
    with pytest.raises(ValueError, match="cannot read"):
        read_token_file(str(tmp_path / "missing"))


def monitor(tmp_path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = dict(os.environ, OPSCONSOLE_HOME=str(tmp_path / "home"), **env)
    for key in ("OPSCONSOLE_REPORT_TOKEN", "OPSCONSOLE_REPORT_TOKEN_FILE"):
        if key not in env:
            environ.pop(key, None)
    return subprocess.run(
        [PYTHON, "-m", "opsconsole.cli", "monitor", "--once", "--report-to", UNREACHABLE, *args],
        env=environ,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_monitor_warns_about_a_token_on_its_command_line_only(tmp_path):
    on_the_line = monitor(tmp_path, "--token", "oc_host_visible_in_ps")
    assert "--token puts the host token on the command line" in on_the_line.stderr
    assert "clear text" in on_the_line.stderr  # the token was taken: the URL check came next
    token_file = private_file(tmp_path / "host-token", "oc_host_private\n")
    from_file = monitor(tmp_path, "--token-file", str(token_file))
    from_env = monitor(tmp_path, OPSCONSOLE_REPORT_TOKEN="oc_host_env")
    for result in (from_file, from_env):
        assert "clear text" in result.stderr and "warning" not in result.stderr, result.stderr
    token_file.chmod(0o640)
    shared = monitor(tmp_path, OPSCONSOLE_REPORT_TOKEN_FILE=str(token_file))
    assert shared.returncode != 0 and "chmod 600" in shared.stderr
    none = monitor(tmp_path, "--insecure")  # past the URL check: no token at all
    assert none.returncode != 0 and "--token-file PATH" in none.stderr
