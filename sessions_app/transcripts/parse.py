"""Claude Code JSONL transcripts, of every version seen in the wild.

Never fails a file: a line that is not a JSON object becomes a `malformed`
entry, invalid UTF-8 is decoded with replacement, unknown record types are kept
raw. Produces plain text only; templates escape it.

Token totals count each API response once, per (message.id, requestId), keeping
the largest usage: the CLI writes one line per content block and repeats the
usage on each, which otherwise inflates totals 1.4-2.5x.

One piece: every record shape of every CLI version, decided in one place.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from sessions_app.pricing import SYNTHETIC_MODEL, CostTally, ResponseUsage

# Long text is folded for display; the entry says how long the whole was.
FOLD_CHARS = 4000
SUMMARY_CHARS = 200
# Records that are not conversation: folded into one quiet line per run of them. Any
# other record type without a message (new ones appear often) is treated the same.
META_TYPES = {
    "queue-operation",
    "attachment",
    "file-history-snapshot",
    "last-prompt",
    "progress",
    "ai-title",
    "custom-title",
    "agent-name",
    "permission-mode",
    "summary",
    "tag",
    "pr-link",
}
# ANSI escape sequences (colour codes in hook output): stripped from display text.
_ANSI_RE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")


def strip_ansi(text: str) -> str:
    return _ANSI_RE.sub("", text) if "\x1b" in text else text


@dataclass(frozen=True)
class Record:
    offset: int  # byte offset of the line in the file
    line_no: int  # 1-based, within the chunk parsed
    data: dict[str, Any] | None  # None when the line is not a JSON object
    error: str | None = None
    raw: str | None = None  # the undecodable line, for malformed ones
    size: int = 0  # bytes of the line in the file

    @property
    def type(self) -> str:
        if self.data is None:
            return "malformed"
        value = self.data.get("type")
        return value if isinstance(value, str) else "unknown"


def iter_records(data: bytes, base_offset: int = 0) -> Iterator[Record]:
    """One Record per complete line; a trailing fragment without a newline is ignored."""
    position = 0
    line_no = 0
    length = len(data)
    while position < length:
        newline = data.find(b"\n", position)
        if newline == -1:
            break  # partial last line: the writer is still appending it
        line = data[position:newline]
        line_no += 1
        offset = base_offset + position
        position = newline + 1
        if not line.strip():
            continue
        yield parse_line(line, offset, line_no)


def parse_line(line: bytes, offset: int = 0, line_no: int = 0) -> Record:
    text = line.decode("utf-8", errors="replace")
    try:
        value = json.loads(text)
    except ValueError as exc:
        return Record(
            offset, line_no, None, error=f"not JSON: {exc}", raw=_fold(text)[0], size=len(line)
        )
    if not isinstance(value, dict):
        return Record(
            offset,
            line_no,
            None,
            error=f"a JSON {type(value).__name__}, not an object",
            raw=_fold(text)[0],
            size=len(line),
        )
    return Record(offset, line_no, value, size=len(line))


# ----------------------------------------------------------------------------- display


@dataclass
class Entry:
    """One thing a person reads in a conversation; all text is plain, unescaped."""

    kind: str  # user_prompt, assistant_text, thinking, tool_call, tool_result, error,
    # compact_boundary, compact_summary, summary, system, meta, meta_group, unknown, malformed
    text: str = ""
    label: str = ""  # a short heading: tool name, system subtype, record type
    timestamp: str = ""
    uuid: str = ""
    offset: int = 0
    sidechain: bool = False
    agent_id: str = ""
    tool_use_id: str = ""
    is_error: bool = False
    truncated: bool = False
    full_length: int = 0
    size: int = 0  # bytes of the record in the file (what a folded record weighs)
    members: list[Entry] = field(default_factory=list)  # meta_group: the folded records


def _fold(text: str, limit: int = FOLD_CHARS) -> tuple[str, bool]:
    return (text[:limit], True) if len(text) > limit else (text, False)


def _entry(kind: str, record: Record, text: str = "", **fields: Any) -> Entry:
    data = record.data or {}
    folded, truncated = _fold(strip_ansi(text))
    return Entry(
        kind=kind,
        text=folded,
        truncated=truncated,
        full_length=len(text),
        timestamp=str(data.get("timestamp") or ""),
        uuid=str(data.get("uuid") or ""),
        offset=record.offset,
        sidechain=bool(data.get("isSidechain")),
        agent_id=str(data.get("agentId") or ""),
        size=record.size,
        **fields,
    )


def _block_text(content: Any) -> str:
    """Text of a content value that may be a string or a list of blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, dict):
                if block.get("type") == "text":
                    parts.append(str(block.get("text", "")))
                elif block.get("type") == "image":
                    parts.append("[image]")
                else:
                    parts.append(json.dumps(block, ensure_ascii=False)[:SUMMARY_CHARS])
            elif isinstance(block, str):
                parts.append(block)
        return "\n".join(parts)
    return "" if content is None else json.dumps(content, ensure_ascii=False)


def _message(record: Record) -> dict[str, Any]:
    message = (record.data or {}).get("message")
    return message if isinstance(message, dict) else {}


def _user_entries(record: Record) -> list[Entry]:
    data = record.data or {}
    content = _message(record).get("content")
    if data.get("isCompactSummary"):
        # Written by the CLI after a compaction: the summary that replaces the history.
        return [_entry("compact_summary", record, _block_text(content), label="summary")]
    if data.get("isMeta"):
        return [_entry("meta", record, _block_text(content), label="meta")]
    if isinstance(content, str):
        return [_entry("user_prompt", record, content)]
    entries = []
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "tool_result":
            entries.append(
                _entry(
                    "tool_result",
                    record,
                    _block_text(block.get("content")),
                    tool_use_id=str(block.get("tool_use_id") or ""),
                    is_error=bool(block.get("is_error")),
                    label="error" if block.get("is_error") else "result",
                )
            )
        elif kind == "text":
            text = str(block.get("text", ""))
            if text.lstrip().startswith("<system-reminder>"):
                entries.append(_entry("meta", record, text, label="system reminder"))
            else:
                entries.append(_entry("user_prompt", record, text))
        else:
            entries.append(_entry("user_prompt", record, _block_text([block])))
    return entries


def _assistant_entries(record: Record) -> list[Entry]:
    data = record.data or {}
    message = _message(record)
    content = message.get("content")
    if data.get("isApiErrorMessage") or message.get("model") == "<synthetic>":
        return [_entry("error", record, _block_text(content), label="API error", is_error=True)]
    if isinstance(content, str):
        return [_entry("assistant_text", record, content)]
    entries = []
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            entries.append(_entry("assistant_text", record, str(block.get("text", ""))))
        elif kind == "thinking":
            entries.append(_entry("thinking", record, str(block.get("thinking") or "")))
        elif kind == "redacted_thinking":
            entries.append(_entry("thinking", record, "(redacted by the API)", label="redacted"))
        elif kind in ("tool_use", "server_tool_use"):
            entries.append(
                _entry(
                    "tool_call",
                    record,
                    format_tool_input(block.get("input")),
                    label=str(block.get("name") or "tool"),
                    tool_use_id=str(block.get("id") or ""),
                )
            )
        else:
            entries.append(
                _entry("unknown", record, json.dumps(block, ensure_ascii=False), label=str(kind))
            )
    return entries


def _system_entries(record: Record) -> list[Entry]:
    data = record.data or {}
    subtype = str(data.get("subtype") or "system")
    text = _block_text(data.get("content")) or str(data.get("message") or "")
    if subtype == "compact_boundary":
        meta = data.get("compactMetadata") if isinstance(data.get("compactMetadata"), dict) else {}
        said = "Conversation compacted"
        details = [str(meta["trigger"])] if meta.get("trigger") else []
        if isinstance(meta.get("preTokens"), int):
            details.append(f"{meta['preTokens']:,} tokens before")
        if details:
            said += f" ({', '.join(details)})"
        return [_entry("compact_boundary", record, said)]
    if (
        subtype in ("api_error",)
        or subtype.startswith("model_refusal")
        or data.get("level") == "error"
    ):
        return [
            _entry(
                "error", record, text or json.dumps(data)[:FOLD_CHARS], label=subtype, is_error=True
            )
        ]
    return [_entry("system", record, text, label=subtype)]


def _result_entries(record: Record) -> list[Entry]:
    """A stream-json `result` event, when someone saved stdout as a transcript."""
    data = record.data or {}
    is_error = bool(data.get("is_error"))
    kind = "error" if is_error else "system"
    label = "refusal" if data.get("stop_reason") == "refusal" else f"result ({data.get('subtype')})"
    return [_entry(kind, record, str(data.get("result") or ""), label=label, is_error=is_error)]


def record_entries(record: Record) -> list[Entry]:
    kind = record.type
    if kind == "malformed":
        return [
            Entry(
                kind="malformed",
                text=record.raw or "",
                label=record.error or "",
                offset=record.offset,
                is_error=True,
            )
        ]
    if kind == "user":
        return _user_entries(record)
    if kind == "assistant":
        return _assistant_entries(record)
    if kind == "system":
        return _system_entries(record)
    if kind == "result":
        return _result_entries(record)
    if kind in META_TYPES or not isinstance((record.data or {}).get("message"), dict):
        return [_entry("meta", record, _meta_text(record.data or {}), label=kind)]
    return [_entry("unknown", record, json.dumps(record.data, ensure_ascii=False), label=kind)]


def _meta_text(data: dict[str, Any]) -> str:
    for key in ("summary", "content", "title", "customTitle", "lastPrompt", "permissionMode"):
        if isinstance(data.get(key), str):
            return data[key]
    inner = data.get("data") if isinstance(data.get("data"), dict) else None
    if inner:  # progress: a hook that ran, or a subagent's step
        for key in ("hookName", "command", "type"):
            if isinstance(inner.get(key), str):
                return inner[key]
    attachment = data.get("attachment")
    if isinstance(attachment, dict) and isinstance(attachment.get("type"), str):
        return attachment["type"]
    if isinstance(data.get("operation"), str):
        return data["operation"]
    return ""


def format_tool_input(value: Any) -> str:
    """A tool call's input for reading: one `key: value` per line, a multi-line string
    (an Edit's old_string/new_string, a script) shown with its real line breaks."""
    if not isinstance(value, dict):
        return json.dumps(value, indent=2, ensure_ascii=False)
    lines = []
    for key, item in value.items():
        if isinstance(item, str):
            if "\n" in item:
                lines.append(f"{key}:\n{item}")
            else:
                lines.append(f"{key}: {item}")
        else:
            lines.append(f"{key}: {json.dumps(item, ensure_ascii=False)}")
    return "\n".join(lines)


# Kinds that say nothing when their text is blank: such a row is never shown.
_DROPPED_WHEN_EMPTY = {"assistant_text", "thinking", "user_prompt", "compact_summary"}


def to_entries(records: Iterable[Record]) -> list[Entry]:
    """Display entries in file order; a record repeated (same uuid) is shown once, and
    an entry with nothing to read (an empty thinking block, a blank answer) not at all."""
    seen: set[str] = set()
    entries: list[Entry] = []
    for record in records:
        uuid = (record.data or {}).get("uuid")
        if isinstance(uuid, str) and uuid:
            if uuid in seen:
                continue
            seen.add(uuid)
        entries.extend(
            entry
            for entry in record_entries(record)
            if entry.kind not in _DROPPED_WHEN_EMPTY or entry.text.strip()
        )
    return entries


def fold_noise(entries: list[Entry]) -> list[Entry]:
    """Each run of consecutive non-conversation records (progress, attachments, file
    snapshots, queue operations, ...) becomes one `meta_group` entry that says what
    and how much it holds."""
    folded: list[Entry] = []
    run: list[Entry] = []

    def close() -> None:
        if not run:
            return
        counts: dict[str, int] = {}
        for member in run:
            counts[member.label or "meta"] = counts.get(member.label or "meta", 0) + 1
        label = ", ".join(
            f"{count} {name}" for name, count in sorted(counts.items(), key=lambda i: -i[1])
        )
        folded.append(
            Entry(
                kind="meta_group",
                label=label,
                offset=run[0].offset,
                timestamp=run[0].timestamp,
                sidechain=run[0].sidechain,
                size=sum(member.size for member in run),
                full_length=len(run),
                members=list(run),
            )
        )
        run.clear()

    for entry in entries:
        if entry.kind == "meta":
            run.append(entry)
        else:
            close()
            folded.append(entry)
    close()
    return folded


# ----------------------------------------------------------------------------- figures


def _tool_summary(name: str, tool_input: Any) -> str:
    if not isinstance(tool_input, dict):
        return name
    for key in ("command", "file_path", "path", "pattern", "url", "query", "description", "prompt"):
        value = tool_input.get(key)
        if isinstance(value, str) and value:
            line = " ".join(value.split())
            return f"{name}: {line[:SUMMARY_CHARS]}"
    return name


def last_tool_call(records: Iterable[Record]) -> str | None:
    """'Bash: find / -name x' for the latest tool_use in these records, or None."""
    latest = None
    for record in records:
        if record.type != "assistant":
            continue
        content = _message(record).get("content")
        for block in content if isinstance(content, list) else []:
            if isinstance(block, dict) and block.get("type") in ("tool_use", "server_tool_use"):
                latest = _tool_summary(str(block.get("name") or "tool"), block.get("input"))
    return latest


@dataclass
class ToolCalls:
    """Tool calls in a stretch of transcript: what each one was (tool_use id -> 'Bash:
    sleep 30'), the timeline's names for telemetry's tool spans, and which have no result
    yet, which a live run's stall rule reads."""

    named: dict[str, str] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)  # ids, in call order

    @property
    def awaiting(self) -> dict[str, str]:
        """The calls without a result: id -> what was called."""
        return {use_id: self.named[use_id] for use_id in self.pending}


def tool_calls_by_id(records: Iterable[Record]) -> ToolCalls:
    calls = ToolCalls()
    answered = set()
    for record in records:
        content = _message(record).get("content")
        for block in content if isinstance(content, list) else []:
            if not isinstance(block, dict):
                continue
            if record.type == "assistant" and block.get("type") in ("tool_use", "server_tool_use"):
                name = str(block.get("name") or "tool")
                calls.named[str(block.get("id"))] = _tool_summary(name, block.get("input"))
            elif record.type == "user" and block.get("type") == "tool_result":
                answered.add(str(block.get("tool_use_id")))
    calls.pending = [use_id for use_id in calls.named if use_id not in answered]
    return calls


USAGE_KEYS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)

# Record types that carry a conversation: a file without any is not a run.
CONVERSATION_TYPES = ("user", "assistant")


@dataclass
class UsageSummary:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_write_1h_tokens: int = 0  # the part of cache_creation written with a 1-hour TTL
    responses: int = 0  # API responses counted (distinct message id + request id)
    models: set[str] = field(default_factory=set)
    legacy_cost_usd: float | None = None  # 1.0.x lines carried costUSD
    records: int = 0
    malformed: int = 0
    conversation_records: int = 0  # user / assistant messages: zero means no run at all
    first_timestamp: str = ""
    last_timestamp: str = ""
    cwd: str = ""
    session_ids: set[str] = field(default_factory=set)
    cost: CostTally = field(default_factory=CostTally)

    def as_usage(self) -> dict[str, int]:
        return {key: getattr(self, key) for key in USAGE_KEYS}

    @property
    def has_conversation(self) -> bool:
        return self.conversation_records > 0

    @property
    def cost_usd(self) -> Decimal | None:
        """Computed from the price table; None when a response could not be priced."""
        return self.cost.cost_usd if self.responses else None


def _message_and_request(data: dict[str, Any]) -> tuple[Any, Any]:
    """The API message a record carries and its request id; `progress` records of
    2.1.x nest a subagent's assistant record (with its own requestId) in data.message."""
    if data.get("type") == "progress":
        inner = data.get("data")
        nested = inner.get("message") if isinstance(inner, dict) else None
        if isinstance(nested, dict):
            return nested.get("message"), nested.get("requestId")
        return None, None
    return data.get("message"), data.get("requestId")


class UsageAccumulator:
    """Feed records in any number of chunks, from any number of files (a session's
    main file and its subagents' files); read `.summary` at any point.

    Each API response counts once, by (message.id, requestId), with its largest usage,
    whichever file or record (a progress copy, a resume copy) it appears in.
    """

    def __init__(self) -> None:
        self.summary = UsageSummary()
        self._best: dict[str, ResponseUsage] = {}  # "<message id> <request id>"

    def add(self, record: Record) -> None:
        summary = self.summary
        summary.records += 1
        data = record.data
        if data is None:
            summary.malformed += 1
            return
        kind = data.get("type")
        if kind in CONVERSATION_TYPES and isinstance(data.get("message"), dict):
            summary.conversation_records += 1
        timestamp = data.get("timestamp")
        if isinstance(timestamp, str) and timestamp:
            summary.first_timestamp = summary.first_timestamp or timestamp
            summary.last_timestamp = timestamp
        if isinstance(data.get("cwd"), str) and not summary.cwd:
            summary.cwd = data["cwd"]
        if isinstance(data.get("sessionId"), str):
            summary.session_ids.add(data["sessionId"])
        if isinstance(data.get("costUSD"), int | float):
            summary.legacy_cost_usd = (summary.legacy_cost_usd or 0.0) + float(data["costUSD"])
        message, request_id = _message_and_request(data)
        if not isinstance(message, dict) or not isinstance(message.get("usage"), dict):
            return
        model = message.get("model")
        if model == SYNTHETIC_MODEL:
            return  # made locally by the CLI: no API call, no tokens, no cost
        model = model if isinstance(model, str) else ""
        if model:
            summary.models.add(model)
        response = ResponseUsage.from_message(
            model, message["usage"], timestamp if isinstance(timestamp, str) else ""
        )
        key = f"{message.get('id') or f'@{record.offset}'} {request_id or ''}"
        best = self._best.get(key)
        if best is not None and response.total <= best.total:
            return
        old = best or ResponseUsage(model=model)
        summary.input_tokens += response.input_tokens - old.input_tokens
        summary.output_tokens += response.output_tokens - old.output_tokens
        summary.cache_read_input_tokens += response.cache_read_tokens - old.cache_read_tokens
        summary.cache_creation_input_tokens += response.cache_write_tokens - old.cache_write_tokens
        summary.cache_write_1h_tokens += (response.cache_write_1h_tokens or 0) - (
            old.cache_write_1h_tokens or 0
        )
        if best is None:
            summary.responses += 1
        summary.cost.replace(best, response)
        self._best[key] = response


def summarize_usage(records: Iterable[Record]) -> UsageSummary:
    accumulator = UsageAccumulator()
    for record in records:
        accumulator.add(record)
    return accumulator.summary


def summarize_file(
    path: Path,
    chunk_size: int = 4 * 1024 * 1024,
    accumulator: UsageAccumulator | None = None,
) -> UsageSummary:
    """Token totals and facts of a whole transcript, read in chunks (never all at once).
    Pass one accumulator for a session's several files: responses count once overall."""
    accumulator = accumulator or UsageAccumulator()
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as handle:
        carry = b""
        offset = 0  # file offset of carry[0]
        while block := handle.read(chunk_size):
            data = carry + block
            cut = data.rfind(b"\n") + 1
            for record in iter_records(data[:cut], base_offset=offset):
                accumulator.add(record)
            carry = data[cut:]
            offset += cut
        if carry.strip():
            accumulator.add(parse_line(carry, offset))
    return accumulator.summary
