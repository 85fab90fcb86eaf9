"""Why a run failed, recorded everywhere (issue 22): the completion record carries the end
of claude's stderr and stdout, its result event's text and error fields and the last
API error, bounded and redacted (wrapper/formats.py); the console keeps them and shows
them on the session page, in History, the API and the alert. And what a run cost: one
rule (Session.shown_cost_usd) for every page, chart and total."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.utils import timezone

from alerts_app import engine
from alerts_app.models import Channel
from jobs_app.models import Job
from sessions_app.costs import cost_report, total_words
from sessions_app.ingest import ingest_spool, record_completion
from sessions_app.models import Session, Status
from tests.alert_receivers import webhook  # noqa: F401 - a fixture
from tests.conftest import wrapper_command
from tests.test_alerts_real_cli import monitor_sample
from wrapper.formats import (
    EXIT_QUOTA_SKIP,
    MAX_RECORD_BYTES,
    TAIL_CHARS,
    TAIL_LINES,
    FormatError,
    QuotaStamp,
    SpoolRecord,
    fit_list,
    fit_reason,
    fit_tail,
    host_name,
    read_spool_record,
    redact,
    write_json_atomic,
)

SESSION = "0b6f3c1e-8a55-4d2b-9c3e-1f2a3b4c5d6e"
KEY = "sk-ant-api03-Zx9_secretKEYmaterial-0123456789abcdef"


def format_1_record(**changes) -> dict:
    """A completion record as wrappers before format 2 wrote it: no reason fields."""
    record = {
        "session_id": SESSION,
        "script_tag": "nightly",
        "platform": "cron",
        "host": "box",
        "attempt": 1,
        "started_at": "2026-01-01T00:00:00.000Z",
        "ended_at": "2026-01-01T00:01:00.000Z",
        "end_reason": "failed",
        "exit_code": 1,
        "error": None,
        "version": 1,
    }
    record.update(changes)
    return record


# --------------------------------------------------------------------------- redaction, bounds


@pytest.mark.parametrize(
    ("secret", "kept"),
    [
        (f"ANTHROPIC_API_KEY={KEY}", "ANTHROPIC_API_KEY="),
        (f"invalid key {KEY} given", "invalid key "),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig", "Authorization: "),
        ("curl -H 'Bearer abcdefgh12345678'", "Bearer [redacted]"),
        ("token oc_host_Qm9vZ3xkZXJzYW5kYmVycmllcw rejected", "oc_host_[redacted]"),
        ("user token oc_AbCdEfGh12345678xyz", "oc_[redacted]"),
        ("connect postgres://ops:hunter2pass@db.internal:5432/x", "postgres://ops:[redacted]@db"),
        ("password=hunter2pass", "password=[redacted]"),
    ],
)
def test_redact_hides_api_keys_bearer_tokens_host_tokens_and_url_passwords(secret, kept):
    text = redact(secret)
    assert kept in text
    for leaked in (KEY, "eyJhbGci", "abcdefgh12345678", "Qm9vZ3", "AbCdEfGh", "hunter2"):
        assert leaked not in text, text


@pytest.mark.parametrize(
    ("secret", "redacted"),
    [
        # Quoted keys, as json.dumps writes a denied tool's input.
        ('{"password": "hunter2hunter2"}', '{"password": "[redacted]"}'),
        ('{"api_key": "abcdefghijklmnop"}', '{"api_key": "[redacted]"}'),
        # Quoted values, and a value quoted inside a JSON string.
        ('DB_PASSWORD="hunter2"', 'DB_PASSWORD="[redacted]"'),
        ('ANTHROPIC_API_KEY="sk-abc"', 'ANTHROPIC_API_KEY="[redacted]"'),
        ("password='hunter2 with spaces'", "password='[redacted]'"),
        (
            json.dumps({"command": 'PGPASSWORD="hunter2 x" psql -h db'}),
            '{"command": "PGPASSWORD=\\"[redacted]\\" psql -h db"}',
        ),
        ('password="hunter2 cut off', "password=[redacted] cut off"),
        # Authorization with any scheme: the whole value goes.
        ("Authorization: token ghp_Ab12Cd34Ef56Gh78Ij90", "Authorization: [redacted]"),
        (
            'Authorization: Digest username="ops", response="6629fae49393a0539745"',
            "Authorization: [redacted]",
        ),
        (
            '{"Authorization": "token hunter2abc", "url": "x"}',
            '{"Authorization": "[redacted]", "url": "x"}',
        ),
        # Key names outside the old list.
        ("token=ghp_Ab12Cd34Ef56Gh78Ij90", "token=[redacted]"),
        (
            "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCY",
            "AWS_SECRET_ACCESS_KEY=[redacted]",
        ),
        ("PGPASSWORD=s3cret psql -h db", "PGPASSWORD=[redacted] psql -h db"),
        ("client_secret: hunter2abc", "client_secret: [redacted]"),
        ("Cookie: sessionid=hunter2abc; csrftoken=zz", "Cookie: [redacted]"),
        ("Set-Cookie: sessionid=hunter2abc; Path=/", "Set-Cookie: [redacted]"),
        # Tokens known by their shape, wherever they stand.
        ("cloning with ghp_Ab12Cd34Ef56Gh78Ij90 failed", "cloning with ghp_[redacted] failed"),
        ("gho_Ab12Cd34Ef56Gh78Ij90 and ghs_Ab12Cd34Ef56", "gho_[redacted] and ghs_[redacted]"),
        ("use github_pat_11AB12Cd34_Ef56Gh78", "use github_pat_[redacted]"),
        ("slack xoxb-1234567890-Ab12Cd34Ef", "slack xoxb-[redacted]"),
        ("key AKIAIOSFODNN7EXAMPLE rejected", "key AKIA[redacted] rejected"),
    ],
)
def test_redact_hides_quoted_keys_quoted_values_any_authorization_and_known_token_shapes(
    secret, redacted
):
    assert redact(secret) == redacted
    assert redact(redacted) == redacted  # fit_reason runs on every read: idempotent


def test_a_permission_denial_keeps_the_tool_and_loses_the_password():
    """Denials are built with json.dumps(tool_input): always the quoted-key form."""
    denial = {"tool_name": "Bash", "tool_input": {"command": "psql", "password": "hunter2x"}}
    (text,) = fit_list("permission_denials", [denial])
    assert text == 'Bash: {"command": "psql", "password": "[redacted]"}'


@pytest.mark.parametrize(
    "message",
    [
        "Invalid API key · Please run /login (input_tokens: 5) at http://127.0.0.1:8080/v1",
        "Invalid API key · Fix external API key",
        "Not logged in · Please run /login",
        '{"input_tokens": 5, "output_tokens": 120, "max_tokens": 4096}',
        "connect to db.internal:5432 refused; retry at https://api.example.com:8443/v1",
    ],
)
def test_redact_keeps_what_a_person_needs_to_read(message):
    assert redact(message) == message


def test_a_tail_keeps_its_last_lines_and_characters_and_no_colour_codes():
    raw = b"\x1b[31merror\x1b[0m: early\r\n" + b"\n".join(b"line %d" % i for i in range(100))
    tail = fit_tail("stderr_tail", raw)
    assert tail.splitlines() == [f"line {i}" for i in range(100 - TAIL_LINES, 100)]
    long_line = fit_tail("stderr_tail", b"x" * 50_000 + b"END")
    assert len(long_line) == TAIL_CHARS and long_line.endswith("END")
    assert fit_tail("stderr_tail", b"\n \n") is None


def test_a_key_in_a_long_tail_is_redacted_before_the_tail_is_clipped():
    """Clipping first could cut `sk-ant-` off a key and let the rest through."""
    raw = ("x" * (TAIL_CHARS - 20) + KEY + "\nfailed\n").encode()
    tail = fit_tail("stderr_tail", raw)
    assert "Zx9_secret" not in tail and "0123456789abcdef" not in tail
    assert tail.endswith("failed")


def test_reason_fields_are_bounded_and_redacted_when_a_record_is_read():
    """A record from another host (or an older wrapper) is held to the same limits."""
    stderr = "\n".join(f"stderr {i} {KEY}" for i in range(200))
    record = SpoolRecord.from_dict(
        format_1_record(
            version=2,
            stderr_tail=stderr,
            stdout_tail="y" * 20_000,
            result_text=f"API Error: 401 {KEY}",
            errors=[f"error {i}" for i in range(50)],
            permission_denials=["Bash: " + "z" * 5000],
            last_api_error=f"authentication_failed with {KEY}",
            error=f"quota: {KEY}",
        )
    )
    assert len(record.stderr_tail.splitlines()) == TAIL_LINES
    assert record.stderr_tail.splitlines()[-1] == "stderr 199 sk-ant-[redacted]"
    assert len(record.stdout_tail) == TAIL_CHARS
    assert len(record.errors) == 10 and len(record.permission_denials[0]) == 500
    for text in (record.stderr_tail, record.result_text, record.last_api_error, record.error):
        assert "secretKEY" not in text


@pytest.mark.parametrize(
    ("field", "value"),
    [("stderr_tail", 5), ("errors", "not a list"), ("claude_started", "yes"), ("claude_pid", 1)],
)
def test_a_reason_field_of_the_wrong_type_is_a_format_error(field, value):
    with pytest.raises(FormatError):
        SpoolRecord.from_dict(format_1_record(**{field: value}))


def test_an_old_record_without_the_reason_fields_still_reads(tmp_path):
    path = tmp_path / f"{SESSION}.json"
    write_json_atomic(path, format_1_record())
    record = read_spool_record(path)
    assert record.version == 1
    assert (record.stderr_tail, record.result_text, record.claude_started) == (None, None, None)


def test_a_record_with_every_reason_field_full_still_fits_the_record_size(tmp_path):
    """JSON escapes non-ASCII and quotes: full tails of them must not make a file the
    console refuses as too large."""
    wide = "\n".join('€"\\' * 90 for _ in range(39))
    record = SpoolRecord(
        **{
            k: v
            for k, v in format_1_record(version=2).items()
            if k not in ("version", "error", "exit_code")
        },
        exit_code=1,
        error="€" * 4000,
        stderr_tail=wide,
        stdout_tail=wide,
        result_text="€" * 4000,
        last_api_error="€" * 500,
        errors=["€" * 500] * 10,
        permission_denials=["€" * 500] * 10,
    )
    fit_reason(record)
    path = tmp_path / f"{SESSION}.json"
    write_json_atomic(path, record.to_dict())
    assert path.stat().st_size <= MAX_RECORD_BYTES
    kept = read_spool_record(path)
    assert kept.stderr_tail and kept.result_text  # stdout and the lists gave way first


def test_the_wrapper_records_what_claude_printed_before_it_wrote_a_transcript(state, tmp_path):
    """The issue's run: claude printed its error on stderr and exited 1; the record said
    only `failed (exit 1)`. Now it keeps the tail (redacted) and says no transcript was
    written."""
    claude = tmp_path / "bin" / "claude"
    claude.parent.mkdir()
    claude.write_text(
        "#!/bin/sh\n"
        "echo 'starting up'\n"
        f"echo 'using ANTHROPIC_API_KEY={KEY}' >&2\n"
        "echo 'Invalid API key · Please run /login' >&2\n"
        "exit 1\n"
    )
    claude.chmod(0o755)
    state.env["OPSCONSOLE_CLAUDE_BIN"] = str(claude)
    done = subprocess.run(
        wrapper_command("nightly", "-p", "hello"), env=state.env, cwd=state.workdir, timeout=60
    )
    assert done.returncode == 1
    [spool_file] = state.paths.spool.glob("*.json")
    record = read_spool_record(spool_file)
    assert record.stderr_tail.endswith("Invalid API key · Please run /login")
    assert "secretKEY" not in spool_file.read_text()
    assert record.stdout_tail == "starting up"
    assert record.claude_started is True and record.claude_pid
    assert record.transcript_written is False


# --------------------------------------------------------------------------- on the console


@pytest.fixture
def logged_in(client, console_state, settings):
    settings.OPSCONSOLE_SCHEDULERS = ["none"]
    client.force_login(get_user_model().objects.create_user("ops"))
    return client


@pytest.mark.django_db
def test_an_old_record_is_ingested_with_no_details_and_says_nothing_it_does_not_know(
    logged_in,
):
    session = record_completion(SpoolRecord.from_dict(format_1_record()))
    assert session.end_details == {}
    page = logged_in.get(f"/sessions/{session.session_id}/").content.decode()
    assert 'id="run-ending"' in page and "recorded nothing claude said" in page
    assert "No transcript found for this session." in page
    assert logged_in.get(f"/api/sessions/{session.session_id}").json()["reason"]["line"] is None


@pytest.mark.django_db
def test_claude_s_words_are_escaped_on_the_page_and_in_history(logged_in):
    markup = "<script>alert(1)</script>"
    session = record_completion(
        SpoolRecord.from_dict(
            format_1_record(
                version=2,
                stderr_tail=f"Error: {markup}",
                claude_started=True,
                transcript_written=False,
                claude_pid=4321,
            )
        )
    )
    for url in (f"/sessions/{session.session_id}/", "/history/"):
        page = logged_in.get(url).content.decode()
        assert markup not in page and "Error: &lt;script&gt;alert(1)&lt;/script&gt;" in page
    page = logged_in.get(f"/sessions/{session.session_id}/").content.decode()
    assert "exited before it wrote a transcript (pid 4321)" in page


@pytest.mark.django_db
def test_a_run_that_never_started_claude_says_so_where_its_transcript_would_be(logged_in):
    session = record_completion(
        SpoolRecord.from_dict(
            format_1_record(
                version=2,
                error="claude not found: $OPSCONSOLE_CLAUDE_BIN is not set",
                exit_code=127,
                claude_started=False,
                transcript_written=False,
            )
        )
    )
    page = logged_in.get(f"/sessions/{session.session_id}/").content.decode()
    assert "claude was never started, so it wrote no transcript: claude not found" in page


# --------------------------------------------------------------------------- costs


def test_a_total_with_unknown_costs_is_never_shown_as_zero():
    assert total_words(Decimal("0"), unknown_runs=2, runs=2) == "unknown"
    assert total_words(Decimal("0"), unknown_runs=1, runs=3) == "≥ $0.00 + 1 unknown"
    assert total_words(Decimal("1.5"), unknown_runs=0, runs=3) == "$1.50"
    assert total_words(None, unknown_runs=0, runs=0) == "$0.00"


def _run(status=Status.FAILED, cost=None, computed=None, job=None, minutes_ago=10, **extra):
    started = timezone.now() - timedelta(minutes=minutes_ago)
    return Session.objects.create(
        session_id=uuid.uuid4(),
        script_tag="nightly",
        status=status,
        started_at=started,
        ended_at=started,
        cost_usd=cost,
        cost_computed_usd=computed,
        host=host_name(),
        job=job,
        **extra,
    )


@pytest.mark.django_db
def test_a_quota_skip_costs_nothing_and_a_total_with_unknowns_says_so(state, logged_in):
    """Exit 79: claude never ran, so it cost $0, not "unknown"; a total over it and a run
    of unknown cost is "≥ $0.00 + 1 unknown", never "$0.00"."""
    write_json_atomic(
        state.paths.quota_stamp,
        QuotaStamp(
            until="2999-01-01T00:00:00Z", set_at="2026-01-01T00:00:00Z", reason="429"
        ).to_dict(),
    )
    skipped = subprocess.run(
        wrapper_command("nightly", "-p", "hi"), env=state.env, cwd=state.workdir, timeout=60
    )
    assert skipped.returncode == EXIT_QUOTA_SKIP
    ingest_spool(state.paths)
    skip = Session.objects.get(status=Status.QUOTA_SKIP)
    assert skip.shown_cost_usd == Decimal("0") and skip.shown_cost_source == "not run"
    report = cost_report(1)
    assert (report.total.unknown_cost_runs, report.total.cost_usd) == (0, Decimal("0"))
    assert "$0.00" in logged_in.get("/costs/?days=7").content.decode()

    _run(minutes_ago=5)  # killed before a result: unknown
    page = logged_in.get("/costs/?days=7").content.decode()
    assert "≥ $0.00 + 1 unknown" in page
    assert "≥ $0.00 + 1 unknown" in logged_in.get("/hosts/").content.decode()
    history = logged_in.get("/history/").content.decode()
    costs = re.findall(r'data-label="Cost"[^>]*>([^<]*)<', history)
    assert sorted(costs) == ["$0.00", "unknown"]


@pytest.mark.django_db
def test_a_job_s_last_cost_and_chart_use_the_computed_cost_history_shows(logged_in):
    job = Job.objects.create(
        scheduler="cron", label="nightly report", host=host_name(), tags=["nightly"]
    )
    _run(job=job, status=Status.KILLED, computed=Decimal("0.4200"), minutes_ago=3)
    dashboard = logged_in.get("/jobs/").content.decode()
    assert "$0.4200" in dashboard
    page = logged_in.get(f"/jobs/{job.pk}/").content.decode()
    chart = page[page.index("chart--cost") :]
    assert 'class="bar bar--killed"' in chart and 'class="unknown"' not in chart
    assert "$0.4200" in page
    api = logged_in.get("/api/status").json()
    [entry] = [j for j in api["jobs"] if j["label"] == "nightly report"]
    assert entry["last_session"]["cost_usd"] == 0.42


# --------------------------------------------------------------------------- the real CLI


@pytest.fixture
def hook(webhook, console_state, settings):  # noqa: F811
    settings.OPSCONSOLE_BASE_URL = "http://127.0.0.1:8000"
    settings.OPSCONSOLE_ALERT_DELIVER_IN_BACKGROUND = False
    engine._env_synced_at = None
    receiver = webhook()
    Channel(name="on-call", url=f"json://127.0.0.1:{receiver.port}/hook").save()
    return receiver


@pytest.mark.real_cli
@pytest.mark.django_db
def test_bad_api_key_reason_on_page_api_and_alert(state, real_claude, hook, client):
    """The API answers 401 (authentication_error): the real CLI says so in its own words
    and exits 1. Those words are on the session page, in the API and in the alert."""
    real_claude.script("nightly digest", {"kind": "401"})
    done = subprocess.run(
        wrapper_command("digest", "-p", "nightly digest"),  # text output: no result event
        env=state.env,
        cwd=state.workdir,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    # What the CLI printed itself, read from its output (2.1.197: "Invalid API key · Fix
    # external API key" on stdout; others print "... · Please run /login" on stderr).
    said = (done.stdout + done.stderr).decode().strip().splitlines()[-1]
    assert "Invalid API key" in said
    assert "sk-ant-offline-test" not in said

    monitor_sample(state)
    session = Session.objects.get(script_tag="digest")
    assert session.status == Status.FAILED
    # As in the issue, the transcript is gone by the time someone looks (Claude Code's
    # cleanup, a removed directory): the words must not depend on it.
    for path in (session.transcript_path, session.archive_path):
        Path(path).unlink()

    client.force_login(get_user_model().objects.create_user("ops"))
    page = client.get(f"/sessions/{session.session_id}/").content.decode()
    ending = page[
        page.index('id="run-ending"') : page.index("</section>", page.index("run-ending"))
    ]
    assert said in ending
    assert "claude wrote a transcript, but the file has since been removed" in page
    api = client.get(f"/api/sessions/{session.session_id}").json()
    assert api["reason"]["line"] == said
    assert said in json.dumps(api["reason"], ensure_ascii=False)
    history = client.get("/history/").content.decode()
    assert said in history

    call_command("deliver_alerts", "--once", "--no-live")
    [received] = hook.accepted
    body = received.json["message"]
    assert "Last lines:" in body
    assert said in body.split("Last lines:", 1)[1]


@pytest.mark.real_cli
@pytest.mark.django_db
def test_the_api_error_claude_retried_on_and_its_result_are_recorded(state, real_claude):
    """stream-json: the `result` event's text and api_error_status, and the last
    `system`/`api_retry` event (2.1.197: error "server_error", error_status 500)."""
    real_claude.script("weekly sync", {"kind": "500"})
    state.env["CLAUDE_CODE_MAX_RETRIES"] = "1"
    done = subprocess.run(
        wrapper_command("sync", "-p", "weekly sync", "--output-format", "stream-json", "--verbose"),
        env=state.env,
        cwd=state.workdir,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    [spool_file] = state.paths.spool.glob("*.json")
    record = read_spool_record(spool_file)
    assert record.result_text.startswith("API Error: 500")
    assert record.last_api_error == "server_error (HTTP 500), retry 1 of 1"
    assert record.api_error_status == 500 and record.transcript_written is True
    assert record.stdout_tail is None  # every stdout line was a stream-json event
    session = record_completion(record)
    assert session.end_details["last_api_error"] == record.last_api_error
