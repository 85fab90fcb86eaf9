"""What the wrapper sets for Claude Code's telemetry: pointed at the host's receiver,
tagged with the run, one trace per fire; a job's own exporter kept as a tee."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from wrapper.formats import FormatError, StatePaths, process_start_time, write_json_atomic
from wrapper.telemetry import (
    TEE_HEADER,
    ReceiverAddress,
    RunTelemetry,
    Tee,
    parse_otlp_headers,
    parse_traceparent,
    read_receiver_address,
    write_receiver_address,
)

SESSION = "0b6f3f36-0c4e-4e0e-9d55-0d6d1e1f7a11"


@pytest.fixture
def paths(tmp_path) -> StatePaths:
    paths = StatePaths(home=tmp_path, active=tmp_path / "active")
    (tmp_path / "monitor").mkdir()
    me = os.getpid()
    write_receiver_address(
        paths, ReceiverAddress("http://127.0.0.1:4319", "t" * 32, me, process_start_time(me))
    )
    return paths


def plan(paths, **env) -> RunTelemetry:
    return RunTelemetry.plan(env, paths, job="nightly", host="box")


def test_each_attempt_is_a_child_of_the_fires_root_span_in_one_trace(paths):
    telemetry = plan(paths)
    first = telemetry.attempt_span(SESSION, 1)
    second = telemetry.attempt_span("1b6f3f36-0c4e-4e0e-9d55-0d6d1e1f7a11", 2)
    env = telemetry.child_env({"PATH": "/bin"}, first)
    assert parse_traceparent(env["TRACEPARENT"]) == (telemetry.trace_id, first.span_id)
    assert {first.parent_span_id, second.parent_span_id} == {telemetry.root.span_id}
    assert telemetry.root.parent_span_id == "" and first.trace_id == second.trace_id
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:4319"
    assert env["OTEL_EXPORTER_OTLP_HEADERS"] == "Authorization=Bearer " + "t" * 32
    assert env["OTEL_RESOURCE_ATTRIBUTES"] == (
        f"opsconsole.run_id={SESSION},opsconsole.job=nightly,opsconsole.host=box,opsconsole.attempt=1"
    )
    assert env["CLAUDE_CODE_ENABLE_TELEMETRY"] == "1" and env["PATH"] == "/bin"


def test_a_fire_started_inside_a_callers_trace_stays_in_it(paths):
    caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    telemetry = plan(paths, TRACEPARENT=caller)
    assert telemetry.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert telemetry.root.parent_span_id == "b7ad6b7169203331"
    assert parse_traceparent("00-" + "0" * 32 + "-b7ad6b7169203331-01") is None


def test_the_off_switch_and_a_host_without_a_monitor_leave_the_env_alone(paths, tmp_path):
    env = {"PATH": "/bin", "OTEL_RESOURCE_ATTRIBUTES": "team=a"}
    off = plan(paths, OPSCONSOLE_TELEMETRY="off", **env)
    assert off.child_env(env, off.attempt_span(SESSION, 1)) == env and off.warning is None
    bare = RunTelemetry.plan(env, StatePaths(tmp_path / "none", tmp_path / "a"), job="j", host="h")
    assert not bare.on and bare.child_env(env, bare.attempt_span(SESSION, 1)) == env


def test_a_jobs_own_exporter_is_kept_as_a_tee_and_its_attributes_kept(paths):
    own = {
        "CLAUDE_CODE_ENABLE_TELEMETRY": "1",
        "OTEL_LOGS_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_METRICS_HEADERS": "x-metrics-key=m",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector.example:4318",
        "OTEL_EXPORTER_OTLP_HEADERS": "x-api-key=s%3Dcret,team=ops",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://traces.example/v1/traces",
        "OTEL_RESOURCE_ATTRIBUTES": "team=ops",
    }
    telemetry = plan(paths, **own)
    assert telemetry.on and telemetry.tee is not None
    env = telemetry.child_env(own, telemetry.attempt_span(SESSION, 1))
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/json"  # bodies forwarded as they came
    assert "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" not in env  # all of it comes to us first
    headers = parse_otlp_headers(env["OTEL_EXPORTER_OTLP_HEADERS"])
    tee = Tee.decode(headers[TEE_HEADER])
    assert tee.headers == {"x-api-key": "s=cret", "team": "ops"}
    assert tee.url("logs") == "https://collector.example:4318/v1/logs"
    assert tee.url("traces") == "https://traces.example/v1/traces"
    # Only what the job exported goes on to it (not the spans the wrapper turns on), each
    # signal with its own headers.
    assert tee.signals == ("logs", "metrics") and not tee.exports("traces")
    assert tee.headers_for("metrics") == {
        "x-api-key": "s=cret",
        "team": "ops",
        "x-metrics-key": "m",
    }
    assert env["OTEL_RESOURCE_ATTRIBUTES"].startswith("team=ops,opsconsole.run_id=")


def test_a_grpc_exporter_is_left_alone_and_said_so(paths):
    own = {
        "CLAUDE_CODE_ENABLE_TELEMETRY": "1",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
    }
    telemetry = plan(paths, **own)
    assert not telemetry.on and "grpc" in telemetry.warning
    assert telemetry.child_env(own, telemetry.attempt_span(SESSION, 1)) == own


@pytest.mark.parametrize(
    "header",
    [
        "!!!",
        Tee("file:///etc/passwd").encode(),
        Tee("http://x", protocol="grpc").encode(),
        Tee("http://x", headers={"a": "b\r\nHost: evil"}).encode(),
        "A" * 5000,
    ],
)
def test_a_tee_header_the_wrapper_would_not_write_is_refused(header):
    with pytest.raises(FormatError):
        Tee.decode(header)


def test_a_file_left_by_a_monitor_that_is_gone_or_naming_elsewhere_is_not_believed(paths):
    """Its port may be anyone's by now: the token, the telemetry and a tee's credentials
    would go to whoever took it."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    file = paths.home / "monitor" / "otlp.json"
    base = {"endpoint": "http://127.0.0.1:4319", "token": "t" * 32}
    write_json_atomic(file, {**base, "pid": gone.pid, "started": 1.0})
    assert read_receiver_address(paths) is None and not plan(paths).on
    me = os.getpid()
    for endpoint in (
        "http://127.0.0.1:1@evil.example/",
        "http://127.0.0.1:4319/x",
        "https://127.0.0.1:1",
    ):
        write_json_atomic(
            file, {**base, "endpoint": endpoint, "pid": me, "started": process_start_time(me)}
        )
        assert read_receiver_address(paths) is None, endpoint
    write_json_atomic(file, {**base, "pid": me, "started": process_start_time(me)})
    assert read_receiver_address(paths).endpoint == "http://127.0.0.1:4319"


@pytest.mark.parametrize(
    "own, said",
    [
        ({"OTEL_METRICS_EXPORTER": "prometheus"}, "metrics to prometheus"),
        ({"OTEL_LOGS_EXPORTER": "otlp,console"}, "logs to console"),
        (
            {
                "OTEL_METRICS_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_ENDPOINT": "https://c.example",
                "OTEL_EXPORTER_OTLP_CLIENT_KEY": "/etc/k.pem",
            },
            "TLS client settings",
        ),
    ],
)
def test_an_exporter_the_console_would_replace_is_left_alone_and_said_so(paths, own, said):
    """A Prometheus endpoint or a console exporter would vanish under ours; a collector
    that wants a client certificate would refuse the receiver's forwarding."""
    env = {"CLAUDE_CODE_ENABLE_TELEMETRY": "1", **own}
    telemetry = plan(paths, **env)
    assert not telemetry.on and said in telemetry.warning
    assert telemetry.child_env(env, telemetry.attempt_span(SESSION, 1)) == env
