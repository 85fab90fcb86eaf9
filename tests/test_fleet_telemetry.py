"""Issue 23, part 3: a reporting host ships its runs' telemetry in its reports.

The host's side is the real monitor in report mode with its real OTLP receiver on
loopback (OTLP/JSON bodies shaped as the real CLI 2.1.197 sends them); its reports go
through the console's real endpoint (tests.test_fleet.client_transport). The console's
side is also driven with hand-made reports, to show what it refuses and why.
"""

from __future__ import annotations

import gzip
import json
import signal
import sqlite3
import subprocess
import time
import urllib.request
import uuid
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest
from django.test import Client

from fleet import telemetry_outbox
from fleet.report import MAX_ROLLUPS_PER_REPORT, MAX_SPANS_PER_REPORT, Reporter
from fleet.reporting import reporting_monitor
from monitor_app.models import RefusedItem
from sessions_app.models import RunTelemetry, Session, TelemetrySpan
from sessions_app.telemetry import Rollup, stored_rollup
from tests.conftest import PYTHON, REPO_ROOT
from tests.live_helpers import start_fake_run, wait_until
from tests.server_fixtures import manage
from tests.test_fleet import (  # noqa: F401 - host_a: the fixture
    client_transport,
    host_a,
    host_a_state,
    report_once,
    spool_record,
)
from tests.test_hardening_reports import Host, completion, refusals, report_of
from wrapper.formats import StatePaths, new_session_id
from wrapper.telemetry import read_receiver_address


def whole(row) -> dict:
    """The run's whole rollup: its segments added up."""
    return stored_rollup(row.rollup).to_dict()


pytestmark = pytest.mark.django_db(transaction=True)

# Records of now: the receiver lets go of an ended run's rollup ten minutes after its
# last record (monitor_app.telemetry_receiver.keep_rollups), by the monitor's clock.
START_NS = time.time_ns()


# ----------------------------------------------------------------------------- OTLP bodies


def _value(value):
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": value}
    if isinstance(value, float):
        return {"doubleValue": value}
    return {"stringValue": value}


def _attributes(values: dict) -> list[dict]:
    return [{"key": k, "value": _value(v)} for k, v in values.items()]


def _resource(session_id: str, host: str) -> dict:
    return {
        "attributes": _attributes(
            {
                "opsconsole.run_id": session_id,
                "opsconsole.job": "nightly",
                "opsconsole.host": host,
                "service.name": "claude-code",
                "service.version": "2.1.197",
                "os.type": "linux",
            }
        )
    }


def logs_body(session_id: str, host: str, costs: list[float]) -> dict:
    """api_request events (one per cost, the last the session title's) and a tool."""
    records = []
    for n, cost in enumerate(costs):
        source = "generate_session_title" if n == len(costs) - 1 else "repl_main_thread"
        records.append(
            {
                "timeUnixNano": str(START_NS + n * 10**9),
                "body": {"stringValue": "claude_code.api_request"},
                "attributes": _attributes(
                    {
                        "session.id": session_id,
                        "event.name": "api_request",
                        "model": "claude-sonnet-4-5-20250929",
                        "input_tokens": 1200,
                        "output_tokens": 40,
                        "cost_usd": cost,
                        "duration_ms": 298,
                        "query_source": source,
                    }
                ),
            }
        )
    records.append(
        {
            "timeUnixNano": str(START_NS + 5 * 10**9),
            "body": {"stringValue": "claude_code.tool_result"},
            "attributes": _attributes(
                {
                    "session.id": session_id,
                    "tool_name": "Bash",
                    "success": "true",
                    "duration_ms": "1021",
                    "tool_use_id": "toolu_d00533cbaa2d4d55bb69c99a",
                }
            ),
        }
    )
    return {
        "resourceLogs": [
            {
                "resource": _resource(session_id, host),
                "scopeLogs": [
                    {"scope": {"name": "com.anthropic.claude_code.events"}, "logRecords": records}
                ],
            }
        ]
    }


def traces_body(session_id: str, host: str, trace_id: str, names: list[str]) -> dict:
    spans = []
    for n, name in enumerate(names):
        attributes = {"session.id": session_id, "span.type": name.removeprefix("claude_code.")}
        if name == "claude_code.llm_request":
            attributes |= {"ttft_ms": 412, "attempt": 1, "stop_reason": "end_turn"}
        spans.append(
            {
                "traceId": trace_id,
                "spanId": f"{n + 1:016x}",
                "parentSpanId": "59534953153fd0dd",
                "name": name,
                "kind": 1,
                "startTimeUnixNano": str(START_NS + n * 10**9),
                "endTimeUnixNano": str(START_NS + n * 10**9 + 29_297_084),
                "attributes": _attributes(attributes),
                "status": {"code": 0},
            }
        )
    return {
        "resourceSpans": [
            {
                "resource": _resource(session_id, host),
                "scopeSpans": [
                    {"scope": {"name": "com.anthropic.claude_code.tracing"}, "spans": spans}
                ],
            }
        ]
    }


def post_otlp(monitor, signal: str, body: dict, *, gzipped: bool = False) -> int:
    """POST to the monitor's receiver as the CLI does (its token from otlp.json)."""
    address = read_receiver_address(monitor.paths)
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {address.token}"}
    if gzipped:
        data = gzip.compress(data)
        headers["Content-Encoding"] = "gzip"
    request = urllib.request.Request(
        f"{address.endpoint}/v1/{signal}", data=data, headers=headers, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.status


@pytest.fixture
def receiving(host_a, settings):  # noqa: F811 - the fixture
    """host-a's reporting monitor with its OTLP receiver listening."""
    settings.OPSCONSOLE_OTLP_PORT = 0
    host_a.start_telemetry()
    assert host_a.telemetry is not None
    yield host_a
    host_a.stop_telemetry()


def trace() -> str:
    return uuid.uuid4().hex


# ----------------------------------------------------------------------------- shipped


def test_a_reporting_host_s_telemetry_reaches_the_console_under_its_name(receiving, console_state):
    monitor = receiving
    record = spool_record(console_state.paths, "host-a")
    session_id, trace_id = record.session_id, trace()
    report_once(monitor)  # the run on record, as the host's
    assert Session.objects.get(session_id=session_id).host == "host-a"

    costs = [0.007, 0.009, 0.008]
    assert post_otlp(monitor, "logs", logs_body(session_id, "host-a", costs)) == 200
    names = ["claude_code.interaction", "claude_code.llm_request", "claude_code.tool"]
    assert (
        post_otlp(
            monitor, "traces", traces_body(session_id, "host-a", trace_id, names), gzipped=True
        )
        == 200
    )
    payload = monitor.reporting.payload(monitor.tick(), datetime.now(UTC))
    # The report carried it; the console's answer let it go from the host.
    row = RunTelemetry.objects.get(session_id=session_id)
    assert row.host == "host-a" and row.trace_id == trace_id
    assert row.cost_usd == Decimal("0.024") and row.api_requests == 3
    assert "claude-sonnet-4-5-20250929 · generate_session_title" in whole(row)["requests_by"]
    assert whole(row)["tools"]["Bash"]["slowest_ms"] == 1021
    assert row.ttft_p50_ms == 412
    assert Session.objects.get(session_id=session_id).cost_telemetry_usd == Decimal("0.024")
    spans = TelemetrySpan.objects.filter(trace_id=trace_id)
    assert sorted(s.name for s in spans) == sorted(names)
    assert {(s.host, str(s.session_id)) for s in spans} == {("host-a", session_id)}
    assert len(monitor.reporting.telemetry) == 0, "acknowledged: nothing waits"
    assert payload["telemetry_rollups"] == [] and payload["telemetry_spans"] == []

    # More of the same run: the latest whole rollup replaces the one on record.
    assert post_otlp(monitor, "logs", logs_body(session_id, "host-a", [0.5])) == 200
    report_once(monitor)
    row.refresh_from_db()
    assert row.cost_usd == Decimal("0.524") and row.api_requests == 4
    assert RunTelemetry.objects.filter(session_id=session_id).count() == 1
    assert not RefusedItem.objects.exists()


def test_a_console_away_loses_nothing_and_a_newer_rollup_replaces_the_waiting_one(
    receiving, console_state
):
    monitor = receiving
    session_id, trace_id = new_session_id(), trace()
    reporter = monitor.reporting.reporter
    token = reporter.token
    reporter.token = "wrong"  # the console answers 401 from now on: away, as far as we care
    post_otlp(monitor, "logs", logs_body(session_id, "host-a", [0.25]))
    post_otlp(monitor, "traces", traces_body(session_id, "host-a", trace_id, ["claude_code.tool"]))
    monitor.tick()
    assert monitor.reporting.last_error is not None
    post_otlp(monitor, "logs", logs_body(session_id, "host-a", [0.5]))
    monitor.tick()
    waiting = monitor.reporting.telemetry
    assert list(waiting.rollups) == [session_id] and len(waiting.spans) == 1
    assert waiting.rollups[session_id][0]["cost_usd"] == 0.75, "the latest whole rollup"
    assert not RunTelemetry.objects.exists()

    # The monitor stops while the console is away; the next one sends what waited, and
    # what came after the last sample.
    post_otlp(monitor, "logs", logs_body(session_id, "host-a", [0.125]))
    monitor.stopped()
    restarted = reporting_monitor(
        Reporter("http://127.0.0.1:1", token, transport=client_transport(Client())),
        host="host-a",
        interval=1.0,
    )
    assert len(restarted.reporting.telemetry) == 2
    report_once(restarted)
    assert RunTelemetry.objects.get(session_id=session_id).cost_usd == Decimal("0.875")
    assert TelemetrySpan.objects.get(trace_id=trace_id).host == "host-a"
    assert len(restarted.reporting.telemetry) == 0
    restarted.reporting.telemetry.save()
    assert not restarted.reporting.telemetry.file.exists(), "nothing left to send"


def test_a_backlog_goes_a_bounded_batch_per_report_and_drops_beyond_are_counted(
    receiving, console_state, monkeypatch
):
    monitor = receiving
    monkeypatch.setattr(telemetry_outbox, "BACKLOG_SPANS", 1200)
    reporter = monitor.reporting.reporter
    token, reporter.token = reporter.token, "wrong"
    session_id, trace_id = new_session_id(), trace()
    names = [f"claude_code.tool.{n}" for n in range(400)]
    for _ in range(4):  # 1600 spans (1200 kept), and 250 runs' rollups
        body = traces_body(session_id, "host-a", trace_id, names)
        for n, span in enumerate(body["resourceSpans"][0]["scopeSpans"][0]["spans"]):
            span["spanId"] = uuid.uuid4().hex[:16]
            span["name"] = f"claude_code.tool.{n}"
        post_otlp(monitor, "traces", body)
    for _ in range(250):
        post_otlp(monitor, "logs", logs_body(new_session_id(), "host-a", [0.01]))
    monitor.tick()
    waiting = monitor.reporting.telemetry
    assert len(waiting.spans) == 1200 and len(waiting.rollups) == 251
    assert monitor.telemetry.figures()["dropped: spans waiting for the console"] == 400

    reporter.token = token
    rollups, spans = waiting.batch(datetime.now(UTC), set())
    assert (len(rollups), len(spans)) == (MAX_ROLLUPS_PER_REPORT, MAX_SPANS_PER_REPORT)
    reports = 0
    while len(waiting) and reports < 10:
        report_once(monitor)
        reports += 1
    assert len(waiting) == 0 and reports >= 3, "a batch per report"
    assert RunTelemetry.objects.filter(host="host-a").count() == 251
    assert TelemetrySpan.objects.filter(trace_id=trace_id).count() == 1200


def test_a_live_run_s_rollup_goes_every_ten_seconds_and_at_once_when_it_ends(
    receiving, runs, console_state
):
    """A live run's rollup changes every sample: the console gets the latest one at most
    every LIVE_ROLLUP_EVERY_SECONDS (by the sample's clock), and the last one at once."""
    monitor = receiving
    run = start_fake_run(host_a_state(monitor), "remote-nightly")
    runs.append(run)
    at = datetime.now(UTC)

    def cost() -> Decimal | None:
        row = RunTelemetry.objects.filter(session_id=run.session_id).first()
        return row.cost_usd if row else None

    post_otlp(monitor, "logs", logs_body(run.session_id, "host-a", [0.25]))
    assert monitor.tick(at).sessions and monitor.reporting.last_error is None
    assert cost() == Decimal("0.25")
    post_otlp(monitor, "logs", logs_body(run.session_id, "host-a", [0.5]))
    monitor.tick(at + timedelta(seconds=2))
    assert cost() == Decimal("0.25") and list(monitor.reporting.telemetry.rollups)
    monitor.tick(at + timedelta(seconds=2 + telemetry_outbox.LIVE_ROLLUP_EVERY_SECONDS))
    assert cost() == Decimal("0.75")
    post_otlp(monitor, "logs", logs_body(run.session_id, "host-a", [1.0]))
    run.kill_all()
    monitor.tick(at + timedelta(seconds=14))
    assert cost() == Decimal("1.75"), "ended: its last rollup goes at once"
    assert len(monitor.reporting.telemetry) == 0


# ----------------------------------------------------------------------------- refused


def rollup_of(session_id: str, host: str = "host-a", **fields) -> dict:
    rollup = Rollup(session_id, job="nightly", host=host, events=2, api_requests=2, cost_usd=0.5)
    rollup.requests_by = {
        "claude-sonnet-4-5 · repl_main_thread": {
            "requests": 2,
            "cost_usd": 0.5,
            "output_tokens": 80,
        }
    }
    rollup.ttft_ms = [300.0, 500.0]
    rollup.last_ns = START_NS
    return asdict(rollup) | fields


def span_of(session_id: str | None, trace_id: str, **fields) -> dict:
    return {
        "trace_id": trace_id,
        "span_id": uuid.uuid4().hex[:16],
        "parent_span_id": "",
        "session_id": session_id,
        "name": "claude_code.tool",
        "start_ns": START_NS,
        "duration_ms": 29.3,
        "error": False,
        "attributes": {"tool_name": "Bash", "ttft_ms": 412},
    } | fields


def test_a_forged_rollup_or_span_of_another_host_s_session_is_refused_alone(console_state):
    a, b = Host("host-a"), Host("host-b")
    theirs = completion("host-b")
    b.taken(report_of("host-b", 1, completions=[theirs]))
    their_telemetry, their_trace = new_session_id(), trace()  # telemetry before any run row
    b.taken(
        report_of(
            "host-b",
            2,
            telemetry_rollups=[rollup_of(their_telemetry, "host-b", trace_id=their_trace)],
            telemetry_spans=[span_of(None, their_trace)],
        )
    )
    mine, my_trace = new_session_id(), trace()
    # A run of mine in a trace host-b's runs are in too (a caller's TRACEPARENT).
    shared = new_session_id()
    answer = a.taken(
        report_of(
            "host-a",
            1,
            telemetry_rollups=[
                rollup_of(theirs["session_id"]),
                rollup_of(their_telemetry),
                rollup_of(mine, trace_id=my_trace),
                rollup_of(shared, trace_id=their_trace),
            ],
            telemetry_spans=[
                span_of(theirs["session_id"], trace()),
                span_of(None, their_trace),  # a wrapper's span of host-b's fire
                span_of(mine, my_trace),
                span_of(shared, their_trace),
            ],
        )
    )
    refused = answer["ack"]["refused"]
    assert {r["kind"] for r in refused} == {"telemetry_rollup", "telemetry_span"}
    assert len(refused) == 4 and {r["status"] for r in refused} == {409}
    assert "on record for host 'host-b'" in refusals(answer)[theirs["session_id"]]["reason"]
    assert answer["ack"]["telemetry"] == {"telemetry_rollups": 4, "telemetry_spans": 4}
    # Only mine is taken; host-b's telemetry is as host-b sent it.
    taken = set(RunTelemetry.objects.filter(host="host-a").values_list("session_id", flat=True))
    assert taken == {uuid.UUID(mine), uuid.UUID(shared)}
    assert RunTelemetry.objects.get(session_id=their_telemetry).host == "host-b"
    assert not RunTelemetry.objects.filter(session_id=theirs["session_id"]).exists()
    assert Session.objects.get(session_id=theirs["session_id"]).cost_telemetry_usd is None
    assert set(TelemetrySpan.objects.values_list("trace_id", "host", "session_id")) == {
        (their_trace, "host-b", None),
        (my_trace, "host-a", uuid.UUID(mine)),
        (their_trace, "host-a", uuid.UUID(shared)),
    }
    assert RefusedItem.objects.filter(host="host-a").count() == 4


def deep(n: int) -> object:
    value: object = "x"
    for _ in range(n):
        value = {"a": value}
    return value


BAD_ROLLUPS = {
    "not an object": lambda sid: [sid],
    "a session id that is not one": lambda sid: rollup_of("../../etc/passwd"),
    "another host's tag": lambda sid: rollup_of(sid, host="host-b"),
    "a trace id that is not hex": lambda sid: rollup_of(sid, trace_id="z" * 32),
    "10 000 ttft values": lambda sid: rollup_of(sid, ttft_ms=[1.0] * 10_000),
    "1000 models": lambda sid: rollup_of(
        sid,
        requests_by={
            f"m{n}": {"requests": 1, "cost_usd": 0, "output_tokens": 1} for n in range(1000)
        },
    ),
    "cost 1e300": lambda sid: rollup_of(sid, cost_usd=1e300),
    "negative tokens": lambda sid: rollup_of(sid, input_tokens=-5),
    "tokens 2**70": lambda sid: rollup_of(sid, output_tokens=2**70),
    "a count that is text": lambda sid: rollup_of(sid, api_requests="2"),
    "a count that is true": lambda sid: rollup_of(sid, tool_calls=True),
    "a 10 000 character job": lambda sid: rollup_of(sid, job="j" * 10_000),
    "a tool row lacking its figures": lambda sid: rollup_of(sid, tools={"Bash": {"calls": 1}}),
    "an error row nested deep": lambda sid: rollup_of(sid, last_errors=[deep(50)]),
    "an open tool that is a list": lambda sid: rollup_of(sid, open_tools={"t": [1, 2]}),
}
BAD_SPANS = {
    "a span id that is not hex": lambda sid: span_of(sid, trace(), span_id="g" * 16),
    "a trace id of 64 digits": lambda sid: span_of(sid, "a" * 64),
    "a 10 000 character name": lambda sid: span_of(sid, trace(), name="n" * 10_000),
    "an attribute nested deep": lambda sid: span_of(sid, trace(), attributes={"a": deep(50)}),
    "a 1 MB attribute": lambda sid: span_of(sid, trace(), attributes={"a": "x" * 2**20}),
    "1000 attributes": lambda sid: span_of(
        sid, trace(), attributes={f"a{n}": n for n in range(1000)}
    ),
    "a start before 1970": lambda sid: span_of(sid, trace(), start_ns=-1),
    "a duration of 1e300 ms": lambda sid: span_of(sid, trace(), duration_ms=1e300),
    "a session id that is a number": lambda sid: span_of(sid, trace()) | {"session_id": 42},
}


@pytest.mark.parametrize("bad", sorted(BAD_ROLLUPS) + sorted(BAD_SPANS))
def test_a_malformed_or_huge_telemetry_item_is_refused_the_rest_taken(bad, console_state):
    host = Host("host-a")
    good, good_trace = new_session_id(), trace()
    name = "telemetry_rollups" if bad in BAD_ROLLUPS else "telemetry_spans"
    item = (BAD_ROLLUPS | BAD_SPANS)[bad](new_session_id())
    payload = report_of(
        "host-a",
        1,
        telemetry_rollups=[rollup_of(good, trace_id=good_trace)],
        telemetry_spans=[span_of(good, good_trace)],
    )
    payload[name] = [item, *payload[name]]
    answer = host.taken(payload)
    refused = answer["ack"]["refused"]
    assert len(refused) == 1 and refused[0]["kind"] == name.removesuffix("s"), refused
    assert RefusedItem.objects.get(host="host-a").reason
    assert RunTelemetry.objects.get(session_id=good).host == "host-a"
    assert TelemetrySpan.objects.get(trace_id=good_trace).host == "host-a"
    assert RunTelemetry.objects.count() == 1 and TelemetrySpan.objects.count() == 1


def test_what_is_recorded_is_rebuilt_never_the_host_s_json(console_state):
    host = Host("host-a")
    session_id, trace_id = new_session_id(), trace()
    rollup = rollup_of(session_id, trace_id=trace_id, evil={"x": "y" * 1000})
    rollup["requests_by"]["m · s"] = {
        "requests": 1,
        "cost_usd": 0.1,
        "output_tokens": 2,
        "more": [1],
    }
    span = span_of(session_id, trace_id, extra={"a": 1})
    answer = host.taken(report_of("host-a", 1, telemetry_rollups=[rollup], telemetry_spans=[span]))
    assert answer["ack"]["refused"] == []
    row = RunTelemetry.objects.get(session_id=session_id)
    assert "evil" not in whole(row) and "more" not in whole(row)["requests_by"]["m · s"]
    assert set(whole(row)) == set(Rollup.__dataclass_fields__)
    assert row.ttft_p50_ms == 400.0
    assert TelemetrySpan.objects.get(trace_id=trace_id).attributes == span["attributes"]


def test_nan_and_more_than_a_report_may_carry_are_refused(console_state):
    host = Host("host-a")
    spans = [span_of(None, trace()) for _ in range(MAX_SPANS_PER_REPORT + 20)]
    payload = report_of("host-a", 1, telemetry_spans=spans)
    payload["telemetry_rollups"] = [rollup_of(new_session_id(), cost_usd=0.0)]
    raw = json.dumps(payload).replace('"cost_usd": 0.0', '"cost_usd": NaN', 1).encode()
    response = host.post(None, raw=raw)
    assert response.status_code == 200, response.content[:300]
    refused = {(r["kind"], r["status"]) for r in response.json()["ack"]["refused"]}
    assert refused == {("telemetry_span", 413), ("telemetry_rollup", 400)}
    assert TelemetrySpan.objects.count() == MAX_SPANS_PER_REPORT
    assert not RunTelemetry.objects.exists()


def test_an_answer_without_the_telemetry_ack_lets_nothing_go(receiving):
    """A console from before telemetry ignores the items and says nothing of them: the
    host keeps them (bounded) until a console answers for them."""
    monitor = receiving
    reporter = monitor.reporting.reporter
    post = reporter.transport

    def old_console(body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        status, answer = post(body, headers)
        data = json.loads(answer)
        del data["ack"]["telemetry"]
        return status, json.dumps(data).encode()

    reporter.transport = old_console
    session_id = new_session_id()
    post_otlp(monitor, "logs", logs_body(session_id, "host-a", [0.1]))
    report_once(monitor)
    report_once(monitor)
    assert list(monitor.reporting.telemetry.rollups) == [session_id]
    reporter.transport = post
    report_once(monitor)
    assert len(monitor.reporting.telemetry) == 0
    assert RunTelemetry.objects.get(session_id=session_id).cost_usd == Decimal("0.1")


# ----------------------------------------------------------------------------- processes


def test_a_real_reporting_monitor_ships_what_its_receiver_took(
    console_without_monitor, state, tmp_path
):
    """`opsconsole monitor --report-to` as its own process, against `opsconsole serve`:
    OTLP posted to the host's receiver ends up in the console's database, the host's."""
    console = console_without_monitor
    token = manage(console.env, "create_host_token", "host-t").strip().splitlines()[-1]
    home = tmp_path / "host-home"
    home.mkdir(mode=0o700)
    paths = StatePaths(home=home, active=home / "active")
    env = dict(
        state.env,
        OPSCONSOLE_HOME=str(home),
        OPSCONSOLE_ACTIVE_DIR=str(paths.active),
        OPSCONSOLE_HOST_NAME="host-t",
        OPSCONSOLE_REPORT_TOKEN=token,
        OPSCONSOLE_OTLP_PORT="0",
        OPSCONSOLE_SAMPLE_SECONDS="0.5",
        OPSCONSOLE_SCHEDULERS="cron",
    )
    env.pop("DATABASE_URL", None)
    log = tmp_path / "host-monitor.log"
    with log.open("wb") as handle:
        host = subprocess.Popen(
            [PYTHON, "-m", "opsconsole.cli", "monitor", "--report-to", console.url],
            env=env,
            cwd=REPO_ROOT,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: read_receiver_address(paths), timeout=30)
        monitor = SimpleNamespace(paths=paths)
        session_id, trace_id = new_session_id(), trace()
        assert post_otlp(monitor, "logs", logs_body(session_id, "host-t", [0.007, 0.017])) == 200
        names = ["claude_code.interaction", "claude_code.llm_request"]
        body = traces_body(session_id, "host-t", trace_id, names)
        assert post_otlp(monitor, "traces", body) == 200
        database = console.env["DATABASE_URL"].removeprefix("sqlite:///")

        def on_record():
            with sqlite3.connect(database) as db:
                row = db.execute(
                    "select host, cost_usd, api_requests from sessions_app_runtelemetry"
                    " where session_id = ?",
                    (uuid.UUID(session_id).hex,),
                ).fetchone()
                spans = db.execute(
                    "select host, name from sessions_app_telemetryspan where trace_id = ?",
                    (trace_id,),
                ).fetchall()
            return (row, sorted(spans)) if row and len(spans) == 2 else None

        row, spans = wait_until(on_record, timeout=30)
        assert (row[0], Decimal(str(row[1])), row[2]) == ("host-t", Decimal("0.024"), 2)
        assert spans == sorted(("host-t", name) for name in names)
    finally:
        host.send_signal(signal.SIGTERM)
        try:
            host.wait(timeout=20)
        except subprocess.TimeoutExpired:
            host.kill()
    assert host.returncode == 0, log.read_text()[-3000:]
    assert not (home / "monitor" / "telemetry-outbox.json").exists(), "nothing left waiting"
