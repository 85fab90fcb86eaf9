"""With the database down the live view still works, and nothing is lost."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sessions_app.live import take_snapshot
from sessions_app.models import Session, Status
from tests.conftest import REPO_ROOT
from tests.live_helpers import start_fake_run

# Prints what a console process sees when its database cannot be reached.
SNAPSHOT_SCRIPT = """
import json, django
django.setup()
from django.conf import settings
from sessions_app.live import take_snapshot
snap = take_snapshot(settings.OPSCONSOLE_STATE)
print(json.dumps({
    "live": [s.session_id for s in snap.sessions],
    "database_error": snap.database_error,
}))
"""


def snapshot_with_database_down(state) -> dict:
    env = dict(state.env)
    env["DATABASE_URL"] = "postgres://nobody@127.0.0.1:9/unreachable?connect_timeout=2"
    env["DJANGO_SETTINGS_MODULE"] = "opsconsole.settings"
    result = subprocess.run(
        [sys.executable, "-c", SNAPSHOT_SCRIPT],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.django_db(transaction=True)
def test_database_down_keeps_live_view_and_loses_nothing(console_state):
    alive = start_fake_run(console_state, tag="still-running")
    vanished = start_fake_run(console_state, tag="died-while-db-down")
    try:
        vanished.kill_all()

        seen = snapshot_with_database_down(console_state)

        assert seen["live"] == [alive.session_id]
        assert "OperationalError" in seen["database_error"]
        assert vanished.sidecar_file.exists(), "kept until it can be recorded"

        take_snapshot(console_state.paths)  # the database is back

        assert Session.objects.get(session_id=vanished.session_id).status == Status.KILLED
        assert not vanished.sidecar_file.exists()
    finally:
        alive.kill_all()
        vanished.kill_all()
