"""The JSON API and the pages, through Django's test client: auth, shapes, tails, escaping."""

from __future__ import annotations

import json
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from opsconsole.models import ApiToken
from sessions_app.models import Session, Status
from tests.live_helpers import start_fake_run

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def user():
    return get_user_model().objects.create_user("ops", password="correct horse battery")


@pytest.fixture
def token(user):
    return ApiToken.issue(user, name="tests")[1]


def bearer(token: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


API_PATHS = [
    "/api/claude-active",
    "/api/sessions",
    "/api/sessions/7d3c1f0e-5a2b-4c6d-8e9f-0a1b2c3d4e5f",
    "/api/claude-jsonl/2b9e4d7a-1c3f-4e5a-9b8c-7d6e5f4a3b2c",
]


@pytest.mark.parametrize("path", API_PATHS)
def test_api_without_credentials_is_401_json_not_a_redirect(client, console_state, path):
    response = client.get(path)
    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    assert "error" in response.json()
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "header", ["Bearer oc_not-a-real-token", "Bearer ", "Basic b3BzOnB3", "oc_abc"]
)
def test_api_with_a_bad_token_is_401(client, console_state, header):
    response = client.get("/api/claude-active", HTTP_AUTHORIZATION=header)
    assert response.status_code == 401


def test_revoked_token_is_401(client, console_state, user):
    row, plain = ApiToken.issue(user)
    assert client.get("/api/claude-active", **bearer(plain)).status_code == 200
    row.revoke()
    assert client.get("/api/claude-active", **bearer(plain)).status_code == 401


def test_only_a_hash_of_the_token_is_stored(user):
    row, plain = ApiToken.issue(user)
    stored = json.dumps(list(ApiToken.objects.values()), default=str)
    assert plain not in stored
    assert row.token_hash in stored


def test_create_api_token_prints_the_token_last(console_state, user, capsys):
    call_command("create_api_token", "ops")
    plain = capsys.readouterr().out.strip().splitlines()[-1]
    assert ApiToken.authenticate(plain) == user


def test_pages_redirect_to_login(client, console_state):
    for path in ["/", f"/sessions/{uuid.uuid4()}/", "/live/rows/"]:
        response = client.get(path)
        assert response.status_code == 302, path
        assert response["Location"].startswith("/login/")


def test_claude_active_lists_live_sessions(client, console_state, token, runs):
    run = start_fake_run(console_state, tag="inbox-triage", attempt=2)
    runs.append(run)

    body = client.get("/api/claude-active", **bearer(token)).json()

    (session,) = body["sessions"]
    assert session["session_id"] == run.session_id
    assert session["script_tag"] == "inbox-triage"
    assert session["wrapper_pid"] == run.wrapper.pid
    assert session["attempt"] == 2
    assert session["state"] == "live"
    assert session["jsonl_url"] == f"/api/claude-jsonl/{run.session_id}"
    assert session["html_url"] == f"/sessions/{run.session_id}/"
    for field in ("started_at", "platform", "host"):
        assert session[field]


def test_session_detail_has_processes_while_live(client, console_state, token, runs):
    run = start_fake_run(console_state)
    runs.append(run)

    body = client.get(f"/api/sessions/{run.session_id}", **bearer(token)).json()

    assert body["status"] == "live"
    assert run.wrapper.pid in {p["pid"] for p in body["processes"]}
    assert {"pid", "ppid", "cmdline", "cpu_percent", "rss", "started"} <= set(body["processes"][0])


def test_session_detail_of_a_finished_run(client, console_state, token):
    session_id = uuid.uuid4()
    Session.objects.create(
        session_id=session_id,
        script_tag="t",
        status=Status.FAILED,
        exit_code=2,
        started_at="2026-11-24T01:00:00Z",
        ended_at="2026-11-24T01:01:00Z",
        end_reason="failed",
    )
    body = client.get(f"/api/sessions/{session_id}", **bearer(token)).json()
    assert (body["status"], body["exit_code"], body["cost_usd"]) == ("failed", 2, None)
    assert "processes" not in body


def test_session_list_filters_by_tag_newest_first_and_paginates(
    client, console_state, token, settings
):
    settings.OPSCONSOLE_API_PAGE_SIZE = 2
    for minute in range(3):
        Session.objects.create(
            session_id=uuid.uuid4(),
            script_tag="a",
            status=Status.SUCCEEDED,
            started_at=f"2026-11-24T01:0{minute}:00Z",
        )
    Session.objects.create(
        session_id=uuid.uuid4(),
        script_tag="b",
        status=Status.FAILED,
        started_at="2026-11-24T02:00:00Z",
    )

    first = client.get("/api/sessions?tag=a", **bearer(token)).json()
    second = client.get(first["next"], **bearer(token)).json()

    started = [s["started_at"] for s in first["sessions"] + second["sessions"]]
    assert started == sorted(started, reverse=True)
    assert len(started) == 3 and first["count"] == 3
    assert second["next"] is None


@pytest.mark.parametrize(
    "session_id", ["..%2F..%2Fetc%2Fpasswd", "not-a-uuid", "6F1C6F1C-6F1C-4F1C-8F1C-6F1C6F1C6F1C"]
)
def test_transcript_endpoint_rejects_anything_but_a_uuid(client, console_state, token, session_id):
    response = client.get(f"/api/claude-jsonl/{session_id}", **bearer(token))
    assert response.status_code in (400, 404)
    assert b"root:" not in response.content


def test_transcript_traversal_through_the_path_is_not_served(client, console_state, token):
    response = client.get("/api/claude-jsonl/../../../../etc/passwd", **bearer(token))
    assert response.status_code in (400, 401, 404)
    assert b"root:" not in response.content


def test_transcript_tail_and_range_follow(client, console_state, token, runs):
    lines = [json.dumps({"type": "user", "n": i}).encode() + b"\n" for i in range(50)]
    run = start_fake_run(console_state, transcript_lines=lines)
    runs.append(run)
    url = f"/api/claude-jsonl/{run.session_id}"

    tail = client.get(url, **bearer(token))
    total = int(tail["X-Transcript-Total-Bytes"])
    assert tail.status_code == 200
    assert tail.content == b"".join(lines)
    assert tail["X-Transcript-Path"] == str(run.transcript)

    with run.transcript.open("ab") as handle:
        handle.write(b'{"type":"assistant","n":"new"}\n')
    follow = client.get(url, HTTP_RANGE=f"bytes={total}-", **bearer(token))
    assert follow.status_code == 206
    assert follow.content == b'{"type":"assistant","n":"new"}\n'
    assert follow["Content-Range"].startswith(f"bytes {total}-")

    at_end = int(follow["X-Transcript-End"])
    nothing_new = client.get(url, HTTP_RANGE=f"bytes={at_end}-", **bearer(token))
    assert nothing_new.status_code == 416
    assert nothing_new["Content-Range"] == f"bytes */{at_end}"
    beyond = client.get(url, HTTP_RANGE="bytes=999999999-", **bearer(token))
    assert beyond.status_code == 416


def test_transcript_with_script_is_escaped_on_the_session_page(client, console_state, user, runs):
    hostile = (
        json.dumps(
            {
                "type": "user",
                "uuid": "u1",
                "timestamp": "2026-11-24T02:00:00Z",
                "message": {"role": "user", "content": "<script>alert('pwned')</script>"},
            }
        ).encode()
        + b"\n"
    )
    run = start_fake_run(console_state, transcript_lines=[hostile])
    runs.append(run)
    client.force_login(user)

    page = client.get(f"/sessions/{run.session_id}/")

    assert page.status_code == 200
    assert b"<script>alert" not in page.content
    assert b"&lt;script&gt;alert(" in page.content


def test_live_page_shows_the_run(client, console_state, user, runs):
    run = start_fake_run(console_state, tag="ci-nightly", attempt=2)
    runs.append(run)
    client.force_login(user)

    page = client.get("/live/")
    rows = client.get("/live/rows/")

    assert page.status_code == 200 and rows.status_code == 200
    for response in (page, rows):
        assert b"ci-nightly" in response.content
        assert b"attempt 2" in response.content
        assert run.session_id.encode() in response.content


def test_session_page_pages_back_and_shows_subagents(client, console_state, user, runs, settings):
    settings.OPSCONSOLE_TAIL_BYTES = 2000
    lines = [
        json.dumps(
            {"type": "user", "uuid": f"u{i}", "message": {"content": f"prompt {i}"}}
        ).encode()
        + b"\n"
        for i in range(100)
    ]
    run = start_fake_run(console_state, transcript_lines=lines)
    runs.append(run)
    agents = run.transcript.with_suffix("") / "subagents"
    agents.mkdir(parents=True)
    (agents / "agent-xyz.jsonl").write_bytes(
        json.dumps(
            {
                "type": "user",
                "isSidechain": True,
                "agentId": "xyz",
                "message": {"content": "subagent task"},
            }
        ).encode()
        + b"\n"
    )
    client.force_login(user)

    latest = client.get(f"/sessions/{run.session_id}/").content.decode()
    assert "prompt 99" in latest and "prompt 0<" not in latest
    assert "agent-xyz" in latest and "subagent task" in latest
    earlier_link = latest.split('href="?before=')[1].split('"')[0]
    earlier = client.get(f"/sessions/{run.session_id}/?before={earlier_link}").content.decode()
    assert "prompt 99" not in earlier and "latest →" in earlier

    download = client.get(f"/sessions/{run.session_id}/transcript.jsonl")
    assert b"".join(download.streaming_content) == b"".join(lines)
    assert "attachment" in download["Content-Disposition"]
