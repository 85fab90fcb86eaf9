"""Transcripts by session id, inside the configured roots only.

The transcripts package is plain (roots passed in); this module supplies the
roots from settings and the hints a sidecar or a Session row gives. A hint is
only ever a hint: whatever a sidecar says, nothing outside the roots is read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from sessions_app.transcripts.locate import Located, find_subagent_transcripts, locate_transcript
from sessions_app.transcripts.parse import iter_records, to_entries
from sessions_app.transcripts.parse import last_tool_call as last_tool_call_in
from sessions_app.transcripts.tail import OffsetBeyondEnd, read_before, read_from, read_tail
from wrapper.formats import Sidecar

log = logging.getLogger(__name__)

# Enough of the end of a transcript to find the latest tool call without reading it all.
LAST_TOOL_CALL_WINDOW = 64 * 1024
# Bounds on one page's work whatever the transcript holds: a line longer than the window
# (a base64 image) is read to its end up to this, and at most this many subagents are shown.
PAGE_MAX_LINE = 8 * 1024 * 1024
MAX_SUBAGENTS_SHOWN = 20


def locate(session_id: str, *, sidecar: Sidecar | None = None, session=None) -> Located | None:
    """The live transcript if Claude Code still has it, else the archived copy."""
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


@dataclass
class Subagent:
    name: str  # agent-<id>
    entries: list
    total: int


def subagents(located: Located | None, max_bytes: int = 64 * 1024) -> list[Subagent]:
    """Subagent (sidechain) transcripts of a session, each as the tail of its entries."""
    if located is None:
        return []
    roots = [*settings.OPSCONSOLE_CLAUDE_CONFIG_DIRS, settings.OPSCONSOLE_STATE.archive]
    found = []
    for path in find_subagent_transcripts(located.path, roots)[-MAX_SUBAGENTS_SHOWN:]:
        try:
            chunk = read_tail(path, max_bytes)
        except OSError:
            continue
        entries = to_entries(iter_records(chunk.data, base_offset=chunk.start))
        found.append(Subagent(name=path.stem, entries=entries, total=chunk.total))
    return found


def find_live_transcript(sidecar: Sidecar) -> Path | None:
    located = locate(sidecar.session_id, sidecar=sidecar)
    return located.path if located and located.kind == "live" else None


def last_tool_call(sidecar: Sidecar) -> str | None:
    """One line naming the agent's latest tool call, for the live list."""
    path = find_live_transcript(sidecar)
    if path is None:
        return None
    try:
        chunk = read_tail(path, LAST_TOOL_CALL_WINDOW)
    except OSError as exc:
        log.debug("cannot read %s: %s", path, exc)
        return None
    return last_tool_call_in(iter_records(chunk.data, base_offset=chunk.start))


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
    max_bytes: int | None = None,
) -> TranscriptPage:
    """The tail of a transcript as display entries; or the bytes after `after` (a
    follower), or the page that ends at `before` (reading back through a large one)."""
    located = locate(session_id, sidecar=sidecar, session=session)
    if located is None:
        return TranscriptPage(located=None)
    limit = max_bytes or settings.OPSCONSOLE_TAIL_BYTES
    try:
        if after is not None:
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
    entries = to_entries(iter_records(chunk.data, base_offset=chunk.start))
    return TranscriptPage(
        located=located,
        entries=entries,
        start=chunk.start,
        next_offset=chunk.end,
        total=chunk.total,
    )
