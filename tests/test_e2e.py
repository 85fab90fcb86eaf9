"""End to end: the real CLI through opsconsole-run, watched through the running
console's HTTP API (a separate gunicorn process), as an operator's script would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.conftest import wrapper_command

pytestmark = pytest.mark.real_cli

STREAM = ("--output-format", "stream-json", "--verbose", "--allowedTools", "Bash")


def eventually(fetch, predicate, timeout=15.0, interval=0.2):
    deadline = time.time() + timeout
    value = None
    while time.time() < deadline:
        value = fetch()
        if predicate(value):
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met; last value: {str(value)[:500]}")


def active(console):
    return console.json("/api/claude-active")["sessions"]


def test_a_run_seen_live_with_its_tool_then_on_record(state, real_claude, console_server):
    real_claude.script("audit", {"kind": "bash", "command": "sleep 6", "text": "Audit done."})
    began = time.monotonic()
    proc = subprocess.Popen(
        wrapper_command("audit", "-p", "audit the logs", *STREAM),
        env=state.env,
        cwd=state.workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        (session,) = eventually(lambda: active(console_server), lambda s: len(s) == 1)
        seen_after = time.monotonic() - began
        session_id = session["session_id"]
        assert session["script_tag"] == "audit" and session["state"] == "live"

        # The tail shows the tool call while the tool is still running.
        status, headers, _ = eventually(
            lambda: console_server.get(f"/api/claude-jsonl/{session_id}"),
            lambda r: b"sleep 6" in r[2],
        )
        assert status == 200
        detail = eventually(
            lambda: console_server.json(f"/api/sessions/{session_id}"),
            lambda d: any("sleep 6" in p["cmdline"] for p in d.get("processes", [])),
        )
        assert detail["live"] is True

        total = int(headers["X-Transcript-Total-Bytes"])
        assert proc.wait(timeout=60) == 0
        status, _, newer = console_server.get(
            f"/api/claude-jsonl/{session_id}", {"Range": f"bytes={total}-"}
        )
        assert status == 206 and b"Audit done." in newer

        record = eventually(
            lambda: console_server.json(f"/api/sessions/{session_id}"),
            lambda d: d["status"] == "succeeded",
        )
        assert record["cost_usd"] > 0 and record["exit_code"] == 0
        assert active(console_server) == []
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"run visible in the console {seen_after:.2f} s after the wrapper started")


def test_a_sigkilled_run_leaves_the_live_list_and_is_on_record(state, real_claude, console_server):
    real_claude.script("forever", {"kind": "bash", "command": "sleep 120", "text": "x"})
    proc = subprocess.Popen(
        wrapper_command("forever", "-p", "forever", *STREAM),
        env=state.env,
        cwd=state.workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    (session,) = eventually(lambda: active(console_server), lambda s: len(s) == 1)
    session_id = session["session_id"]
    eventually(
        lambda: console_server.get(f"/api/claude-jsonl/{session_id}"),
        lambda r: b"sleep 120" in r[2],
    )

    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    killed_at = time.monotonic()
    eventually(lambda: active(console_server), lambda s: s == [], timeout=30)
    gone_after = time.monotonic() - killed_at

    record = console_server.json(f"/api/sessions/{session_id}")
    assert (record["status"], record["end_reason"]) == ("killed", "vanished")
    status, _, body = console_server.get(f"/api/claude-jsonl/{session_id}")
    assert status == 200 and b"sleep 120" in body
    # How soon is a figure, not a pass mark: docs/benchmarks.md quotes this print (about
    # a sample interval and a poll on a quiet machine); a loaded one only stretches it.
    print(f"killed run left the live list {gone_after:.2f} s after SIGKILL")


def test_serve_runs_the_monitor_and_restarts_it_when_it_dies(console_server):
    """`opsconsole serve` is the whole product: the web server and a supervised monitor."""
    import psutil

    def monitor_pids():
        found = []
        for child in psutil.Process(console_server.process.pid).children(recursive=True):
            try:
                if child.status() != psutil.STATUS_ZOMBIE and "monitor" in child.cmdline():
                    found.append(child.pid)
            except psutil.Error:
                continue  # exited (or not yet reaped) between the listing and the look
        return found

    first = eventually(monitor_pids, bool)
    sample = eventually(
        lambda: console_server.get("/api/claude-active"),
        lambda r: r[0] == 200 and r[1].get("X-Sample-Source") == "monitor",
    )
    seq = json.loads(sample[2])["seq"]
    os.kill(first[0], signal.SIGKILL)
    restarted = eventually(monitor_pids, lambda pids: pids and pids != first, timeout=30)
    assert restarted[0] != first[0]
    eventually(
        lambda: console_server.get("/api/claude-active"),
        lambda r: r[0] == 200 and json.loads(r[2])["seq"] > seq + 1,
        timeout=30,
    )
    assert "monitor exited" in console_server.log.read_text()
