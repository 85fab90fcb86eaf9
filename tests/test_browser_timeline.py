"""The session page's timeline in a real browser: a wrapped run of the real CLI sends its
telemetry to the console's own monitor (`opsconsole serve`), and the page shows its tool
open while it runs, then the whole run laid out with its three costs. Under the CSP (no
inline style: the bars are SVG). Screenshots in test-artifacts/."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import wrapper_command
from tests.test_browser import logged_in_page, shot
from tests.test_e2e import eventually

pytestmark = [pytest.mark.browser, pytest.mark.real_cli]


@pytest.fixture
def page(browser, real_claude, console_server):
    yield from logged_in_page(browser, console_server)


def test_a_live_runs_tool_shows_open_then_the_run_laid_out(
    page, console_server, state, real_claude
):
    real_claude.script(
        "index the docs",
        {"kind": "bash", "command": "sleep 6; echo indexed", "text": "Indexed."},
    )
    violations = []
    page.on(
        "console",
        lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None,
    )
    proc = subprocess.Popen(
        wrapper_command(
            "docs-indexer",
            "-p",
            "index the docs",
            "--output-format",
            "json",
            "--allowedTools",
            "Bash",
        ),
        env=state.env,
        cwd=state.workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        (live,) = eventually(
            lambda: [
                s
                for s in console_server.json("/api/claude-active")["sessions"]
                if s["script_tag"] == "docs-indexer"
            ],
            lambda s: len(s) == 1,
            timeout=60,
        )
        page.goto(f"{console_server.url}/sessions/{live['session_id']}/")
        page.locator(".timeline__row--open").wait_for(timeout=60_000)
        assert "Bash: sleep 6; echo indexed" in page.locator(".timeline__row--open").inner_text()
        shot(page, "timeline-live")
        assert proc.wait(timeout=90) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    # Ended: the tool is a closed bar among the LLM requests, and the costs are labelled.
    # The run's telemetry may reach the console before its completion record (the cost
    # the CLI reported): wait for that record, as the page reads it, before looking.
    eventually(
        lambda: console_server.json(f"/api/sessions/{live['session_id']}")["status"],
        lambda status: status == "succeeded",
        timeout=60,
    )
    eventually(
        lambda: (page.reload(), page.locator(".timeline__row--llm").count())[1],
        lambda n: n >= 2,
        timeout=60,
    )
    assert page.locator(".timeline__row--open").count() == 0
    assert page.locator(".timeline__row--tool").count() == 1
    assert page.locator("#run-costs .chosen").inner_text().startswith("reported by the CLI")
    shot(page, "timeline-ended")
    assert violations == []
