"""OTLP bodies (logs, metrics, traces; JSON or protobuf) read into plain records.

Claude Code exports its own telemetry as OTLP/HTTP (docs/claude-code-facts.md). This
module turns one request body into `Records`: the log events, spans and metric points it
holds, each with the resource's attributes merged under its own, values flattened to
str/int/float/bool. It trusts nothing: a body that is not OTLP is an `OtlpError` with the
reason, and the sizes of what is kept are bounded (attributes per record, characters per
value, nesting), so a hostile body costs at most its own bounded size.

Protobuf is decoded by `opentelemetry-proto` (upb); OTLP/JSON follows the spec's JSON
mapping (lowerCamelCase keys, hex trace and span ids, 64-bit integers as strings), and
snake_case keys are taken too.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

SIGNALS = ("logs", "metrics", "traces")
MAX_ATTRIBUTES = 64  # per record, resource's included; the rest are dropped
MAX_VALUE_CHARS = 2000
MAX_NESTING = 4  # array/kvlist values deeper than this are kept as "..."
MAX_RECORDS = 20_000  # per body
Scalar = str | int | float | bool


class OtlpError(ValueError):
    """The body is not an OTLP export request of its signal; the message says why."""


@dataclass
class Event:
    """A log record: Claude Code's events (`claude_code.api_request`, ...)."""

    name: str
    time_ns: int
    attributes: dict[str, Scalar]


@dataclass
class Span:
    trace_id: str  # 32 hex
    span_id: str  # 16 hex
    parent_span_id: str  # "" for a root
    name: str
    start_ns: int
    end_ns: int
    error: bool
    status_message: str
    attributes: dict[str, Scalar]


@dataclass
class Point:
    """One metric data point (sums and gauges; histograms are counted, not kept)."""

    name: str
    value: float
    attributes: dict[str, Scalar]


@dataclass
class Records:
    events: list[Event] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)
    # Records left out, with why: bad ids, too many records.
    dropped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.events) + len(self.spans) + len(self.points)

    def drop(self, why: str) -> None:
        self.dropped[why] = self.dropped.get(why, 0) + 1


def decode(signal: str, body: bytes, *, protobuf: bool) -> Records:
    """The records of one export request body; OtlpError when it is not one."""
    if signal not in SIGNALS:
        raise OtlpError(f"unknown signal {signal!r}")
    if protobuf:
        return _decode_protobuf(signal, body)
    try:
        data = json.loads(body)
    except RecursionError:
        raise OtlpError("JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise OtlpError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise OtlpError("not a JSON object")
    try:
        return _decode_json(signal, data)
    except RecursionError:
        raise OtlpError("nested too deeply") from None
    except (TypeError, AttributeError, ValueError, KeyError) as exc:
        raise OtlpError(f"not an OTLP {signal} request: {type(exc).__name__}: {exc}") from None


# --------------------------------------------------------------------------- shared


def _text(value: object) -> str:
    text = str(value)
    return text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS] + "…"


def _merge(resource: dict[str, Scalar], own: dict[str, Scalar]) -> dict[str, Scalar]:
    merged = dict(resource)
    for key, value in own.items():
        if key in merged or len(merged) < MAX_ATTRIBUTES:
            merged[key] = value
    return merged


def _is_hex(value: str, length: int) -> bool:
    return len(value) == length and all(c in "0123456789abcdef" for c in value)


def _double(value: object) -> Scalar:
    """A double attribute: NaN and the infinities as text, since JSON (and so the
    database's JSON columns) has no spelling for them."""
    number = float(value)  # type: ignore[arg-type]
    return number if math.isfinite(number) else str(number)


def _nanos(value: object) -> int:
    number = int(value or 0)
    if not 0 <= number < 2**63:
        raise ValueError(f"time {number} out of range")
    return number


# --------------------------------------------------------------------------- JSON


def _get(data: dict, camel: str, snake: str, default: Any = None) -> Any:
    value = data.get(camel)
    if value is None:
        value = data.get(snake)
    return default if value is None else value


def _list(data: dict, camel: str, snake: str) -> list:
    value = _get(data, camel, snake, [])
    if not isinstance(value, list):
        raise TypeError(f"{camel} is not a list")
    return value


def is_true(value: object) -> bool:
    """A flag that may arrive as a string: Claude Code sends `success: "true"`, and a
    JSON boolValue "false" is not true."""
    return value is True or str(value).lower() == "true"


def _json_value(value: object, depth: int = 0) -> Scalar:
    if not isinstance(value, dict):
        return _text(value) if value is not None else ""
    text = value.get("stringValue")
    if text is not None:  # most values: one lookup
        return _text(text)
    if "stringValue" in value or "string_value" in value:
        return _text(_get(value, "stringValue", "string_value", ""))
    if "boolValue" in value or "bool_value" in value:
        return is_true(_get(value, "boolValue", "bool_value", False))
    if "intValue" in value or "int_value" in value:
        return int(_get(value, "intValue", "int_value", 0))
    if "doubleValue" in value or "double_value" in value:
        return _double(_get(value, "doubleValue", "double_value", 0.0))
    if depth >= MAX_NESTING:
        return "..."
    if "arrayValue" in value or "array_value" in value:
        items = _list(_get(value, "arrayValue", "array_value", {}), "values", "values")
        return _text(json.dumps([_json_value(v, depth + 1) for v in items[:MAX_ATTRIBUTES]]))
    if "kvlistValue" in value or "kvlist_value" in value:
        pairs = _json_attributes(
            _list(_get(value, "kvlistValue", "kvlist_value", {}), "values", "values"), depth + 1
        )
        return _text(json.dumps(pairs))
    if "bytesValue" in value or "bytes_value" in value:
        return _text(_get(value, "bytesValue", "bytes_value", ""))
    return ""


def _json_attributes(items: list, depth: int = 0) -> dict[str, Scalar]:
    attributes: dict[str, Scalar] = {}
    for item in items[:MAX_ATTRIBUTES]:
        if isinstance(item, dict) and isinstance(item.get("key"), str):
            attributes[_text(item["key"])] = _json_value(item.get("value"), depth)
    return attributes


def _json_resource(block: dict) -> dict[str, Scalar]:
    resource = _get(block, "resource", "resource", {})
    return _json_attributes(_list(resource, "attributes", "attributes"))


def _decode_json(signal: str, data: dict) -> Records:
    records = Records()
    if signal == "logs":
        for block in _list(data, "resourceLogs", "resource_logs"):
            resource = _json_resource(block)
            for scope in _list(block, "scopeLogs", "scope_logs"):
                for log in _list(scope, "logRecords", "log_records"):
                    if len(records) >= MAX_RECORDS:
                        records.drop("too many records")
                        continue
                    attributes = _merge(
                        resource, _json_attributes(_list(log, "attributes", "attributes"))
                    )
                    name = _json_value(_get(log, "body", "body", {}))
                    when = _nanos(_get(log, "timeUnixNano", "time_unix_nano", 0)) or _nanos(
                        _get(log, "observedTimeUnixNano", "observed_time_unix_nano", 0)
                    )
                    records.events.append(Event(str(name), when, attributes))
    elif signal == "traces":
        for block in _list(data, "resourceSpans", "resource_spans"):
            resource = _json_resource(block)
            for scope in _list(block, "scopeSpans", "scope_spans"):
                for span in _list(scope, "spans", "spans"):
                    if len(records) >= MAX_RECORDS:
                        records.drop("too many records")
                        continue
                    trace_id = str(_get(span, "traceId", "trace_id", "")).lower()
                    span_id = str(_get(span, "spanId", "span_id", "")).lower()
                    parent = str(_get(span, "parentSpanId", "parent_span_id", "")).lower()
                    if not (_is_hex(trace_id, 32) and _is_hex(span_id, 16)) or (
                        parent and not _is_hex(parent, 16)
                    ):
                        records.drop("bad trace or span id")
                        continue
                    status = _get(span, "status", "status", {})
                    records.spans.append(
                        Span(
                            trace_id,
                            span_id,
                            parent,
                            _text(_get(span, "name", "name", "")),
                            _nanos(_get(span, "startTimeUnixNano", "start_time_unix_nano", 0)),
                            _nanos(_get(span, "endTimeUnixNano", "end_time_unix_nano", 0)),
                            _status_is_error(_get(status, "code", "code", 0)),
                            _text(_get(status, "message", "message", "")),
                            _merge(
                                resource, _json_attributes(_list(span, "attributes", "attributes"))
                            ),
                        )
                    )
    else:
        for block in _list(data, "resourceMetrics", "resource_metrics"):
            resource = _json_resource(block)
            for scope in _list(block, "scopeMetrics", "scope_metrics"):
                for metric in _list(scope, "metrics", "metrics"):
                    name = _text(_get(metric, "name", "name", ""))
                    for kind in ("sum", "gauge"):
                        for point in _list(
                            _get(metric, kind, kind, {}), "dataPoints", "data_points"
                        ):
                            if len(records) >= MAX_RECORDS:
                                records.drop("too many records")
                                continue
                            value = _get(point, "asDouble", "as_double", None)
                            if value is None:
                                value = _get(point, "asInt", "as_int", 0)
                            if not math.isfinite(float(value)):
                                records.drop("not a finite number")
                                continue
                            attributes = _merge(
                                resource, _json_attributes(_list(point, "attributes", "attributes"))
                            )
                            records.points.append(Point(name, float(value), attributes))
    return records


def _status_is_error(code: object) -> bool:
    # STATUS_CODE_ERROR is 2; JSON may spell the enum's name.
    return code in (2, "2", "STATUS_CODE_ERROR")


# --------------------------------------------------------------------------- protobuf


def _pb_value(value, depth: int = 0) -> Scalar:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return _text(value.string_value)
    if kind == "bool_value":
        return value.bool_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return _double(value.double_value)
    if kind == "bytes_value":
        return value.bytes_value.hex()[:MAX_VALUE_CHARS]
    if depth >= MAX_NESTING:
        return "..."
    if kind == "array_value":
        return _text(
            json.dumps([_pb_value(v, depth + 1) for v in value.array_value.values[:MAX_ATTRIBUTES]])
        )
    if kind == "kvlist_value":
        return _text(json.dumps(_pb_attributes(value.kvlist_value.values, depth + 1)))
    return ""


def _pb_attributes(items, depth: int = 0) -> dict[str, Scalar]:
    attributes: dict[str, Scalar] = {}
    for item in items[:MAX_ATTRIBUTES]:
        value = item.value
        # Most values are strings: read without a call of _pb_value.
        attributes[_text(item.key)] = (
            _text(value.string_value)
            if value.WhichOneof("value") == "string_value"
            else _pb_value(value, depth)
        )
    return attributes


_PB_REQUESTS = {
    "logs": ExportLogsServiceRequest,
    "metrics": ExportMetricsServiceRequest,
    "traces": ExportTraceServiceRequest,
}


def _decode_protobuf(signal: str, body: bytes) -> Records:
    try:
        request = _PB_REQUESTS[signal].FromString(body)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise OtlpError(f"not an OTLP {signal} protobuf: {exc}") from None
    records = Records()
    if signal == "logs":
        for block in request.resource_logs:
            resource = _pb_attributes(block.resource.attributes)
            for scope in block.scope_logs:
                for log in scope.log_records:
                    if len(records) >= MAX_RECORDS:
                        records.drop("too many records")
                        continue
                    attributes = _merge(resource, _pb_attributes(log.attributes))
                    when = log.time_unix_nano or log.observed_time_unix_nano
                    records.events.append(Event(str(_pb_value(log.body)), when, attributes))
    elif signal == "traces":
        for block in request.resource_spans:
            resource = _pb_attributes(block.resource.attributes)
            for scope in block.scope_spans:
                for span in scope.spans:
                    if len(records) >= MAX_RECORDS:
                        records.drop("too many records")
                        continue
                    if (
                        len(span.trace_id) != 16
                        or len(span.span_id) != 8
                        or len(span.parent_span_id) not in (0, 8)
                    ):
                        records.drop("bad trace or span id")
                        continue
                    records.spans.append(
                        Span(
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                            _text(span.name),
                            span.start_time_unix_nano,
                            span.end_time_unix_nano,
                            span.status.code == 2,
                            _text(span.status.message),
                            _merge(resource, _pb_attributes(span.attributes)),
                        )
                    )
    else:
        for block in request.resource_metrics:
            resource = _pb_attributes(block.resource.attributes)
            for scope in block.scope_metrics:
                for metric in scope.metrics:
                    kind = metric.WhichOneof("data")
                    if kind not in ("sum", "gauge"):
                        records.drop(f"{kind} metric")
                        continue
                    for point in getattr(metric, kind).data_points:
                        if len(records) >= MAX_RECORDS:
                            records.drop("too many records")
                            continue
                        value = (
                            point.as_double
                            if point.WhichOneof("value") == "as_double"
                            else point.as_int
                        )
                        if not math.isfinite(value):
                            records.drop("not a finite number")
                            continue
                        attributes = _merge(resource, _pb_attributes(point.attributes))
                        records.points.append(Point(_text(metric.name), float(value), attributes))
    return records
