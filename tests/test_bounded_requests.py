"""Whatever a request asks for, a page does bounded work and answers 4xx, never 500:
offsets, page numbers, filters and ids out of range (issue 11, items 3 and 7)."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from django.contrib.auth import get_user_model

from opsconsole.models import ApiToken
from sessions_app.models import Session, Status
from sessions_app.transcripts.tail import parse_offset, parse_range_header, read_before, read_from
from tests.live_helpers import start_fake_run

pytestmark = pytest.mark.django_db(transaction=True)

PAGE_BYTES = 20_000


@pytest.fixture
def user():
    return get_user_model().objects.create_user("ops", password="x")


@pytest.fixture
def token(user):
    return ApiToken.issue(user, name="tests")[1]


def bearer(token: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


def transcript_lines(count: int, pad: int = 1000) -> list[bytes]:
    return [
        json.dumps(
            {"type": "user", "uuid": f"u{i}", "message": {"content": f"prompt {i} " + "x" * pad}}
        ).encode()
        + b"\n"
        for i in range(count)
    ]


@pytest.fixture
def big_run(console_state, runs, settings):
    settings.OPSCONSOLE_TAIL_BYTES = PAGE_BYTES
    run = start_fake_run(console_state, transcript_lines=transcript_lines(2000))  # ~2 MB
    runs.append(run)
    return run


# --------------------------------------------------------------------------- item 3


def test_negative_before_reads_no_more_than_a_page(big_run):
    """Before: read_before(path, -1, n) read (and the page parsed and rendered) the
    whole transcript: `/sessions/<id>/?before=-1`."""
    chunk = read_before(big_run.transcript, -1, PAGE_BYTES)
    assert len(chunk.data) <= PAGE_BYTES
    assert read_from(big_run.transcript, -5, PAGE_BYTES).start == 0


@pytest.mark.parametrize("before", ["-1", "-99999999", "1e9", "abc", "9" * 5000, "9" * 20, ""])
def test_session_page_with_a_bad_before_is_400(client, user, big_run, before):
    client.force_login(user)
    response = client.get(f"/sessions/{big_run.session_id}/", {"before": before})
    assert response.status_code == 400


@pytest.mark.parametrize("after", ["-1", "1e9", "9" * 5000])
def test_transcript_follow_with_a_bad_after_is_400(client, user, big_run, after):
    client.force_login(user)
    response = client.get(f"/sessions/{big_run.session_id}/transcript/", {"after": after})
    assert response.status_code == 400


@pytest.mark.parametrize("offset", ["0", "1", "999999", str(2**63 - 1)])
def test_every_valid_offset_gives_a_bounded_page(client, user, big_run, offset):
    client.force_login(user)
    size = big_run.transcript.stat().st_size
    for url in (
        f"/sessions/{big_run.session_id}/?before={offset}",
        f"/sessions/{big_run.session_id}/transcript/?after={offset}",
    ):
        started = time.monotonic()
        response = client.get(url)
        assert response.status_code == 200, url
        # The page shows one window of the transcript (plus markup), never all of it.
        assert len(response.content) < size / 4, (url, len(response.content))
        assert time.monotonic() - started < 5


def test_follower_page_stops_reading_a_giant_line(client, user, console_state, runs, settings):
    """One line longer than the page's line cap is not read whole by a page."""
    from sessions_app.transcript_store import PAGE_MAX_LINE

    settings.OPSCONSOLE_TAIL_BYTES = PAGE_BYTES
    giant = b'{"type":"user","message":{"content":"' + b"y" * (PAGE_MAX_LINE + 1024) + b'"}}\n'
    run = start_fake_run(console_state, transcript_lines=[giant])
    runs.append(run)
    chunk = read_from(run.transcript, 0, PAGE_BYTES, max_line=PAGE_MAX_LINE)
    assert chunk.data == b"" and chunk.end == 0  # nothing whole within the cap
    client.force_login(user)
    response = client.get(f"/sessions/{run.session_id}/transcript/?after=0")
    assert response.status_code == 200
    assert len(response.content) < PAGE_MAX_LINE


def test_offset_parsers():
    assert parse_offset(None) is None
    assert parse_offset("0") == 0
    for bad in ("-1", "1e9", " 5", "5\n", "²", "9" * 20):
        with pytest.raises(ValueError):
            parse_offset(bad)
    assert parse_range_header("bytes=10-") == 10
    assert parse_range_header("bytes=" + "9" * 5000 + "-") is None
    assert parse_range_header("bytes=10-\n") == 10  # surrounding space is allowed
    assert parse_range_header("bytes=-10") is None


def test_transcript_api_with_a_range_of_5000_digits_is_not_a_500(client, token, big_run):
    response = client.get(
        f"/api/claude-jsonl/{big_run.session_id}",
        HTTP_RANGE="bytes=" + "9" * 5000 + "-",
        **bearer(token),
    )
    assert response.status_code == 200  # an unusable Range is ignored: the tail
    assert len(response.content) <= PAGE_BYTES


# --------------------------------------------------------------------------- item 7


@pytest.mark.parametrize("page", ["abc", "1e9", "0", "-1", "9" * 5000, "1.5"])
def test_api_sessions_with_a_bad_page_is_400_or_404(client, console_state, token, page):
    """Before: `?page=abc` and `?page=1e9` raised PageNotAnInteger: 500."""
    response = client.get("/api/sessions", {"page": page}, **bearer(token))
    assert response.status_code in (400, 404), response.content
    assert "error" in response.json()


@pytest.mark.parametrize("value", ["\x00", "x" * 300])
def test_api_sessions_with_a_filter_no_run_can_have_is_400(client, console_state, token, value):
    response = client.get("/api/sessions", {"tag": value}, **bearer(token))
    assert response.status_code == 400


@pytest.mark.parametrize("job", ["9" * 20, "²", "\uff11"])
def test_history_with_a_job_id_out_of_range_is_not_a_500(client, console_state, user, job):
    """Before: `/history/?job=<20 digits>` overflowed the database integer: 500."""
    client.force_login(user)
    response = client.get("/history/", {"job": job})
    assert response.status_code == 200
    assert b"job must be a job id" in response.content


@pytest.mark.parametrize(
    "query",
    [
        {"job": "9" * 20},
        {"date_to": "9999-12-31"},
        {"date_from": "0001-01-01"},
        {"tag": "a\x00b"},
        {"before": "0001-01-01T00:00:00+05:00~1"},
        {"before": "2026-01-01T00:00:00~" + "9" * 20},
    ],
)
def test_history_export_validates_before_streaming(client, console_state, token, user, query):
    """Before: `/api/history/export.json?job=<20 digits>` answered 200 and JSON cut short
    (the error came mid-stream)."""
    Session.objects.create(
        session_id=uuid.uuid4(),
        script_tag="nightly",
        status=Status.SUCCEEDED,
        started_at="2026-01-01T00:00:00Z",
    )
    response = client.get("/api/history/export.json", query, **bearer(token))
    if response.status_code == 200:
        json.loads(b"".join(response.streaming_content))
    else:
        assert response.status_code == 400
    client.force_login(user)
    assert client.get("/history/", query).status_code == 200
    csv_response = client.get("/history/export.csv", query)
    assert csv_response.status_code in (200, 400)
    if csv_response.status_code == 200:
        b"".join(csv_response.streaming_content)


@pytest.mark.parametrize("suffix", ["%0a", "%0A", "%0d%0a", "%00", "%20"])
def test_session_apis_with_a_newline_after_the_uuid_are_400(client, console_state, token, suffix):
    """Before: `<uuid>%0a` passed is_session_id (`$` matches before a final newline)."""
    session = Session.objects.create(
        session_id=uuid.uuid4(),
        script_tag="nightly",
        status=Status.SUCCEEDED,
        started_at="2026-01-01T00:00:00Z",
    )
    for api in ("/api/sessions/", "/api/claude-jsonl/"):
        response = client.get(f"{api}{session.session_id}{suffix}", **bearer(token))
        assert response.status_code == 400, (api, response.status_code)


def test_download_of_a_transcript_that_is_a_symlink_inside_the_root_is_404(
    client, console_state, user, runs
):
    """Before: locate() accepted the symlink (it resolves inside the root), and the
    download's O_NOFOLLOW open raised: 500."""
    run = start_fake_run(console_state, transcript_lines=transcript_lines(3, pad=10))
    runs.append(run)
    real = run.transcript.with_name("real-copy.jsonl")
    run.transcript.rename(real)
    run.transcript.symlink_to(real)
    client.force_login(user)

    response = client.get(f"/sessions/{run.session_id}/transcript.jsonl")

    assert response.status_code == 404
    assert client.get(f"/sessions/{run.session_id}/").status_code == 200
