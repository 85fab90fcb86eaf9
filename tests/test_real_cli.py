"""The real Claude Code CLI (npm, pinned in tests/realcli/package.json), offline.

The CLI talks to tests/messages_api.py on loopback. These tests pin down the
facts the product relies on, then drive the CLI through `opsconsole-run` while
the console watches: live, its tool's child processes, its transcript, and
every way a run ends.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from decimal import Decimal
from pathlib import Path

import psutil
import pytest

from monitor_app.live import take_snapshot
from sessions_app.models import Session, Status
from sessions_app.transcripts.parse import iter_records, summarize_file
from tests.conftest import at_once, wrapper_command
from tests.live_helpers import wait_until
from wrapper.formats import (
    EXIT_QUOTA_SKIP,
    new_session_id,
    read_sidecar,
    read_spool_record,
    transcript_path,
)

pytestmark = [pytest.mark.real_cli, pytest.mark.django_db(transaction=True)]

STREAM = ("--output-format", "stream-json", "--verbose", "--allowedTools", "Bash")


def cli(state, bin_path, prompt: str, session_id: str, timeout=120):
    return subprocess.run(
        [str(bin_path), "-p", prompt, "--session-id", session_id, *STREAM],
        env=state.env,
        cwd=state.workdir,
        capture_output=True,
        timeout=timeout,
    )


def events(stdout: bytes) -> list[dict]:
    return [json.loads(line) for line in stdout.decode().splitlines() if line.strip()]


def wrapped(state, tag: str, prompt: str, **popen):
    return subprocess.Popen(
        wrapper_command(tag, "-p", prompt, *STREAM),
        env=state.env,
        cwd=state.workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **popen,
    )


def spool(state):
    return sorted(
        (read_spool_record(p) for p in state.paths.spool.glob("*.json")),
        key=lambda r: r.attempt,
    )


def test_transcript_lands_where_the_console_looks_and_ids_are_not_reused(
    state, real_claude_bin, real_claude
):
    session_id = str(uuid.uuid4())
    first = cli(state, real_claude_bin, "say hello", session_id)

    assert first.returncode == 0, first.stderr
    result = events(first.stdout)[-1]
    assert (result["type"], result["is_error"], result["session_id"]) == (
        "result",
        False,
        session_id,
    )
    assert result["total_cost_usd"] > 0
    path = transcript_path(state.config_dir, str(state.workdir), session_id)
    assert path.is_file()
    summary = summarize_file(path)
    assert summary.cwd == str(state.workdir)
    assert summary.session_ids == {session_id}
    assert summary.input_tokens == 1200 and summary.output_tokens == 40  # counted once

    again = cli(state, real_claude_bin, "say hello", session_id)
    assert again.returncode != 0
    assert f"Session ID {session_id} is already in use" in (again.stdout + again.stderr).decode()


def test_a_live_run_is_seen_with_its_tool_children_then_on_record(
    state, console_state, real_claude
):
    real_claude.script(
        "count files",
        {"kind": "bash", "command": "sleep 4; echo counted", "text": "There are many files."},
    )
    proc = wrapped(state, "file-counter", "count files please")
    try:
        sidecar = wait_until(
            lambda: (
                state.paths.sidecar_path(proc.pid).exists()
                and read_sidecar(state.paths.sidecar_path(proc.pid))
            )
        )

        def live_with_tool():
            # The CLI starts the tool and appends the call to its transcript in no
            # set order: wait for both.
            live = take_snapshot(state.paths).get(sidecar.session_id)
            tool_seen = live and any("sleep 4" in p.cmdline for p in live.processes)
            return live if tool_seen and live.last_tool_call else None

        live = wait_until(live_with_tool)
        assert live.state == Status.LIVE
        claude_pid = read_sidecar(state.paths.sidecar_path(proc.pid)).claude_pid
        assert psutil.pid_exists(claude_pid)
        tool = next(p for p in live.processes if "sleep 4" in p.cmdline)
        assert claude_pid in [a.pid for a in psutil.Process(tool.pid).parents()]
        assert live.last_tool_call == "Bash: sleep 4; echo counted"

        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    out = events(proc.stdout.read())
    assert out[-1]["result"] == "There are many files."
    assert not state.paths.sidecar_path(proc.pid).exists()

    take_snapshot(state.paths)
    row = Session.objects.get(session_id=sidecar.session_id)
    assert row.status == Status.SUCCEEDED
    assert row.cost_usd is not None and row.cost_usd > 0
    # Priced from the transcript: its two responses (1200 in, 40 out each, sonnet 4.5 at
    # $3 / $15 per MTok). The CLI's own figure is higher: it also counts side requests
    # it makes (a title, a quota check) that no transcript records. Both are kept.
    assert row.cost_computed_usd == 2 * (1200 * Decimal(3) + 40 * Decimal(15)) / 1_000_000
    assert row.cost_computed_usd <= row.cost_usd
    assert row.num_turns == 2
    archived = list(state.paths.archive.glob(f"*/file-counter_{sidecar.session_id}.jsonl"))
    assert len(archived) == 1
    kinds = {r.type for r in iter_records(archived[0].read_bytes())}
    assert {"user", "assistant"} <= kinds


def test_refusal_is_retried_under_a_fresh_uuid(state, console_state, real_claude):
    real_claude.script("draft the memo", {"kind": "refuse", "times": 1})

    proc = wrapped(state, "memo", "draft the memo")
    assert proc.wait(timeout=120) == 0

    first, second = spool(state)
    assert (first.end_reason, first.stop_reason, first.exit_code) == ("refused", "refusal", 1)
    assert (second.end_reason, second.attempt, second.retry_of) == (
        "succeeded",
        2,
        first.session_id,
    )
    take_snapshot(state.paths)
    statuses = dict(Session.objects.values_list("attempt", "status"))
    assert statuses == {1: Status.REFUSED, 2: Status.SUCCEEDED}


def test_429_stamps_and_the_next_run_is_a_quota_skip(state, console_state, real_claude):
    real_claude.script("summarize", {"kind": "429"})

    first = wrapped(state, "summary", "summarize the inbox")
    assert first.wait(timeout=120) == 1
    requests_before = len(real_claude.requests)

    began = time.monotonic()
    second = wrapped(state, "summary", "summarize the inbox")
    code = second.wait(timeout=30)
    elapsed = time.monotonic() - began

    assert code == EXIT_QUOTA_SKIP
    assert at_once(elapsed, state.env), elapsed
    assert len(real_claude.requests) == requests_before, "claude must not have started"
    take_snapshot(state.paths)
    statuses = sorted(Session.objects.values_list("status", flat=True))
    assert statuses == [Status.FAILED, Status.QUOTA_SKIP]
    failed = Session.objects.get(status=Status.FAILED)
    assert failed.api_error_status == 429


def test_whole_run_sigkilled_is_recorded_killed_with_its_transcript(
    state, console_state, real_claude
):
    real_claude.script("long job", {"kind": "bash", "command": "sleep 60", "text": "done"})
    proc = wrapped(state, "long-job", "long job now", start_new_session=True)
    sidecar = wait_until(
        lambda: (
            state.paths.sidecar_path(proc.pid).exists()
            and read_sidecar(state.paths.sidecar_path(proc.pid)).claude_pid
            and read_sidecar(state.paths.sidecar_path(proc.pid))
        )
    )
    wait_until(lambda: take_snapshot(state.paths).get(sidecar.session_id).last_tool_call)

    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    wait_until(
        lambda: (
            not psutil.pid_exists(sidecar.claude_pid)
            or psutil.Process(sidecar.claude_pid).status() == psutil.STATUS_ZOMBIE
        )
    )

    snapshot = take_snapshot(state.paths)

    assert snapshot.get(sidecar.session_id) is None
    row = Session.objects.get(session_id=sidecar.session_id)
    assert (row.status, row.end_reason) == (Status.KILLED, "vanished")
    assert row.archive_path
    assert b"sleep 60" in Path(row.archive_path).read_bytes()


def test_only_the_wrapper_killed_leaves_an_orphan(state, console_state, real_claude):
    real_claude.script("orphan me", {"kind": "bash", "command": "sleep 20", "text": "done"})
    proc = wrapped(state, "orphan", "orphan me")
    sidecar = wait_until(
        lambda: (
            state.paths.sidecar_path(proc.pid).exists()
            and read_sidecar(state.paths.sidecar_path(proc.pid)).claude_pid
            and read_sidecar(state.paths.sidecar_path(proc.pid))
        )
    )
    try:
        proc.kill()  # the wrapper alone; claude and its tool keep running
        proc.wait(timeout=10)

        live = take_snapshot(state.paths).get(sidecar.session_id)

        assert live is not None and live.state == Status.ORPHANED
        assert sidecar.claude_pid in {p.pid for p in live.processes}
        assert Session.objects.get(session_id=sidecar.session_id).status == Status.ORPHANED
    finally:
        for child in psutil.Process(sidecar.claude_pid).children(recursive=True):
            child.kill()
        psutil.Process(sidecar.claude_pid).kill()


def test_an_unwrapped_real_claude_is_listed_then_killed_leaving_a_leftover_the_rule_kills(
    state, console_state, real_claude, settings
):
    """The monitor issue's proof: a real `claude -p` no wrapper started, with the console's
    config dir, is listed as unwrapped; SIGKILLed, it is on record as killed and its Bash
    tool's `sleep` is a leftover until the leftover rule kills it."""
    from monitor_app.models import Event, EventKind
    from monitor_app.monitor import Monitor

    settings.OPSCONSOLE_LEFTOVER_GRACE_SECONDS = 0
    settings.OPSCONSOLE_STOP_GRACE_SECONDS = 0
    real_claude.script(
        "tidy up", {"kind": "bash", "command": "sleep 45; echo tidied", "text": "Tidied."}
    )
    monitor = Monitor(paths=console_state.paths, cadences=False)
    session_id = new_session_id()
    agent = subprocess.Popen(
        [
            str(state.env["OPSCONSOLE_CLAUDE_BIN"]),
            "-p",
            "tidy up please",
            "--session-id",
            session_id,
            *STREAM,
        ],
        env=state.env,
        cwd=state.workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def listed_with_tool():
            live = monitor.tick().get(session_id)
            # The tool's own `sleep`, not only the shell that will start it.
            tool_seen = live and any(p.cmdline.startswith("sleep 45") for p in live.processes)
            return live if tool_seen else None

        live = wait_until(listed_with_tool)
        assert (live.state, live.wrapped, live.sidecar.claude_pid) == (
            "unwrapped",
            False,
            agent.pid,
        )
        tool = next(p for p in live.processes if p.cmdline.startswith("sleep 45"))

        agent.kill()  # SIGKILL: Claude Code's registry file is left behind
        agent.wait(timeout=10)
        snapshot = monitor.tick()
        assert snapshot.get(session_id) is None
        row = Session.objects.get(session_id=session_id)
        assert (row.status, row.wrapped) == (Status.KILLED, False)
        (left,) = snapshot.leftovers
        assert tool.pid in [p.pid for p in left.processes]
        assert psutil.pid_exists(tool.pid)

        monitor.cadences = True
        monitor.tick()  # the leftover rule
        wait_until(
            lambda: (
                not psutil.pid_exists(tool.pid)
                or psutil.Process(tool.pid).status() == psutil.STATUS_ZOMBIE
            )
        )
        monitor.tick()
        kinds = set(Event.objects.filter(session_id=session_id).values_list("kind", flat=True))
        assert {
            EventKind.RUN_STARTED,
            EventKind.RUN_VANISHED,
            EventKind.LEFTOVERS_SEEN,
            EventKind.LEFTOVERS_KILLED,
        } <= kinds
    finally:
        if agent.poll() is None:
            agent.kill()
