"""Claude Code's own telemetry, from the real CLI through the wrapper to the run's record.

The monitor's OTLP receiver runs in the test process (as it does in the monitor), the
wrapper turns telemetry on for the real CLI it starts, and the monitor's round puts
what came on record: the run's rollup, its cost, and one trace per fire.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from monitor_app.monitor import Monitor
from sessions_app.models import RunTelemetry, Session, Status, TelemetrySpan
from sessions_app.telemetry import stored_rollup
from tests.conftest import REPO_ROOT, wrapper_command
from tests.live_helpers import wait_until
from wrapper.telemetry import read_receiver_address


def whole(row) -> dict:
    """The run's whole rollup: its segments added up."""
    return stored_rollup(row.rollup).to_dict()


pytestmark = [pytest.mark.real_cli, pytest.mark.django_db(transaction=True)]

STREAM = ("--output-format", "stream-json", "--verbose", "--allowedTools", "Bash")


@pytest.fixture
def monitor(console_state, settings):
    settings.OPSCONSOLE_OTLP_PORT = 0
    monitor = Monitor(paths=console_state.paths, cadences=False, publish=False)
    monitor.start_telemetry()
    assert read_receiver_address(console_state.paths) is not None
    yield monitor
    monitor.stop_telemetry()


def run_wrapped(state, tag: str, prompt: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        wrapper_command(tag, "-p", prompt, *STREAM),
        env={**state.env, **env},
        cwd=state.workdir,
        capture_output=True,
        timeout=120,
    )


def on_record(monitor: Monitor, session_id: str, done) -> RunTelemetry:
    """Tick the monitor until the run's telemetry row satisfies `done`."""

    def check():
        monitor.tick()
        row = RunTelemetry.objects.filter(session_id=session_id).first()
        return row if row is not None and done(row) else None

    return wait_until(check, timeout=30)


def test_a_wrapped_run_rolls_up_to_the_cost_it_reported_in_one_trace_per_fire(
    state, monitor, real_claude
):
    real_claude.script("tidy", {"kind": "bash", "command": "sleep 1", "text": "Tidied."})

    done = run_wrapped(state, "tidy-up", "tidy the notes")
    assert done.returncode == 0, done.stderr

    monitor.tick()
    run = Session.objects.get(script_tag="tidy-up")
    assert run.status == Status.SUCCEEDED and run.cost_usd > 0
    row = on_record(monitor, str(run.session_id), lambda r: r.cost_usd >= run.cost_usd)
    # Every API request the CLI made is in its telemetry: the rollup's cost is the one the
    # CLI reported, auxiliary requests included; the transcript's never exceeds it.
    assert row.cost_usd == run.cost_usd
    assert row.api_requests >= 2
    assert row.tool_calls == 1 and row.tool_failures == 0
    assert whole(row)["tools"]["Bash"]["slowest_ms"] >= 1000
    assert row.ttft_p50_ms is not None
    run.refresh_from_db()
    assert run.cost_telemetry_usd == row.cost_usd

    spans = wait_until(
        lambda: (
            list(TelemetrySpan.objects.filter(trace_id=row.trace_id))
            if TelemetrySpan.objects.filter(trace_id=row.trace_id, name="opsconsole.run").exists()
            else monitor.tick() and None
        ),
        timeout=30,
    )
    by_name = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    (root,) = by_name["opsconsole.run"]
    (attempt,) = by_name["opsconsole.attempt"]
    assert root.parent_span_id == "" and attempt.parent_span_id == root.span_id
    assert str(attempt.session_id) == str(run.session_id)
    (interaction,) = by_name["claude_code.interaction"]
    assert interaction.parent_span_id == attempt.span_id
    assert {s.trace_id for s in spans} == {row.trace_id}
    assert len(by_name["claude_code.llm_request"]) >= 2
    assert by_name["claude_code.tool"][0].attributes["tool_name"] == "Bash"


def test_a_retry_is_a_second_child_of_the_same_fire(state, monitor, real_claude):
    real_claude.script("draft the memo", {"kind": "refuse", "times": 1})

    done = run_wrapped(state, "memo", "draft the memo")
    assert done.returncode == 0, done.stderr

    monitor.tick()
    first, second = Session.objects.order_by("attempt")
    assert (first.status, second.status) == (Status.REFUSED, Status.SUCCEEDED)
    rows = [on_record(monitor, str(s.session_id), lambda r: r.trace_id) for s in (first, second)]
    assert rows[0].trace_id == rows[1].trace_id  # one trace per fire

    def attempts():
        monitor.tick()
        found = TelemetrySpan.objects.filter(trace_id=rows[0].trace_id)
        if found.filter(name="opsconsole.run").exists():
            return list(found.filter(name="opsconsole.attempt").order_by("start_at"))
        return None

    spans = wait_until(attempts, timeout=30)
    root = TelemetrySpan.objects.get(trace_id=rows[0].trace_id, name="opsconsole.run")
    assert [str(s.session_id) for s in spans] == [str(first.session_id), str(second.session_id)]
    assert {s.parent_span_id for s in spans} == {root.span_id}
    assert [s.attributes["opsconsole.end_reason"] for s in spans] == ["refused", "succeeded"]


def test_a_429_shows_as_an_api_error_on_the_run(state, monitor, real_claude):
    real_claude.script("summarize", {"kind": "429"})

    run_wrapped(state, "summary", "summarize the inbox")

    monitor.tick()
    run = Session.objects.get(script_tag="summary")
    row = on_record(monitor, str(run.session_id), lambda r: r.api_errors)
    assert whole(row)["errors_by_status"] == {"429": 1}
    assert "rate limit" in whole(row)["last_errors"][-1]["error"]


def test_the_off_switch_leaves_the_run_without_telemetry(state, monitor, real_claude):
    done = run_wrapped(state, "quiet", "say hello", OPSCONSOLE_TELEMETRY="off")
    assert done.returncode == 0, done.stderr
    monitor.tick()
    run = Session.objects.get(script_tag="quiet")
    monitor.tick()
    assert not RunTelemetry.objects.filter(session_id=run.session_id).exists()
    assert monitor.telemetry.figures().get("records", 0) == 0
    assert run.cost_usd > 0 and run.cost_telemetry_usd is None


def test_a_tool_that_sleeps_shows_on_the_live_timeline_while_it_runs(
    state, monitor, real_claude, admin_client
):
    real_claude.script(
        "wait for it", {"kind": "bash", "command": "sleep 6; echo waited", "text": "Waited."}
    )
    proc = subprocess.Popen(
        wrapper_command("waiter", "-p", "wait for it", *STREAM),
        env=state.env,
        cwd=state.workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def open_tool():
            monitor.tick()
            row = RunTelemetry.objects.filter(job_tag="waiter").first()
            return row if row is not None and whole(row).get("open_tools") else None

        row = wait_until(open_tool, timeout=60)
        assert proc.poll() is None  # still running: the tool is open now
        page = admin_client.get(f"/sessions/{row.session_id}/timeline/")
        assert page.status_code == 200
        html = page.content.decode()
        assert "timeline__row--open" in html and "running now" in html
        assert "Bash: sleep 6; echo waited" in html  # named by its command, from the transcript
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()

    def closed():
        monitor.tick()
        row = RunTelemetry.objects.get(job_tag="waiter")
        return row if row.tool_calls == 1 and not whole(row)["open_tools"] else None

    row = wait_until(closed, timeout=30)
    html = admin_client.get(f"/sessions/{row.session_id}/").content.decode()
    assert "Where the time went" in html and "timeline__row--open" not in html
    assert "reported by the CLI" in html and "from telemetry" in html


def test_a_session_nobody_wrapped_is_joined_by_its_session_id(state, monitor, real_claude):
    out = subprocess.run(
        [str(Path(sys.executable).parent / "opsconsole"), "telemetry_env"],
        env=state.env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert out.returncode == 0, out.stderr
    exported = dict(
        shlex.split(line.removeprefix("export "))[0].split("=", 1)
        for line in out.stdout.splitlines()
    )
    session_id = str(uuid.uuid4())
    done = subprocess.run(
        [
            state.env["OPSCONSOLE_CLAUDE_BIN"],
            "-p",
            "say hello",
            "--session-id",
            session_id,
            *STREAM,
        ],
        env={**state.env, **exported},
        cwd=state.workdir,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    reported = json.loads(done.stdout.decode().splitlines()[-1])["total_cost_usd"]
    row = on_record(monitor, session_id, lambda r: r.api_requests)
    assert float(row.cost_usd) == pytest.approx(reported)
    assert row.job_tag == ""  # no wrapper tagged it: joined by session.id alone
