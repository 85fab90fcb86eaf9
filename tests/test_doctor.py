"""`opsconsole doctor`: a stand-in crontab, real files and real executables."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command

from tests.test_collectors import stand_in
from wrapper.formats import QuotaStamp, write_json_atomic

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def crontab(console_state, tmp_path, monkeypatch, settings):
    """A stand-in `crontab` on PATH that prints the returned file."""
    text = tmp_path / "crontab.txt"
    bin_dir = tmp_path / "tools"
    stand_in(bin_dir, "crontab", f'[ "$1" = "-l" ] && cat {text}\n')
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    settings.OPSCONSOLE_SCHEDULERS = ["cron"]
    return text


def doctor(capsys, *args) -> tuple[int, str]:
    try:
        call_command("doctor", *args)
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().out


def test_doctor_finds_what_cron_will_not(crontab, capsys):
    # Works from a login shell, fails under cron: bare names, cron's PATH /usr/bin:/bin.
    crontab.write_text("# opsconsole: nightly\n15 2 * * * opsconsole-run --tag nightly -- -p x\n")

    code, out = doctor(capsys, "--job", "nightly")

    assert code == 1
    assert "PROBLEM  opsconsole-run: 'opsconsole-run' not found with PATH=/usr/bin:/bin" in out
    assert "PROBLEM  claude: 'claude' not found with PATH=/usr/bin:/bin" in out
    assert "fix: set OPSCONSOLE_CLAUDE_BIN=" in out
    assert "ok       cron reachable" in out


def test_doctor_passes_a_job_whose_crontab_sets_path_and_claude(
    crontab, console_state, tmp_path, capsys
):
    bin_dir = tmp_path / "venv-bin"
    stand_in(bin_dir, "opsconsole-run", f'exec "{sys.executable}" -m wrapper "$@"\n')
    claude = stand_in(tmp_path / "claude-bin", "claude", "exit 0\n")
    crontab.write_text(
        f"PATH={bin_dir}:/usr/bin:/bin\n"
        f"OPSCONSOLE_CLAUDE_BIN={claude}\n"
        f"OPSCONSOLE_HOME={console_state.home}\n"
        f"CLAUDE_CONFIG_DIR={console_state.config_dir}\n"
        "# opsconsole: nightly\n15 2 * * * opsconsole-run --tag nightly -- -p x\n"
    )

    code, out = doctor(capsys)

    assert code == 0, out
    assert f"ok       claude (OPSCONSOLE_CLAUDE_BIN): {claude}" in out
    assert f"ok       opsconsole-run: {bin_dir}/opsconsole-run" in out
    assert "No problems found." in out


def test_doctor_reports_a_holding_quota_stamp_and_an_unsafe_state_dir(
    crontab, console_state, tmp_path, capsys
):
    claude = stand_in(tmp_path / "claude-bin", "claude", "exit 0\n")
    crontab.write_text(
        f"OPSCONSOLE_CLAUDE_BIN={claude}\nOPSCONSOLE_HOME={console_state.home}\n"
        "# opsconsole: nightly\n15 2 * * * /opt/x/opsconsole-run --tag nightly -- -p x\n"
    )
    now = datetime.now(UTC)
    write_json_atomic(
        console_state.paths.quota_stamp,
        QuotaStamp(
            until=(now + timedelta(hours=1)).isoformat(timespec="seconds"),
            set_at=now.isoformat(timespec="seconds"),
            reason="usage limit",
        ).to_dict(),
    )
    console_state.home.chmod(0o777)
    try:
        code, out = doctor(capsys, "--job", "nightly")
    finally:
        console_state.home.chmod(0o700)

    assert code == 1
    assert "PROBLEM  opsconsole-run: /opt/x/opsconsole-run is not an executable file" in out
    assert "PROBLEM  state dir:" in out and "chmod 700" in out
    assert "PROBLEM  quota stamp: holds until" in out
    assert "opsconsole-run --clear-quota-stamp" in out


def test_doctor_names_an_unknown_job(crontab, capsys):
    crontab.write_text("")
    with pytest.raises(Exception, match="no job 'ghost'"):
        call_command("doctor", "--job", "ghost")
