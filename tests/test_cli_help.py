"""What a newcomer types first."""

from __future__ import annotations

import os
import subprocess

from tests.conftest import PYTHON, REPO_ROOT


def test_opsconsole_help_lists_serve(tmp_path):
    env = dict(os.environ, OPSCONSOLE_HOME=str(tmp_path / "home"), PYTHONPATH=str(REPO_ROOT))
    env.pop("DJANGO_SETTINGS_MODULE", None)
    listing = subprocess.run(
        [PYTHON, "-m", "opsconsole.cli", "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listing.returncode == 0, listing.stderr
    opsconsole_commands = listing.stdout.split("[opsconsole]\n", 1)[1].split("\n\n", 1)[0]
    assert "    serve\n" in opsconsole_commands + "\n"
    assert "doctor" in listing.stdout
    detail = subprocess.run(
        [PYTHON, "-m", "opsconsole.cli", "help", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "--bind" in detail.stdout and "gunicorn" in detail.stdout
