"""The pages in a real browser: Playwright (PyPI) driving Debian's chromium, headless,
against `opsconsole serve`. Screenshots land in test-artifacts/."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, wrapper_command
from tests.live_helpers import start_fake_run
from tests.server_fixtures import manage
from tests.test_collectors import stand_in
from tests.test_e2e import eventually
from tests.transcript_shapes import session_2_1_with_subagents_and_compaction

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO_ROOT / "test-artifacts"
# Without these, chromium keeps trying to reach Google's services from a closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser():
    required = os.environ.get("OPSCONSOLE_REQUIRE_BROWSER") == "1"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if required:
            pytest.fail("playwright is not installed (scripts/install-browser)")
        pytest.skip("playwright is not installed (scripts/install-browser)")
    if not Path(CHROMIUM).exists():
        if required:
            pytest.fail(f"{CHROMIUM} is missing (scripts/install-browser)")
        pytest.skip(f"{CHROMIUM} is missing (scripts/install-browser)")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def page(browser, console_server):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    tab.goto(console_server.url + "/")
    tab.fill("#id_username", console_server.username)
    tab.fill("#id_password", console_server.password)
    tab.click("button[type=submit]")
    tab.wait_for_url(console_server.url + "/")
    yield tab
    context.close()


def shot(tab, name: str) -> None:
    tab.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_login_is_required_and_works(browser, console_server):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    tab = context.new_page()
    tab.goto(console_server.url + "/history/")
    assert "/login/" in tab.url
    shot(tab, "login")
    tab.fill("#id_username", console_server.username)
    tab.fill("#id_password", "wrong password")
    tab.click("button[type=submit]")
    assert tab.locator("[role=alert]").is_visible()
    tab.fill("#id_username", console_server.username)
    tab.fill("#id_password", console_server.password)
    tab.click("button[type=submit]")
    tab.wait_for_url(console_server.url + "/history/")
    context.close()


def test_live_page_shows_a_run_appear_and_leave_without_a_reload(page, state, fake_claude):
    assert page.locator(".empty").is_visible()
    shot(page, "live-empty")
    navigations = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    proc = subprocess.Popen(
        wrapper_command(
            "nightly-report", "-p", "go", "--output-format", "stream-json", "--verbose"
        ),
        env=dict(state.env, FAKE_CLAUDE_BEHAVIOUR="spawn:5"),
        cwd=state.workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        row = page.locator("#live-table tbody tr")
        row.first.wait_for()
        assert "nightly-report" in row.first.inner_text()
        page.wait_for_function(
            "document.querySelector('#live-table tbody tr td.mono').textContent.includes('sleep')"
        )
        shot(page, "live-running")
        assert proc.wait(timeout=30) == 0
        page.locator(".empty").wait_for()
        assert navigations == [], "the page must update in place"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_session_page_follows_the_transcript(page, console_server, state):
    def record(text: str) -> bytes:
        return (
            json.dumps(
                {
                    "type": "assistant",
                    "uuid": text,
                    "timestamp": "2026-11-24T02:00:00Z",
                    "message": {"id": text, "content": [{"type": "text", "text": text}]},
                }
            ).encode()
            + b"\n"
        )

    prompt = json.dumps(
        {
            "type": "user",
            "uuid": "p",
            "timestamp": "2026-11-24T02:00:00Z",
            "message": {"content": "Summarise <b>the</b> incident"},
        }
    ).encode()
    run = start_fake_run(state, tag="incident-summary", transcript_lines=[prompt + b"\n"])
    try:
        eventually(  # a person follows the link from the live list
            lambda: console_server.json("/api/claude-active")["sessions"], lambda s: len(s) == 1
        )
        page.goto(f"{console_server.url}/sessions/{run.session_id}/")
        page.get_by_text("Summarise <b>the</b> incident").wait_for()  # escaped, shown as text
        with run.transcript.open("ab") as handle:
            handle.write(record("First finding: disk full on db-2"))
        page.get_by_text("First finding: disk full on db-2").wait_for()
        with run.transcript.open("ab") as handle:
            handle.write(record("Second finding: backups paused"))
        page.get_by_text("Second finding: backups paused").wait_for()
        assert page.locator(".entry--assistant_text").count() == 2
        shot(page, "session-following")
    finally:
        run.kill_all()


@pytest.fixture
def scheduled_jobs(state, tmp_path):
    """A stand-in crontab with three agent jobs, on the console's PATH."""
    crontab = tmp_path / "crontab.txt"
    crontab.write_text(
        "# opsconsole: nightly report\n15 2 * * * opsconsole-run --tag nightly -- -p x\n"
        "# opsconsole: inbox triage\n*/15 * * * * opsconsole-run --tag inbox -- -p x\n"
        "# opsconsole: weekly audit\n0 9 * * 1 opsconsole-run --tag audit -- -p x\n"
    )
    bin_dir = tmp_path / "cron-bin"
    stand_in(bin_dir, "crontab", f"exec cat {crontab}\n")
    state.env["PATH"] = f"{bin_dir}:{state.env['PATH']}"


def test_jobs_dashboard_badges(scheduled_jobs, page, console_server, state, fake_claude):
    def run(tag, behaviour):
        return subprocess.run(
            wrapper_command(tag, "-p", "x", "--output-format", "json"),
            env=dict(state.env, FAKE_CLAUDE_BEHAVIOUR=behaviour),
            cwd=state.workdir,
            capture_output=True,
            timeout=60,
        ).returncode

    live = subprocess.Popen(
        wrapper_command("nightly", "-p", "x"),
        env=dict(state.env, FAKE_CLAUDE_BEHAVIOUR="sleep:30"),
        cwd=state.workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert run("audit", "exit:3") == 3
    assert run("inbox", "429") == 1
    assert run("inbox", "succeed") == 79  # the stamp holds: a quota skip
    try:
        page.goto(console_server.url + "/jobs/")
        badges = {
            "nightly report": "live",
            "inbox triage": "quota skip",
            "weekly audit": "failed (exit 3)",
        }
        for label, text in badges.items():
            row = page.locator(f"tr[data-job='{label}']")
            row.locator(".badge", has_text=text).wait_for()
        shot(page, "jobs")
        page.locator("tr[data-job='weekly audit'] td a").first.click()
        page.get_by_role("button", name="Run now").wait_for()
        shot(page, "job")
        page.goto(console_server.url + "/jobs/")
        page.locator("tr[data-job='nightly report'] a:has(.badge--live)").click()
        page.wait_for_url("**/sessions/**")
        shot(page, "session-live")
    finally:
        live.kill()
        live.wait()


def test_history_and_costs_pages(page, console_server, state, fake_claude):
    for behaviour in ("refuse,succeed", "exit:2", "succeed"):  # the plan counts calls
        result = subprocess.run(
            wrapper_command("digest", "-p", "x", "--output-format", "json"),
            env=dict(state.env, FAKE_CLAUDE_BEHAVIOUR=behaviour),
            cwd=state.workdir,
            capture_output=True,
            timeout=60,
        )
        assert result.returncode in (0, 2), result.stderr
    # History is current within one snapshot window; this page does not poll.
    eventually(lambda: console_server.json("/api/sessions")["count"], lambda n: n == 4)
    page.goto(console_server.url + "/history/")
    page.locator("#history-table tbody tr").nth(3).wait_for()
    assert page.locator(".badge--refused").count() == 1
    shot(page, "history")
    page.goto(console_server.url + "/costs/?days=7")
    page.locator("svg.chart").wait_for()
    shot(page, "costs")


def test_keyboard_reaches_the_content(page):
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.textContent")
    assert focused.strip() == "Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("location.hash") == "#main"


def test_session_with_subagents_and_compaction(page, console_server, state, tmp_path):
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
