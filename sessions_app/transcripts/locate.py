"""Find a session's transcript, inside the allowed roots and nowhere else.

Sidecars and Session rows give hints (a cwd, a config dir, an archive path);
a hint can narrow the search but never widen it: every candidate is resolved
and must lie under one of the roots, and must be a regular file.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from wrapper.formats import PROJECT_DIR_NAME_LIMIT, encode_project_dir, is_session_id


@dataclass(frozen=True)
class Located:
    path: Path
    kind: str  # "live": Claude Code's own file; "archive": the copy the wrapper or console kept


def _within(path: Path, root: Path) -> bool:
    try:
        real = os.path.realpath(path)
        real_root = os.path.realpath(root)
    except OSError:
        return False
    return os.path.commonpath([real, real_root]) == real_root


def regular_file_within(path: Path, roots: list[Path]) -> bool:
    """True for a regular file that resolves inside one of the roots."""
    if not any(_within(path, root) for root in roots):
        return False
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _live_candidates(session_id: str, config_dir: Path, cwd_hint: str | None):
    projects = config_dir / "projects"
    name = f"{session_id}.jsonl"
    if cwd_hint:
        encoded = encode_project_dir(cwd_hint)
        yield projects / encoded[:PROJECT_DIR_NAME_LIMIT] / name
        if len(encoded) > PROJECT_DIR_NAME_LIMIT:
            # Long names carry a runtime-dependent hash suffix: match by prefix.
            prefix = encoded[:PROJECT_DIR_NAME_LIMIT]
            try:
                for entry in os.scandir(projects):
                    if entry.name.startswith(prefix):
                        yield Path(entry.path) / name
            except OSError:
                return
    try:
        for entry in os.scandir(projects):
            if entry.is_dir(follow_symlinks=False):
                yield Path(entry.path) / name
    except OSError:
        return


def locate_transcript(
    session_id: str,
    *,
    config_dirs: list[Path],
    archive_root: Path,
    cwd_hint: str | None = None,
    config_dir_hint: str | None = None,
    archive_hint: str | None = None,
) -> Located | None:
    """The live transcript if Claude Code still has it, else the archived copy, else None."""
    if not is_session_id(session_id):
        raise ValueError("a session id is a lowercase UUID")
    roots = [Path(root) for root in config_dirs]
    ordered = list(roots)
    if config_dir_hint:
        hinted = Path(config_dir_hint)
        matching = [r for r in roots if os.path.realpath(r) == os.path.realpath(hinted)]
        ordered = matching + [r for r in roots if r not in matching]
    for config_dir in ordered:
        for candidate in _live_candidates(session_id, config_dir, cwd_hint):
            if regular_file_within(candidate, [config_dir]):
                return Located(candidate, "live")
    return locate_archived(session_id, archive_root=archive_root, archive_hint=archive_hint)


def locate_archived(
    session_id: str, *, archive_root: Path, archive_hint: str | None = None
) -> Located | None:
    if not is_session_id(session_id):
        raise ValueError("a session id is a lowercase UUID")
    if archive_hint:
        hinted = Path(archive_hint)
        if hinted.name.endswith(f"_{session_id}.jsonl") and regular_file_within(
            hinted, [archive_root]
        ):
            return Located(hinted, "archive")
    try:
        days = sorted(os.scandir(archive_root), key=lambda e: e.name, reverse=True)
    except OSError:
        return None
    suffix = f"_{session_id}.jsonl"
    for day in days:
        if not day.is_dir(follow_symlinks=False):
            continue
        try:
            for entry in os.scandir(day.path):
                if entry.name.endswith(suffix) and regular_file_within(
                    Path(entry.path), [archive_root]
                ):
                    return Located(Path(entry.path), "archive")
        except OSError:
            continue
    return None


# How much of a 2.0.x agent file is read to find the session it belongs to.
AGENT_HEAD_BYTES = 64 * 1024


def parent_session_of(agent_file: Path) -> str | None:
    """The `sessionId` an agent file names (2.0.x: the parent session's), from its head."""
    try:
        fd = os.open(agent_file, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as handle:
            head = handle.read(AGENT_HEAD_BYTES)
    except OSError:
        return None
    for line in head.split(b"\n"):
        marker = line.find(b'"sessionId":"')
        if marker != -1:
            value = line[marker + 13 : marker + 13 + 36].decode("ascii", "replace")
            return value if is_session_id(value) else None
    return None


# folder -> (its mtime, its agent files by parent): a folder's listing changes (and
# its mtime with it) only when a file is added or removed, so backfill and a live
# run's cost read each folder's agent heads once, not once per session.
_AGENT_MAPS: dict[str, tuple[int, dict[str, list[Path]]]] = {}


def agent_files_by_parent(folder: Path) -> dict[str, list[Path]]:
    """2.0.x layout: `agent-<id>.jsonl` files beside the main ones, grouped by the
    session each names."""
    try:
        mtime = os.stat(folder).st_mtime_ns
    except OSError:
        return {}
    cached = _AGENT_MAPS.get(str(folder))
    if cached and cached[0] == mtime:
        return cached[1]
    grouped: dict[str, list[Path]] = {}
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return grouped
    for entry in entries:
        if (
            entry.name.startswith("agent-")
            and entry.name.endswith(".jsonl")
            and entry.is_file(follow_symlinks=False)
        ):
            parent = parent_session_of(Path(entry.path))
            if parent:
                grouped.setdefault(parent, []).append(Path(entry.path))
    if len(_AGENT_MAPS) > 256:
        _AGENT_MAPS.clear()
    _AGENT_MAPS[str(folder)] = (mtime, grouped)
    return grouped


def find_subagent_transcripts(main: Path, roots: list[Path]) -> list[Path]:
    """Subagent (sidechain) transcripts of a session: `<uuid>/subagents/agent-*.jsonl`
    (2.1.x, and our archive), and `agent-*.jsonl` beside the main file that name it as
    their session (2.0.x)."""
    found: list[Path] = []
    folder = main.with_suffix("") / "subagents"
    # Newer builds nest some agents a level or two deeper (subagents/workflows/<id>/).
    for directory, subdirs, names in os.walk(folder):
        if directory.count(os.sep) - str(folder).count(os.sep) >= 3:
            subdirs.clear()
        subdirs.sort()
        found.extend(
            Path(directory) / name
            for name in sorted(names)
            if name.startswith("agent-")
            and name.endswith(".jsonl")
            and regular_file_within(Path(directory) / name, roots)
        )
    if is_session_id(main.stem):
        found.extend(
            path
            for path in agent_files_by_parent(main.parent).get(main.stem, [])
            if regular_file_within(path, roots)
        )
    return found
