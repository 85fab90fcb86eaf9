"""The transcript layer on real files: locate (inside the roots only), tail, parse."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from sessions_app.transcripts.locate import find_subagent_transcripts, locate_transcript
from sessions_app.transcripts.parse import (
    iter_records,
    last_tool_call,
    summarize_file,
    summarize_usage,
    to_entries,
)
from sessions_app.transcripts.tail import (
    OffsetBeyondEnd,
    parse_range_header,
    read_before,
    read_from,
    read_tail,
)
from wrapper.formats import encode_project_dir


def line(record: dict) -> bytes:
    return json.dumps(record).encode() + b"\n"


def assistant(message_id: str, request_id: str, block: dict, usage: dict, uid: str) -> bytes:
    return line(
        {
            "type": "assistant",
            "uuid": uid,
            "requestId": request_id,
            "timestamp": "2026-11-24T02:00:00Z",
            "message": {
                "id": message_id,
                "model": "claude-sonnet-4-5",
                "content": [block],
                "usage": usage,
            },
        }
    )


# ----------------------------------------------------------------------------- locate


@pytest.fixture
def roots(tmp_path):
    config = tmp_path / "claude"
    archive = tmp_path / "archive"
    (config / "projects").mkdir(parents=True)
    archive.mkdir()
    return config, archive


def put(config: Path, cwd: str, session_id: str, data: bytes = b"{}\n") -> Path:
    folder = config / "projects" / encode_project_dir(cwd)[:200]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{session_id}.jsonl"
    path.write_bytes(data)
    return path


def test_locate_live_then_archive(roots):
    config, archive = roots
    session_id = str(uuid.uuid4())
    live = put(config, "/srv/reports", session_id)
    found = locate_transcript(
        session_id, config_dirs=[config], archive_root=archive, cwd_hint="/srv/reports"
    )
    assert (found.path, found.kind) == (live, "live")

    day = archive / "2026-11-24"
    day.mkdir()
    copy = day / f"nightly_{session_id}.jsonl"
    copy.write_bytes(b"{}\n")
    live.unlink()
    found = locate_transcript(session_id, config_dirs=[config], archive_root=archive)
    assert (found.path, found.kind) == (copy, "archive")


def test_long_cwd_is_found_by_prefix(roots):
    config, archive = roots
    session_id = str(uuid.uuid4())
    cwd = "/srv/" + "very-long-directory-name/" * 12
    folder = config / "projects" / (encode_project_dir(cwd)[:200] + "-a1b2c3")
    folder.mkdir()
    (folder / f"{session_id}.jsonl").write_bytes(b"{}\n")
    found = locate_transcript(session_id, config_dirs=[config], archive_root=archive, cwd_hint=cwd)
    assert found.path.parent == folder


@pytest.mark.parametrize(
    "bad", ["../../etc/passwd", "6F1C6F1C-6F1C-4F1C-8F1C-6F1C6F1C6F1C", "", "x" * 36]
)
def test_locate_accepts_only_a_lowercase_uuid(roots, bad):
    config, archive = roots
    with pytest.raises(ValueError):
        locate_transcript(bad, config_dirs=[config], archive_root=archive)


def test_hints_never_lead_outside_the_roots(roots, tmp_path):
    config, archive = roots
    session_id = str(uuid.uuid4())
    secret_dir = tmp_path / "secret" / "projects" / "x"
    secret_dir.mkdir(parents=True)
    (secret_dir / f"{session_id}.jsonl").write_text("SECRET")
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_text("SECRET")

    assert (
        locate_transcript(
            session_id,
            config_dirs=[config],
            archive_root=archive,
            cwd_hint="../../../secret",
            config_dir_hint=str(tmp_path / "secret"),
            archive_hint=str(elsewhere),
        )
        is None
    )


def test_symlinks_out_of_the_roots_are_not_followed(roots, tmp_path):
    config, archive = roots
    session_id = str(uuid.uuid4())
    target = tmp_path / "passwd"
    target.write_text("root:x:0:0")
    folder = config / "projects" / "-srv"
    folder.mkdir()
    (folder / f"{session_id}.jsonl").symlink_to(target)
    outside_dir = tmp_path / "outside"
    outside_dir.mkdir()
    other_id = str(uuid.uuid4())
    (outside_dir / f"{other_id}.jsonl").write_text("root:x:0:0")
    (config / "projects" / "-linked").symlink_to(outside_dir)

    for wanted in (session_id, other_id):
        assert (
            locate_transcript(wanted, config_dirs=[config], archive_root=archive, cwd_hint="/srv")
            is None
        )


def test_subagent_transcripts(roots):
    config, _archive = roots
    session_id = str(uuid.uuid4())
    main = put(config, "/srv", session_id)
    agents = main.with_suffix("") / "subagents"
    agents.mkdir(parents=True)
    (agents / "agent-a1.jsonl").write_bytes(b"{}\n")
    (agents / "agent-a1.meta.json").write_text("{}")
    assert [p.name for p in find_subagent_transcripts(main, [config])] == ["agent-a1.jsonl"]


# ----------------------------------------------------------------------------- tail


def test_tail_starts_at_a_line_boundary_and_keeps_only_complete_lines(tmp_path):
    path = tmp_path / "t.jsonl"
    lines = [line({"n": i, "pad": "x" * 50}) for i in range(100)]
    path.write_bytes(b"".join(lines) + b'{"partial": ')

    chunk = read_tail(path, 1000)

    assert chunk.data.startswith(b'{"n": ') and chunk.data.endswith(b"\n")
    assert chunk.end == chunk.start + len(chunk.data) == path.stat().st_size - 12
    follow = read_from(path, chunk.end, 10_000)
    assert follow.data == b""  # the fragment is not served until it is whole
    with path.open("ab") as handle:
        handle.write(b"1}\n")
    assert read_from(path, chunk.end, 10_000).data == b'{"partial": 1}\n'


def test_read_before_pages_back_without_gaps(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"".join(line({"n": i}) for i in range(500)))
    seen, end = [], path.stat().st_size
    while end > 0:
        chunk = read_before(path, end, 700)
        seen = [json.loads(x)["n"] for x in chunk.data.splitlines()] + seen
        end = chunk.start
    assert seen == list(range(500))


def test_tail_of_a_sparse_1gb_file_reads_only_its_end(tmp_path):
    path = tmp_path / "big.jsonl"
    with path.open("wb") as handle:
        handle.truncate(1024**3)
        handle.seek(0, os.SEEK_END)
        handle.write(b"\n" + line({"last": True}))
    chunk = read_tail(path, 200_000)
    assert chunk.data.endswith(line({"last": True}))
    assert chunk.total > 1024**3


def test_offsets_beyond_the_end_and_range_headers(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(line({"a": 1}))
    with pytest.raises(OffsetBeyondEnd):
        read_from(path, 10_000, 100)
    assert parse_range_header("bytes=42-") == 42
    for other in ("bytes=1-5", "items=1-", "bytes=-5", "", None):
        assert parse_range_header(other) is None


def test_tail_refuses_a_symlink(tmp_path):
    target = tmp_path / "target"
    target.write_text("x\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    with pytest.raises(OSError):
        read_tail(link, 100)


# ----------------------------------------------------------------------------- parse


def test_tokens_are_counted_once_per_message_and_request():
    usage = {"input_tokens": 100, "output_tokens": 10, "cache_read_input_tokens": 1000}
    bigger = {**usage, "output_tokens": 25}
    data = b"".join(
        [
            assistant("m1", "r1", {"type": "thinking", "thinking": "hmm"}, usage, "u1"),
            assistant("m1", "r1", {"type": "text", "text": "hi"}, usage, "u2"),
            assistant(
                "m1",
                "r1",
                {"type": "tool_use", "id": "t", "name": "Bash", "input": {"command": "ls"}},
                bigger,
                "u3",
            ),
            assistant("m2", "r2", {"type": "text", "text": "done"}, usage, "u4"),
            assistant("m2", "r2", {"type": "text", "text": "done"}, usage, "u4"),  # replayed
        ]
    )
    summary = summarize_usage(iter_records(data))
    assert (summary.input_tokens, summary.output_tokens) == (200, 35)
    assert summary.cache_read_input_tokens == 2000
    assert summary.responses == 2
    entries = to_entries(iter_records(data))
    assert [e.kind for e in entries] == [
        "thinking",
        "assistant_text",
        "tool_call",
        "assistant_text",
    ]
    assert last_tool_call(iter_records(data)) == "Bash: ls"


def test_hostile_and_odd_lines_never_fail_the_file(tmp_path):
    data = b"".join(
        [
            line({"type": "user", "uuid": "a", "message": {"content": "<script>x</script>"}}),
            b"\xff\xfe not utf-8 \x80\n",
            b"[1, 2, 3]\n",
            b"42\n",
            line({"type": "brand-new-type", "payload": 1}),
            line({"type": "system", "subtype": "compact_boundary", "uuid": "c"}),
            line({"type": "summary", "summary": "Earlier: fixed the build"}),
            line(
                {
                    "type": "user",
                    "message": {
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": "t",
                                "content": [{"type": "text", "text": "oops"}],
                                "is_error": True,
                            }
                        ]
                    },
                }
            ),
            line(
                {
                    "type": "assistant",
                    "isApiErrorMessage": True,
                    "message": {
                        "model": "<synthetic>",
                        "content": [{"type": "text", "text": "API Error: 500"}],
                    },
                }
            ),
            line({"type": "user", "message": {"content": "y" * (5 * 1024 * 1024)}}),
            b'{"type": "user", "message": {"content": "torn',
        ]
    )
    entries = to_entries(iter_records(data))
    kinds = [e.kind for e in entries]
    assert kinds == [
        "user_prompt",
        "malformed",
        "malformed",
        "malformed",
        "meta",  # an unknown type without a message: kept raw, folded as bookkeeping
        "compact_boundary",
        "meta",  # a session title (`summary`) is not conversation
        "tool_result",
        "error",
        "user_prompt",
    ]
    assert entries[0].text == "<script>x</script>"  # plain text; templates escape it
    assert "\ufffd" in entries[1].text
    assert entries[7].is_error
    assert entries[-1].truncated and entries[-1].full_length == 5 * 1024 * 1024

    path = tmp_path / "odd.jsonl"
    path.write_bytes(data)
    summary = summarize_file(path, chunk_size=64 * 1024)
    assert summary.malformed == 4  # three non-objects and the torn last line
    assert summary.records == 11
