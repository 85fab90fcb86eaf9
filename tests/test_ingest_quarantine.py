"""One bad completion record is quarantined alone, with its reason; the others go on."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from sessions_app.ingest import ingest_spool
from sessions_app.models import Session, Status
from tests.conftest import REPO_ROOT
from wrapper.formats import ensure_private_dir, write_json_atomic

pytestmark = pytest.mark.django_db


def spool_record(session_id: str, **changes) -> dict:
    record = {
        "session_id": session_id,
        "script_tag": "nightly",
        "platform": "cron",
        "host": "box",
        "attempt": 1,
        "started_at": "2026-01-01T00:00:00.000Z",
        "ended_at": "2026-01-01T00:01:00.000Z",
        "end_reason": "succeeded",
        "exit_code": 0,
        "cost_usd": 0.5,
    }
    record.update(changes)
    return record


def put_in_spool(state, record: dict, raw: str | None = None) -> str:
    ensure_private_dir(state.paths.spool)
    path = state.paths.spool / f"{record['session_id']}.json"
    if raw is None:
        write_json_atomic(path, record)
    else:
        path.write_text(raw)
        path.chmod(0o600)
    return path.name


@pytest.fixture
def logged_in(client):
    client.force_login(get_user_model().objects.create_user("ops"))
    return client


BAD_NUMBERS = {
    "exit_code 2**80": {"exit_code": 2**80},
    "attempt 2**70": {"attempt": 2**70},
    "cost_usd 1e300": {"cost_usd": 1e300},
    "platform of 101 characters": {"platform": "p" * 101},
    "NUL in the error": {"error": "bad\x00news"},
}


@pytest.mark.parametrize("changes", BAD_NUMBERS.values(), ids=BAD_NUMBERS.keys())
def test_out_of_range_spool_record_is_quarantined_and_pages_keep_answering(
    console_state, logged_in, changes
):
    """Before: exit_code 2**80 (OverflowError), cost 1e300 (decimal InvalidOperation) or a
    101-character platform (DataError on PostgreSQL) escaped ingest, every page answered
    500, and the file was never moved, so it kept them down."""
    good_before = put_in_spool(console_state, spool_record("00000000-0000-4000-8000-000000000001"))
    bad = put_in_spool(console_state, spool_record(str(uuid.uuid4()), **changes))
    good_after = put_in_spool(console_state, spool_record("ffffffff-0000-4000-8000-000000000001"))

    for url in ("/", "/history/", "/api/sessions", "/costs/", "/jobs/"):
        assert logged_in.get(url).status_code == 200, url

    assert Session.objects.filter(status=Status.SUCCEEDED).count() == 2
    rejected = console_state.paths.spool / "rejected"
    assert (rejected / bad).exists()
    assert (rejected / f"{bad}.reason.txt").read_text().strip()
    for name in (good_before, good_after):
        assert not (console_state.paths.spool / name).exists()


@pytest.mark.parametrize("constant", ["NaN", "Infinity"])
def test_spool_record_with_a_non_finite_cost_is_quarantined(console_state, constant):
    record = spool_record(str(uuid.uuid4()))
    raw = json.dumps(record).replace('"cost_usd": 0.5', f'"cost_usd": {constant}')
    name = put_in_spool(console_state, record, raw)

    result = ingest_spool(console_state.paths)

    assert result.recorded == 0
    assert [n for n, _ in result.rejected] == [name]
    reason_file = console_state.paths.spool / "rejected" / f"{name}.reason.txt"
    assert "not a number" in reason_file.read_text()


@pytest.fixture
def poisoned_tag():
    """A real database error for rows tagged 'poison', so a record that passes every format
    check still fails to save (as a constraint or a column type the formats do not know
    would make it)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "CREATE FUNCTION reject_poison() RETURNS trigger AS $$ BEGIN "
                "RAISE EXCEPTION USING ERRCODE = 'check_violation', MESSAGE = 'poisoned'; "
                "END $$ LANGUAGE plpgsql"
            )
            cursor.execute(
                "CREATE TRIGGER reject_poison BEFORE INSERT ON sessions_app_session "
                "FOR EACH ROW WHEN (NEW.script_tag = 'poison') EXECUTE FUNCTION reject_poison()"
            )
        else:
            cursor.execute(
                "CREATE TRIGGER reject_poison BEFORE INSERT ON sessions_app_session "
                "WHEN NEW.script_tag = 'poison' BEGIN SELECT RAISE(ABORT, 'poisoned'); END"
            )
    yield
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("DROP TRIGGER IF EXISTS reject_poison ON sessions_app_session")
            cursor.execute("DROP FUNCTION IF EXISTS reject_poison()")
        else:
            cursor.execute("DROP TRIGGER IF EXISTS reject_poison")


def test_record_the_database_refuses_is_quarantined_alone(console_state, poisoned_tag):
    first = put_in_spool(console_state, spool_record("00000000-0000-4000-8000-000000000002"))
    poison = put_in_spool(console_state, spool_record(str(uuid.uuid4()), script_tag="poison"))
    last = put_in_spool(console_state, spool_record("ffffffff-0000-4000-8000-000000000002"))

    result = ingest_spool(console_state.paths)

    assert result.recorded == 2
    assert [name for name, _ in result.rejected] == [poison]
    reason = (console_state.paths.spool / "rejected" / f"{poison}.reason.txt").read_text()
    assert "IntegrityError" in reason and "poisoned" in reason
    assert set(Session.objects.values_list("script_tag", flat=True)) == {"nightly"}
    assert not (console_state.paths.spool / first).exists()
    assert not (console_state.paths.spool / last).exists()


INGEST_WITH_DATABASE_DOWN = """
import django, json
django.setup()
from django.conf import settings
from django.db import OperationalError
from sessions_app.ingest import ingest_spool
try:
    ingest_spool(settings.OPSCONSOLE_STATE)
    print("no error")
except OperationalError as exc:
    print("OperationalError")
"""


def test_database_down_is_not_a_bad_record(console_state):
    """An unreachable database propagates: nothing is quarantined, all is kept for later."""
    name = put_in_spool(console_state, spool_record(str(uuid.uuid4())))
    env = dict(console_state.env)
    env["DATABASE_URL"] = "postgres://nobody@127.0.0.1:9/unreachable?connect_timeout=2"
    env["DJANGO_SETTINGS_MODULE"] = "opsconsole.settings"
    result = subprocess.run(
        [sys.executable, "-c", INGEST_WITH_DATABASE_DOWN],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip().splitlines()[-1] == "OperationalError", result.stderr[-2000:]
    assert (console_state.paths.spool / name).exists()
    assert not (console_state.paths.spool / "rejected").exists()
