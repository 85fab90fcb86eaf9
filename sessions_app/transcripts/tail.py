"""Seek-based reads of a transcript that is being appended to.

Nothing here reads a whole file: a 1 GB transcript costs what a 1 MB one does.
Reads end at a line boundary, so a follower that asks again from `Chunk.end`
never sees half a line; a fragment still being written is left for next time.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

# A single line may be several MB (base64 images); past this a capped read stops anyway.
MAX_LINE_EXTENSION = 64 * 1024 * 1024
_READ_STEP = 1024 * 1024
# Offsets are file positions: at most 19 digits (2**63 - 1), or seek() overflows.
MAX_OFFSET = 2**63 - 1
_OFFSET_RE = re.compile(r"[0-9]{1,19}")
_RANGE_RE = re.compile(r"\s*bytes\s*=\s*([0-9]{1,19})\s*-\s*")


@dataclass(frozen=True)
class Chunk:
    data: bytes
    start: int  # offset of data[0] in the file
    end: int  # offset just past the last byte returned: where the next read starts
    total: int  # file size at the time of the read


class OffsetBeyondEnd(ValueError):
    """The requested offset is past the end: the file shrank or was replaced."""

    def __init__(self, offset: int, total: int):
        super().__init__(f"offset {offset} is beyond the end of the file ({total} bytes)")
        self.offset = offset
        self.total = total


def parse_range_header(value: str | None) -> int | None:
    """The N of `Range: bytes=N-`; None for anything else (then the whole tail is served)."""
    if not value:
        return None
    match = _RANGE_RE.fullmatch(value)
    if match is None:
        return None
    offset = int(match.group(1))
    return offset if offset <= MAX_OFFSET else None


def parse_offset(value: str | None) -> int | None:
    """A byte offset from a query string (`before`, `after`): None when absent, ValueError
    when it is not a whole number of bytes a file can have (negative, 1e9, 5,000 digits)."""
    if value is None:
        return None
    if _OFFSET_RE.fullmatch(value) is None or int(value) > MAX_OFFSET:
        raise ValueError(f"not a byte offset: {value[:40]!r}")
    return int(value)


def open_transcript(path: Path):
    """A binary handle on a regular file, never through a symlink."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    handle = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
        handle.close()
        raise OSError(f"{path} is not a regular file")
    return handle


def _open(path: Path):
    handle = open_transcript(path)
    return handle, os.fstat(handle.fileno()).st_size


def read_tail(path: Path, max_bytes: int) -> Chunk:
    """The last `max_bytes` (at most) of complete lines, starting at a line boundary."""
    handle, size = _open(path)
    with handle:
        start = max(0, size - max(0, max_bytes))
        handle.seek(start)
        data = handle.read(size - start)
    if start > 0:
        newline = data.find(b"\n")
        if newline == -1:
            return Chunk(b"", size, size, size)  # one line longer than the window
        data = data[newline + 1 :]
        start += newline + 1
    data = _complete_lines(data)
    return Chunk(data, start, start + len(data), size)


def read_before(path: Path, end: int, max_bytes: int) -> Chunk:
    """Complete lines ending at byte `end` (a line boundary), about `max_bytes` of them:
    the page before one already shown."""
    handle, size = _open(path)
    end = max(0, min(end, size))  # a negative end once read the whole file
    max_bytes = max(0, max_bytes)
    with handle:
        start = max(0, end - max_bytes)
        handle.seek(start)
        data = handle.read(end - start)
    if start > 0:
        newline = data.find(b"\n")
        data = b"" if newline == -1 else data[newline + 1 :]
        start = end - len(data)
    return Chunk(data, start, end, size)


def read_from(path: Path, offset: int, max_bytes: int, max_line: int = MAX_LINE_EXTENSION) -> Chunk:
    """Complete lines from byte `offset` on, about `max_bytes` of them (HTTP Range: bytes=N-).

    A line longer than the window is read on to its end, up to `max_line` bytes: the work
    of one call is at most max_bytes + max_line, whatever the file holds.
    """
    offset = max(0, offset)
    max_bytes = max(0, max_bytes)
    handle, size = _open(path)
    if offset > size:
        handle.close()
        raise OffsetBeyondEnd(offset, size)
    with handle:
        handle.seek(offset)
        data = handle.read(min(size - offset, max_bytes))
        capped = offset + len(data) < size
        if capped and b"\n" not in data:
            # The window ends inside one long line: read on to its end, within reason.
            while len(data) < max_line and offset + len(data) < size:
                step = handle.read(min(_READ_STEP, max_line - len(data)))
                data += step
                if b"\n" in step:
                    break
    data = _complete_lines(data)
    return Chunk(data, offset, offset + len(data), size)


def _complete_lines(data: bytes) -> bytes:
    """Drop a trailing fragment unless it is a whole JSON value (a file without a final newline)."""
    last_newline = data.rfind(b"\n")
    fragment = data[last_newline + 1 :]
    if not fragment.strip():
        return data
    try:
        json.loads(fragment)
    except ValueError:
        return data[: last_newline + 1]
    return data
