"""The overview in a real browser, at 390 and 1440 px, light and dark, with something
wrong on every count: an open incident, a failing job, a silent host, and runs live on
two hosts (this console's and a second host reporting to it). Nothing overflows
sideways, every figure carries its words, the phone's navigation takes two rows at
most; the Hosts and Alerts cards keep their labels on a phone. Screenshots in
test-artifacts/."""

from __future__ import annotations

import socket
import subprocess

import pytest

from tests.browser_fixtures import ARTIFACTS
from tests.conftest import PYTHON, REPO_ROOT, wrapper_command
from tests.live_helpers import start_fake_run
from tests.server_fixtures import manage
from tests.test_browser import scheduled_jobs  # noqa: F401 - a fixture
from tests.test_browser_layouts import SIZES, assert_fits, login
from tests.test_collectors import stand_in
from tests.test_e2e import eventually

pytestmark = pytest.mark.browser

# Cells whose figure has no words beside it on a phone: a card's first cell is its title.
UNLABELLED_CELLS = """() => {
  const missing = [];
  const cells = "main table.table tbody td, main table.table tfoot td";
  for (const cell of document.querySelectorAll(cells)) {
    const title = cell.matches(":first-child") || cell.hasAttribute("colspan");
    if (title || !cell.textContent.trim()) continue;
    const before = getComputedStyle(cell, "::before").content;
    if (!cell.dataset.label || before === "none" || before === '""') {
      missing.push(`${cell.closest("table").id}: ${cell.textContent.trim().slice(0, 40)}`);
    }
  }
  return missing;
}"""


@pytest.fixture
def second_host(console_server, state, tmp_path, monkeypatch):
    """host-b: a monitor of its own reporting to the console (its token in a 0600 file),
    with one run live."""
    root = tmp_path / "host-b"
    home, config, work = root / "home", root / "claude", root / "work"
    for folder in (home, config, work):
        folder.mkdir(parents=True, mode=0o700)
    token = manage(console_server.env, "create_host_token", "host-b").strip().splitlines()[-1]
    token_file = root / "host-token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
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
        OPSCONSOLE_REPORT_TOKEN_FILE=str(token_file),
    )
    # host-b schedules nothing: an empty crontab of its own.
    stand_in(root / "bin", "crontab", "exit 0\n")
    env["PATH"] = f"{root / 'bin'}:{env['PATH']}"
    with monkeypatch.context() as patch:
        patch.setenv("OPSCONSOLE_HOST_NAME", "host-b")
        paths = type(state.paths)(home=home, active=home / "active")
        run = start_fake_run(type(state)(paths, config, work, env), "remote-sweep")
    with (root / "monitor.log").open("wb") as log:
        monitor = subprocess.Popen(
            [PYTHON, "-m", "opsconsole.cli", "monitor", "--report-to", console_server.url],
            env=env,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield run
    finally:
        monitor.terminate()
        monitor.wait(timeout=20)
        run.kill_all()


def test_overview_at_phone_and_desktop_widths(
    scheduled_jobs,  # noqa: F811 - first: the console must start with the crontab on PATH
    browser,
    console_server,
    state,
    fake_claude,
    second_host,
):
    failed = subprocess.run(
        wrapper_command("audit", "-p", "x", "--output-format", "json"),
        env=dict(state.env, FAKE_CLAUDE_BEHAVIOUR="exit:3"),
        cwd=state.workdir,
        capture_output=True,
        timeout=60,
    )
    assert failed.returncode == 3, failed.stderr
    manage(console_server.env, "create_host_token", "host-quiet")  # never reports: silent
    here = start_fake_run(state, "inbox")
    try:
        eventually(
            lambda: {h["host"]: h["live_runs"] for h in console_server.json("/api/hosts")["hosts"]},
            lambda live: live.get("host-b") and any(live.get(h) for h in live if h != "host-b"),
            timeout=60,
        )
        for scheme in ("light", "dark"):
            for size, (width, height) in SIZES.items():
                context = browser.new_context(
                    viewport={"width": width, "height": height},
                    color_scheme=scheme,
                    device_scale_factor=1,
                )
                try:
                    tab = login(context, console_server)
                    # The console's monitor opens the incident on its next round.
                    eventually(
                        lambda tab=tab: (
                            tab.goto(console_server.url + "/")
                            and tab.locator("#overview-incidents tbody tr").count()
                        ),
                        bool,
                        timeout=60,
                    )
                    check_overview(tab, f"overview {size} {scheme}", phone=width < 700)
                    tab.screenshot(
                        path=str(ARTIFACTS / f"overview-{size}-{scheme}.png"), full_page=True
                    )
                    if width < 700:
                        for name in ("hosts", "alerts"):
                            tab.goto(f"{console_server.url}/{name}/")
                            assert_fits(tab, f"{name} {size} {scheme}", None)
                            assert tab.evaluate(UNLABELLED_CELLS) == [], name
                            tab.screenshot(
                                path=str(ARTIFACTS / f"{name}-{size}-{scheme}.png"),
                                full_page=True,
                            )
                finally:
                    context.close()
    finally:
        here.kill_all()


# The navigation scrolls sideways on a phone: its links may run on, clipped.
WIDER_THAN_THE_SCREEN = """() => [...document.querySelectorAll("body *:not(.topbar nav *)")]
  .filter(e => e.getBoundingClientRect().right > document.documentElement.clientWidth + 0.5)
  .slice(0, 5)
  .map(e => `${e.tagName}.${e.className} ${Math.round(e.getBoundingClientRect().right)}`)"""


def check_overview(tab, name: str, *, phone: bool) -> None:
    assert tab.evaluate(WIDER_THAN_THE_SCREEN) == [], name
    assert_fits(tab, name, None)
    # Five seconds' reading: a figure and its words in every tile.
    tiles = tab.locator("#overview-tiles .tile")
    assert tiles.count() == 6
    for index in range(tiles.count()):
        tile = tiles.nth(index)
        assert tile.locator(".tile-figure").inner_text().strip(), f"{name}: tile {index}"
        assert tile.locator(".tile-label").inner_text().strip(), f"{name}: tile {index}"
        assert tile.locator(".tile-label").is_visible(), f"{name}: tile {index} label hidden"
    figure = {
        tile.get_attribute("data-tile"): tile.locator(".tile-figure").inner_text()
        for tile in tiles.all()
    }
    assert int(figure["incidents"]) >= 1 and int(figure["live"]) >= 2, figure
    assert int(figure["silent"]) >= 1 and int(figure["jobs"]) >= 1, figure
    # Each thing links to where it is fixed.
    audit = tab.locator("#overview-jobs tr[data-job='weekly audit']")
    assert "failed (exit 3)" in audit.inner_text()
    assert audit.locator("a").first.get_attribute("href").startswith("/jobs/")
    assert tab.locator("#overview-silent tr[data-host='host-quiet'] .badge--silent").count() == 1
    for host in ("host-b", socket.gethostname()):
        cell = tab.locator(f"#overview-live tr[data-host='{host}'] td[data-label='Live runs']")
        assert cell.inner_text().strip() == "1", f"{name}: {host}"
    assert tab.locator("#overview-live a[href='/live/?host=host-b']").count() == 1
    # The navigation: counts on it, and two rows at most on a phone.
    assert tab.locator("#nav-incidents").inner_text().startswith(figure["incidents"])
    assert tab.locator("#nav-silent").inner_text().startswith(figure["silent"])
    bar = tab.locator(".topbar").bounding_box()
    assert bar["height"] <= 90, f"{name}: the top bar is {bar['height']} px tall"
    for count in ("#nav-incidents", "#nav-silent"):  # on screen without scrolling the bar
        box = tab.locator(count).bounding_box()
        assert box["x"] + box["width"] <= tab.viewport_size["width"], f"{name}: {count} {box}"
    if phone:
        assert tab.evaluate(UNLABELLED_CELLS) == []
    else:
        assert tab.locator("#overview-live thead th").first.is_visible()
