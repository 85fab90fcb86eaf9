"""The test settings clean up after themselves."""

from __future__ import annotations

import os
import subprocess

from tests.conftest import PYTHON, REPO_ROOT


def test_tests_leave_no_opsconsole_test_home_directories_behind(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OPSCONSOLE_HOME"}
    env.update(TMPDIR=str(tmp_path), PYTHONPATH=str(REPO_ROOT))
    done = subprocess.run(
        [PYTHON, "-c", "import os, tests.settings; print(os.environ['OPSCONSOLE_HOME'])"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    home = done.stdout.strip().splitlines()[-1]
    assert home.startswith(str(tmp_path / "opsconsole-test-home-"))
    assert not os.path.exists(home)
    assert list(tmp_path.glob("opsconsole-test-home-*")) == []
