"""Issue 25, part 2: reports that cost what changed.

A host whose sample the console holds sends the next one as a delta of it, gzipped; a
host with nothing live and nothing to send, a heartbeat every OPSCONSOLE_HEARTBEAT_SECONDS;
the console keeps the base in the database (HostSample) and answers a delta of a base it
does not hold so that the host sends a full report next. Reports go through the console's
real endpoint (Django's test client); the host is a real monitor in report mode where its
side matters.
"""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from fleet.hosts import check_silent_hosts, silent_hosts
from fleet.report import ReportError
from fleet.sample_delta import apply_state_delta, says_nothing_new, state_delta
from monitor_app.models import Event, EventKind, HostSample
from sessions_app.models import Session, Status
from tests.live_helpers import start_fake_run
from tests.test_fleet import client_transport, host_a, host_a_state  # noqa: F401 - the fixture
from tests.test_hardening_reports import NOW, Host, live, report_of, sample_of, sidecar_of

pytestmark = pytest.mark.django_db(transaction=True)


# ----------------------------------------------------------------------------- the format

run_ids = st.sampled_from([f"00000000-0000-4000-8000-00000000000{n}" for n in range(8)])
runs = st.builds(
    lambda session_id, state, cpu: {
        "sidecar": {"session_id": session_id},
        "state": state,
        "processes": [{"cpu": cpu}],
    },
    run_ids,
    st.sampled_from(["live", "orphaned"]),
    st.integers(0, 3),
)
documents = st.builds(
    lambda sessions, quota, scan_ms: {
        "taken_at": "2026-12-07T02:00:00+00:00",
        "scan_ms": scan_ms,
        "quota_until": quota,
        "sessions": list({s["sidecar"]["session_id"]: s for s in sessions}.values()),
    },
    st.lists(runs, max_size=6),
    st.sampled_from([None, "2026-12-07T03:00:00+00:00"]),
    st.floats(0, 5, allow_nan=False),
)


@hypothesis_settings(max_examples=300, deadline=None)
@given(documents, documents)
def test_a_delta_applied_to_its_base_is_the_state_it_was_made_from(held, current):
    delta = state_delta(held, current)
    assert apply_state_delta(held, json.loads(json.dumps(delta))).state == current
    sent = {s["sidecar"]["session_id"] for s in delta["sessions"]}
    unchanged = [s for s in current["sessions"] if s in held["sessions"]]
    assert not sent & {s["sidecar"]["session_id"] for s in unchanged}, "only what changed"


def test_a_sample_that_moves_only_its_clock_says_nothing_new():
    held = {"taken_at": "a", "scan_ms": 1.0, "quota_until": None, "sessions": []}
    assert says_nothing_new(state_delta(held, dict(held, taken_at="b", scan_ms=2.0)))
    assert not says_nothing_new(state_delta(held, dict(held, quota_until="2026-12-08")))


# ----------------------------------------------------------------------------- the console


def delta_of(host: str, held: dict, seq: int, live_runs, *, base_seq: int, **sample) -> dict:
    """A report whose sample is the delta from the full sample `held` (sample_of's)."""
    full = sample_of(host, seq, live_runs)
    delta = state_delta(json.loads(held["state_document"]), json.loads(full["state_document"]))
    header = {k: full[k] for k in ("seq", "taken_at", "interval_seconds", "sample_ms")}
    return {
        "format": 1,
        "host": host,
        "sample": header
        | {"monitor_pid": held["monitor_pid"], "base": {"seq": base_seq, "monitor_pid": 4242}}
        | delta
        | sample,
    }


def documents_of(host: str) -> tuple[str, str, str]:
    row = HostSample.objects.get(host=host)
    return row.api_document, row.state_document, row.etag


def test_a_delta_gives_the_documents_and_etag_a_full_report_gives(console_state):
    host = Host("host-a")
    kept, changed, ended = (live(sidecar_of("host-a", pid=5000 + n)) for n in range(3))
    first = report_of("host-a", 1, [kept, changed, ended])
    assert host.taken(first)["base"] == {"seq": 1, "monitor_pid": 4242}
    changed.state, changed.last_tool_call = Status.ORPHANED, "Bash"
    added = live(sidecar_of("host-a", pid=6000))
    now_live = [added, changed, kept]  # a new order too
    answer = host.taken(delta_of("host-a", first["sample"], 2, now_live, base_seq=1))
    assert answer["base"] == {"seq": 2, "monitor_pid": 4242}
    assert not answer["ack"]["refused"]
    by_delta = documents_of("host-a")
    statuses = {str(k): v for k, v in Session.objects.values_list("session_id", "status")}
    assert statuses[added.session_id] == Status.LIVE
    assert statuses[changed.session_id] == Status.ORPHANED

    HostSample.objects.all().delete()
    host.taken(report_of("host-a", 2, now_live))
    assert documents_of("host-a") == by_delta
    listed = [s["session_id"] for s in json.loads(by_delta[0])["sessions"]]
    assert listed == [added.session_id, changed.session_id, kept.session_id]


def test_a_delta_of_a_base_the_console_does_not_hold_asks_for_a_full_report(console_state):
    host = Host("host-a")
    run = live(sidecar_of("host-a"))
    first = report_of("host-a", 1, [run])
    host.taken(first)
    # Another console took a later sample of this host (or the answer was lost): the
    # base named is not the one on record. The report's other items are still taken.
    host.taken(report_of("host-a", 2, [run]))
    done = {"session_id": run.session_id, "actor": "watchdog", "reason": "watchdog"}
    answer = host.taken(delta_of("host-a", first["sample"], 3, [run], base_seq=1))
    refusal = next(r for r in answer["ack"]["refused"] if r["kind"] == "sample")
    assert refusal["status"] == 409 and "send a full report" in refusal["reason"]
    assert answer["base"] is None
    assert HostSample.objects.get(host="host-a").seq == 2
    # None held at all (a console whose database lost the row): the same answer.
    HostSample.objects.all().delete()
    answer = host.taken(
        delta_of("host-a", first["sample"], 3, [run], base_seq=2) | {"stops": [done]}
    )
    assert answer["base"] is None and "holds no sample" in answer["ack"]["refused"][0]["reason"]
    assert Session.objects.get(session_id=run.session_id).stopped_by == "watchdog"
    assert host.taken(report_of("host-a", 4, [run]))["base"] == {"seq": 4, "monitor_pid": 4242}


def test_a_delta_is_checked_as_a_full_sample_is(console_state):
    host = Host("host-a")
    first = report_of("host-a", 1)
    host.taken(first)
    smuggled = live(sidecar_of("host-b"))
    answer = host.taken(delta_of("host-a", first["sample"], 2, [smuggled], base_seq=1))
    assert {r["key"] for r in answer["ack"]["refused"]} == {smuggled.session_id}
    assert json.loads(documents_of("host-a")[0])["sessions"] == []
    unreadable = delta_of("host-a", first["sample"], 3, [], base_seq=2, sessions=[{"x": 1}])
    answer = host.taken(unreadable)
    assert "delta unreadable" in answer["ack"]["refused"][0]["reason"]
    assert HostSample.objects.get(host="host-a").seq == 2


def statements(queries) -> list[str]:
    """The queries a report cost, without the transaction's own statements."""
    control = ("BEGIN", "COMMIT", "SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK")
    return [q["sql"] for q in queries if not q["sql"].startswith(control)]


def test_queries_per_report_full_delta_and_heartbeat(console_state):
    """docs/scale.md's figures: the whole request (token, budget, ingest, answer)."""
    host = Host("host-a")
    running = [live(sidecar_of("host-a", pid=5000 + n)) for n in range(10)]
    counts = {}
    with time_machine.travel(NOW, tick=False):
        host.taken(report_of("host-a", 1, running))
        with CaptureQueriesContext(connection) as full:
            host.taken(report_of("host-a", 2, running))
        counts["full, 10 live runs"] = list(full)  # before the next request resets the log
        held = report_of("host-a", 2, running)["sample"]
        running[3].running_cost_usd = 0.5
        with CaptureQueriesContext(connection) as delta:
            host.taken(delta_of("host-a", held, 3, running, base_seq=2))
        counts["delta, 1 run changed"] = list(delta)
        HostSample.objects.all().delete()
        host.taken(report_of("host-a", 10))
        idle = report_of("host-a", 10)["sample"]
        with CaptureQueriesContext(connection) as heartbeat:
            host.taken(delta_of("host-a", idle, 11, [], base_seq=10, heartbeat_seconds=30))
        counts["heartbeat"] = list(heartbeat)
    figures = {name: (len(statements(q)), len(q)) for name, q in counts.items()}
    print(figures)
    for name, q in counts.items():
        print(name, *statements(q), sep="\n    ")
    # Runs of a tag no job has: the jobs their rows are tied to are asked each report
    # (fleet.report_origins.jobs_of_live_runs), a full report or a delta alike.
    assert figures["full, 10 live runs"][0] == 8
    # Token, budget, the base, the runs' jobs, the sample, the host's requests: nothing
    # per run.
    assert figures["delta, 1 run changed"][0] <= 6, statements(counts["delta, 1 run changed"])
    assert figures["heartbeat"][0] <= 5, statements(counts["heartbeat"])


def test_a_gzip_bomb_in_a_report_is_refused_with_why(console_state, settings):
    settings.OPSCONSOLE_HOST_REPORT_MAX_INFLATED_BYTES = 64 * 1024
    host = Host("host-a")
    first = report_of("host-a", 1)
    assert host.post(first, gzip_body=True).status_code == 200, "a gzip report is taken"
    padded = delta_of("host-a", first["sample"], 2, [], base_seq=1)
    padded["padding"] = " " * (64 * 1024)  # one byte over once inflated, and more
    response = host.post(padded, gzip_body=True)
    assert response.status_code == 413
    assert "too large once inflated (over 65536 bytes)" in response.json()["error"]
    bad = host.client.generic(
        "POST",
        "/api/hosts/report",
        gzip.compress(b"{}")[:10] + b"\xff\xff\xff\xff",  # a deflate block of no type
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {host.token}",
        HTTP_CONTENT_ENCODING="gzip",
    )
    assert bad.status_code == 400 and "gzip" in bad.json()["error"]
    assert HostSample.objects.get(host="host-a").seq == 1


# ----------------------------------------------------------------------------- silence


def test_silence_follows_the_heartbeat_the_host_declares(console_state):
    host = Host("host-a")
    with time_machine.travel(NOW, tick=False):
        host.taken(report_of("host-a", 1))
    row = HostSample.objects.get(host="host-a")
    assert row.heartbeat_seconds is None, "a host that reports every sample (any version)"
    assert silent_hosts(NOW + timedelta(seconds=5)) == []
    assert silent_hosts(NOW + timedelta(seconds=7)) == ["host-a"]

    idle = report_of("host-a", 1)["sample"]
    with time_machine.travel(NOW + timedelta(seconds=8), tick=False):
        host.taken(delta_of("host-a", idle, 2, [], base_seq=1, heartbeat_seconds=30))
    heard = NOW + timedelta(seconds=8)
    for after in (2, 10, 29, 35):
        assert silent_hosts(heard + timedelta(seconds=after)) == [], after
    assert check_silent_hosts(heard + timedelta(seconds=35)) == []
    assert silent_hosts(heard + timedelta(seconds=37)) == ["host-a"]  # 30 + 3 x 2 s
    assert check_silent_hosts(heard + timedelta(seconds=37)) == ["host-a"]
    assert Event.objects.filter(kind=EventKind.MONITOR_SILENT, host="host-a").count() == 1


# ----------------------------------------------------------------------------- the host


def recording(monitor) -> list[tuple[dict, dict]]:
    """Every report the monitor posts, as (headers, payload), still posted for real."""
    sent = []
    post = monitor.reporting.reporter.transport

    def record(body: bytes, headers: dict[str, str]):
        raw = gzip.decompress(body) if headers.get("Content-Encoding") == "gzip" else body
        sent.append((dict(headers), json.loads(raw)))
        return post(body, headers)

    monitor.reporting.reporter.transport = record
    return sent


def kind_of(payload: dict) -> str:
    sample = payload["sample"]
    if "base" not in sample:
        return "full"
    return "heartbeat" if "heartbeat_seconds" in sample and says_nothing_new(sample) else "delta"


def test_an_idle_host_heartbeats_on_a_fixed_clock(host_a, settings):  # noqa: F811
    settings.OPSCONSOLE_HEARTBEAT_SECONDS = 30
    settings.OPSCONSOLE_COLLECT_SECONDS = 3600  # its jobs' collection is a report of its own
    sent = recording(host_a)
    start = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)
    for second in range(0, 75):
        with time_machine.travel(start + timedelta(seconds=second), tick=False):
            host_a.tick(start + timedelta(seconds=second))
        assert host_a.reporting.last_error is None
    kinds = [(datetime.fromisoformat(p["sent_at"]) - start).seconds for _h, p in sent]
    assert kinds == [0, 30, 60]
    assert [kind_of(p) for _h, p in sent] == ["full", "heartbeat", "heartbeat"]
    assert all(p["sample"]["heartbeat_seconds"] == 30 for _h, p in sent)
    row = HostSample.objects.get(host="host-a")
    assert row.heartbeat_seconds == 30 and row.seq == sent[-1][1]["sample"]["seq"]
    assert row.monitor_version == "2"
    heard = start + timedelta(seconds=60)
    assert silent_hosts(heard + timedelta(seconds=10)) == []
    assert silent_hosts(heard + timedelta(seconds=34)) == ["host-a"]  # 30 + 3 x 1 s


def test_a_host_with_live_runs_sends_what_changed_every_sample_gzipped(host_a, runs):  # noqa: F811
    sent = recording(host_a)
    first = start_fake_run(host_a_state(host_a), "delta-one")
    runs.append(first)
    host_a.tick()
    second = start_fake_run(host_a_state(host_a), "delta-two")
    runs.append(second)
    for _ in range(3):
        host_a.tick()
        assert host_a.reporting.last_error is None
    assert [kind_of(p) for _h, p in sent][:2] == ["full", "delta"]
    assert len(sent) == 4, "every sample while runs are live"
    added = sent[1][1]["sample"]
    assert second.session_id in {s["sidecar"]["session_id"] for s in added["sessions"]}
    assert "heartbeat_seconds" not in added
    assert all(h.get("Content-Encoding") == "gzip" for h, p in sent[1:] if p["sample"]["sessions"])

    # What a full report of the same sample gives: the same documents, the same ETag.
    latest = host_a.tick()
    by_delta = documents_of(host_a.host)
    host_a.reporting.base, host_a.seq = None, latest.seq
    payload = host_a.reporting.payload(latest, datetime.now(UTC))
    HostSample.objects.all().delete()
    host_a.reporting.reporter.send(payload)
    assert documents_of(host_a.host) == by_delta
    host_a.seq += 1
    host_a.tick()  # the host held no base: a full report, and deltas again after it

    first.kill_all()
    second.kill_all()
    host_a.tick()
    host_a.tick()
    ended = [p for _h, p in sent if p["sample"].get("removed")]
    assert ended and set(ended[0]["sample"]["removed"]) == {first.session_id, second.session_id}
    assert Session.objects.get(session_id=first.session_id).status == Status.KILLED
    assert json.loads(documents_of(host_a.host)[0])["sessions"] == []


def test_a_host_whose_base_the_console_lost_sends_a_full_report_next(host_a, runs):  # noqa: F811
    sent = recording(host_a)
    run = start_fake_run(host_a_state(host_a), "recovers")
    runs.append(run)
    host_a.tick()
    host_a.tick()
    HostSample.objects.all().delete()  # a console restored from a backup, say
    host_a.tick()
    host_a.tick()
    assert [kind_of(p) for _h, p in sent] == ["full", "delta", "delta", "full"]
    assert host_a.reporting.last_error is None
    row = HostSample.objects.get(host=host_a.host)
    assert row.seq == sent[-1][1]["sample"]["seq"]
    assert [s["session_id"] for s in json.loads(row.api_document)["sessions"]] == [run.session_id]

    # An answer lost on the way back: the console holds the newer sample, the host does
    # not know it, and its next delta (of the older one) is answered with a full report.
    post = host_a.reporting.reporter.transport

    def answer_lost(body: bytes, headers: dict[str, str]):
        post(body, headers)
        raise ReportError("console unreachable: connection reset")

    host_a.reporting.reporter.transport = answer_lost
    host_a.tick()
    host_a.reporting.reporter.transport = post
    host_a.tick()
    host_a.tick()
    assert [kind_of(p) for _h, p in sent][-3:] == ["delta", "delta", "full"]
    assert HostSample.objects.get(host=host_a.host).seq == sent[-1][1]["sample"]["seq"]
    assert host_a.reporting.base is not None


def test_clock_skew_is_read_from_when_the_host_sent_its_report(console_state):
    """Not from when its sample was taken: a loaded host's sample is seconds old when
    the report leaves, and that is no skew of its clock."""
    host = Host("host-a")
    report = report_of("host-a", 1, [])
    report["sent_at"] = (datetime.now(UTC) + timedelta(seconds=30)).isoformat()
    host.taken(report)
    assert 29 < HostSample.objects.get(host="host-a").clock_skew_seconds < 31
    # A report that does not say when it was sent: the sample's time stands in.
    report = report_of("host-a", 2, [])
    report.pop("sent_at", None)
    host.taken(report)
    taken_at = datetime.fromisoformat(report["sample"]["taken_at"])
    expected = (taken_at - datetime.now(UTC)).total_seconds()
    assert abs(HostSample.objects.get(host="host-a").clock_skew_seconds - expected) < 5
