"""Transcripts by session id, inside the configured roots only.

The transcripts package is plain (roots passed in); this module supplies the
roots from settings and the hints a sidecar or a Session row gives. A hint is
only ever a hint: whatever a sidecar says, nothing outside the roots is read.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from sessions_app import remote_transcripts, search
from sessions_app.remote_transcripts import cache_root
from sessions_app.transcripts.locate import Located, find_subagent_transcripts, locate_transcript
from sessions_app.transcripts.parse import (
    ToolCalls,
    UsageSummary,
    fold_noise,
    iter_records,
    to_entries,
    tool_calls_by_id,
)
from sessions_app.transcripts.parse import last_tool_call as last_tool_call_in
from sessions_app.transcripts.running_cost import RunningCost
from sessions_app.transcripts.tail import OffsetBeyondEnd, read_before, read_from, read_tail
from wrapper.formats import Sidecar, copy_into_archive

log = logging.getLogger(__name__)

# Enough of the end of a transcript to find the latest tool call without reading it all.
LAST_TOOL_CALL_WINDOW = 64 * 1024
# Bounds on one page's work whatever the transcript holds: a line longer than the window
# (a base64 image) is read to its end up to this, and at most this many subagents are shown.
PAGE_MAX_LINE = 8 * 1024 * 1024
MAX_SUBAGENTS_SHOWN = 20


def locate(session_id: str, *, sidecar: Sidecar | None = None, session=None) -> Located | None:
    """The live transcript if Claude Code still has it, else the archived copy; for a
    run on a reporting host, the copy the console keeps of it (remote_transcripts:
    from object storage, a private local copy brought up to date first)."""
    if session is not None and session.host and session.host != settings.OPSCONSOLE_HOST:
        copy = remote_transcripts.readable_copy(session.host, session_id)
        if copy is not None:
            return Located(copy, "archive")
    cwd = sidecar.cwd if sidecar else (session.cwd if session else None)
    config_dir = (
        sidecar.claude_config_dir if sidecar else (session.claude_config_dir if session else None)
    )
    return locate_transcript(
        session_id,
        config_dirs=list(settings.OPSCONSOLE_CLAUDE_CONFIG_DIRS),
        archive_root=settings.OPSCONSOLE_STATE.archive,
        cwd_hint=cwd or None,
        config_dir_hint=config_dir or None,
        archive_hint=(session.archive_path or None) if session else None,
    )


def roots() -> list[Path]:
    """Everything the console may read transcripts from."""
    return [
        *(Path(r) for r in settings.OPSCONSOLE_CLAUDE_CONFIG_DIRS),
        Path(settings.OPSCONSOLE_STATE.archive),
        cache_root(),
    ]


@dataclass
class Subagent:
    name: str  # agent-<id>
    entries: list
    total: int
    start: int = 0  # byte offset of the first entry shown (a tail of a long one)


def subagents(located: Located | None, max_bytes: int = 64 * 1024) -> list[Subagent]:
    """Subagent (sidechain) transcripts of a session, each as the tail of its entries."""
    if located is None:
        return []
    found = []
    for path in find_subagent_transcripts(located.path, roots())[-MAX_SUBAGENTS_SHOWN:]:
        try:
            chunk = read_tail(path, max_bytes)
        except OSError:
            continue
        entries = fold_noise(to_entries(iter_records(chunk.data, base_offset=chunk.start)))
        found.append(
            Subagent(name=path.stem, entries=entries, total=chunk.total, start=chunk.start)
        )
    return found


# ----------------------------------------------------------------------------- at ingest


def session_usage(main: Path) -> UsageSummary:
    """Tokens and computed cost of a session: its main file and every subagent file,
    each API response once (pricing.transcript_cost, within the console's roots)."""
    return RunningCost(main, roots()).update(final=True)


def archive_subagents(main: Path, archive_main: Path) -> int:
    """Copy a session's subagent files beside its archived main copy, in the 2.1.x
    layout (`<archived name>/subagents/agent-<id>.jsonl`), so they outlive Claude
    Code's cleanup as the main file does. Returns how many were copied."""
    copied = 0
    folder = archive_main.with_suffix("") / "subagents"
    for path in find_subagent_transcripts(main, roots()):
        if folder in path.parents:
            continue  # already the archived copy
        try:
            copy_into_archive(path, folder / path.name)
            copied += 1
        except OSError as exc:
            log.warning("could not archive subagent transcript %s: %s", path, exc)
    return copied


def record_transcript_figures(session, main: Path | None = None, *, index: bool = True) -> bool:
    """Fill a Session row from its transcripts: tokens (main + subagents), the cost we
    compute, the subagents' archive copies and the search index, all in one read of
    each file. Never raises for a missing or unreadable transcript; returns whether
    one was read."""
    if main is None:
        located = locate(str(session.session_id), session=session)
        if located is None:
            return False
        main = located.path
    try:
        if session.archive_path and Path(session.archive_path) != main:
            archive_subagents(main, Path(session.archive_path))
        summary, files = read_session(main, session if index else None)
    except OSError as exc:
        log.warning("cannot read transcripts of %s: %s", session.session_id, exc)
        return False
    fields = apply_summary(session, summary, files)
    if index:
        fields.append("search_indexed_bytes")
    session.save(update_fields=fields)
    return True


def apply_summary(session, summary: UsageSummary, files: list[Path]) -> list[str]:
    """Set a Session's figures from its transcripts' summary; returns the fields set."""
    fields = ["cost_computed_usd", "subagent_files", "updated_at"]
    session.cost_computed_usd = summary.cost_usd
    session.subagent_files = len(files) - 1
    if summary.responses:
        usage = summary.as_usage()
        session.input_tokens = usage["input_tokens"]
        session.output_tokens = usage["output_tokens"]
        session.cache_read_tokens = usage["cache_read_input_tokens"]
        session.cache_creation_tokens = usage["cache_creation_input_tokens"]
        fields += ["input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens"]
    return fields


def read_session(main: Path, index_for=None) -> tuple[UsageSummary, list[Path]]:
    """One streaming read of a session's files: its usage summary (tokens, computed
    cost), the files read, and, given a Session (`index_for`), its lines in the search
    index (`search_indexed_bytes` set on it, not saved)."""
    running = RunningCost(main, roots())
    files = running.files()
    if index_for is None:
        return running.update(final=True), files
    replace = index_for.search_indexed_bytes is not None
    with search.Indexer(str(index_for.session_id), main, replace=replace) as indexer:
        summary = running.update(final=True, on_record=indexer.add)
    total = 0
    for path in files:
        with contextlib.suppress(OSError):
            total += path.stat().st_size
    index_for.search_indexed_bytes = total
    return summary, files


# Running costs of live sessions, kept between page polls so each poll reads only
# what was appended. Process-local and bounded; the monitor keeps its own.
_RUNNING: dict[str, RunningCost] = {}
_RUNNING_LIMIT = 64


def live_running_cost(session_id: str, *, sidecar: Sidecar | None = None, session=None):
    """Tokens and cost so far of a live run (main + subagent files), or None when its
    transcript is not found. See transcripts.running_cost.RunningCost."""
    located = locate(session_id, sidecar=sidecar, session=session)
    if located is None:
        return None
    running = _RUNNING.get(session_id)
    if running is None or running.main != located.path:
        if len(_RUNNING) >= _RUNNING_LIMIT:
            _RUNNING.pop(next(iter(_RUNNING)))
        running = _RUNNING[session_id] = RunningCost(located.path, roots())
    try:
        return running.update()
    except OSError as exc:
        log.debug("cannot read %s: %s", located.path, exc)
        return None


def find_live_transcript(sidecar: Sidecar) -> Path | None:
    located = locate(sidecar.session_id, sidecar=sidecar)
    return located.path if located and located.kind == "live" else None


def last_tool_call(path: Path) -> str | None:
    """One line naming the agent's latest tool call, for the live list, from the end of
    its transcript (never the whole file). OSError when it cannot be read."""
    chunk = read_tail(path, LAST_TOOL_CALL_WINDOW)
    return last_tool_call_in(iter_records(chunk.data, base_offset=chunk.start))


# How much of a transcript's end the timeline reads for its tools' commands.
TOOL_CALLS_WINDOW = 4 * 1024 * 1024


def tool_calls(located: Located | None) -> ToolCalls:
    """The tool calls in the transcript's last few MB: named, and which await a result."""
    if located is None:
        return ToolCalls()
    try:
        chunk = read_tail(located.path, TOOL_CALLS_WINDOW)
    except OSError:
        return ToolCalls()
    return tool_calls_by_id(iter_records(chunk.data, base_offset=chunk.start))


@dataclass
class TranscriptPage:
    """Rendered-ready entries of one slice of a transcript, and where the next read starts."""

    located: Located | None
    entries: list = field(default_factory=list)
    start: int = 0  # byte offset of the first entry shown
    next_offset: int = 0  # where a follower asks from next (HTTP Range: bytes=N-)
    total: int = 0

    @property
    def has_earlier(self) -> bool:
        return self.start > 0


def read_page(
    session_id: str,
    *,
    sidecar: Sidecar | None = None,
    session=None,
    after: int | None = None,
    before: int | None = None,
    at: int | None = None,
    max_bytes: int | None = None,
) -> TranscriptPage:
    """The tail of a transcript as display entries; or the bytes after `after` (a
    follower), or the page that ends at `before` (reading back through a large one)."""
    located = locate(session_id, sidecar=sidecar, session=session)
    if located is None:
        return TranscriptPage(located=None)
    limit = max_bytes or settings.OPSCONSOLE_TAIL_BYTES
    try:
        if at is not None:  # a search hit: the page that starts at that line
            chunk = read_from(located.path, max(0, at), limit, max_line=PAGE_MAX_LINE)
        elif after is not None:
            chunk = read_from(located.path, max(0, after), limit, max_line=PAGE_MAX_LINE)
        elif before is not None:
            chunk = read_before(located.path, max(0, before), limit)
        else:
            chunk = read_tail(located.path, limit)
    except OffsetBeyondEnd as exc:
        # The file shrank or was replaced: start over from its tail.
        log.info("transcript %s shrank to %s bytes; re-reading its tail", session_id, exc.total)
        return read_page(session_id, sidecar=sidecar, session=session, max_bytes=max_bytes)
    except OSError as exc:
        log.warning("cannot read transcript %s: %s", located.path, exc)
        return TranscriptPage(located=located)
    entries = fold_noise(to_entries(iter_records(chunk.data, base_offset=chunk.start)))
    return TranscriptPage(
        located=located,
        entries=entries,
        start=chunk.start,
        next_offset=chunk.end,
        total=chunk.total,
    )
