"""Our own generator of Claude Code transcripts, in the shapes real CLI versions write.

Written from a study of transcripts that public projects ship as test fixtures
(versions 1.0.35, 2.0.70, 2.0.76, 2.1.0, 2.1.25, 2.1.27, 2.1.39, 2.1.47, 2.1.197 and
others), none copied:

- every version: one line per content block of an assistant message, each repeating
  `message.id`, `requestId` and the whole `usage` (so a response is counted once);
- 1.0.x: no `requestId` on some lines, a `costUSD` per line, sidechains inline;
- 2.0.x: subagents in `agent-<8 hex>.jsonl` beside the main file, each line with
  `isSidechain: true`, `agentId`, and the PARENT's `sessionId`; a "Warmup" prompt;
- 2.1.x: subagents in `<session>/subagents/agent-<id>.jsonl` (+ `.meta.json`); in
  2.1.38/39 the main file also carries `progress` records (`data.type:
  agent_progress`) that nest a copy of a subagent's assistant record, requestId and
  usage included; a compaction runs as `agent-acompact-<id>.jsonl` and leaves in the
  main file a `system/compact_boundary` (with `compactMetadata`) followed by a user
  record with `isCompactSummary: true`;
- `usage.cache_creation.ephemeral_5m_input_tokens / ephemeral_1h_input_tokens` from
  2.0.x on; `model: "<synthetic>"` for the CLI's own messages (no cost);
- bookkeeping records: `queue-operation`, `last-prompt`, `permission-mode`,
  `file-history-snapshot`, `attachment`, `progress` (hooks), `summary`.
"""

from __future__ import annotations

import json
import uuid as uuidlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path


@dataclass
class Usage:
    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_5m: int = 0
    cache_1h: int = 0

    def as_dict(self, split: bool = True) -> dict:
        usage = {
            "input_tokens": self.input,
            "cache_creation_input_tokens": self.cache_5m + self.cache_1h,
            "cache_read_input_tokens": self.cache_read,
            "output_tokens": self.output,
            "service_tier": "standard",
        }
        if split:
            usage["cache_creation"] = {
                "ephemeral_5m_input_tokens": self.cache_5m,
                "ephemeral_1h_input_tokens": self.cache_1h,
            }
        return usage


@dataclass
class Transcript:
    """Appends records to one JSONL file the way one CLI version does."""

    path: Path
    session_id: str
    version: str = "2.1.39"
    cwd: str = "/srv/agents/report"
    agent_id: str | None = None  # set for a subagent's file
    clock: datetime = field(default_factory=lambda: datetime(2026, 2, 12, 16, 0, tzinfo=UTC))
    last_uuid: str | None = None
    counter: int = 0

    def __post_init__(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()

    # -- plumbing
    def _stamp(self) -> str:
        self.clock += timedelta(seconds=1)
        return self.clock.strftime("%Y-%m-%dT%H:%M:%S.") + f"{self.clock.microsecond // 1000:03d}Z"

    def _base(self, kind: str) -> dict:
        self.counter += 1
        record = {
            "parentUuid": self.last_uuid,
            "isSidechain": self.agent_id is not None,
            "userType": "external",
            "cwd": self.cwd,
            "sessionId": self.session_id,
            "version": self.version,
            "gitBranch": "main",
        }
        if self.agent_id:
            record["agentId"] = self.agent_id
        record["type"] = kind
        return record

    def write(self, record: dict) -> dict:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
        return record

    def _finish(self, record: dict) -> dict:
        record["uuid"] = str(uuidlib.uuid4())
        record["timestamp"] = self._stamp()
        self.last_uuid = record["uuid"]
        return self.write(record)

    # -- conversation
    def user(self, text: str, **extra) -> dict:
        record = self._base("user")
        record["message"] = {"role": "user", "content": text}
        record.update(extra)
        return self._finish(record)

    def tool_result(self, tool_use_id: str, text: str, *, is_error: bool = False) -> dict:
        record = self._base("user")
        record["message"] = {
            "role": "user",
            "content": [
                {
                    "tool_use_id": tool_use_id,
                    "type": "tool_result",
                    "content": text,
                    "is_error": is_error,
                }
            ],
        }
        record["toolUseResult"] = {"stdout": text, "stderr": "", "interrupted": False}
        return self._finish(record)

    def assistant(
        self,
        usage: Usage,
        blocks: list[dict],
        *,
        model: str = "claude-sonnet-4-5-20250929",
        split: bool = True,
        request_id: str | None = None,
        legacy_cost: float | None = None,
    ) -> list[dict]:
        """One API response: one line per content block, each repeating id and usage."""
        message_id = f"msg_{uuidlib.uuid4().hex[:24]}"
        request_id = request_id or f"req_{uuidlib.uuid4().hex[:24]}"
        lines = []
        for block in blocks:
            record = self._base("assistant")
            record["message"] = {
                "model": model,
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "content": [block],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": usage.as_dict(split),
            }
            record["requestId"] = request_id
            if legacy_cost is not None:
                record["costUSD"] = legacy_cost
            lines.append(self._finish(record))
        return lines

    def synthetic_error(self, text: str = "API Error: 500 Internal server error") -> dict:
        record = self._base("assistant")
        record["message"] = {
            "model": "<synthetic>",
            "id": str(uuidlib.uuid4()),
            "role": "assistant",
            "content": [{"type": "text", "text": text}],
            "usage": Usage().as_dict(),
        }
        record["isApiErrorMessage"] = True
        return self._finish(record)

    # -- bookkeeping
    def queue_operation(self, prompt: str) -> None:
        for operation in ("enqueue", "dequeue"):
            self.write(
                {
                    "type": "queue-operation",
                    "operation": operation,
                    "timestamp": self._stamp(),
                    "sessionId": self.session_id,
                    **({"content": prompt} if operation == "enqueue" else {}),
                }
            )

    def hook_progress(self, event: str, command: str) -> dict:
        record = self._base("progress")
        record["data"] = {
            "type": "hook_progress",
            "hookEvent": event,
            "hookName": f"{event}:startup",
            "command": command,
        }
        record["toolUseID"] = record["parentToolUseID"] = f"toolu_{uuidlib.uuid4().hex[:20]}"
        return self._finish(record)

    def agent_progress(self, agent_id: str, copied: dict) -> dict:
        """2.1.38/39: a copy of a subagent's assistant record, nested in the main file."""
        record = self._base("progress")
        record["data"] = {
            "type": "agent_progress",
            "agentId": agent_id,
            "prompt": "",
            "message": {
                "type": "assistant",
                "message": copied["message"],
                "requestId": copied["requestId"],
                "uuid": copied["uuid"],
                "timestamp": copied["timestamp"],
            },
        }
        record["toolUseID"] = f"agent_msg_{uuidlib.uuid4().hex[:20]}"
        record["parentToolUseID"] = "toolu_task"
        return self._finish(record)

    def file_snapshot(self) -> None:
        message_id = str(uuidlib.uuid4())
        self.write(
            {
                "type": "file-history-snapshot",
                "messageId": message_id,
                "snapshot": {
                    "messageId": message_id,
                    "trackedFileBackups": {},
                    "timestamp": self._stamp(),
                },
                "isSnapshotUpdate": False,
            }
        )

    def attachment(self, size: int = 3000) -> dict:
        record = self._base("attachment")
        record["attachment"] = {
            "type": "skill_listing",
            "content": "- skill: " + "x" * size,
        }
        return self._finish(record)

    def last_prompt(self, prompt: str) -> None:
        self.write({"type": "last-prompt", "lastPrompt": prompt, "sessionId": self.session_id})

    def permission_mode(self, mode: str = "bypassPermissions") -> None:
        self.write(
            {"type": "permission-mode", "permissionMode": mode, "sessionId": self.session_id}
        )

    def summary(self, text: str) -> None:
        self.write({"type": "summary", "summary": text, "leafUuid": str(uuidlib.uuid4())})

    def compaction(self, pre_tokens: int, summary: str) -> None:
        record = self._base("system")
        record.update(
            parentUuid=None,
            logicalParentUuid=self.last_uuid,
            subtype="compact_boundary",
            content="Conversation compacted",
            isMeta=False,
            level="info",
            compactMetadata={"trigger": "auto", "preTokens": pre_tokens},
        )
        self._finish(record)
        self.user(summary, isCompactSummary=True, isVisibleInTranscriptOnly=True)


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def thinking(value: str) -> dict:
    return {"type": "thinking", "thinking": value, "signature": "c2lnbmF0dXJl"}


def tool_use(name: str, tool_input: dict, tool_id: str | None = None) -> dict:
    return {
        "type": "tool_use",
        "id": tool_id or f"toolu_{uuidlib.uuid4().hex[:20]}",
        "name": name,
        "input": tool_input,
    }


def project_dir(config_dir: Path, cwd: str) -> Path:
    from wrapper.formats import encode_project_dir

    return Path(config_dir) / "projects" / encode_project_dir(cwd)


# ----------------------------------------------------------------------------- sessions


@dataclass
class Written:
    """A session written to disk, with the responses it holds (for hand computation)."""

    session_id: str
    main: Path
    subagent_files: list[Path]
    responses: list[tuple[str, Usage, str]]  # (model, usage, day), each API response once


def session_2_1_with_subagents_and_compaction(
    config_dir: Path, cwd: str = "/srv/agents/report", version: str = "2.1.39"
) -> Written:
    """A 2.1.x session: two Task subagents in `<id>/subagents/`, one of whose replies
    is also copied into the main file as `progress`, and an auto-compaction run as the
    `acompact` agent. Bookkeeping records everywhere, as the CLI writes them."""
    session_id = str(uuidlib.uuid4())
    folder = project_dir(config_dir, cwd)
    main = Transcript(folder / f"{session_id}.jsonl", session_id, version, cwd)
    responses: list[tuple[str, Usage, str]] = []
    day = "2026-02-12"

    main.file_snapshot()
    main.hook_progress("SessionStart", "bd prime")
    main.queue_operation("Survey the repo and fix the build")
    main.permission_mode()
    main.attachment(5000)
    main.user("Survey the repo and fix the build")
    first = Usage(input=3, output=180, cache_read=11442, cache_5m=15005, cache_1h=0)
    main.assistant(
        first,
        [
            text("\n\n"),  # the CLI's blank first block: never a row of its own
            thinking(""),  # an empty thinking block: never a row
            thinking("Two surveys in parallel, then the fix."),
            tool_use("Task", {"subagent_type": "Explore", "prompt": "Survey src/"}, "toolu_t1"),
            tool_use("Task", {"subagent_type": "Explore", "prompt": "Survey tests/"}, "toolu_t2"),
        ],
    )
    responses.append(("claude-sonnet-4-5-20250929", first, day))

    agents = folder / session_id / "subagents"
    subagent_files = []
    for index, agent_id in enumerate(("a1b2c3d", "e4f5a6b")):
        agent = Transcript(
            agents / f"agent-{agent_id}.jsonl", session_id, version, cwd, agent_id=agent_id
        )
        (agents / f"agent-{agent_id}.meta.json").write_text(
            json.dumps({"agentType": "Explore", "description": f"survey {index}"})
        )
        agent.user(f"Survey part {index}")
        step = Usage(input=5, output=420 + index, cache_read=9000, cache_5m=0, cache_1h=2600)
        lines = agent.assistant(
            step,
            [text(f"Found needle-{index} in the tree."), tool_use("Read", {"file_path": "a"})],
            model="claude-haiku-4-5-20251001",
        )
        responses.append(("claude-haiku-4-5-20251001", step, day))
        agent.tool_result(lines[-1]["message"]["content"][0]["id"], "contents\n")
        done = Usage(input=2, output=60, cache_read=11600, cache_5m=300, cache_1h=0)
        final = agent.assistant(done, [text("Survey done.")], model="claude-haiku-4-5-20251001")
        responses.append(("claude-haiku-4-5-20251001", done, day))
        if index == 0:  # 2.1.38/39: the main file carries a copy of this reply too
            main.agent_progress(agent_id, lines[0])
            main.agent_progress(agent_id, final[0])
        subagent_files.append(agent.path)
        main.tool_result(f"toolu_t{index + 1}", f"agentId: {agent_id}\nSurvey {index} done.")

    # An auto-compaction: the summarising call runs as its own agent file.
    compact = Transcript(
        agents / "agent-acompact-9f8e7d.jsonl", session_id, version, cwd, agent_id="acompact-9f8e7d"
    )
    compact.user("Your task is to create a detailed summary of the conversation so far")
    summary_usage = Usage(input=10, output=2400, cache_read=0, cache_5m=42000, cache_1h=0)
    compact.assistant(summary_usage, [text("<summary>Surveyed; fixing build.</summary>")])
    responses.append(("claude-sonnet-4-5-20250929", summary_usage, day))
    subagent_files.append(compact.path)
    main.compaction(155025, "This session is being continued from a previous conversation.")

    main.hook_progress("PostToolUse", "printf '\\033[31mlint failed\\033[0m'")
    edit = Usage(input=8, output=350, cache_read=30000, cache_5m=1200, cache_1h=0)
    main.assistant(
        edit,
        [
            text("Fixing the build now."),
            tool_use(
                "Edit",
                {"file_path": "/srv/app/build.py", "old_string": "a\nb", "new_string": "a\nc"},
            ),
        ],
    )
    responses.append(("claude-sonnet-4-5-20250929", edit, day))
    main.tool_result("toolu_edit", "\x1b[32mThe file was updated.\x1b[0m")
    # A request over 200k input tokens: the long-context tier of the model's price.
    long = Usage(input=5, output=1000, cache_read=210000, cache_5m=2000, cache_1h=0)
    main.assistant(long, [text("Build fixed; all tests pass.")])
    responses.append(("claude-sonnet-4-5-20250929", long, day))
    main.synthetic_error()
    main.last_prompt("Survey the repo and fix the build")
    subagent_files.sort()
    return Written(session_id, main.path, subagent_files, responses)


def session_2_0_with_agent_files(
    config_dir: Path, cwd: str = "/srv/agents/nightly", version: str = "2.0.76"
) -> Written:
    """A 2.0.x session: its subagents in `agent-<id>.jsonl` beside it, tied by sessionId."""
    session_id = str(uuidlib.uuid4())
    folder = project_dir(config_dir, cwd)
    main = Transcript(folder / f"{session_id}.jsonl", session_id, version, cwd)
    responses: list[tuple[str, Usage, str]] = []
    day = "2026-02-12"
    main.file_snapshot()
    main.user("Summarise the logs")
    first = Usage(input=12, output=90, cache_read=0, cache_5m=8000, cache_1h=0)
    main.assistant(
        first,
        [tool_use("Task", {"subagent_type": "general-purpose", "prompt": "grep"}, "toolu_x")],
        model="claude-opus-4-1-20250805",
    )
    responses.append(("claude-opus-4-1-20250805", first, day))
    files = []
    for agent_id in ("0a1b2c3d", "4e5f6a7b"):
        agent = Transcript(
            folder / f"agent-{agent_id}.jsonl", session_id, version, cwd, agent_id=agent_id
        )
        agent.user("Warmup")
        warm = Usage(input=4, output=30, cache_read=0, cache_5m=3000, cache_1h=0)
        agent.assistant(warm, [text("Ready.")], model="claude-haiku-4-5-20251001")
        responses.append(("claude-haiku-4-5-20251001", warm, day))
        agent.user("grep the logs")
        work = Usage(input=6, output=200, cache_read=3000, cache_5m=500, cache_1h=0)
        agent.assistant(work, [text("Three errors found.")], model="claude-haiku-4-5-20251001")
        responses.append(("claude-haiku-4-5-20251001", work, day))
        files.append(agent.path)
    main.tool_result("toolu_x", "Three errors found.")
    last = Usage(input=3, output=150, cache_read=8000, cache_5m=400, cache_1h=0)
    main.assistant(last, [text("Done: three errors.")], model="claude-opus-4-1-20250805")
    responses.append(("claude-opus-4-1-20250805", last, day))
    return Written(session_id, main.path, sorted(files), responses)


def phantom_files(config_dir: Path, cwd: str = "/srv/agents/report") -> list[Path]:
    """Files Claude Code leaves that hold no conversation: not runs."""
    folder = project_dir(config_dir, cwd)
    folder.mkdir(parents=True, exist_ok=True)
    empty = folder / f"{uuidlib.uuid4()}.jsonl"
    empty.write_bytes(b"")
    summaries = Transcript(folder / f"{uuidlib.uuid4()}.jsonl", "x", "1.0.58", cwd)
    summaries.summary("Fixing the flaky test")
    summaries.summary("Release notes")
    snapshots = Transcript(folder / f"{uuidlib.uuid4()}.jsonl", "x", "2.0.30", cwd)
    snapshots.file_snapshot()
    snapshots.file_snapshot()
    queued = Transcript(folder / f"{uuidlib.uuid4()}.jsonl", "x", "2.1.197", cwd)
    queued.queue_operation("hello")
    queued.last_prompt("hello")
    return [empty, summaries.path, snapshots.path, queued.path]
