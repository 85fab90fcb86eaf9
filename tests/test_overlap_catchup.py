"""Overlap and catch-up policies per job (issue 24, parts 3 and 4): real wrapper
processes (tests/fake_claude.py) racing for one tag; the catch-up rule on a fixed
clock; and a quota stamp that skips two fires of a cron job, after whose reset time
the job runs exactly once, audited as actor catch-up."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth import get_user_model

from jobs_app.models import AuditEntry, CatchUp, Job
from monitor_app.catchup import CATCH_UP_ACTOR, JobFacts, catchup_round, decide
from monitor_app.models import Event, EventKind
from monitor_app.monitor import Monitor
from sessions_app.models import Session, Status
from tests.conftest import wrapper_command
from tests.live_helpers import wait_until
from tests.test_collectors import stand_in
from wrapper.formats import (
    EXIT_OVERLAP_SKIP,
    EXIT_QUOTA_SKIP,
    QuotaStamp,
    host_name,
    read_quota_stamp,
    read_spool_record,
    utc_now_iso,
    write_json_atomic,
)

pytestmark = pytest.mark.django_db(transaction=True)

T0 = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def calls(fake_claude) -> list[str]:
    path = fake_claude / "calls"
    return path.read_text().split() if path.exists() else []


def wrapped(state, overlap: str, behaviour: str = "succeed", *extra: str, wait=True):
    command = wrapper_command(
        "nightly", "-p", "x", "--output-format", "json", extra=("--overlap", overlap, *extra)
    )
    env = dict(state.env, FAKE_CLAUDE_BEHAVIOUR=behaviour)
    if not wait:
        return subprocess.Popen(
            command, env=env, cwd=state.workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    return subprocess.run(command, env=env, cwd=state.workdir, capture_output=True, timeout=90)


def spool_records(state) -> list:
    return [read_spool_record(p) for p in sorted(state.paths.spool.glob("*.json"))]


@pytest.fixture
def nightly(console_state):
    return Job.objects.create(scheduler="cron", label="nightly", host=host_name(), tags=["nightly"])


# ----------------------------------------------------------------------------- overlap


@pytest.mark.parametrize("first_policy", ["skip", "allow"])
def test_with_overlap_skip_a_fire_during_a_live_run_is_overlap_skip(
    console_state, fake_claude, nightly, first_policy, client
):
    # The live run may have been started under any policy: its sidecar says it is live.
    first = wrapped(console_state, first_policy, "sleep:30", wait=False)
    try:
        wait_until(lambda: calls(fake_claude), timeout=30)
        second = wrapped(console_state, "skip")
        assert second.returncode == EXIT_OVERLAP_SKIP, second.stderr
        assert b"previous run of nightly is live" in second.stderr
        assert len(calls(fake_claude)) == 1  # claude was not started for it
        [skipped] = [r for r in spool_records(console_state) if r.end_reason == "overlap_skip"]
        assert skipped.exit_code == EXIT_OVERLAP_SKIP and skipped.claude_started is False
        Monitor(paths=console_state.paths, publish=False).tick()
        session = Session.objects.get(session_id=skipped.session_id)
        assert (session.status, session.job) == (Status.OVERLAP_SKIP, nightly)
        assert session.shown_cost_usd == 0  # claude never ran
        assert Event.objects.filter(
            kind=EventKind.RUN_ENDED, session_id=session.session_id, status="overlap_skip"
        ).exists()
        audit = AuditEntry.objects.get(actor="overlap-policy")
        assert (audit.action, audit.job, audit.target) == (
            "overlap_skip",
            nightly,
            str(session.session_id),
        )
    finally:
        first.terminate()
        first.wait(timeout=30)
    # The previous run is over: the next fire runs.
    assert wrapped(console_state, "skip").returncode == 0
    nightly.command = "opsconsole-run --tag nightly --overlap skip -- -p x"
    nightly.save()
    client.force_login(get_user_model().objects.create_superuser("admin", password="pw"))
    page = client.get(f"/jobs/{nightly.pk}/").content.decode()
    assert 'id="overlap-policy"><span class="mono">skip</span>' in page
    assert "badge--overlap_skip" in page and "overlap-policy" in page


def test_with_overlap_queue_a_fire_waits_for_the_live_run_then_runs(console_state, fake_claude):
    first = wrapped(console_state, "queue", "sleep:2", wait=False)
    wait_until(lambda: calls(fake_claude), timeout=30)
    second = wrapped(console_state, "queue", "succeed", "--overlap-wait", "60")
    assert first.wait(timeout=60) == 0
    assert second.returncode == 0, second.stderr
    assert b"waiting up to 60 s" in second.stderr
    records = sorted(spool_records(console_state), key=lambda r: r.started_at)
    assert [r.end_reason for r in records] == ["succeeded", "succeeded"]
    assert records[1].started_at >= records[0].ended_at  # it started once the first ended


def test_with_overlap_queue_the_wait_is_bounded_then_the_fire_is_skipped(
    console_state, fake_claude
):
    first = wrapped(console_state, "allow", "sleep:30", wait=False)
    try:
        wait_until(lambda: calls(fake_claude), timeout=30)
        began = time.monotonic()
        second = wrapped(console_state, "queue", "succeed", "--overlap-wait", "1")
        assert second.returncode == EXIT_OVERLAP_SKIP
        assert 1 <= time.monotonic() - began < 20
    finally:
        first.terminate()
        first.wait(timeout=30)


def test_overlap_flags_are_checked_and_the_job_page_shows_the_policy(console_state, nightly):
    bad = subprocess.run(
        wrapper_command("nightly", "-p", "x", extra=("--overlap", "sometimes")),
        env=console_state.env,
        capture_output=True,
    )
    assert bad.returncode == 2 and b"invalid choice" in bad.stderr
    nightly.command = "opsconsole-run --tag nightly --overlap=queue -- -p 'do it'"
    assert nightly.overlap_policy == "queue"
    nightly.command = "opsconsole-run --tag nightly -- -p x"
    assert nightly.overlap_policy == "allow"


# ----------------------------------------------------------------------------- catch-up rule


def facts(policy=CatchUp.ONCE, misses=(), live=False, through=None, latest=None, hours=24):
    return JobFacts(1, policy, timedelta(hours=hours), through, tuple(misses), live, latest)


def stamp_until(until: datetime) -> QuotaStamp:
    return QuotaStamp(until=until.isoformat(), set_at=(until - 5 * HOUR).isoformat(), reason="x")


def test_catch_up_never_while_the_stamp_holds():
    job = facts(misses=[T0, T0 + HOUR])
    assert decide(T0 + 2 * HOUR, stamp_until(T0 + 3 * HOUR), [job]) == []
    [decision] = decide(T0 + 3 * HOUR, stamp_until(T0 + 3 * HOUR), [job])
    assert (decision.run, decision.misses, decision.through) == (True, 2, T0 + HOUR)
    assert decide(T0 + 3 * HOUR, None, [job]) == [decision]


def test_catch_up_once_never_twice_for_one_miss_and_never_on_a_live_run():
    now = T0 + 3 * HOUR
    assert decide(now, None, [facts(misses=[T0, T0 + HOUR], live=True)]) == []
    done = facts(misses=[T0, T0 + HOUR], through=T0 + HOUR)
    assert decide(now, None, [done]) == []  # dealt with: never again
    later = facts(misses=[T0, T0 + HOUR, T0 + 2 * HOUR], through=T0 + HOUR)
    [decision] = decide(now, None, [later])  # a new miss since: once more
    assert (decision.misses, decision.through) == (1, T0 + 2 * HOUR)
    # A run since the last miss already did the work: noted, not run.
    [covered] = decide(now, None, [facts(misses=[T0], latest=T0 + HOUR)])
    assert not covered.run and covered.through == T0
    assert decide(now, None, [facts(policy=CatchUp.NONE, misses=[T0])]) == []


def test_catch_up_all_missed_one_run_per_miss_within_the_window():
    now = T0 + 10 * HOUR
    misses = [T0, T0 + 8 * HOUR, T0 + 9 * HOUR]
    job = facts(policy=CatchUp.ALL_MISSED, misses=misses, hours=5)
    [first] = decide(now, None, [job])  # T0 is outside the 5 h window
    assert (first.through, first.misses) == (T0 + 8 * HOUR, 1)
    after = facts(policy=CatchUp.ALL_MISSED, misses=misses, hours=5, through=first.through)
    [second] = decide(now, None, [after])
    assert second.through == T0 + 9 * HOUR
    done = facts(policy=CatchUp.ALL_MISSED, misses=misses, hours=5, through=second.through)
    assert decide(now, None, [done]) == []


# ----------------------------------------------------------------------------- end to end


def test_a_stamp_skips_two_fires_then_after_its_reset_the_job_runs_exactly_once(
    console_state, fake_claude, tools, settings, client
):
    settings.OPSCONSOLE_CATCHUP_SECONDS = 0
    settings.OPSCONSOLE_RUN_NOW_WAIT_SECONDS = 30
    bin_dir = tools["dir"] / "job-bin"
    stand_in(bin_dir, "opsconsole-run", f'exec "{sys.executable}" -m wrapper "$@"\n')
    env = console_state.env
    tools["crontab"].write_text(
        "\n".join(
            [
                "SHELL=/bin/sh",
                f"PATH={bin_dir}:/usr/bin:/bin",
                f"PYTHONPATH={env['PYTHONPATH']}",
                f"OPSCONSOLE_HOME={env['OPSCONSOLE_HOME']}",
                f"CLAUDE_CONFIG_DIR={env['CLAUDE_CONFIG_DIR']}",
                f"OPSCONSOLE_CLAUDE_BIN={env['OPSCONSOLE_CLAUDE_BIN']}",
                f"FAKE_CLAUDE_STATE={env['FAKE_CLAUDE_STATE']}",
                "# opsconsole: nightly",
                "15 2 * * * opsconsole-run --tag nightly -- -p x --output-format json",
            ]
        )
        + "\n"
    )
    job = Job.objects.create(
        scheduler="cron",
        label="nightly",
        host=host_name(),
        tags=["nightly"],
        source="crontab -l",
        catchup_policy=CatchUp.ONCE,
    )

    def stamp_until(until: datetime) -> None:
        stamp = QuotaStamp(
            until=until.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            set_at=utc_now_iso(),
            reason="usage limit reached",
        )
        write_json_atomic(console_state.paths.quota_stamp, stamp.to_dict())

    # Holds for an hour: however slow the machine, both fires meet it.
    stamp_until(datetime.now(UTC) + timedelta(hours=1))
    monitor = Monitor(paths=console_state.paths, steps=(catchup_round,), publish=False)

    for _ in range(2):  # two fires the stamp skips
        fire = subprocess.run(
            wrapper_command("nightly", "-p", "x"), env=env, cwd=console_state.workdir
        )
        assert fire.returncode == EXIT_QUOTA_SKIP
        monitor.tick()
    assert Session.objects.filter(job=job, status=Status.QUOTA_SKIP).count() == 2
    assert not AuditEntry.objects.filter(actor=CATCH_UP_ACTOR).exists()  # it holds

    stamp_until(datetime.now(UTC) - timedelta(seconds=1))  # its reset time has come
    assert read_quota_stamp(console_state.paths) is None
    monitor.tick()  # the stamp cleared: the catch-up starts the job, as "run now" does
    audit = wait_until(lambda: AuditEntry.objects.filter(actor=CATCH_UP_ACTOR).first(), 60)
    assert audit.ok, audit.detail
    assert (audit.action, audit.job, audit.detail["misses"]) == ("run", job, 2)
    ran = lambda: Session.objects.filter(job=job, status=Status.SUCCEEDED)  # noqa: E731
    for _ in range(5):  # samples after it: the run on record, and nothing more started
        wait_until(lambda: monitor.tick() and (ran().exists() or None), timeout=60)
    assert ran().count() == 1
    assert str(ran().get().session_id) == audit.detail["session_id"]
    assert AuditEntry.objects.filter(actor=CATCH_UP_ACTOR).count() == 1
    assert len(calls(fake_claude)) == 1  # claude ran once: the catch-up
    job.refresh_from_db()
    latest_miss = Session.objects.filter(job=job, status=Status.QUOTA_SKIP).latest("started_at")
    assert job.caught_up_through == latest_miss.started_at
    assert Event.objects.filter(kind=EventKind.CATCH_UP).count() == 1
    # The job page shows the policy and what it did.
    client.force_login(get_user_model().objects.create_superuser("admin", password="pw"))
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert 'id="catchup-policy"><span class="mono">once</span>' in page
    assert "catch-up run" in page and audit.detail["session_id"][:8] in page
