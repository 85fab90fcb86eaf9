"""Claude Code's own OpenTelemetry, turned on for the runs the wrapper starts.

The host's monitor listens for OTLP/HTTP on loopback and says where, with its token, in
`<home>/monitor/otlp.json` (`ReceiverAddress`). For each attempt the wrapper points
Claude Code's exporters there, tags every record with the run (`opsconsole.run_id`,
`opsconsole.job`, `opsconsole.host`, `opsconsole.attempt`), and passes the fire's trace
down as `TRACEPARENT`: one W3C trace per scheduled fire, whose root span is the
wrapper's, with one child span per attempt (a retry's fresh session id included).

A job that already exports OTLP keeps its exporter: its endpoint, headers and protocol
ride to the receiver in one header (`TEE_HEADER`), and the receiver forwards every body it
takes there too, so adding the console breaks no dashboard. gRPC exporters cannot be
teed over HTTP: such a job's settings are left alone and the console gets no telemetry
from it (said once on stderr).

Stdlib only, like the rest of the wrapper.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wrapper.formats import (
    FormatError,
    StatePaths,
    process_start_time,
    read_json_record,
    same_start_time,
    write_json_atomic,
)

TELEMETRY_SETTING = "OPSCONSOLE_TELEMETRY"  # "off" turns it off
TEE_HEADER = "x-opsconsole-tee"
MAX_TEE_CHARS = 4096
# How often Claude Code exports, unless the job says otherwise: often enough for the live
# timeline to show a tool while it runs.
EXPORT_INTERVALS = {
    "OTEL_LOGS_EXPORT_INTERVAL": "1000",
    "OTEL_METRIC_EXPORT_INTERVAL": "10000",
    "OTEL_BSP_SCHEDULE_DELAY": "1000",
}
# The variables of a job's own exporter that the tee takes over (the receiver sends there).
_SIGNALS = ("LOGS", "METRICS", "TRACES")
_OWN_EXPORTER = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    *(
        f"OTEL_EXPORTER_OTLP_{signal}_{what}"
        for signal in _SIGNALS
        for what in ("ENDPOINT", "HEADERS", "PROTOCOL")
    ),
)
PROTOCOLS = ("http/protobuf", "http/json")
_TRACEPARENT_RE = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
SPAN_SEND_TIMEOUT_SECONDS = 2.0


def receiver_file(paths: StatePaths) -> Path:
    return paths.home / "monitor" / "otlp.json"


@dataclass(frozen=True)
class ReceiverAddress:
    """Where this host's monitor takes OTLP, the token it asks for, and which process it is:
    a file left by a monitor that is gone names a port anyone may have taken since."""

    endpoint: str  # http://127.0.0.1:PORT
    token: str
    pid: int = 0
    started: float = 0.0  # the monitor's process start time

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "token": self.token,
            "pid": self.pid,
            "started": self.started,
        }


def write_receiver_address(paths: StatePaths, address: ReceiverAddress) -> None:
    write_json_atomic(receiver_file(paths), address.to_dict())


def remove_receiver_address(paths: StatePaths) -> None:
    with contextlib.suppress(FileNotFoundError):
        receiver_file(paths).unlink()


def _loopback_endpoint(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parsed = urllib.parse.urlsplit(value)
        port = parsed.port
    except ValueError:
        return False
    return (
        parsed.scheme == "http"
        and parsed.hostname == "127.0.0.1"
        and port is not None
        and not parsed.username
        and parsed.path in ("", "/")
        and value == f"http://127.0.0.1:{port}"
    )


def read_receiver_address(paths: StatePaths) -> ReceiverAddress | None:
    """The monitor's receiver, or None when no running monitor has said where it listens
    (the file is ours, names loopback, and its monitor process is alive, the same one)."""
    try:
        data = read_json_record(receiver_file(paths), max_bytes=4096)
    except (FormatError, OSError):
        return None
    endpoint, token, pid, started = (data.get(k) for k in ("endpoint", "token", "pid", "started"))
    if not _loopback_endpoint(endpoint):
        return None
    if not (isinstance(token, str) and 16 <= len(token) <= 128 and token.isprintable()):
        return None
    if not (isinstance(pid, int) and pid > 0 and isinstance(started, int | float)):
        return None
    if not same_start_time(process_start_time(pid), float(started)):
        return None
    return ReceiverAddress(endpoint, token, pid, float(started))


# --------------------------------------------------------------------------- traces


def new_trace_id() -> str:
    return os.urandom(16).hex()


def new_span_id() -> str:
    return os.urandom(8).hex()


def parse_traceparent(value: str | None) -> tuple[str, str] | None:
    """(trace id, parent span id) of a W3C traceparent, or None if it is not one."""
    match = _TRACEPARENT_RE.fullmatch((value or "").strip().lower())
    if not match or set(match.group(1)) == {"0"} or set(match.group(2)) == {"0"}:
        return None
    return match.group(1), match.group(2)


def traceparent(trace_id: str, span_id: str) -> str:
    return f"00-{trace_id}-{span_id}-01"


@dataclass
class Span:
    """A span the wrapper itself reports: the fire (root) or one attempt."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    start_ns: int
    end_ns: int = 0
    attributes: dict[str, str | int] = field(default_factory=dict)
    error: bool = False

    def to_otlp(self) -> dict[str, Any]:
        def value(v: str | int) -> dict[str, Any]:
            return {"intValue": str(v)} if isinstance(v, int) else {"stringValue": str(v)}

        return {
            "traceId": self.trace_id,
            "spanId": self.span_id,
            "parentSpanId": self.parent_span_id,
            "name": self.name,
            "kind": 1,
            "startTimeUnixNano": str(self.start_ns),
            "endTimeUnixNano": str(self.end_ns or time.time_ns()),
            "attributes": [{"key": k, "value": value(v)} for k, v in self.attributes.items()],
            "status": {"code": 2 if self.error else 1},
        }


# --------------------------------------------------------------------------- the tee


@dataclass(frozen=True)
class Tee:
    """A job's own OTLP exporter, which the receiver forwards to: only the signals the
    job exported, each with the headers the job gave it."""

    endpoint: str  # base URL; /v1/<signal> is appended
    protocol: str = "http/protobuf"
    headers: dict[str, str] = field(default_factory=dict)
    # Per-signal endpoints the job set (full URLs, used as given, as OTel does).
    signal_endpoints: dict[str, str] = field(default_factory=dict)
    signals: tuple[str, ...] = ("logs", "metrics", "traces")
    signal_headers: dict[str, dict[str, str]] = field(default_factory=dict)

    def url(self, signal: str) -> str:
        given = self.signal_endpoints.get(signal)
        if given:
            return given
        return self.endpoint.rstrip("/") + f"/v1/{signal}"

    def exports(self, signal: str) -> bool:
        return signal in self.signals

    def headers_for(self, signal: str) -> dict[str, str]:
        return {**self.headers, **self.signal_headers.get(signal, {})}

    def encode(self) -> str:
        data = {
            "e": self.endpoint,
            "p": self.protocol,
            "h": self.headers,
            "s": self.signal_endpoints,
            "x": list(self.signals),
            "sh": self.signal_headers,
        }
        raw = json.dumps(data, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, value: str) -> Tee:
        """The tee a header names; FormatError when it is not one we would have written."""
        if len(value) > MAX_TEE_CHARS:
            raise FormatError("tee header too long")
        try:
            data = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
        except (ValueError, TypeError) as exc:
            raise FormatError(f"tee header is not base64 JSON: {exc}") from None
        if not isinstance(data, dict):
            raise FormatError("tee header is not an object")
        endpoint, protocol = data.get("e"), data.get("p")
        headers, signals = data.get("h") or {}, data.get("s") or {}
        exported = data.get("x", ["logs", "metrics", "traces"])
        signal_headers = data.get("sh") or {}
        if not isinstance(signals, dict):
            raise FormatError("tee signal endpoints are not a map")
        if not all(isinstance(u, str) and _is_http_url(u) for u in [endpoint, *signals.values()]):
            raise FormatError("tee endpoint is not an http(s) URL")
        if protocol not in PROTOCOLS:
            raise FormatError(f"tee protocol {protocol!r} is not one of {PROTOCOLS}")
        if not (isinstance(signal_headers, dict) and isinstance(exported, list)):
            raise FormatError("tee signals are not a list, or their headers not a map")
        for named in (headers, *signal_headers.values()):
            if not (isinstance(named, dict) and all(isinstance(v, str) for v in named.values())):
                raise FormatError("tee headers are not a map of strings")
            if any(set(str(k) + v) & {"\r", "\n"} for k, v in named.items()):
                raise FormatError("tee header contains a line break")
        known = {"logs", "metrics", "traces"}
        if not (set(signals) | set(signal_headers) | set(map(str, exported))) <= known:
            raise FormatError("tee names an unknown signal")
        return cls(
            endpoint,
            protocol,
            {str(k): v for k, v in headers.items()},
            dict(signals),
            tuple(exported),
            {k: {str(h): v for h, v in named.items()} for k, named in signal_headers.items()},
        )


def _is_http_url(value: str) -> bool:
    parsed = urllib.parse.urlsplit(value)
    return parsed.scheme in ("http", "https") and bool(parsed.hostname)


def parse_otlp_headers(value: str) -> dict[str, str]:
    """OTEL_EXPORTER_OTLP_HEADERS: `key=value` pairs, comma-separated, values URL-encoded."""
    headers = {}
    for pair in value.split(","):
        key, sep, val = pair.partition("=")
        if sep and key.strip():
            headers[key.strip()] = urllib.parse.unquote(val.strip())
    return headers


_TLS_SETTING_RE = re.compile(
    r"OTEL_EXPORTER_OTLP_(?:(?:LOGS|METRICS|TRACES)_)?(?:CERTIFICATE|CLIENT_KEY|CLIENT_CERTIFICATE)"
)


def _own_tee(env: dict[str, str]) -> Tee | str | None:
    """The job's own OTLP exporter: a Tee, None when it has none, or why it cannot be
    teed (the job's settings are then left as they are, and the console gets nothing)."""
    if env.get("CLAUDE_CODE_ENABLE_TELEMETRY", "").strip().lower() not in ("1", "true", "yes"):
        return None
    exporters = {
        signal.lower(): [v.strip() for v in env.get(f"OTEL_{signal}_EXPORTER", "").split(",")]
        for signal in _SIGNALS
    }
    foreign = sorted(
        f"{signal} to {name}"
        for signal, names in exporters.items()
        for name in names
        if name not in ("", "otlp", "none")
    )
    if foreign:  # a Prometheus endpoint, the console: ours would replace it
        return f"the job exports {', '.join(foreign)}, which the console's exporter would replace"
    signals = tuple(signal for signal, names in exporters.items() if "otlp" in names)
    if not signals:
        return None
    if any(_TLS_SETTING_RE.fullmatch(name) for name in env):
        return "the job's OTLP exporter has TLS client settings, which the receiver cannot use"
    signal_endpoints = {
        signal.lower(): env[f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"]
        for signal in _SIGNALS
        if env.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")
    }
    endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    if not endpoint and not signal_endpoints:
        return None
    protocols = {env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"} | {
        env[f"OTEL_EXPORTER_OTLP_{s}_PROTOCOL"]
        for s in _SIGNALS
        if env.get(f"OTEL_EXPORTER_OTLP_{s}_PROTOCOL")
    }
    if len(protocols) != 1 or not protocols <= set(PROTOCOLS):
        named = ", ".join(sorted(protocols))
        return f"the job exports OTLP as {named}, which the receiver cannot forward"
    urls = [u for u in (endpoint, *signal_endpoints.values()) if u]
    if not all(_is_http_url(u) for u in urls):
        return "the job's OTLP endpoint is not an http(s) URL"
    headers = parse_otlp_headers(env.get("OTEL_EXPORTER_OTLP_HEADERS", ""))
    signal_headers = {
        signal.lower(): parse_otlp_headers(env[f"OTEL_EXPORTER_OTLP_{signal}_HEADERS"])
        for signal in _SIGNALS
        if env.get(f"OTEL_EXPORTER_OTLP_{signal}_HEADERS")
    }
    tee = Tee(
        endpoint or urls[0], protocols.pop(), headers, signal_endpoints, signals, signal_headers
    )
    if len(tee.encode()) > MAX_TEE_CHARS:
        return "the job's OTLP headers are too long to forward"
    return tee


# --------------------------------------------------------------------------- the env


def receiver_env(address: ReceiverAddress, protocol: str = "http/protobuf") -> dict[str, str]:
    """The variables that point Claude Code's telemetry (events, metrics, spans) at this
    host's receiver: what the wrapper sets for its runs, and what `opsconsole
    telemetry-env` prints for a session started by hand."""
    return {
        "CLAUDE_CODE_ENABLE_TELEMETRY": "1",
        "CLAUDE_CODE_ENHANCED_TELEMETRY_BETA": "1",
        "OTEL_LOGS_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_EXPORTER_OTLP_ENDPOINT": address.endpoint,
        "OTEL_EXPORTER_OTLP_HEADERS": f"Authorization=Bearer {address.token}",
    }


@dataclass
class RunTelemetry:
    """One fire's telemetry plan: where it goes, its trace, and the spans the wrapper sends."""

    address: ReceiverAddress | None
    trace_id: str
    root: Span
    tee: Tee | None = None
    note: str | None = None  # why the console gets no telemetry from this run, if it does not
    # The one reason worth a line on stderr: the job's own exporter could not be kept.
    warning: str | None = None

    @classmethod
    def plan(cls, env: dict[str, str], paths: StatePaths, *, job: str, host: str) -> RunTelemetry:
        caller = parse_traceparent(env.get("TRACEPARENT"))
        trace_id, parent = caller if caller else (new_trace_id(), "")
        root = Span(
            "opsconsole.run",
            trace_id,
            new_span_id(),
            parent,
            time.time_ns(),
            attributes={"opsconsole.job": job, "opsconsole.host": host},
        )
        if env.get(TELEMETRY_SETTING, "").strip().lower() in ("off", "0", "false", "no"):
            return cls(None, trace_id, root, note=f"{TELEMETRY_SETTING}=off")
        address = read_receiver_address(paths)
        if address is None:
            return cls(None, trace_id, root, note="no monitor receiver on this host")
        own = _own_tee(env)
        if isinstance(own, str):
            return cls(None, trace_id, root, note=own, warning=own)
        return cls(address, trace_id, root, tee=own)

    @property
    def on(self) -> bool:
        return self.address is not None

    def attempt_span(self, session_id: str, attempt: int) -> Span:
        return Span(
            "opsconsole.attempt",
            self.trace_id,
            new_span_id(),
            self.root.span_id,
            time.time_ns(),
            attributes={
                "session.id": session_id,
                "opsconsole.run_id": session_id,
                "opsconsole.attempt": attempt,
                **self.root.attributes,
            },
        )

    def child_env(self, env: dict[str, str], span: Span) -> dict[str, str]:
        """The attempt's environment: telemetry pointed at the receiver, tagged with the run."""
        if not self.on:
            return env
        assert self.address is not None
        child = {k: v for k, v in env.items() if k not in _OWN_EXPORTER}
        headers = f"Authorization=Bearer {self.address.token}"
        if self.tee is not None:
            headers += f",{TEE_HEADER}={self.tee.encode()}"
        attributes = {
            "opsconsole.run_id": span.attributes["session.id"],
            "opsconsole.job": self.root.attributes["opsconsole.job"],
            "opsconsole.host": self.root.attributes["opsconsole.host"],
            "opsconsole.attempt": span.attributes["opsconsole.attempt"],
        }
        ours = ",".join(f"{k}={urllib.parse.quote(str(v), safe='')}" for k, v in attributes.items())
        theirs = env.get("OTEL_RESOURCE_ATTRIBUTES", "").strip().strip(",")
        child.update(
            receiver_env(self.address, self.tee.protocol if self.tee else "http/protobuf"),
            OTEL_EXPORTER_OTLP_HEADERS=headers,
            OTEL_RESOURCE_ATTRIBUTES=f"{theirs},{ours}" if theirs else ours,
            TRACEPARENT=traceparent(self.trace_id, span.span_id),
        )
        for name, default in EXPORT_INTERVALS.items():
            child.setdefault(name, default)
        return child

    def send(self, *spans: Span) -> str | None:
        """Report the wrapper's own spans to the receiver; why not, or None once taken."""
        if not self.on:
            return None
        assert self.address is not None
        body = {
            "resourceSpans": [
                {
                    "resource": {
                        "attributes": [
                            {"key": "service.name", "value": {"stringValue": "opsconsole-run"}}
                        ]
                    },
                    "scopeSpans": [
                        {
                            "scope": {"name": "opsconsole.wrapper"},
                            "spans": [s.to_otlp() for s in spans],
                        }
                    ],
                }
            ]
        }
        headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {self.address.token}",
        }
        if self.tee is not None:
            headers[TEE_HEADER] = self.tee.encode()
        # The address is loopback http only (read_receiver_address checks it).
        request = urllib.request.Request(  # noqa: S310
            self.address.endpoint + "/v1/traces",
            data=json.dumps(body).encode(),
            headers=headers,
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=SPAN_SEND_TIMEOUT_SECONDS) as answer:  # noqa: S310
                answer.read()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return str(exc)
        return None
