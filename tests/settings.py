"""Test settings: the real settings, with state kept out of the user's home."""

import os
import tempfile

os.environ.setdefault("OPSCONSOLE_HOME", tempfile.mkdtemp(prefix="opsconsole-test-home-"))

from opsconsole.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed, tests only
