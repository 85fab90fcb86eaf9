"""Test settings: the real settings, with state kept out of the user's home."""

import atexit
import os
import shutil
import tempfile

if not os.environ.get("OPSCONSOLE_HOME"):
    # Made here, removed when the test process ends: no opsconsole-test-home-* left behind.
    _test_home = tempfile.mkdtemp(prefix="opsconsole-test-home-")
    os.environ["OPSCONSOLE_HOME"] = _test_home
    atexit.register(shutil.rmtree, _test_home, ignore_errors=True)

from opsconsole.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed, tests only
