"""Sessions in the shapes real CLI versions write (tests/transcript_shapes.py): token
totals with subagent files, prices computed by hand, no phantom runs, no empty rows,
full-text search."""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from sessions_app import search, transcript_store
from sessions_app.backfill import backfill
from sessions_app.models import Session, Status
from sessions_app.transcripts.running_cost import RunningCost, transcript_cost
from tests.transcript_shapes import (
    Transcript,
    Usage,
    phantom_files,
    session_2_0_with_agent_files,
    session_2_1_with_subagents_and_compaction,
    text,
)

pytestmark = pytest.mark.django_db(transaction=True)

# USD per million tokens, as genai-prices' table publishes them for these models
# (standard tier; "long" is the tier for requests over 200k input tokens).
RATES = {
    "claude-sonnet-4-5-20250929": {
        "input": Decimal("3"),
        "output": Decimal("15"),
        "cache_read": Decimal("0.3"),
        "cache_5m": Decimal("3.75"),
        "cache_1h": Decimal("6"),
        "long": {
            "input": Decimal("6"),
            "output": Decimal("22.5"),
            "cache_read": Decimal("0.6"),
            "cache_5m": Decimal("7.5"),
            "cache_1h": Decimal("12"),
        },
    },
    "claude-haiku-4-5-20251001": {
        "input": Decimal("1"),
        "output": Decimal("5"),
        "cache_read": Decimal("0.1"),
        "cache_5m": Decimal("1.25"),
        "cache_1h": Decimal("2"),
    },
    "claude-opus-4-1-20250805": {
        "input": Decimal("15"),
        "output": Decimal("75"),
        "cache_read": Decimal("1.5"),
        "cache_5m": Decimal("18.75"),
        "cache_1h": Decimal("30"),
    },
}
MILLION = Decimal(1_000_000)


@pytest.fixture(autouse=True)
def empty_search_index(django_db_blocker):
    """The index is no model, so the test database's flush does not empty it."""
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {search.TABLE}")  # noqa: S608 (our constant)
    yield


def by_hand(responses) -> Decimal:
    """Each response priced alone: its tier is chosen by its own input (all kinds)."""
    total = Decimal(0)
    for model, usage, _day in responses:
        rates = RATES[model]
        prompt = usage.input + usage.cache_read + usage.cache_5m + usage.cache_1h
        if prompt > 200_000 and "long" in rates:
            rates = rates["long"]
        total += (
            usage.input * rates["input"]
            + usage.output * rates["output"]
            + usage.cache_read * rates["cache_read"]
            + usage.cache_5m * rates["cache_5m"]
            + usage.cache_1h * rates["cache_1h"]
        ) / MILLION
    return total.quantize(Decimal("0.000001"))


def token_sums(responses) -> dict[str, int]:
    return {
        "input_tokens": sum(u.input for _, u, _ in responses),
        "output_tokens": sum(u.output for _, u, _ in responses),
        "cache_read_input_tokens": sum(u.cache_read for _, u, _ in responses),
        "cache_creation_input_tokens": sum(u.cache_5m + u.cache_1h for _, u, _ in responses),
    }


def test_session_tokens_include_subagent_files_each_response_once(tmp_path):
    written = session_2_1_with_subagents_and_compaction(tmp_path / "claude")
    summary = transcript_cost(written.main, [tmp_path])
    # The main file alone misses the subagents and the compaction call; its progress
    # copies of one subagent's replies must not count a second time.
    assert summary.as_usage() == token_sums(written.responses)
    assert summary.responses == len(written.responses) == 8
    assert summary.cache_write_1h_tokens == 2 * 2600


def test_2_0_agent_files_are_added_to_their_parent(tmp_path):
    written = session_2_0_with_agent_files(tmp_path / "claude")
    summary = transcript_cost(written.main, [tmp_path])
    assert summary.as_usage() == token_sums(written.responses)


def test_price_of_a_2_1_session_with_subagents_matches_the_hand_computation(tmp_path):
    written = session_2_1_with_subagents_and_compaction(tmp_path / "claude")
    summary = transcript_cost(written.main, [tmp_path])
    # 8 responses: sonnet 4.5 (one in its long-context tier), haiku 4.5 with 1-hour
    # cache writes; the synthetic API-error message costs nothing.
    assert summary.cost_usd == by_hand(written.responses)
    # Written out: sonnet 0.06241035 + 0.19353 (compaction) + 0.018774 + 0.16353 (long
    # context: 6 / 22.5 / 0.6 / 7.5 per MTok); haiku 0.008205 + 0.00821 + 2 x 0.001837.
    assert summary.cost_usd == Decimal("0.458333")


def test_price_of_a_2_0_session_matches_the_hand_computation(tmp_path):
    written = session_2_0_with_agent_files(tmp_path / "claude")
    summary = transcript_cost(written.main, [tmp_path])
    assert summary.cost_usd == by_hand(written.responses)


def test_the_one_hour_cache_write_split_changes_the_price(tmp_path):
    path = tmp_path / "s.jsonl"
    usage = Usage(input=1, output=1, cache_5m=0, cache_1h=100_000)
    Transcript(path, "s").assistant(usage, [text("hi")])
    assert transcript_cost(path, [tmp_path]).cost_usd == Decimal("0.600018")  # $6/MTok
    flat = tmp_path / "flat.jsonl"
    Transcript(flat, "s").assistant(usage, [text("hi")], split=False)  # pre-2.0: no split
    assert transcript_cost(flat, [tmp_path]).cost_usd == Decimal("0.375018")  # all at 5m


def test_fast_pricing_agrees_with_the_table_on_varied_responses():
    import random

    from sessions_app.pricing import ResponseUsage, price_response, price_with_table

    rng = random.Random(3)
    models = [*RATES, "claude-opus-4-6", "claude-sonnet-4-6", "claude-3-5-haiku-20241022"]
    for _ in range(300):
        five, one = rng.choice([0, rng.randint(0, 90_000)]), rng.choice([0, rng.randint(0, 9000)])
        response = ResponseUsage(
            model=rng.choice(models),
            input_tokens=rng.randint(0, 50),
            output_tokens=rng.randint(0, 30_000),
            cache_read_tokens=rng.choice([0, rng.randint(0, 400_000)]),
            cache_write_tokens=five + one,
            cache_write_5m_tokens=five,
            cache_write_1h_tokens=one,
            day=rng.choice(["2025-09-01", "2026-02-12", ""]),
        )
        assert price_response(response) == price_with_table(response), response


def test_a_model_the_table_does_not_know_leaves_the_cost_unknown(tmp_path):
    path = tmp_path / "s.jsonl"
    Transcript(path, "s").assistant(Usage(input=5, output=5), [text("x")], model="mystery-9")
    summary = transcript_cost(path, [tmp_path])
    assert summary.responses == 1 and summary.cost_usd is None


def test_running_cost_reads_only_what_was_appended(tmp_path):
    path = tmp_path / "live.jsonl"
    live = Transcript(path, "s")
    live.user("go")
    live.assistant(Usage(input=10, output=10), [text("one"), text("two")])
    running = RunningCost(path, [tmp_path])
    first = running.update()
    assert first.output_tokens == 10
    # A torn line (being appended) is kept for the next read, not lost or double counted.
    live.assistant(Usage(input=10, output=20), [text("three")])
    with path.open("ab") as handle:
        handle.write(b'{"type":"assistant","message":{"id":"m9","model":"claude-son')
    second = running.update()
    assert second.output_tokens == 30
    with path.open("ab") as handle:
        handle.write(b'net-4-5","usage":{"input_tokens":1,"output_tokens":5}},"requestId":"r"}\n')
    assert running.update().output_tokens == 35
    assert running.update().output_tokens == 35  # nothing new: nothing added
    assert running.update().cost_usd == transcript_cost(path, [tmp_path]).cost_usd


def test_phantom_files_are_not_runs(console_state):
    phantoms = phantom_files(console_state.config_dir)
    real = session_2_1_with_subagents_and_compaction(console_state.config_dir)
    # A row an older backfill made for a phantom is removed: it was never a run.
    Session.objects.create(
        session_id=phantoms[1].stem,
        script_tag="report",
        status=Status.IMPORTED,
        started_at="2026-02-12T00:00:00Z",
        recorded_from="backfill",
    )
    result = backfill(console_state.paths, [console_state.config_dir])
    assert (result.imported, result.phantoms) == (1, 4)
    assert list(Session.objects.values_list("session_id", flat=True)) == [
        __import__("uuid").UUID(real.session_id)
    ]


def test_backfill_adds_2_0_agent_files_to_their_parent_and_archives_them(console_state):
    written = session_2_0_with_agent_files(console_state.config_dir)
    result = backfill(console_state.paths, [console_state.config_dir])
    assert result.imported == 1  # the agent files are not runs of their own
    session = Session.objects.get()
    assert str(session.session_id) == written.session_id
    sums = token_sums(written.responses)
    assert session.input_tokens == sums["input_tokens"]
    assert session.cache_creation_tokens == sums["cache_creation_input_tokens"]
    assert session.subagent_files == 2
    assert session.cost_usd is None  # the CLI reported none
    assert session.cost_computed_usd == by_hand(written.responses)
    archived = Path(session.archive_path).with_suffix("") / "subagents"
    assert sorted(p.name for p in archived.iterdir()) == [p.name for p in written.subagent_files]
    # Once Claude Code has deleted its files, the archive still gives the same figures.
    for path in [written.main, *written.subagent_files]:
        path.unlink()
    again = transcript_store.session_usage(Path(session.archive_path))
    assert again.cost_usd == session.cost_computed_usd


def test_backfill_fills_in_the_computed_cost_of_runs_already_on_record(console_state):
    written = session_2_1_with_subagents_and_compaction(console_state.config_dir)
    backfill(console_state.paths, [console_state.config_dir])
    Session.objects.update(cost_computed_usd=None, search_indexed_bytes=None)
    result = backfill(console_state.paths, [console_state.config_dir])
    assert result.refreshed == 1
    assert Session.objects.get().cost_computed_usd == by_hand(written.responses)
    assert backfill(console_state.paths, [console_state.config_dir]).skipped == 1


@pytest.fixture
def logged_in(client):
    client.force_login(get_user_model().objects.create_user("ops"))
    return client


def test_session_page_has_no_empty_rows_and_folds_bookkeeping(console_state, logged_in):
    written = session_2_1_with_subagents_and_compaction(console_state.config_dir)
    backfill(console_state.paths, [console_state.config_dir])
    page = logged_in.get(f"/sessions/{written.session_id}/").content.decode()
    assert "0 characters" not in page
    assert "UNKNOWN" not in page.upper().replace("UNKNOWN COST", "")
    assert "outside the conversation" in page  # bookkeeping folded into quiet lines
    assert "permission-mode" in page  # named inside its group, not as a row of its own
    assert "\x1b" not in page and "[31m" not in page  # ANSI colour codes stripped
    assert "old_string:\na\nb" in page  # an Edit's input with its real line breaks
    assert page.count("compaction summary") == 1
    assert "This session is being continued" in page
    assert "compact boundary" not in page and "compact_boundary<" not in page  # in words, once
    assert "Conversation compacted (auto, 155,025 tokens before)" in page
    assert "live copy" not in page
    assert "Claude Code's own file" in page
    assert "computed from the transcript" in page and "cache write" in page
    for name in ("agent-a1b2c3d", "agent-e4f5a6b", "agent-acompact-9f8e7d"):
        assert f'id="{name}"' in page
    # Every entry the page shows has something to read.
    from sessions_app.transcripts.parse import fold_noise, iter_records, to_entries

    entries = fold_noise(to_entries(iter_records(written.main.read_bytes())))
    assert all(e.text.strip() or e.kind == "meta_group" for e in entries)


def test_search_finds_lines_of_main_and_subagent_files_and_links_to_them(console_state, logged_in):
    written = session_2_1_with_subagents_and_compaction(console_state.config_dir)
    backfill(console_state.paths, [console_state.config_dir])
    hits = search.search("needle")
    assert {hit.part for hit in hits} == {"agent-a1b2c3d", "agent-e4f5a6b"}
    hits = search.search("Fixing the build")
    assert [hit.part for hit in hits] == [""]
    offset = hits[0].offset
    assert written.main.read_bytes()[offset:].startswith(b"{")
    page = logged_in.get("/history/", {"text": "fixing build"}).content.decode()
    assert f"?at={offset}#o-{offset}" in page
    assert "<mark>" in page
    # What a transcript says is escaped, in results as on the session page.
    hostile = Transcript(
        console_state.config_dir / "projects" / "-x" / "c0ffee00-0000-4000-8000-000000000001.jsonl",
        "c0ffee00-0000-4000-8000-000000000001",
    )
    hostile.user("<script>alert(1)</script> zebra")
    backfill(console_state.paths, [console_state.config_dir])
    page = logged_in.get("/history/", {"text": "zebra"}).content.decode()
    assert "<script>alert" not in page and "<mark>zebra</mark>" in page
    if connection.vendor == "sqlite":  # PostgreSQL's ts_headline drops tag-like text itself
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    target = logged_in.get(f"/sessions/{written.session_id}/?at={offset}").content.decode()
    assert f'id="o-{offset}"' in target
    # Query syntax never reaches the engine.
    assert search.search('"unbalanced AND ( OR') == []


def test_a_completed_run_keeps_both_costs_and_is_indexed(console_state):
    from sessions_app.ingest import record_completion
    from wrapper.formats import SpoolRecord

    written = session_2_1_with_subagents_and_compaction(console_state.config_dir)
    session = record_completion(
        SpoolRecord(
            session_id=written.session_id,
            script_tag="report",
            platform="cron",
            host="vm",
            attempt=1,
            started_at="2026-02-12T16:00:00Z",
            ended_at="2026-02-12T16:05:00Z",
            end_reason="succeeded",
            exit_code=0,
            cwd="/srv/agents/report",
            claude_config_dir=str(console_state.config_dir),
            transcript_path=str(written.main),
            cost_usd=0.41,  # what the CLI's result event said
            usage={"input_tokens": 11, "output_tokens": 530},  # the main loop's only
        )
    )
    session.refresh_from_db()
    assert session.cost_usd == Decimal("0.410000")
    assert session.cost_computed_usd == by_hand(written.responses)
    assert session.output_tokens == token_sums(written.responses)["output_tokens"]
    assert session.subagent_files == 3
    assert session.shown_cost_usd == Decimal("0.410000")  # the CLI's own figure first
    assert [hit.session_id for hit in search.search("needle")] == [written.session_id] * 2


def test_a_vanished_run_is_priced_from_its_transcript(console_state):
    from sessions_app.ingest import record_vanished
    from wrapper.formats import Sidecar

    written = session_2_0_with_agent_files(console_state.config_dir)
    sidecar = Sidecar(
        session_id=written.session_id,
        script_tag="nightly",
        platform="cron",
        host="vm",
        attempt=1,
        started_at="2026-02-12T16:00:00Z",
        wrapper_pid=1,
        wrapper_started=0.0,
        claude_pid=2,
        cwd="/srv/agents/nightly",
        claude_config_dir=str(console_state.config_dir),
        transcript_path=str(written.main),
    )
    session = record_vanished(sidecar, console_state.paths, written.main)
    session.refresh_from_db()
    assert session.status == Status.KILLED and session.cost_usd is None
    assert session.cost_computed_usd == by_hand(written.responses)
    archived = Path(session.archive_path).with_suffix("") / "subagents"
    assert len(list(archived.iterdir())) == 2  # its 2.0.x agent files kept with it


def test_costs_page_counts_computed_costs_and_says_so(console_state, logged_in):
    from sessions_app.costs import cost_report

    first = session_2_1_with_subagents_and_compaction(console_state.config_dir)
    second = session_2_0_with_agent_files(console_state.config_dir)
    backfill(console_state.paths, [console_state.config_dir])
    from datetime import datetime

    report = cost_report(days=30, now=datetime.fromisoformat("2026-02-20T00:00:00+00:00"))
    assert report.total.unknown_cost_runs == 0
    assert report.total.computed_cost_runs == 2
    assert report.total.cost_usd == by_hand(first.responses) + by_hand(second.responses)
    # The page covers the last 30 days of today's clock: the figures above are the test.
    assert logged_in.get("/costs/").status_code == 200


def test_pruning_records_takes_their_lines_out_of_the_index(console_state):
    from datetime import timedelta

    from django.core.management import call_command
    from django.utils import timezone

    written = session_2_1_with_subagents_and_compaction(console_state.config_dir)
    backfill(console_state.paths, [console_state.config_dir])
    assert search.indexed_lines() > 0
    Session.objects.update(ended_at=timezone.now() - timedelta(days=400))
    call_command("prune_archive", "--older-than", "90", "--apply", "--records")
    assert not Session.objects.filter(session_id=written.session_id).exists()
    assert search.indexed_lines() == 0


def test_a_live_run_shows_its_running_cost(console_state, logged_in, runs):
    from tests.live_helpers import start_fake_run

    run = start_fake_run(console_state)
    runs.append(run)
    live = Transcript(run.transcript, run.session_id)
    live.user("go")
    live.assistant(Usage(input=1000, output=1000), [text("working")])  # $0.018 on sonnet 4.5
    header = logged_in.get(f"/sessions/{run.session_id}/header/").content.decode()
    assert "$0.0180" in header and "so far" in header
    live.assistant(Usage(input=1000, output=1000), [text("still working")])
    header = logged_in.get(f"/sessions/{run.session_id}/header/").content.decode()
    assert "$0.0360" in header and "2.0k out" in header


def test_nested_workflow_agents_count_with_their_session(tmp_path):
    written = session_2_1_with_subagents_and_compaction(tmp_path / "claude")
    nested = written.main.with_suffix("") / "subagents" / "workflows" / "wf_01"
    agent = Transcript(nested / "agent-w1.jsonl", written.session_id, agent_id="w1")
    agent.assistant(Usage(input=7, output=70), [text("workflow step")])
    (nested / "journal.jsonl").write_text('{"type":"journal"}\n')  # not an agent's file
    summary = transcript_cost(written.main, [tmp_path])
    assert summary.output_tokens == token_sums(written.responses)["output_tokens"] + 70


@pytest.mark.skipif(
    not os.environ.get("OPSCONSOLE_CCUSAGE"),
    reason="set OPSCONSOLE_CCUSAGE to a ccusage binary (npm install ccusage@17) to compare",
)
def test_ccusage_agrees_on_our_fixtures(tmp_path):
    """ccusage (17.x, offline prices) on the same files: the same four token counts for
    every session (its "sessions" are folders: a 2.1.x session's subagents folder is
    listed apart, so they are summed), and the same cost where both price alike."""
    import json
    import subprocess

    config = tmp_path / "claude"
    old = session_2_0_with_agent_files(config)
    new = session_2_1_with_subagents_and_compaction(config)

    def ccusage() -> dict:
        out = subprocess.run(
            [os.environ["OPSCONSOLE_CCUSAGE"], "session", "--offline", "--json"],
            env={**os.environ, "CLAUDE_CONFIG_DIR": str(config)},
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return json.loads(out.stdout)

    totals = ccusage()["totals"]
    ours = [transcript_cost(w.main, [tmp_path]) for w in (old, new)]
    assert totals["inputTokens"] == sum(s.input_tokens for s in ours)
    assert totals["outputTokens"] == sum(s.output_tokens for s in ours)
    assert totals["cacheReadTokens"] == sum(s.cache_read_input_tokens for s in ours)
    assert totals["cacheCreationTokens"] == sum(s.cache_creation_input_tokens for s in ours)
    # The 2.0.x session has no 1-hour cache writes and no request over 200k tokens,
    # the two places ccusage 17 prices differently (1h writes at the 5m price; only
    # the tokens past 200k at the long-context price): there the costs agree.
    new.main.unlink()
    for path in new.subagent_files:
        path.unlink()
    alone = ccusage()["totals"]["totalCost"]
    assert abs(Decimal(str(alone)) - ours[0].cost_usd) <= ours[0].cost_usd * Decimal("0.03")
