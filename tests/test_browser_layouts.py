"""Every page at 1440x900 and on a phone (390x844), light and dark: nothing overflows
sideways, a run's status is always on screen, and a job's page leads to its runs and
back. Playwright driving Debian's chromium; screenshots in test-artifacts/."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta

import pytest

from tests.browser_fixtures import ARTIFACTS
from tests.conftest import wrapper_command
from tests.live_helpers import start_fake_run
from tests.test_browser import scheduled_jobs  # noqa: F401 - a fixture
from wrapper.formats import (
    SpoolRecord,
    ensure_private_dir,
    host_name,
    new_session_id,
    write_json_atomic,
)

pytestmark = pytest.mark.browser

SIZES = {"desktop": (1440, 900), "phone": (390, 844)}
OUTCOMES = [
    ("succeeded", 0, None),
    ("succeeded", 0, None),
    ("failed", 2, None),
    ("succeeded", 0, None),
    ("refused", 0, None),
    ("failed", 1, 429),
    ("quota_skip", 79, None),
    ("signalled", 137, None),
]
# Which elements carry a run's status on each page.
STATUS_SELECTORS = {
    "live": "#live-table tbody tr td:first-child .badge",
    "history": "#history-table tbody td[data-label=Status] .badge",
    "jobs": "table.jobs td.status .badge",
    "job": "#run-strip .mark, #job-runs td[data-label=Status] .badge",
    "session": "#session-header h1 .badge",
    "session-live": "#session-header h1 .badge",
}


def completed_runs(state, tag: str, count: int) -> list[str]:
    """`count` completion records in the spool, one every 15 minutes, as the wrapper
    leaves them; the console ingests them on its next look."""
    ensure_private_dir(state.home)
    ensure_private_dir(state.paths.spool)
    start = datetime.now(UTC) - timedelta(minutes=15 * count)
    ids = []
    for index in range(count):
        end_reason, exit_code, api_status = OUTCOMES[index % len(OUTCOMES)]
        began = start + timedelta(minutes=15 * index)
        seconds = 20 + (index * 37) % 240
        session_id = new_session_id()
        error = None
        if api_status == 429:
            until = (began + timedelta(hours=1)).isoformat(timespec="seconds")
            error = f"usage limit hit; every wrapper skips (exit 79) until {until[:19]}Z"
        record = SpoolRecord(
            session_id=session_id,
            script_tag=tag,
            platform="cron",
            host=host_name(),
            attempt=1,
            started_at=began.isoformat().replace("+00:00", "Z"),
            ended_at=(began + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z"),
            end_reason=end_reason,
            exit_code=exit_code,
            signal=9 if end_reason == "signalled" else None,
            error=error,
            api_error_status=api_status,
            duration_ms=seconds * 1000,
            # every fifth run printed plain text: its cost is unknown
            cost_usd=None if index % 5 == 4 else round(0.01 + (index % 7) * 0.013, 4),
        )
        write_json_atomic(state.paths.spool_path(session_id), record.to_dict())
        ids.append(session_id)
    return ids


def login(context, console):
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    tab.goto(console.url + "/login/")
    tab.fill("#id_username", console.username)
    tab.fill("#id_password", console.password)
    tab.click("button[type=submit]")
    tab.wait_for_url(console.url + "/")
    return tab


def assert_fits(tab, name: str, status_selector: str | None) -> None:
    width = tab.viewport_size["width"]
    overflow = tab.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"{name}: the page is {overflow}px wider than the screen"
    if status_selector:
        # Measured in one evaluation: the page's htmx refresh swaps its tables, and an
        # element measured one call at a time can be swapped out between two calls.
        marks = tab.evaluate(
            """selector => [...document.querySelectorAll(selector)].slice(0, 60).map(mark => {
                const box = mark.getBoundingClientRect();
                const style = getComputedStyle(mark);
                return {
                    x: box.x, width: box.width, height: box.height,
                    shown: box.width > 0 && box.height > 0 && style.visibility !== "hidden",
                };
            })""",
            status_selector,
        )
        assert marks, f"{name}: no status shown"
        for index, box in enumerate(marks):
            assert box["shown"], f"{name}: status #{index} hidden"
            assert box["x"] >= 0 and box["x"] + box["width"] <= width + 0.5, (
                f"{name}: status #{index} off screen at {box}"
            )


@pytest.fixture
def populated(scheduled_jobs, state, console_server, fake_claude):  # noqa: F811
    """Three cron jobs, 55 finished runs of one of them, and one run live now."""
    ids = completed_runs(state, "nightly", 55)
    subprocess.run(  # one more, for the inbox job, through the real wrapper
        wrapper_command("inbox", "-p", "x", "--output-format", "json"),
        env=dict(state.env, FAKE_CLAUDE_BEHAVIOUR="succeed"),
        cwd=state.workdir,
        capture_output=True,
        timeout=60,
        check=True,
    )
    live = start_fake_run(state, tag="audit")
    try:
        deadline = datetime.now(UTC) + timedelta(seconds=30)
        while console_server.json("/api/sessions")["count"] < 57:
            assert datetime.now(UTC) < deadline, "the console did not ingest the runs"
            subprocess.run(["sleep", "0.3"], check=True)
        jobs = {j["label"]: j for j in console_server.json("/api/status")["jobs"]}
        yield {"ids": ids, "live": live, "jobs": jobs}
    finally:
        live.kill_all()


def job_id(tab, console, label: str) -> str:
    tab.goto(console.url + "/jobs/")
    href = tab.locator(f"tr[data-job='{label}'] td.job-name a").first.get_attribute("href")
    return href.strip("/").split("/")[-1]


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_page_fits_desktop_and_phone_with_status_visible(
    scheduled_jobs,  # noqa: F811 - first: the console must start with the crontab on PATH
    browser,
    console_server,
    populated,
    scheme,
):
    ids = populated["ids"]
    pages = None
    for size, (width, height) in SIZES.items():
        context = browser.new_context(
            viewport={"width": width, "height": height},
            color_scheme=scheme,
            device_scale_factor=1,
        )
        try:
            tab = login(context, console_server)
            if pages is None:
                nightly = job_id(tab, console_server, "nightly report")
                pages = {
                    "overview": "/",
                    "live": "/live/",
                    "history": "/history/",
                    "jobs": "/jobs/",
                    "job": f"/jobs/{nightly}/",
                    "session": f"/sessions/{ids[-3]}/",
                    "session-live": f"/sessions/{populated['live'].session_id}/",
                    "costs": "/costs/",
                }
            for name, path in pages.items():
                tab.goto(console_server.url + path)
                tab.wait_for_load_state("load")
                if name == "live":
                    tab.locator("#live-table tbody tr").first.wait_for()
                if name == "session-live":  # a PID is one word: "31885", never "3188 / 5"
                    pid_cell = tab.locator(".proctable tbody td.num").first
                    assert pid_cell.evaluate("c => getComputedStyle(c).whiteSpace") == "nowrap"
                assert_fits(tab, f"{name} {size} {scheme}", STATUS_SELECTORS.get(name))
                tab.screenshot(path=str(ARTIFACTS / f"{name}-{size}-{scheme}.png"), full_page=True)
            if scheme == "dark":
                background = tab.evaluate("getComputedStyle(document.body).backgroundColor")
                assert background == "rgb(11, 15, 23)", background
            tab.goto(console_server.url + "/favicon.ico")
            assert tab.evaluate("document.contentType").startswith("image/")
        finally:
            context.close()
    anonymous = browser.new_context(viewport={"width": 390, "height": 844}, color_scheme=scheme)
    try:
        tab = anonymous.new_page()
        tab.goto(console_server.url + "/login/")
        assert_fits(tab, f"login phone {scheme}", None)
        tab.screenshot(path=str(ARTIFACTS / f"login-phone-{scheme}.png"), full_page=True)
    finally:
        anonymous.close()


def test_a_job_page_with_50_runs_leads_to_its_runs_and_back(
    scheduled_jobs,  # noqa: F811 - first: the console must start with the crontab on PATH
    browser,
    console_server,
    populated,
):
    ids = populated["ids"]
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    try:
        tab = login(context, console_server)
        nightly = job_id(tab, console_server, "nightly report")
        # the jobs list groups by the platform the runs pass, not "(no platform)"
        assert tab.locator("h2", has_text="cron").count() == 1
        tab.goto(f"{console_server.url}/jobs/{nightly}/")
        marks = tab.locator("#run-strip .mark")
        assert marks.count() == 50
        newest = marks.nth(49)
        title = newest.get_attribute("title")
        assert "UTC" in title and " · " in title  # when · duration · cost · outcome
        assert tab.locator("#run-strip .mark--rate_limited").count() > 0
        assert tab.locator("svg.chart--duration a").count() == 50
        # every fifth run printed plain text: its cost is unknown, unless it was a quota
        # skip (claude never ran: $0)
        unknown = [i for i in range(5, 55) if i % 5 == 4 and OUTCOMES[i % 8][0] != "quota_skip"]
        assert tab.locator("svg.chart--cost text.unknown").count() == len(unknown) == 8
        shot_name = "job-50-runs-desktop"
        tab.screenshot(path=str(ARTIFACTS / f"{shot_name}.png"), full_page=True)
        newest.click()
        tab.wait_for_url(f"**/sessions/{ids[-1]}/")
        tab.locator("#run-links").wait_for()
        tab.get_by_role("link", name="previous run").click()
        tab.wait_for_url(f"**/sessions/{ids[-2]}/")
        tab.screenshot(path=str(ARTIFACTS / "session-links-desktop.png"), full_page=True)
        tab.get_by_role("link", name="next run").click()
        tab.wait_for_url(f"**/sessions/{ids[-1]}/")
        tab.locator("#run-links a.job-link").click()
        tab.wait_for_url(f"**/jobs/{nightly}/")
        # Disable asks first; dismissing it changes nothing.
        questions = []
        tab.once("dialog", lambda dialog: (questions.append(dialog.message), dialog.dismiss()))
        tab.get_by_role("button", name="Disable").click()
        assert questions and questions[0].startswith("Disable nightly report?")
        assert tab.locator(".banner").count() == 0
        assert tab.locator("#audit-log td", has_text="No actions yet.").count() == 1
        # The "run now": the entry calls a bare opsconsole-run, which cron's PATH
        # (/usr/bin:/bin) does not have. The page says so instead of "started".
        tab.get_by_role("button", name="Run now").click()
        banner = tab.locator(".banner--error")
        banner.wait_for()
        assert "run failed" in banner.inner_text() and "not found" in banner.inner_text()
        entry = tab.locator("#audit-log tbody tr").first
        assert "failed" in entry.inner_text() and "exit 127" in entry.inner_text()
        entry.locator("summary").click()
        assert "opsconsole-run" in entry.locator("pre").inner_text()
        tab.screenshot(path=str(ARTIFACTS / "job-run-now-fails-desktop.png"), full_page=True)
    finally:
        context.close()
    phone = browser.new_context(viewport={"width": 390, "height": 844})
    try:
        tab = login(phone, console_server)
        tab.goto(f"{console_server.url}/sessions/{ids[-2]}/")
        assert_fits(tab, "session links phone", "#session-header h1 .badge")
        assert tab.locator("#run-links a[rel=prev]").is_visible()
        assert tab.locator("#run-links a[rel=next]").is_visible()
        tab.screenshot(path=str(ARTIFACTS / "session-links-phone.png"), full_page=True)
        tab.goto(f"{console_server.url}/jobs/{nightly}/")
        assert_fits(tab, "job phone", STATUS_SELECTORS["job"])
        tab.screenshot(path=str(ARTIFACTS / "job-50-runs-phone.png"), full_page=True)
    finally:
        phone.close()
