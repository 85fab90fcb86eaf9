"""Backfill from transcripts the real CLI wrote, and archive retention."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.utils import timezone

from sessions_app.models import Session, Status

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.real_cli
def test_backfill_imports_real_transcripts_once(
    console_state, real_claude_bin, real_claude, capsys
):
    ids = [str(uuid.uuid4()) for _ in range(2)]
    for session_id in ids:
        subprocess.run(
            [
                str(real_claude_bin),
                "-p",
                "hello there",
                "--session-id",
                session_id,
                "--output-format",
                "json",
            ],
            env=console_state.env,
            cwd=console_state.workdir,
            check=True,
            capture_output=True,
            timeout=120,
        )
    # An old 1.0.x-style transcript that carried its own cost, with a torn last line.
    legacy_dir = console_state.config_dir / "projects" / "-srv-legacy"
    legacy_dir.mkdir(parents=True)
    legacy_id = str(uuid.uuid4())
    (legacy_dir / f"{legacy_id}.jsonl").write_text(
        json.dumps(
            {
                "type": "assistant",
                "sessionId": legacy_id,
                "uuid": "x",
                "cwd": "/srv/legacy",
                "timestamp": "2025-06-01T10:00:00Z",
                "costUSD": 0.25,
                "message": {
                    "id": "m1",
                    "model": "claude-3-5-sonnet",
                    "usage": {"input_tokens": 10, "output_tokens": 5},
                },
            }
        )
        + "\n"
        + '{"type": "user", "trunc'
    )

    call_command("backfill_transcripts", "--no-progress")
    first = capsys.readouterr().out
    call_command("backfill_transcripts", "--no-progress")
    second = capsys.readouterr().out

    assert "imported 3" in first
    assert "imported 0" in second and "skipped 3" in second
    rows = {str(s.session_id): s for s in Session.objects.all()}
    assert set(rows) == {*ids, legacy_id}
    real = rows[ids[0]]
    assert (real.status, real.recorded_from) == (Status.IMPORTED, "backfill")
    assert real.script_tag == console_state.workdir.name
    assert real.input_tokens == 1200 and real.cost_usd is None  # tokens known, cost not
    assert Path(real.archive_path).read_bytes() == Path(real.transcript_path).read_bytes()
    legacy = rows[legacy_id]
    assert str(legacy.cost_usd) == "0.250000"
    assert legacy.started_at.year == 2025


def make_archive(state, day: str, name: str) -> Path:
    folder = state.paths.archive / day
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text('{"type":"user"}\n')
    return path


def test_prune_is_a_dry_run_by_default_then_applies(console_state, tmp_path, capsys):
    old_day = (timezone.now() - timedelta(days=40)).date().isoformat()
    new_day = timezone.now().date().isoformat()
    old = make_archive(console_state, old_day, f"t_{uuid.uuid4()}.jsonl")
    new = make_archive(console_state, new_day, f"t_{uuid.uuid4()}.jsonl")
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.jsonl").write_text("keep")
    os.symlink(outside, console_state.paths.archive / "2000-01-01")
    ended = timezone.now() - timedelta(days=40)
    old_row = Session.objects.create(
        session_id=uuid.uuid4(),
        script_tag="t",
        status=Status.SUCCEEDED,
        started_at=ended,
        ended_at=ended,
        archive_path=str(old),
    )
    live = Session.objects.create(
        session_id=uuid.uuid4(), script_tag="t", status=Status.LIVE, started_at=ended
    )

    call_command("prune_archive", "--older-than", "30")
    assert "would remove 1 archived transcript" in capsys.readouterr().out
    assert old.exists()

    call_command("prune_archive", "--older-than", "30", "--apply")
    assert not old.exists() and new.exists()
    assert (outside / "keep.jsonl").exists()
    old_row.refresh_from_db()
    assert old_row.archive_path == ""

    call_command("prune_archive", "--older-than", "30", "--apply", "--records")
    assert not Session.objects.filter(pk=old_row.pk).exists()
    assert Session.objects.filter(pk=live.pk).exists()


def test_prune_removes_reporting_hosts_old_transcripts_but_not_a_live_run_s(console_state, capsys):
    """Reporting hosts' transcripts are kept per host, not per day: their age is when
    they were last written. A run still live keeps its transcript."""
    from sessions_app import remote_transcripts

    long_ago = (timezone.now() - timedelta(days=40)).timestamp()
    ended, live, recent = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    hosts = console_state.paths.archive / "hosts" / "host-a"
    copies = remote_transcripts.cache_root() / "host-b"
    paths = {
        "ended": hosts / f"transcript_{ended}.jsonl",
        "ended_copy": copies / f"transcript_{ended}.jsonl",
        "live": hosts / f"transcript_{live}.jsonl",
        "recent": hosts / f"transcript_{recent}.jsonl",
    }
    for name, path in paths.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('{"type":"user"}\n')
        if name != "recent":
            os.utime(path, (long_ago, long_ago))
    Session.objects.create(
        session_id=live,
        script_tag="t",
        host="host-a",
        status=Status.LIVE,
        started_at=timezone.now(),
    )

    call_command("prune_archive", "--older-than", "30")
    assert "would remove 2 archived transcript" in capsys.readouterr().out
    call_command("prune_archive", "--older-than", "30", "--apply")
    assert [name for name, path in paths.items() if path.exists()] == ["live", "recent"]
