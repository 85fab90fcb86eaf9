"""The pages in a real browser: Playwright (PyPI) driving Debian's chromium, headless,
against `opsconsole serve`. Screenshots land in test-artifacts/."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.browser_fixtures import ARTIFACTS
from tests.conftest import PYTHON, REPO_ROOT, wrapper_command
from tests.live_helpers import claude_lookalike, monitor_session, start_fake_run
from tests.server_fixtures import manage
from tests.test_collectors import stand_in
from tests.test_e2e import eventually
from tests.transcript_shapes import session_2_1_with_subagents_and_compaction

pytestmark = pytest.mark.browser


@pytest.fixture
def page(browser, console_server):
    yield from logged_in_page(browser, console_server)


def logged_in_page(browser, console):
    """A browser tab logged in to `console`, closed afterwards."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    tab.goto(console.url + "/")
    tab.fill("#id_username", console.username)
    tab.fill("#id_password", console.password)
    tab.click("button[type=submit]")
    tab.wait_for_url(console.url + "/")
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
    # Wait for the answer: a wrong password costs a PBKDF2 hash and a throttling record.
    tab.locator("[role=alert]").wait_for()
    assert tab.locator("[role=alert]").is_visible()
    tab.fill("#id_username", console_server.username)
    tab.fill("#id_password", console_server.password)
    tab.click("button[type=submit]")
    tab.wait_for_url(console_server.url + "/history/")
    context.close()


def test_live_page_shows_a_run_appear_and_leave_without_a_reload(
    page, console_server, state, fake_claude
):
    page.goto(console_server.url + "/live/")
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
        from playwright.sync_api import expect

        # A locator waits without evaluating a string, which the page's CSP forbids once
        # Playwright has to poll (the first check alone passed when the row came fast).
        expect(page.locator("#live-table tbody tr td.mono").first).to_contain_text(
            "sleep", timeout=30_000
        )
        shot(page, "live-running")
        assert proc.wait(timeout=30) == 0
        # The stand-in agent exits without waiting for the `sleep 300` its tool started in
        # the background: the run leaves the list and its tool stays, as a leftovers row.
        page.locator("#live-table tbody tr.leftover-row").wait_for()
        assert "sleep 300" in page.inner_text("#live-table tbody tr.leftover-row")
        assert page.locator("#live-table tbody tr:not(.leftover-row)").count() == 0
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
    page.locator("svg.chart").first.wait_for()
    shot(page, "costs")


def test_keyboard_reaches_the_content(page):
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.textContent")
    assert focused.strip() == "Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("location.hash") == "#main"


def test_live_page_shows_an_unwrapped_session_and_a_leftovers_row(page, console_server, state):
    """The monitor behind `serve` lists a session no wrapper started and the processes a
    killed run left behind, on the live page, within a sample or two."""
    import signal

    import psutil

    from tests.test_monitor import registry_file_for
    from wrapper.formats import new_session_id

    terminal = subprocess.Popen(
        [claude_lookalike(state.workdir.parent), "120"], start_new_session=True
    )
    unwrapped_id = new_session_id()
    registry_file_for(state.config_dir, terminal.pid, unwrapped_id, "/home/dev/ide-project")
    doomed = start_fake_run(state, tag="leaves-a-tool-behind", with_agent=False)
    try:
        child = eventually(lambda: psutil.Process(doomed.wrapper.pid).children(), bool)[0]
        # Leftovers are what the monitor saw in the run's tree while it was alive: kill
        # the wrapper only once the monitor's own published sample lists the child.
        eventually(
            lambda: monitor_session(state, doomed.session_id),
            lambda live: bool(live) and child.pid in {p["pid"] for p in live["processes"]},
            timeout=60,
        )
        os.kill(doomed.wrapper.pid, signal.SIGKILL)
        doomed.wrapper.wait()
        page.goto(console_server.url + "/live/")
        page.wait_for_selector(f"tr[data-session-id='{unwrapped_id}'] .badge--unwrapped")
        page.wait_for_selector(f"tr.leftover-row[data-session-id='{doomed.session_id}']")
        assert "1 process left: sleep 300" in page.inner_text(".leftover-row")
        assert "Monitor sample at" in page.inner_text("#sample-info")
        shot(page, "live-unwrapped-and-leftovers")
        page.click(f"tr.leftover-row[data-session-id='{doomed.session_id}'] a")
        page.wait_for_selector("#leftovers")
        shot(page, "session-leftovers")
    finally:
        terminal.kill()
        doomed.kill_all()


def test_pages_run_under_the_csp_without_a_violation(page, console_server, state, fake_claude):
    """The Content-Security-Policy forbids inline script and style: a page that needed
    either would log a violation here (and lose that behaviour for real users)."""
    violations: list[str] = []
    page.on(
        "console",
        lambda message: (
            violations.append(message.text)
            if "Content Security Policy" in message.text
            or "Content-Security-Policy" in message.text
            else None
        ),
    )
    result = subprocess.run(
        wrapper_command("digest", "-p", "x", "--output-format", "json"),
        env=dict(state.env, FAKE_CLAUDE_BEHAVIOUR="succeed"),
        cwd=state.workdir,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    run = start_fake_run(state, tag="csp-check")
    try:
        eventually(lambda: console_server.json("/api/sessions")["count"], lambda n: n >= 2)
        admin_pages = (
            "/admin/",
            "/admin/sessions_app/session/",
            "/admin/auth/user/1/change/",
            "/admin/monitor_app/hosttoken/add/",
            "/admin/alerts_app/",
        )
        pages = ("/", "/live/", "/history/", "/costs/?days=7", "/jobs/", "/hosts/", "/alerts/")
        for path in (*pages, f"/sessions/{run.session_id}/", *admin_pages):
            response = page.goto(console_server.url + path)
            assert response.ok and "/login/" not in page.url, (path, response.status)
            page.wait_for_load_state("networkidle")
        # At least one htmx refresh of the live list, under the same policy.
        with page.expect_response(lambda r: "/live/rows/" in r.url, timeout=30_000):
            page.goto(console_server.url + "/live/")
    finally:
        run.kill_all()
    assert violations == []


def test_a_logged_in_person_keeps_the_live_view_through_a_database_outage(
    page, console_server, state, tmp_path
):
    """The database file is replaced by a directory (nothing can open it): the live page
    still shows the runs, from the monitor's own sample, with a banner; history is a
    clear 503; when the database is back, so is everything else."""
    database = tmp_path / "console.sqlite3"
    run = start_fake_run(state, tag="runs-through-the-outage")
    try:
        eventually(
            lambda: console_server.json("/api/claude-active")["sessions"],
            lambda sessions: run.session_id in {s["session_id"] for s in sessions},
        )
        aside = tmp_path / "console.sqlite3.aside"
        database.rename(aside)
        database.mkdir()
        try:
            # The overview needs the database: `/` shows the live page from the sample.
            page.goto(console_server.url + "/")
            page.wait_for_selector("#outage-banner")
            assert page.locator(f"tr[data-session-id='{run.session_id}']").count() == 1
            shot(page, "live-during-database-outage")
            response = page.goto(console_server.url + "/history/")
            assert response.status == 503
            assert "Database unreachable" in page.inner_text("main")
        finally:
            database.rmdir()
            aside.rename(database)
        # The outage is retried after OPSCONSOLE_DB_RETRY_SECONDS: history comes back.
        eventually(lambda: page.goto(console_server.url + "/history/").status, lambda s: s == 200)
        page.goto(console_server.url + "/live/")
        assert page.locator("#outage-banner").count() == 0
    finally:
        run.kill_all()


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


def test_a_remote_job_s_request_shows_pending_then_the_host_s_answer(
    page, console_server, tmp_path, fake_claude
):
    """A job on a reporting host: Disable on its page becomes a request; the page shows
    it pending, then, without a reload, what the host's monitor answered."""
    from tests.scheduler_tools import own_crontab

    root = tmp_path / "host-b"
    home, config = root / "home", root / "claude"
    for folder in (home, config):
        folder.mkdir(parents=True, mode=0o700)
    token = manage(console_server.env, "create_host_token", "host-b").strip().splitlines()[-1]
    env = {
        k: v
        for k, v in console_server.env.items()
        if not k.startswith("OPSCONSOLE_") and k != "DATABASE_URL"
    }
    env.update(
        OPSCONSOLE_HOME=str(home),
        OPSCONSOLE_HOST_NAME="host-b",
        CLAUDE_CONFIG_DIR=str(config),
        OPSCONSOLE_CLAUDE_CONFIG_DIRS=str(config),
        OPSCONSOLE_SAMPLE_SECONDS="1",
        OPSCONSOLE_SCHEDULERS="cron",
        OPSCONSOLE_REPORT_TOKEN=token,
    )
    env["PATH"] = f"{own_crontab(root, env, tmp_path / 'bin' / 'claude')}:{env['PATH']}"
    with (root / "monitor.log").open("wb") as log:
        monitor = subprocess.Popen(
            [PYTHON, "-m", "opsconsole.cli", "monitor", "--report-to", console_server.url],
            env=env,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        jobs = eventually(
            lambda: console_server.json("/api/status")["jobs"],
            lambda jobs: any(j["host"] == "host-b" for j in jobs),
            timeout=30,
        )
        job = next(j for j in jobs if j["host"] == "host-b")
        page.on("dialog", lambda dialog: dialog.accept())
        page.goto(console_server.url + job["html_url"])
        assert "on host-b, by its monitor" in page.inner_text("#actions-heading")
        page.click("button:has-text('Disable')")
        # Pending, or already taken by the host's held poll: shown either way.
        page.wait_for_selector("#remote-actions li")
        assert "its monitor gets it at once if it is listening" in page.inner_text("main")
        shot(page, "remote-job-request-pending")
        page.wait_for_selector("#remote-actions li[data-state='done']", timeout=30_000)
        # Answered: the page is read again, with the job's new state and the audit log.
        page.wait_for_selector("button:has-text('Enable')")
        shot(page, "remote-job-request-done")
        assert "#0 3 * * *" in (root / "crontab.txt").read_text().replace("# 0", "#0")
        audit = page.inner_text("#audit-log")
        assert "request_disable" in audit and "host-b answered" in audit
    finally:
        monitor.terminate()
        monitor.wait(timeout=20)
