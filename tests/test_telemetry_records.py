"""A run's telemetry on record: the cost rule's three sources, the drift between them,
the stall kinds (on a fixed clock), and the per-job rollups /metrics serves."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitor_app.telemetry_receiver import Inbox, keep_rollups, load_rollups
from sessions_app.models import RunTelemetry, Session, Status
from sessions_app.otlp import Event, Records
from sessions_app.telemetry import Rollup, stall_kind, stored_rollup, write_rollups
from sessions_app.timeline import three_costs
from sessions_app.transcripts.parse import iter_records, tool_calls_by_id
from wrapper.formats import StatePaths

NOW = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)
NS = int(NOW.timestamp() * 1e9)


def event(name: str, at_ns: int = NS, **attributes) -> Event:
    return Event(f"claude_code.{name}", at_ns, {"session.id": "x", **attributes})


def run(**fields) -> Session:
    defaults = dict(
        session_id=uuid.uuid4(),
        script_tag="nightly",
        host="here",
        status=Status.SUCCEEDED,
        started_at=NOW - timedelta(minutes=5),
        ended_at=NOW,
    )
    return Session.objects.create(**{**defaults, **fields})


def test_a_tool_decided_on_and_not_returned_is_the_stall():
    rollup = Rollup("s")
    rollup.take_event(
        event(
            "tool_decision",
            NS - 40 * 60 * 10**9,
            decision="accept",
            tool_name="Bash",
            tool_use_id="t1",
        )
    )
    kind = stall_kind(rollup, telemetry_on=True, now=NOW, since=NOW - timedelta(hours=1))
    assert (kind.kind, kind.text) == ("tool", "a tool has been running 40 min: Bash")
    rollup.take_event(
        event(
            "tool_result", tool_name="Bash", tool_use_id="t1", success="true", duration_ms="2400000"
        )
    )
    assert stall_kind(rollup, telemetry_on=True, now=NOW, since=NOW) is None
    assert rollup.slowest_tool == {"name": "Bash", "ms": 2400000.0}


def test_an_api_retry_storm_is_named_with_its_attempt_and_status():
    rollup = Rollup("s")
    for attempt in range(1, 7):
        rollup.take_event(
            event(
                "api_error", NS - 60 * 10**9, status_code=529, attempt=attempt, error="Overloaded"
            )
        )
    kind = stall_kind(rollup, telemetry_on=True, now=NOW, since=NOW - timedelta(hours=1))
    assert kind.text == "API retry storm: attempt 6, status 529"
    # Ten minutes on, the storm is history, not what the run is doing now.
    assert stall_kind(rollup, telemetry_on=True, now=NOW + timedelta(minutes=11), since=NOW) is None


def test_no_telemetry_at_all_is_a_startup_hang_only_after_a_minute():
    since = NOW - timedelta(seconds=30)
    assert stall_kind(None, telemetry_on=True, now=NOW, since=since) is None
    late = stall_kind(None, telemetry_on=True, now=NOW + timedelta(minutes=1), since=since)
    assert late.kind == "no_telemetry"
    assert stall_kind(None, telemetry_on=False, now=NOW + timedelta(hours=1), since=since) is None


def test_numbers_sent_as_strings_and_garbage_roll_up_without_failing():
    rollup = Rollup("s")
    rollup.take_event(
        event("api_request", model="m", cost_usd="0.5", output_tokens="40", query_source="sdk")
    )
    rollup.take_event(
        event(
            "api_request",
            model="m",
            cost_usd="NaN",
            output_tokens=[1],
            query_source="generate_session_title",
        )
    )
    assert rollup.api_requests == 2 and rollup.cost_usd == 0.5 and rollup.output_tokens == 40
    assert set(rollup.requests_by) == {"m · sdk", "m · generate_session_title"}
    assert Rollup.from_dict({**rollup.to_dict(), "unknown": 1}).cost_usd == 0.5


@pytest.mark.django_db
def test_the_best_cost_is_used_and_said_and_a_drift_is_shown(settings):
    settings.OPSCONSOLE_COST_DRIFT_PERCENT = 10
    killed = run(status=Status.KILLED, cost_usd=None, cost_computed_usd=Decimal("0.016"))
    rollup = Rollup(str(killed.session_id), job="nightly")
    rollup.take_event(event("api_request", cost_usd=0.016, model="m", query_source="sdk"))
    rollup.take_event(
        event("api_request", cost_usd=0.008, model="m", query_source="generate_session_title")
    )
    assert write_rollups([rollup], "here").rollups == 1
    killed.refresh_from_db()
    # The CLI reported nothing: the telemetry's sum, auxiliary request included, is used.
    assert killed.cost_telemetry_usd == Decimal("0.024")
    assert (killed.shown_cost_usd, killed.shown_cost_source) == (Decimal("0.024"), "telemetry")
    lines, drift = three_costs(killed, RunTelemetry.objects.get(session_id=killed.session_id))
    assert [(line.source, line.usd, line.shown) for line in lines] == [
        ("reported", None, False),
        ("telemetry", Decimal("0.024"), True),
        ("computed", Decimal("0.016"), False),
    ]
    assert drift.startswith("computed is 33% under telemetry")


@pytest.mark.django_db
def test_another_hosts_session_is_refused_and_its_cost_untouched():
    theirs = run(host="there", cost_usd=Decimal("1"))
    rollup = Rollup(str(theirs.session_id))
    rollup.take_event(event("api_request", cost_usd=99.0))
    written = write_rollups([rollup], "here")
    assert written.refused == [str(theirs.session_id)] and written.rollups == 0
    theirs.refresh_from_db()
    assert theirs.cost_telemetry_usd is None
    assert not RunTelemetry.objects.exists()


@pytest.mark.django_db
def test_metrics_carry_per_job_rollups_and_never_a_series_per_session(admin_client):
    for cost in ("0.5", "0.25"):
        session = run()
        # What the sender claims is not the label: the run's own tag is.
        rollup = Rollup(str(session.session_id), job=f"claimed-{session.session_id}")
        rollup.take_event(event("api_request", cost_usd=float(cost)))
        rollup.take_event(event("api_error", status_code=429, attempt=1))
        rollup.take_span("claude_code.llm_request", {"ttft_ms": 200}, "a" * 32, NS, NS)
        write_rollups([rollup], "here")
    text = admin_client.get("/metrics").content.decode()
    found = {f.name: f for f in text_string_to_metric_families(text)}
    (requests,) = found["opsconsole_telemetry_api_requests"].samples
    assert (requests.labels, requests.value) == ({"tag": "nightly"}, 2)
    assert found["opsconsole_telemetry_cost_usd"].samples[0].value == 0.75
    assert found["opsconsole_telemetry_api_errors"].samples[0].value == 2
    assert "session" not in text.split("opsconsole_telemetry", 1)[1]


def test_a_tool_call_not_yet_decided_on_is_a_wait_for_permission():
    transcript = b"".join(
        json.dumps(line).encode() + b"\n"
        for line in (
            {
                "type": "assistant",
                "message": {
                    "content": [
                        {
                            "type": "tool_use",
                            "id": "t1",
                            "name": "Bash",
                            "input": {"command": "ls"},
                        },
                    ]
                },
            },
            {
                "type": "user",
                "message": {"content": [{"type": "tool_result", "tool_use_id": "t1"}]},
            },
            {
                "type": "assistant",
                "message": {
                    "content": [
                        {
                            "type": "tool_use",
                            "id": "t2",
                            "name": "Bash",
                            "input": {"command": "rm -rf build"},
                        },
                    ]
                },
            },
        )
    )
    calls = tool_calls_by_id(iter_records(transcript))
    assert calls.named == {"t1": "Bash: ls", "t2": "Bash: rm -rf build"} and calls.pending == ["t2"]
    awaiting = {use_id: calls.named[use_id] for use_id in calls.pending}
    rollup = Rollup("s")
    rollup.take_event(event("api_request", cost_usd=0.01))
    kind = stall_kind(rollup, telemetry_on=True, now=NOW, since=NOW, awaiting=awaiting)
    assert kind.text == "waiting for permission to run Bash: rm -rf build"
    # Decided on: now it is a tool running, named by its command.
    rollup.take_event(
        event(
            "tool_decision", NS - 120 * 10**9, decision="accept", tool_name="Bash", tool_use_id="t2"
        )
    )
    kind = stall_kind(rollup, telemetry_on=True, now=NOW, since=NOW, awaiting=awaiting)
    assert kind.text == "a tool has been running 2 min: Bash: rm -rf build"


def test_a_restarted_monitor_adds_on_to_the_rollups_it_kept(tmp_path):
    paths = StatePaths(home=tmp_path, active=tmp_path / "active")
    (tmp_path / "monitor").mkdir()
    inbox = Inbox()
    live_id, ended_id = str(uuid.uuid4()), str(uuid.uuid4())
    inbox.take(
        Records(
            events=[
                Event("claude_code.api_request", NS, {"session.id": live_id, "cost_usd": 0.5}),
                Event("claude_code.api_request", NS, {"session.id": ended_id, "cost_usd": 0.1}),
            ]
        )
    )
    inbox.drain()
    # Ten minutes after its last record, an ended run's rollup is on record: let go.
    keep_rollups(paths, inbox, {live_id}, NOW + timedelta(minutes=11))
    again = Inbox(load_rollups(paths))
    assert set(again.rollups) == {live_id}
    again.take(
        Records(
            events=[Event("claude_code.api_request", NS, {"session.id": live_id, "cost_usd": 0.25})]
        )
    )
    (rollup,) = again.drain().rollups
    assert (rollup.api_requests, rollup.cost_usd) == (2, 0.75)


@pytest.mark.django_db
def test_a_late_record_adds_to_the_run_on_record_never_overwrites_it():
    session = run(cost_usd=None)
    first = Rollup(str(session.session_id), job="nightly")
    for cost in (0.5, 0.25):
        first.take_event(event("api_request", cost_usd=cost, model="m", query_source="sdk"))
    write_rollups([first], "here")
    write_rollups([first], "here")  # the same segment again (a resent report): no change
    # The receiver let the run go, then a record came (a --resume, a late batch): a new
    # segment, which adds to what is on record.
    late = Rollup(str(session.session_id))
    late.take_event(event("api_request", cost_usd=0.125, model="m", query_source="sdk"))
    write_rollups([late], "here")
    row = RunTelemetry.objects.get(session_id=session.session_id)
    assert (row.cost_usd, row.api_requests) == (Decimal("0.875"), 3)
    assert stored_rollup(row.rollup).requests_by["m · sdk"]["requests"] == 3
    session.refresh_from_db()
    assert session.cost_telemetry_usd == Decimal("0.875")
