"""Property-based: whatever bytes or JSON a protocol file holds, the readers answer with a
record or a FormatError, ingest keeps every good record, and the pages keep answering.

Fixed budget (derandomized, FUZZ_EXAMPLES in all) so CI runs the same examples every time.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid

import pytest
from django.contrib.auth import get_user_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sessions_app.ingest import ingest_spool
from sessions_app.models import Session
from wrapper.formats import (
    FormatError,
    Sidecar,
    SpoolRecord,
    StatePaths,
    ensure_private_dir,
    read_quota_stamp,
    read_registry_entry,
    read_sidecar,
    read_spool_record,
    write_json_atomic,
)

FUZZ_EXAMPLES = int(os.environ.get("OPSCONSOLE_FUZZ_EXAMPLES", "2000"))
# Share of the budget per target; they add up to 1.
SHARE = {"bytes": 0.15, "sidecar": 0.2, "spool": 0.2, "quota": 0.1, "registry": 0.15}
INGEST_SHARE = 0.2


def budget(share: float) -> settings:
    return settings(
        max_examples=max(10, int(FUZZ_EXAMPLES * share)),
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


NASTY_NUMBERS = st.sampled_from(
    [0, 1, -1, 2, 255, 256, 32767, 32768, 2**31, 2**63, 2**64, 2**70, 2**80, 10**6, 1e300,
     -1e300, 0.1, 999_999.999_999_9, float("nan"), float("inf"), float("-inf"), 1.7e308]
)  # fmt: skip
NASTY_TEXT = st.sampled_from(
    ["", "\x00", "a\x00b", "\n", "x" * 101, "x" * 256, "x" * 5000, "\ud800", "../../etc/passwd",
     "0b6f3c1e-8a55-4d2b-9c3e-1f2a3b4c5d6e\n", "2026-01-01T00:00:00Z", "0001-01-01T00:00:00+05:00",
     "9999-12-31T23:59:59-05:00", "<script>", "succeeded", "signalled"]
)  # fmt: skip
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | NASTY_NUMBERS
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | NASTY_TEXT
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=10,
)


def valid_spool(session_id: str) -> dict:
    return {
        "session_id": session_id,
        "script_tag": "fuzz",
        "platform": "cron",
        "host": "box",
        "attempt": 1,
        "started_at": "2026-01-01T00:00:00.000Z",
        "ended_at": "2026-01-01T00:01:00.000Z",
        "end_reason": "succeeded",
        "exit_code": 0,
        "cost_usd": 0.5,
        "usage": {"input_tokens": 5},
    }


def valid_sidecar(pid: int) -> dict:
    return {
        "session_id": str(uuid.uuid4()),
        "script_tag": "fuzz",
        "wrapper_pid": pid,
        "wrapper_started": 1_700_000_000.0,
        "started_at": "2026-01-01T00:00:00.000Z",
        "attempt": 1,
        "platform": "cron",
        "host": "box",
        "cwd": "/srv",
        "claude_config_dir": "/c",
        "transcript_path": "/c/projects/-srv/x.jsonl",
    }


def valid_registry(pid: int) -> dict:
    return {
        "pid": pid,
        "sessionId": str(uuid.uuid4()),
        "cwd": "/srv",
        "startedAt": 1_700_000_000_000,
        "procStart": "56336",
        "version": "2.1.197",
        "kind": "interactive",
        "entrypoint": "sdk-cli",
        "name": "work",
    }


def mutated(base: dict) -> st.SearchStrategy[dict]:
    """A valid record with some fields replaced, added or removed: reaches the checks that
    arbitrary JSON never gets past the type check to."""
    keys = st.sampled_from(sorted(base))
    return st.builds(
        lambda changes, removed: {
            **{k: v for k, v in base.items() if k not in removed},
            **changes,
        },
        st.dictionaries(keys | st.text(max_size=8), JSON_VALUES, max_size=4),
        st.sets(keys, max_size=2),
    )


def write(path, content: bytes) -> None:
    path.write_bytes(content)
    path.chmod(0o600)


def dump(data) -> bytes:
    return json.dumps(data, allow_nan=True).encode("utf-8", "surrogatepass")


@pytest.fixture
def fuzz_dir(tmp_path):
    return ensure_private_dir(tmp_path / "fuzz")


@budget(SHARE["bytes"])
@given(content=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_readers_take_any_bytes(fuzz_dir, content):
    for reader, name in (
        (read_sidecar, "4242.json"),
        (read_spool_record, "x.json"),
        (read_registry_entry, "4242.json"),
    ):
        write(fuzz_dir / name, content)
        with contextlib.suppress(FormatError):
            reader(fuzz_dir / name)
    paths = StatePaths(home=fuzz_dir, active=fuzz_dir / "active")
    write(paths.quota_stamp, content)
    read_quota_stamp(paths)  # None or a stamp, never an exception


@budget(SHARE["sidecar"])
@given(data=mutated(valid_sidecar(4242)) | JSON_VALUES)
def test_sidecar_reader_takes_any_json(fuzz_dir, data):
    write(fuzz_dir / "4242.json", dump(data))
    try:
        sidecar = read_sidecar(fuzz_dir / "4242.json")
    except FormatError:
        return
    # What was accepted round-trips and passes the same checks the wrapper applies.
    assert Sidecar.from_dict(json.loads(json.dumps(sidecar.to_dict()))) == sidecar


@budget(SHARE["spool"])
@given(data=mutated(valid_spool("0b6f3c1e-8a55-4d2b-9c3e-1f2a3b4c5d6e")) | JSON_VALUES)
def test_spool_reader_takes_any_json(fuzz_dir, data):
    write(fuzz_dir / "x.json", dump(data))
    try:
        record = read_spool_record(fuzz_dir / "x.json")
    except FormatError:
        return
    assert SpoolRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record


QUOTA = {"until": "2999-01-01T00:00:00Z", "set_at": "2026-01-01T00:00:00Z", "reason": "429"}


@budget(SHARE["quota"])
@given(data=mutated(QUOTA) | JSON_VALUES)
def test_quota_reader_takes_any_json(fuzz_dir, data):
    paths = StatePaths(home=fuzz_dir, active=fuzz_dir / "active")
    write(paths.quota_stamp, dump(data))
    read_quota_stamp(paths)


@budget(SHARE["registry"])
@given(data=mutated(valid_registry(4242)) | JSON_VALUES)
def test_registry_reader_takes_any_json(fuzz_dir, data):
    write(fuzz_dir / "4242.json", dump(data))
    try:
        entry = read_registry_entry(fuzz_dir / "4242.json")
    except FormatError:
        return
    assert entry.pid == 4242
    entry.is_running()  # never raises


@pytest.mark.django_db
def test_ingest_keeps_good_records_whatever_the_others_hold(console_state, client):
    """Fuzz ingest: beside each hostile record, a good one; the good one is always
    recorded, the hostile one recorded or quarantined with a reason, and the pages
    that show records keep answering."""
    client.force_login(get_user_model().objects.create_user("fuzz"))
    spool = ensure_private_dir(console_state.paths.spool)
    recorded_hostile: list[str] = []

    @budget(INGEST_SHARE)
    @given(data=mutated(valid_spool("0b6f3c1e-8a55-4d2b-9c3e-1f2a3b4c5d6e")) | JSON_VALUES)
    def ingest_one(data):
        session_id = str(uuid.uuid4())
        if (
            isinstance(data, dict)
            and "session_id" in data
            and data["session_id"] == ("0b6f3c1e-8a55-4d2b-9c3e-1f2a3b4c5d6e")
        ):
            data["session_id"] = session_id  # each example its own row
        good_id = str(uuid.uuid4())
        write_json_atomic(spool / f"{good_id}.json", valid_spool(good_id))
        hostile_name = f"{session_id}.json"
        write(spool / hostile_name, dump(data))

        result = ingest_spool(console_state.paths)

        assert Session.objects.filter(session_id=good_id).exists()
        assert not (spool / hostile_name).exists()
        rejected = {name for name, _ in result.rejected}
        if hostile_name in rejected:
            assert (spool / "rejected" / f"{hostile_name}.reason.txt").exists()
        elif Session.objects.filter(session_id=session_id).exists():
            recorded_hostile.append(session_id)

    ingest_one()

    for url in ("/history/", "/api/sessions", "/costs/", "/api/history/export.json"):
        response = client.get(url)
        assert response.status_code == 200, url
        if url.endswith(".json"):
            json.loads(b"".join(response.streaming_content))
    for session_id in recorded_hostile[:50]:
        assert client.get(f"/sessions/{session_id}/").status_code == 200
        assert client.get(f"/api/sessions/{session_id}").status_code == 200
