"""A backfilled session with subagents and a compaction, and transcript search, in a real
browser (Playwright + Debian's chromium). Screenshots land in test-artifacts/."""

from __future__ import annotations

import pytest

from tests.server_fixtures import manage
from tests.test_browser import browser, page, shot  # noqa: F401 (fixtures)
from tests.transcript_shapes import session_2_1_with_subagents_and_compaction

pytestmark = pytest.mark.browser


def test_session_with_subagents_and_compaction(page, console_server, state, tmp_path):  # noqa: F811
    written = session_2_1_with_subagents_and_compaction(state.config_dir)
    env = dict(
        state.env,
        DATABASE_URL=f"sqlite:///{tmp_path / 'console.sqlite3'}",
        OPSCONSOLE_CLAUDE_CONFIG_DIRS=str(state.config_dir),
        DJANGO_SETTINGS_MODULE="opsconsole.settings",
    )
    out = manage(env, "backfill_transcripts", "--no-progress")
    assert "imported 1" in out

    page.goto(f"{console_server.url}/sessions/{written.session_id}/")
    page.locator("#transcript").wait_for()
    body = page.inner_text("main")
    assert "0 characters" not in body
    assert "computed from the transcript" in body
    assert "cache write" in body
    assert "Conversation compacted (auto, 155,025 tokens before)" in body
    assert page.locator(".entry--compact_summary").count() == 1
    # Bookkeeping is folded into quiet lines, never rows of its own.
    assert page.locator(".entry--meta-group").count() >= 2
    assert page.locator("article.entry--meta").count() == 0
    for agent in ("agent-a1b2c3d", "agent-e4f5a6b", "agent-acompact-9f8e7d"):
        page.locator(f"details#{agent} > summary").click()
    page.locator(".entry--meta-group summary").first.click()
    shot(page, "session-subagents-compaction")

    page.goto(f"{console_server.url}/history/")
    page.fill("#transcript-search input[name=text]", "needle tree")
    page.click("#transcript-search button[type=submit]")
    hits = page.locator(".search-hits li")
    hits.first.wait_for()
    assert hits.count() == 2
    assert page.locator(".search-hits mark").first.inner_text().lower() in ("needle", "tree")
    shot(page, "history-transcript-search")
    hits.first.locator("a").click()
    page.wait_for_url("**/sessions/**")
    assert page.locator("details[open] .entry--assistant_text").first.is_visible()
