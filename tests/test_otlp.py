"""sessions_app.otlp: odd but valid OTLP shapes are read, and what is not OTLP says why."""

from __future__ import annotations

import json
import math

import pytest

from sessions_app.otlp import MAX_ATTRIBUTES, MAX_VALUE_CHARS, OtlpError, decode
from tests.otlp_bodies import SAMPLES, Ev, Sp, logs, traces

SID = "2a9b3d95-8ab2-46b7-b39b-181c1543a0cb"


def one_log(record: dict, resource: dict | None = None, snake: bool = False) -> bytes:
    keys = (
        ("resource_logs", "scope_logs", "log_records")
        if snake
        else (
            "resourceLogs",
            "scopeLogs",
            "logRecords",
        )
    )
    block = {keys[1]: [{keys[2]: [record]}]}
    if resource is not None:
        block["resource"] = resource
    return json.dumps({keys[0]: [block]}).encode()


def test_snake_case_keys_are_read_as_camel_case_ones():
    record = {
        "time_unix_nano": "1796674059313000000",
        "body": {"string_value": "claude_code.api_request"},
        "attributes": [
            {"key": "session.id", "value": {"string_value": SID}},
            {"key": "cost_usd", "value": {"double_value": 0.5}},
            {"key": "input_tokens", "value": {"int_value": "1200"}},
            {"key": "ok", "value": {"bool_value": True}},
        ],
    }
    [event] = decode("logs", one_log(record, snake=True), protobuf=False).events
    assert event.name == "claude_code.api_request"
    assert event.time_ns == 1796674059313000000
    assert event.attributes == {
        "session.id": SID,
        "cost_usd": 0.5,
        "input_tokens": 1200,
        "ok": True,
    }


def test_integers_as_strings_and_numbers_and_doubles_as_strings():
    record = {
        "body": {"stringValue": "x"},
        "attributes": [
            {"key": "a", "value": {"intValue": "9007199254740993"}},  # past a double
            {"key": "b", "value": {"intValue": 7}},
            {"key": "c", "value": {"doubleValue": "1.5"}},
            {"key": "d", "value": {"doubleValue": "Infinity"}},
            {"key": "e", "value": {"doubleValue": "NaN"}},
        ],
    }
    [event] = decode("logs", one_log(record), protobuf=False).events
    assert event.attributes == {"a": 9007199254740993, "b": 7, "c": 1.5, "d": "inf", "e": "nan"}


def test_missing_fields_are_defaults():
    # No resource, no time (the observed time is used), no attributes, no body.
    record = {"observedTimeUnixNano": "5"}
    [event] = decode("logs", one_log(record), protobuf=False).events
    assert (event.name, event.time_ns, event.attributes) == ("", 5, {})
    assert len(decode("logs", b"{}", protobuf=False)) == 0
    assert len(decode("logs", b'{"resourceLogs": null}', protobuf=False)) == 0
    body = one_log({"attributes": [{"key": "k"}, {"value": {"stringValue": "no key"}}]}, {})
    [event] = decode("logs", body, protobuf=False).events
    assert event.attributes == {"k": ""}


def test_arrays_and_kvlists_are_kept_as_json_text():
    record = {
        "body": {"stringValue": "x"},
        "attributes": [
            {
                "key": "list",
                "value": {"arrayValue": {"values": [{"stringValue": "a"}, {"intValue": "2"}, {}]}},
            },
            {
                "key": "map",
                "value": {
                    "kvlistValue": {
                        "values": [
                            {"key": "k", "value": {"boolValue": False}},
                            {"key": "n", "value": {"arrayValue": {}}},
                        ]
                    }
                },
            },
            {"key": "bytes", "value": {"bytesValue": "AAEC"}},
        ],
    }
    [event] = decode("logs", one_log(record), protobuf=False).events
    assert json.loads(event.attributes["list"]) == ["a", 2, ""]
    assert json.loads(event.attributes["map"]) == {"k": False, "n": "[]"}
    assert event.attributes["bytes"] == "AAEC"


def test_the_resource_is_under_each_record_and_sizes_are_bounded():
    resource = {"attributes": [{"key": f"r{i}", "value": {"stringValue": "v"}} for i in range(10)]}
    record = {
        "body": {"stringValue": "x" * (MAX_VALUE_CHARS + 10)},
        "attributes": [{"key": "r0", "value": {"stringValue": "own"}}]
        + [{"key": f"a{i}", "value": {"intValue": i}} for i in range(200)],
    }
    [event] = decode("logs", one_log(record, resource), protobuf=False).events
    assert event.attributes["r0"] == "own" and event.attributes["r9"] == "v"
    assert len(event.attributes) == MAX_ATTRIBUTES
    assert len(event.name) == MAX_VALUE_CHARS + 1


def test_spans_with_uppercase_ids_and_status_names_and_bad_ids_counted():
    span = {
        "traceId": "5B8EFFF798038103D269B633813FC60C",
        "spanId": "EEE19B7EC3C1B174",
        "name": "claude_code.llm_request",
        "status": {"code": "STATUS_CODE_ERROR", "message": "overloaded"},
        "attributes": [{"key": "ttft_ms", "value": {"intValue": "163"}}],
    }
    bad = {"traceId": "not hex", "spanId": "EEE19B7EC3C1B174"}
    body = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span, bad]}]}]}).encode()
    records = decode("traces", body, protobuf=False)
    [read] = records.spans
    assert read.trace_id == "5b8efff798038103d269b633813fc60c" and read.parent_span_id == ""
    assert read.error and read.status_message == "overloaded"
    assert read.attributes == {"ttft_ms": 163}
    assert records.dropped == {"bad trace or span id": 1}


def test_metric_points_int_or_double_and_histograms_left_out():
    body = {
        "resourceMetrics": [
            {
                "scopeMetrics": [
                    {
                        "metrics": [
                            {
                                "name": "a",
                                "sum": {"dataPoints": [{"asInt": "3"}, {"asDouble": 1.5}]},
                            },
                            {"name": "b", "gauge": {"data_points": [{"as_double": 2}]}},
                            {"name": "c", "histogram": {"dataPoints": [{"count": "1"}]}},
                            {"name": "d", "sum": {"dataPoints": [{"asDouble": "-Infinity"}]}},
                        ]
                    }
                ]
            }
        ]
    }
    records = decode("metrics", json.dumps(body).encode(), protobuf=False)
    assert [(p.name, p.value) for p in records.points] == [("a", 3.0), ("a", 1.5), ("b", 2.0)]
    assert all(math.isfinite(p.value) for p in records.points)
    assert records.dropped == {"not a finite number": 1}


@pytest.mark.parametrize("protobuf", [False, True])
def test_protobuf_and_json_read_the_same(protobuf):
    res = {"session.id": SID, "opsconsole.job": "j"}
    events = [Ev("claude_code.tool_result", {"success": "true", "duration_ms": 12, "f": 0.5})]
    [event] = decode("logs", logs(res, events, protobuf=protobuf), protobuf=protobuf).events
    assert event.attributes == {**res, "success": "true", "duration_ms": 12, "f": 0.5}
    span = Sp("claude_code.tool", {"x": float("inf")}, parent_span_id="ab" * 8)
    [read] = decode("traces", traces(res, [span], protobuf=protobuf), protobuf=protobuf).spans
    assert (read.trace_id, read.span_id, read.parent_span_id) == (
        span.trace_id,
        span.span_id,
        span.parent_span_id,
    )
    assert read.attributes["x"] == "inf"


@pytest.mark.parametrize(
    ("signal", "body", "reason"),
    [
        ("logs", b"\xff\xfe", "not JSON"),
        ("logs", b"7", "not a JSON object"),
        ("logs", b'{"resourceLogs": {"a": 1}}', "not a list"),
        (
            "traces",
            json.dumps(
                {
                    "resourceSpans": [
                        {
                            "scopeSpans": [
                                {
                                    "spans": [
                                        {
                                            "traceId": "ab" * 16,
                                            "spanId": "cd" * 8,
                                            "startTimeUnixNano": "-1",
                                        }
                                    ]
                                }
                            ]
                        }
                    ]
                }
            ).encode(),
            "out of range",
        ),
        (
            "logs",
            json.dumps(json.loads((SAMPLES / "logs_1.json").read_text()))[:-9].encode(),
            "not JSON",
        ),
        ("spans", b"{}", "unknown signal"),
    ],
)
def test_what_is_not_otlp_says_why(signal, body, reason):
    with pytest.raises(OtlpError, match=reason):
        decode(signal, body, protobuf=False)


def test_a_time_out_of_range_is_refused():
    record = {"timeUnixNano": str(2**64), "body": {"stringValue": "x"}}
    with pytest.raises(OtlpError, match="out of range"):
        decode("logs", one_log(record), protobuf=False)
