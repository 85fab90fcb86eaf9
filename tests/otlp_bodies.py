"""OTLP request bodies as Claude Code sends them: logs and traces, JSON or protobuf.

Shared by the receiver's tests and benchmarks/bench_telemetry.py. JSON follows the OTLP
JSON mapping the CLI's exporter writes (hex ids, 64-bit integers as strings); protobuf is
built with the opentelemetry-proto classes. `deep_kvlist_logs` hand-encodes what those
classes refuse to build: an attribute value nested deeper than protobuf allows.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan

SAMPLES = Path(__file__).resolve().parent / "otlp_samples"
Value = str | int | float | bool


@dataclass
class Ev:
    """One log record: a Claude Code event."""

    name: str  # "claude_code.api_request", ...
    attributes: dict[str, Value] = field(default_factory=dict)
    time_ns: int = 0


@dataclass
class Sp:
    name: str
    attributes: dict[str, Value] = field(default_factory=dict)
    trace_id: str = field(default_factory=lambda: os.urandom(16).hex())
    span_id: str = field(default_factory=lambda: os.urandom(8).hex())
    parent_span_id: str = ""
    start_ns: int = 0
    end_ns: int = 0


def resource(session_id: str, job: str = "nightly") -> dict[str, Value]:
    """The resource attributes the wrapper puts on a run's records."""
    return {
        "service.name": "claude-code",
        "opsconsole.run_id": session_id,
        "opsconsole.job": job,
        "opsconsole.host": "bench-host",
    }


# --------------------------------------------------------------------------- JSON


def json_any(value: Value) -> dict:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    return {"stringValue": str(value)}


def json_attributes(attributes: dict[str, Value]) -> list[dict]:
    return [{"key": k, "value": json_any(v)} for k, v in attributes.items()]


def logs_json(res: dict[str, Value], events: list[Ev]) -> bytes:
    now = time.time_ns()
    return json.dumps(
        {
            "resourceLogs": [
                {
                    "resource": {"attributes": json_attributes(res)},
                    "scopeLogs": [
                        {
                            "scope": {"name": "com.anthropic.claude_code.events"},
                            "logRecords": [
                                {
                                    "timeUnixNano": str(e.time_ns or now),
                                    "body": {"stringValue": e.name},
                                    "attributes": json_attributes(e.attributes),
                                }
                                for e in events
                            ],
                        }
                    ],
                }
            ]
        }
    ).encode()


def traces_json(res: dict[str, Value], spans: list[Sp]) -> bytes:
    now = time.time_ns()
    return json.dumps(
        {
            "resourceSpans": [
                {
                    "resource": {"attributes": json_attributes(res)},
                    "scopeSpans": [
                        {
                            "scope": {"name": "com.anthropic.claude_code.tracing"},
                            "spans": [
                                {
                                    "traceId": s.trace_id,
                                    "spanId": s.span_id,
                                    "parentSpanId": s.parent_span_id,
                                    "name": s.name,
                                    "kind": 1,
                                    "startTimeUnixNano": str(s.start_ns or now),
                                    "endTimeUnixNano": str(s.end_ns or now),
                                    "attributes": json_attributes(s.attributes),
                                    "status": {"code": 0},
                                }
                                for s in spans
                            ],
                        }
                    ],
                }
            ]
        }
    ).encode()


# --------------------------------------------------------------------------- protobuf


def pb_any(value: Value) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    return AnyValue(string_value=str(value))


def pb_attributes(attributes: dict[str, Value]) -> list[KeyValue]:
    return [KeyValue(key=k, value=pb_any(v)) for k, v in attributes.items()]


def logs_pb(res: dict[str, Value], events: list[Ev]) -> bytes:
    now = time.time_ns()
    request = ExportLogsServiceRequest()
    block = request.resource_logs.add()
    block.resource.attributes.extend(pb_attributes(res))
    scope = block.scope_logs.add()
    scope.scope.name = "com.anthropic.claude_code.events"
    scope.log_records.extend(
        LogRecord(
            time_unix_nano=e.time_ns or now,
            body=AnyValue(string_value=e.name),
            attributes=pb_attributes(e.attributes),
        )
        for e in events
    )
    return request.SerializeToString()


def traces_pb(res: dict[str, Value], spans: list[Sp]) -> bytes:
    now = time.time_ns()
    request = ExportTraceServiceRequest()
    block = request.resource_spans.add()
    block.resource.attributes.extend(pb_attributes(res))
    scope = block.scope_spans.add()
    scope.scope.name = "com.anthropic.claude_code.tracing"
    scope.spans.extend(
        PbSpan(
            trace_id=bytes.fromhex(s.trace_id),
            span_id=bytes.fromhex(s.span_id),
            parent_span_id=bytes.fromhex(s.parent_span_id),
            name=s.name,
            kind=PbSpan.SPAN_KIND_INTERNAL,
            start_time_unix_nano=s.start_ns or now,
            end_time_unix_nano=s.end_ns or now,
            attributes=pb_attributes(s.attributes),
        )
        for s in spans
    )
    return request.SerializeToString()


def logs(res: dict[str, Value], events: list[Ev], *, protobuf: bool) -> bytes:
    return (logs_pb if protobuf else logs_json)(res, events)


def traces(res: dict[str, Value], spans: list[Sp], *, protobuf: bool) -> bytes:
    return (traces_pb if protobuf else traces_json)(res, spans)


# --------------------------------------------------------------------------- hostile


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def deep_kvlist_logs(session_id: str, depth: int) -> bytes:
    """An ExportLogsServiceRequest whose one record has an attribute value nested `depth`
    kvlists deep (AnyValue.kvlist_value = 6, KeyValueList.values = 1, KeyValue key = 1,
    value = 2), built by hand: the proto classes refuse to serialize past their limit."""
    value = _field(1, b"bottom")  # AnyValue.string_value
    # Each level is a prefix (the value comes last in it): built inside out, joined once.
    prefixes, size, key = [], len(value), _field(1, b"k")
    for _ in range(depth):
        pair = key + _varint(2 << 3 | 2) + _varint(size)  # KeyValue: key, value's tag
        pair_size = len(pair) + size
        kvlist = _varint(1 << 3 | 2) + _varint(pair_size)  # KeyValueList.values
        level = _varint(6 << 3 | 2) + _varint(len(kvlist) + pair_size) + kvlist + pair
        prefixes.append(level)
        size += len(level)
    value = b"".join(reversed(prefixes)) + value
    session = _field(1, b"session.id") + _field(2, _field(1, session_id.encode()))
    record = (
        _field(5, _field(1, b"claude_code.api_request"))  # body
        + _field(6, session)  # attributes
        + _field(6, _field(1, b"deep") + _field(2, value))
    )
    return _field(1, _field(2, _field(2, record)))  # resource_logs.scope_logs.log_records
