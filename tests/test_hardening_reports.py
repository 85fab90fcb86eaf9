"""Issue 21, findings 1-4 and 7: no reporting host can freeze or flood the console.

Reports go through the console's real endpoint (Django's test client, the real
database: SQLite here, PostgreSQL in CI's `-m database` pass) or, where the host's
side matters, through a real monitor in report mode. Each test is named after the
finding it holds fixed.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import uuid
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.budgets import Budgets, admit_report
from fleet.console import receive_report
from jobs_app.models import AuditEntry, Job
from monitor_app import published
from monitor_app.events import PendingEvent
from monitor_app.models import Event, EventKind, HostSample, HostToken, RefusedItem
from monitor_app.snapshot import LiveSession, Snapshot
from sessions_app import ingest
from sessions_app.models import Session, Status
from tests.test_fleet import host_a, spool_record  # noqa: F401 - the fixture
from wrapper.formats import (
    Sidecar,
    SpoolRecord,
    new_session_id,
    transcript_path,
    write_json_atomic,
)

pytestmark = pytest.mark.django_db(transaction=True)

NOW = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)


def sidecar_of(host: str, session_id: str | None = None, pid: int = 4000) -> Sidecar:
    return Sidecar(
        session_id=session_id or new_session_id(),
        script_tag="nightly",
        wrapper_pid=pid,
        wrapper_started=NOW.timestamp() - 60,
        started_at=(NOW - timedelta(minutes=1)).isoformat(),
        attempt=1,
        platform="linux",
        host=host,
        cwd="/srv/work",
        claude_config_dir="/home/ops/.claude",
        transcript_path="",
    )


def sample_of(host: str, seq: int, live=(), *, taken_at=NOW, pid=4242, **state) -> dict:
    snapshot = Snapshot(taken_at=taken_at, sessions=list(live), source="monitor", seq=seq)
    document = published.build(snapshot, host, seq, pid)
    state_document = json.loads(document.state_document) | state
    return {
        "seq": seq,
        "taken_at": taken_at.isoformat(),
        "interval_seconds": 2.0,
        "sample_ms": 1.0,
        "monitor_pid": pid,
        "etag": document.etag,
        "api_document": document.api_document,
        "state_document": json.dumps(state_document),
    }


def live(sidecar: Sidecar) -> LiveSession:
    return LiveSession(sidecar=sidecar, state="live", processes=[])


def completion(host: str, **fields) -> dict:
    record = SpoolRecord(
        session_id=new_session_id(),
        script_tag="nightly",
        platform="linux",
        host=host,
        attempt=1,
        started_at=(NOW - timedelta(minutes=5)).isoformat(),
        ended_at=NOW.isoformat(),
        end_reason="succeeded",
        exit_code=0,
        cost_usd=0.5,
    )
    return asdict(record) | fields


def event(host: str, **fields) -> dict:
    return {
        "at": NOW.isoformat(),
        "host": host,
        "kind": "run_started",
        "message": "started",
        "dedupe_key": f"{host}:{uuid.uuid4()}",
    } | fields


def report_of(host: str, seq: int = 1, live_runs=(), **items) -> dict:
    return {"format": 1, "host": host, "sample": sample_of(host, seq, live_runs)} | items


class Host:
    """A host token and the console's real endpoint."""

    def __init__(self, name: str) -> None:
        self.name = name
        _row, self.token = HostToken.issue(name)
        self.client = Client()

    def post(self, payload: object, *, gzip_body: bool = False, raw: bytes | None = None):
        body = raw if raw is not None else json.dumps(payload).encode()
        extra = {"HTTP_AUTHORIZATION": f"Bearer {self.token}"}
        if gzip_body:
            body = gzip.compress(body)
            extra["HTTP_CONTENT_ENCODING"] = "gzip"
        return self.client.generic(
            "POST", "/api/hosts/report", body, content_type="application/json", **extra
        )

    def taken(self, payload: dict) -> dict:
        response = self.post(payload)
        assert response.status_code == 200, response.content[:500]
        return response.json()


def refusals(answer: dict) -> dict[str, dict]:
    return {r["key"]: r for r in answer["ack"]["refused"]}


# ----------------------------------------------------------------------------- finding 1

BAD_VALUES = {
    "cron label over 255 characters": lambda host: {
        "jobs": [
            {
                "scheduler": "cron",
                "jobs": [{"scheduler": "cron", "label": "x" * 300, "host": host}],
            }
        ]
    },
    "event script_tag over 100 characters": lambda host: {
        "events": [event(host, script_tag="t" * 150)]
    },
    "non-UUID event session_id": lambda host: {"events": [event(host, session_id="not-a-uuid")]},
    "seq 2**70": lambda host: {"sample": dict(sample_of(host, 1), seq=2**70)},
    "NUL in an event message": lambda host: {"events": [event(host, message="a\x00b")]},
    "lone surrogate in a completion's error": lambda host: {
        "completions": [completion(host, error="bad \ud800 text")]
    },
}


@pytest.mark.parametrize("bad", sorted(BAD_VALUES))
def test_finding1_one_bad_value_never_freezes_a_reporting_host(bad, console_state):
    host = Host("host-a")
    good = completion("host-a")
    payload = report_of("host-a", 1, completions=[good])
    for name, value in BAD_VALUES[bad]("host-a").items():
        payload[name] = payload.get(name, []) + value if name == "completions" else value
    answer = host.taken(payload)
    assert good["session_id"] in answer["ack"]["sessions"], "the rest of the report is taken"
    assert Session.objects.get(session_id=good["session_id"]).status == Status.SUCCEEDED
    cleaned = bad.startswith("NUL")
    if cleaned:  # text the database cannot hold is cleaned, the item kept
        assert answer["ack"]["refused"] == []
    else:
        assert answer["ack"]["refused"], "the bad item is named in the answer"
        refused = RefusedItem.objects.get(host="host-a")
        assert refused.reason and refused.count == 1
    # The host's next good item is taken.
    following = completion("host-a")
    answer = host.taken(report_of("host-a", 2, completions=[following]))
    assert answer["ack"]["sessions"] == [following["session_id"]]
    assert HostSample.objects.get(host="host-a").seq == 2


def test_finding1_a_refused_item_is_not_sent_again_by_the_host(host_a, console_state):  # noqa: F811
    """The real monitor in report mode: a refused event leaves its outbox, a refused
    completion its spool; the next report carries neither."""
    host_a.tick()
    bad = event("host-a", script_tag="t" * 150)
    host_a.events.pending.append(PendingEvent(**bad))
    record = SpoolRecord(**completion("host-b"))  # another host's record in this spool
    paths = console_state.paths
    paths.spool.mkdir(parents=True, exist_ok=True)
    write_json_atomic(paths.spool_path(record.session_id), asdict(record))
    host_a.tick()
    assert host_a.reporting.last_error is None
    assert bad["dedupe_key"] not in {e.dedupe_key for e in host_a.events.pending}
    assert not paths.spool_path(record.session_id).exists()
    assert (paths.spool / "rejected" / f"{record.session_id}.json").exists()
    payload = host_a.reporting.payload(host_a.tick(), datetime.now(UTC))
    assert bad["dedupe_key"] not in {e["dedupe_key"] for e in payload["events"]}
    assert record.session_id not in {c["session_id"] for c in payload["completions"]}
    kinds = set(RefusedItem.objects.filter(host="host-a").values_list("kind", flat=True))
    assert {"event", "completion"} <= kinds


def test_finding1_refused_items_and_why_are_on_the_hosts_page(console_state, admin_client):
    host = Host("host-a")
    host.taken(report_of("host-a", 1, events=[event("host-a", script_tag="t" * 150)]))
    page = admin_client.get("/hosts/").content.decode()
    assert "script_tag is 150 characters long" in page
    assert admin_client.get("/api/hosts").json()["hosts"][0]["refused_items"] == 1


# ----------------------------------------------------------------------------- finding 2


def test_finding2_a_squatted_session_id_refuses_that_item_never_the_host(console_state):
    a, b = Host("host-a"), Host("host-b")
    squatted = new_session_id()
    b.taken(report_of("host-b", 1, completions=[completion("host-b", session_id=squatted)]))
    mine = completion("host-a")
    answer = a.taken(
        report_of("host-a", 1, [live(sidecar_of("host-a", squatted))], completions=[mine])
    )
    assert refusals(answer)[squatted]["status"] == 409
    assert "on record for host 'host-b'" in refusals(answer)[squatted]["reason"]
    assert mine["session_id"] in answer["ack"]["sessions"]
    assert HostSample.objects.get(host="host-a").seq == 1, "host-a's view is current"
    assert Session.objects.get(session_id=squatted).host == "host-b"
    # Every later report of host-a is taken too.
    answer = a.taken(report_of("host-a", 2, [live(sidecar_of("host-a", squatted))]))
    assert HostSample.objects.get(host="host-a").seq == 2
    assert RefusedItem.objects.get(host="host-a", key=squatted).count == 2


# ----------------------------------------------------------------------------- finding 3

NUL_TRANSCRIPT = [
    {"type": "user", "message": {"role": "user", "content": "read the binary file\u0000"}},
    {
        "type": "assistant",
        "message": {
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": "bytes: \u0000\u0001 and \ud800"}],
            "usage": {"input_tokens": 10, "output_tokens": 5},
        },
    },
    {
        "type": "user",
        "message": {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "\u0000ELF"}],
        },
    },
]


def test_finding3_a_nul_in_a_transcript_never_loses_the_run(console_state):
    fields = completion("host-a", cwd="/srv/work", claude_config_dir=str(console_state.config_dir))
    transcript = transcript_path(console_state.config_dir, "/srv/work", fields["session_id"])
    transcript.parent.mkdir(parents=True)
    transcript.write_text("\n".join(json.dumps(line) for line in NUL_TRANSCRIPT) + "\n")
    session = ingest.record_completion(SpoolRecord(**fields | {"transcript_path": str(transcript)}))
    session.refresh_from_db()
    assert (session.status, session.exit_code) == (Status.SUCCEEDED, 0)
    assert session.search_indexed_bytes == transcript.stat().st_size, "read and indexed"
    # The same run reported by a host, its chunk holding the NUL, is kept as well.
    host = Host("host-a")
    chunk = {
        "session_id": fields["session_id"],
        "offset": 0,
        "data": base64.b64encode(transcript.read_bytes()).decode(),
    }
    Session.objects.filter(session_id=fields["session_id"]).update(host="host-a")
    answer = host.taken(report_of("host-a", 1, transcripts=[chunk]))
    assert answer["ack"]["refused"] == []
    assert answer["ack"]["transcripts"] == {fields["session_id"]: transcript.stat().st_size}


def test_finding3_text_fields_clean_nul_and_surrogates_on_every_backend(db):
    AuditEntry.objects.create(
        actor="ops\x00", action="run", target="t\ud800", ok=True, detail={"k\x00": ["\x00v"]}
    )
    entry = AuditEntry.objects.get()
    assert (entry.actor, entry.target, entry.detail) == ("ops", "t\ufffd", {"k": ["v"]})
    AuditEntry.objects.update(output="a\x00b")
    assert AuditEntry.objects.get().output == "ab"


# ----------------------------------------------------------------------------- finding 4

LIMITS = Budgets(
    reports_per_minute=3,
    sessions_per_report=50,
    transcript_bytes_per_hour=1000,
    transcript_bytes_total=1500,
    jobs_per_host=5,
)


def chunk(session_id: str, offset: int, size: int) -> dict:
    return {
        "session_id": session_id,
        "offset": offset,
        "data": base64.b64encode(b"x" * size).decode(),
    }


def test_finding4_transcript_bytes_per_hour_and_in_all_are_bounded(console_state):
    Host("host-a")
    run = completion("host-a")
    receive_report(report_of("host-a", 1, completions=[run]), "host-a", NOW, LIMITS)
    sid = run["session_id"]

    def send(seq, offset, size, at):
        payload = report_of("host-a", seq, transcripts=[chunk(sid, offset, size)])
        return receive_report(payload, "host-a", at, LIMITS)

    assert send(2, 0, 800, NOW)["ack"]["transcripts"] == {sid: 800}
    over = send(3, 800, 400, NOW + timedelta(minutes=10))
    assert refusals(over)[sid]["status"] == 429 and over["ack"]["transcripts"] == {}
    assert over["ack"]["transcripts_paused_seconds"] == 50 * 60
    assert Event.objects.filter(kind=EventKind.HOST_OVER_BUDGET, host="host-a").count() == 1
    send(4, 800, 400, NOW + timedelta(minutes=20))
    assert Event.objects.filter(kind=EventKind.HOST_OVER_BUDGET).count() == 1, "once an hour"
    assert not RefusedItem.objects.exists(), "over budget is not refused for good"
    # The hour turns: taken again, up to the total.
    assert send(5, 800, 400, NOW + timedelta(minutes=61))["ack"]["transcripts"] == {sid: 1200}
    final = send(6, 1200, 400, NOW + timedelta(hours=3))
    assert refusals(final)[sid]["status"] == 429, "1500 bytes in all"


def test_finding4_a_gzip_bomb_is_refused_while_inflating(console_state, settings):
    settings.OPSCONSOLE_HOST_REPORT_MAX_INFLATED_BYTES = 1024 * 1024
    host = Host("host-a")
    bomb = gzip.compress(b" " * (64 * 1024 * 1024), compresslevel=9)
    assert len(bomb) < 100 * 1024
    response = host.client.generic(
        "POST",
        "/api/hosts/report",
        bomb,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {host.token}",
        HTTP_CONTENT_ENCODING="gzip",
    )
    assert response.status_code == 413
    assert "too large once inflated" in response.json()["error"]


def test_finding4_a_report_of_too_many_sessions_refuses_its_sample(console_state):
    Host("host-a")
    many = [live(sidecar_of("host-a", pid=5000 + n)) for n in range(LIMITS.sessions_per_report + 1)]
    good = completion("host-a")
    answer = receive_report(report_of("host-a", 1, many, completions=[good]), "host-a", NOW, LIMITS)
    assert refusals(answer)["1"]["status"] == 413
    assert good["session_id"] in answer["ack"]["sessions"]
    assert not Session.objects.filter(status=Status.LIVE).exists()


def test_finding4_marking_runs_lost_is_one_statement(console_state):
    Host("host-a")
    runs = [live(sidecar_of("host-a", pid=5000 + n)) for n in range(40)]
    receive_report(report_of("host-a", 1, runs), "host-a", NOW, LIMITS)
    assert Session.objects.filter(host="host-a", status=Status.LIVE).count() == 40
    later = NOW + timedelta(minutes=5)
    with CaptureQueriesContext(connection) as queries:
        receive_report(report_of("host-a", 2), "host-a", later, LIMITS)
    updates = [q["sql"] for q in queries if q["sql"].startswith('UPDATE "sessions_app_session"')]
    assert len(updates) == 1, updates
    assert Session.objects.filter(host="host-a", end_reason="lost").count() == 40


def test_finding4_reports_per_minute_answer_429_with_retry_after(console_state, settings):
    assert [admit_report("host-a", NOW, LIMITS) for _ in range(4)] == [None, None, None, 60]
    assert admit_report("host-a", NOW + timedelta(seconds=45), LIMITS) == 15
    assert admit_report("host-a", NOW + timedelta(seconds=60), LIMITS) is None
    settings.OPSCONSOLE_HOST_REPORTS_PER_MINUTE = 2
    host = Host("host-b")
    statuses = [host.post(report_of("host-b", seq)).status_code for seq in (1, 2, 3)]
    assert statuses == [200, 200, 429]
    assert int(host.post(report_of("host-b", 4))["Retry-After"]) >= 1


# ----------------------------------------------------------------------------- finding 7


def test_finding7_events_and_audits_may_only_name_the_host_s_own_runs(console_state):
    a, b = Host("host-a"), Host("host-b")
    victim = completion("host-b")
    b.taken(report_of("host-b", 1, completions=[victim]))
    forged = event(
        "host-a", kind=EventKind.LEFTOVERS_GONE, session_id=victim["session_id"], message="pwn"
    )
    audit_of_user = {
        "actor": "alice",
        "action": "stop",
        "target": new_session_id(),
        "ok": True,
    }
    audit_of_b_run = dict(audit_of_user, actor="watchdog", target=victim["session_id"])
    answer = a.taken(
        report_of("host-a", 1, events=[forged], audits=[audit_of_user, audit_of_b_run])
    )
    reasons = [r["reason"] for r in answer["ack"]["refused"]]
    assert len(reasons) == 3, reasons
    # Named by what the host acknowledges events by, so it drops it from its outbox.
    assert refusals(answer)[forged["dedupe_key"]]["kind"] == "event"
    assert not Event.objects.filter(message="pwn").exists()
    assert not AuditEntry.objects.exists()
    # The host's own watchdog on its own run is recorded, said to be that host's.
    own = completion("host-a")
    good = dict(audit_of_user, actor="watchdog", target=own["session_id"])
    answer = a.taken(report_of("host-a", 2, completions=[own], audits=[good]))
    assert answer["ack"]["refused"] == []
    entry = AuditEntry.objects.get()
    assert (entry.actor, entry.detail["host"]) == ("watchdog", "host-a")


def test_finding7_a_replayed_older_sample_never_moves_a_host_back(console_state):
    host = Host("host-a")
    run = sidecar_of("host-a")
    old = report_of("host-a", 5, [live(run)])
    host.taken(old)
    later = NOW + timedelta(seconds=2)
    host.taken({"format": 1, "host": "host-a", "sample": sample_of("host-a", 6, taken_at=later)})
    # The same old report again, and as if from another monitor process.
    host.taken(old)
    replay = dict(old, sample=dict(old["sample"], monitor_pid=9999))
    host.taken(replay)
    assert HostSample.objects.get(host="host-a").seq == 6
    # A restarted monitor (another pid, a later sample) counts from 1 again.
    restarted = sample_of("host-a", 1, taken_at=NOW + timedelta(seconds=4), pid=7777)
    host.taken({"format": 1, "host": "host-a", "sample": restarted})
    assert HostSample.objects.get(host="host-a").seq == 1


def test_finding7_nothing_live_is_taken_from_a_replayed_sample(console_state):
    host = Host("host-a")
    run = sidecar_of("host-a")
    first = report_of("host-a", 1, [live(run)])
    host.taken(first)
    ended = completion("host-a", session_id=run.session_id, started_at=run.started_at)
    host.taken(report_of("host-a", 2, completions=[ended]))
    host.taken(first)
    assert Session.objects.get(session_id=run.session_id).status == Status.SUCCEEDED


# ----------------------------------------------------------------------------- fuzz

JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from(["\x00", "\ud800", "x" * 300, "host-a", "host-b", "live", "run_started"]),
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)
ITEM_NAMES = [
    "sample",
    "completions",
    "vanished",
    "endings",
    "leftovers",
    "events",
    "action_results",
    "transcripts",
    "jobs",
    "stops",
    "audits",
    "origins",
]


@st.composite
def mutated_reports(draw):
    """A valid report of host-a with some items replaced, or fields of them."""
    report = report_of(
        "host-a",
        draw(st.integers(min_value=1, max_value=10**6)),
        completions=[completion("host-a")],
        events=[event("host-a")],
    )
    for name in draw(st.lists(st.sampled_from(ITEM_NAMES), max_size=3)):
        if draw(st.booleans()):
            report[name] = draw(JSON_VALUES)
        else:
            template = {
                "completions": completion("host-a"),
                "events": event("host-a"),
                "origins": origin(new_session_id()),
            }.get(name, {})
            item = dict(template)
            for key in draw(st.lists(st.sampled_from(sorted(template) or ["x"]), max_size=3)):
                item[key] = draw(JSON_VALUES)
            report[name] = [item]
    return report


FUZZ_EXAMPLES = int(os.environ.get("OPSCONSOLE_FUZZ_EXAMPLES", "2000")) // 20


@settings(
    max_examples=max(20, FUZZ_EXAMPLES),
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(report=mutated_reports())
def test_fuzz_any_report_leaves_the_host_able_to_report_its_next_good_item(report, console_state):
    with override_settings(OPSCONSOLE_HOST_REPORTS_PER_MINUTE=10**6):
        fuzz_once(report)


def fuzz_once(report: dict) -> None:
    if not HostToken.objects.filter(host="host-a").exists():
        Fuzz.host = Host("host-a")
    host = Fuzz.host
    response = host.post(report)
    assert response.status_code in (200, 400, 403, 413, 429), response.content[:300]
    good = completion("host-a")
    Fuzz.seq += 1
    answer = host.taken(report_of("host-a", 10**6 + Fuzz.seq, completions=[good]))
    assert answer["ack"]["sessions"] == [good["session_id"]]


class Fuzz:
    host: Host
    seq = 0


def test_jobs_a_host_reports_keep_the_good_ones_when_one_is_refused(console_state):
    host = Host("host-a")
    jobs = [
        {"scheduler": "cron", "label": "nightly", "host": "host-a"},
        {"scheduler": "cron", "label": "x" * 300, "host": "host-a"},
    ]
    answer = host.taken(report_of("host-a", 1, jobs=[{"scheduler": "cron", "jobs": jobs}]))
    assert [r["kind"] for r in answer["ack"]["refused"]] == ["job"]
    assert list(Job.objects.values_list("label", flat=True)) == ["nightly"]


def test_finding1_an_item_the_database_refuses_is_refused_alone(console_state):
    """What passes the checks but fails where it is written (here an action result whose
    id is not a number) sends the report through again item by item: only that item is
    refused, the rest of the report is recorded once."""
    host = Host("host-a")
    good = completion("host-a")
    event_before = event("host-a")
    answer = host.taken(
        report_of(
            "host-a",
            1,
            completions=[good],
            events=[event_before],
            action_results=[{"id": "not-a-number", "ok": True}],
        )
    )
    assert [r["kind"] for r in answer["ack"]["refused"]] == ["result"]
    assert "not recorded" in answer["ack"]["refused"][0]["reason"]
    assert answer["ack"]["sessions"] == [good["session_id"]]
    assert Session.objects.filter(session_id=good["session_id"]).count() == 1
    assert Event.objects.filter(dedupe_key=event_before["dedupe_key"]).count() == 1
    assert (
        Event.objects.filter(kind=EventKind.RUN_ENDED, session_id=good["session_id"]).count() == 1
    )
    assert HostSample.objects.get(host="host-a").seq == 1


def test_finding1_a_sample_s_bad_figures_refuse_that_run_and_never_break_a_page(
    console_state, admin_client
):
    """A live run whose process figures are not numbers, and leftovers naming no session:
    refused alone; the sample is taken and every page showing the host still answers."""
    host = Host("host-a")
    bad_run = live(sidecar_of("host-a", pid=4100))
    good_run = live(sidecar_of("host-a", pid=4200))
    payload = report_of("host-a", 1, [bad_run, good_run])
    state = json.loads(payload["sample"]["state_document"])
    process = {"pid": 4100, "ppid": 1, "depth": 0, "name": "a", "cmdline": "a"}
    state["sessions"][0]["processes"] = [process | {"cpu_percent": 0, "rss": "x", "started": 0}]
    state["leftovers"] = [
        {
            "session_id": "x",
            "script_tag": "t",
            "host": "host-a",
            "ended_at": NOW.isoformat(),
            "processes": [],
        }
    ]
    payload["sample"]["state_document"] = json.dumps(state)
    answer = host.taken(payload)
    kinds = {r["key"]: r["kind"] for r in answer["ack"]["refused"]}
    assert kinds == {bad_run.session_id: "live", "x": "leftovers"}
    assert HostSample.objects.get(host="host-a").seq == 1
    assert Session.objects.filter(session_id=good_run.session_id).exists()
    for path in ("/live/?host=all", "/live/?host=host-a", "/hosts/", "/"):
        assert admin_client.get(path).status_code == 200, path


def test_finding7_a_host_whose_clock_was_put_right_is_heard_again(console_state):
    """A sample dated three days ahead, then the monitor restarted with the clock put
    right: its samples are older than the one on record, and are taken once the one on
    record has gone silent by the console's clock (three intervals)."""
    Host("host-a")
    ahead = {
        "format": 1,
        "host": "host-a",
        "sample": sample_of("host-a", 9, taken_at=NOW + timedelta(days=3), pid=100),
    }
    receive_report(ahead, "host-a", NOW, LIMITS)
    right = {"format": 1, "host": "host-a", "sample": sample_of("host-a", 1, taken_at=NOW, pid=200)}
    receive_report(right, "host-a", NOW + timedelta(seconds=2), LIMITS)
    assert HostSample.objects.get(host="host-a").seq == 9, "not silent yet: a replay, maybe"
    receive_report(right, "host-a", NOW + timedelta(seconds=7), LIMITS)
    assert HostSample.objects.get(host="host-a").monitor_pid == 200


def test_finding1_a_report_nested_past_any_report_is_a_400(console_state):
    host = Host("host-a")
    response = host.post(None, raw=b"[" * 100_000)
    assert response.status_code == 400
    assert host.taken(report_of("host-a", 1))["ok"]


def test_finding1_a_job_of_the_wrong_types_is_refused_alone(console_state):
    host = Host("host-a")
    jobs = [
        {"scheduler": "cron", "label": "nightly", "host": "host-a"},
        {"scheduler": "cron", "label": "weekly", "host": "host-a", "interval_seconds": "abc"},
    ]
    answer = host.taken(report_of("host-a", 1, jobs=[{"scheduler": "cron", "jobs": jobs}]))
    assert [(r["kind"], r["key"]) for r in answer["ack"]["refused"]] == [("job", "weekly")]
    assert list(Job.objects.values_list("label", flat=True)) == ["nightly"]


def cron_jobs(host: str, *labels: str) -> list[dict]:
    return [
        {
            "scheduler": "cron",
            "jobs": [{"scheduler": "cron", "label": label, "host": host} for label in labels],
        }
    ]


def test_finding4_a_host_naming_new_jobs_in_every_report_cannot_fill_the_database(
    console_state,
):
    """Jobs are never deleted by a report (a gone one stays, present no more): past
    OPSCONSOLE_HOST_JOBS on record, a label named for the first time is refused, and
    the jobs on record are still kept up, none called gone for want of room."""
    Host("host-a")
    first = receive_report(
        report_of("host-a", 1, jobs=cron_jobs("host-a", "a", "b", "c")), "host-a", NOW, LIMITS
    )
    assert first["ack"]["refused"] == []
    # A new set: a, b, c are gone (kept), two fit, the rest are refused one by one.
    later = cron_jobs("host-a", "d", "e", "f", "g")
    answer = receive_report(report_of("host-a", 2, jobs=later), "host-a", NOW, LIMITS)
    assert sorted(refusals(answer)) == ["f", "g"]
    assert {r["status"] for r in answer["ack"]["refused"]} == {413}
    assert "OPSCONSOLE_HOST_JOBS" in refusals(answer)["f"]["reason"]
    jobs = dict(Job.objects.filter(host="host-a").values_list("label", "present"))
    assert jobs == {"a": False, "b": False, "c": False, "d": True, "e": True}
    # Full: a job on record comes back, and one named once more is still refused.
    again = cron_jobs("host-a", "a", "d", "h")
    answer = receive_report(report_of("host-a", 3, jobs=again), "host-a", NOW, LIMITS)
    assert sorted(refusals(answer)) == ["h"]
    jobs = dict(Job.objects.filter(host="host-a").values_list("label", "present"))
    assert jobs == {"a": True, "b": False, "c": False, "d": True, "e": False}
    # Another host's budget is its own.
    Host("host-b")
    other = receive_report(
        report_of("host-b", 1, jobs=cron_jobs("host-b", "a", "b")), "host-b", NOW, LIMITS
    )
    assert other["ack"]["refused"] == []


def test_finding4_one_report_names_at_most_the_jobs_a_host_may_have(console_state):
    """A report of a million jobs is cut at the budget before any is written, and the
    collection cut short calls none of the jobs on record gone."""
    Host("host-a")
    receive_report(report_of("host-a", 1, jobs=cron_jobs("host-a", "kept")), "host-a", NOW, LIMITS)
    many = cron_jobs("host-a", *(f"job-{n}" for n in range(10_000)))
    answer = receive_report(report_of("host-a", 2, jobs=many), "host-a", NOW, LIMITS)
    [cut] = [r for r in answer["ack"]["refused"] if r["key"] == "jobs"]
    assert (cut["status"], cut["reason"]) == (413, "10000 jobs in one report (at most 5)")
    assert Job.objects.filter(host="host-a").count() == 5
    assert Job.objects.get(host="host-a", label="kept").present


# ------------------------------------------------------------- origins (the remote join)


def origin(session_id: str, **fields) -> dict:
    return {
        "session_id": session_id,
        "scheduler": "ci",
        "label": "acme/site/nightly/agent",
        "scope": "github",
        "command": "",
        "argv": [],
        "run_id": "4242",
        "run_command": "claude -p report",
    } | fields


BAD_ORIGINS = {
    "unknown scheduler": {"scheduler": "at"},
    "a systemd label that is no unit": {"scheduler": "systemd", "label": "../x", "scope": "user"},
    "a systemd scope of neither kind": {"scheduler": "systemd", "label": "a.service"},
    "an unknown CI provider": {"scope": "travis"},
    "argv not a list": {"scheduler": "cron", "label": "", "argv": "claude -p x"},
    "argv past a command line's length": {"scheduler": "cron", "label": "", "argv": ["x" * 30_000]},
    "a cron origin with a label": {"scheduler": "cron", "label": "x", "command": "claude"},
    "a label over 255 characters": {"label": "x" * 300},
    "a control character in a label": {"label": "a\x07b"},
    "run_id not text": {"run_id": 4242},
    "run_command over 20,000 characters": {"run_command": "x" * 20_001},
}


def test_origins_are_checked_item_by_item_and_a_host_s_word_on_a_job_is_never_taken(
    console_state,
):
    """The origins a reporting host sends (fleet.item_checks.origin_item): each bad one
    refused alone with its reason; a good one ties the run to a job of that host only,
    and the job a host's sample claims for a run (another host's) is never taken."""
    victim = Job.objects.create(host="host-b", scheduler="ci", label="acme/site/nightly/agent")
    run = LiveSession(
        sidecar=sidecar_of("host-a"), state=Status.UNWRAPPED, processes=[], wrapped=False
    )
    run.job_id = victim.pk  # what a forged sample says
    bad = {new_session_id(): fields for fields in BAD_ORIGINS.values()}
    items = [origin(run.session_id)] + [origin(sid, **fields) for sid, fields in bad.items()]
    items.append(origin("not-a-session"))
    answer = Host("host-a").taken(report_of("host-a", 1, [run], origins=items))
    refused = refusals(answer)
    assert set(refused) == set(bad) | {"not-a-session"}, refused
    assert {r["kind"] for r in refused.values()} == {"origin"}
    assert answer["ack"]["origins"] == [run.session_id]
    row = Session.objects.get(session_id=run.session_id)
    job = Job.objects.get(host="host-a")
    assert (row.job_id, job.scheduler, job.label, job.wrapped) == (
        job.pk,
        "ci",
        "acme/site/nightly/agent",
        False,
    )
    published_run = json.loads(HostSample.objects.get(host="host-a").state_document)["sessions"]
    assert [s["job_id"] for s in published_run] == [job.pk]
    assert not Session.objects.filter(job=victim).exists()
    # The same origin again (a restarted host): nothing new is made, the link is kept.
    answer = Host("host-a").taken(report_of("host-a", 2, [run], origins=items[:1]))
    assert answer["ack"]["origins"] == [run.session_id]
    assert Job.objects.filter(host="host-a").count() == 1
