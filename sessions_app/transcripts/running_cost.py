"""The running cost of a session: its transcripts read incrementally, each update reading
only the bytes appended since the last one, and priced response by response
(sessions_app.pricing). Plain module: no Django."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from sessions_app.transcripts.locate import find_subagent_transcripts
from sessions_app.transcripts.parse import Record, UsageAccumulator, iter_records, parse_line


class RunningCost:
    """Tokens and cost of a live session (main transcript + its subagent files), read
    incrementally: each `update()` reads only what was appended since the last one.

    Memory stays bounded by the number of API responses, never by file size.
    """

    def __init__(self, main: Path, roots: list[Path] | None = None) -> None:
        self.main = Path(main)
        self.roots = [Path(r) for r in (roots or [self.main.parent])]
        self.accumulator = UsageAccumulator()
        self._positions: dict[Path, tuple[int, int]] = {}  # path -> (inode, offset)
        self._carry: dict[Path, bytes] = {}

    def files(self) -> list[Path]:
        return [self.main, *find_subagent_transcripts(self.main, self.roots)]

    def update(
        self,
        chunk_size: int = 4 * 1024 * 1024,
        *,
        final: bool = False,
        on_record: Callable[[Path, Record], None] | None = None,
    ):
        """Read what is new in every file; return the UsageSummary (tokens + cost).

        `final`: the run has ended, so a last line without its newline is complete.
        `on_record(path, record)` sees every record read (the search index is built
        in the same pass)."""
        for path in self.files():
            try:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            except OSError:
                continue
            with os.fdopen(fd, "rb") as handle:
                inode = os.fstat(handle.fileno()).st_ino
                known_inode, offset = self._positions.get(path, (inode, 0))
                size = os.fstat(handle.fileno()).st_size
                if known_inode != inode or size < offset:
                    # Replaced or truncated: its responses are still deduplicated by id,
                    # so reading it again from the start adds nothing twice.
                    offset, self._carry[path] = 0, b""
                handle.seek(offset)
                carry = self._carry.get(path, b"")
                while block := handle.read(chunk_size):
                    data = carry + block
                    cut = data.rfind(b"\n") + 1
                    for record in iter_records(data[:cut], base_offset=offset - len(carry)):
                        self.accumulator.add(record)
                        if on_record:
                            on_record(path, record)
                    offset += len(block)
                    carry = data[cut:]
                if final and carry.strip():
                    record = parse_line(carry, offset - len(carry))
                    if record.data is not None:
                        self.accumulator.add(record)
                        if on_record:
                            on_record(path, record)
                        carry = b""
                self._positions[path] = (inode, offset)
                self._carry[path] = carry
        return self.accumulator.summary


def transcript_cost(main: Path, roots: list[Path] | None = None):
    """Tokens and cost of a whole session on disk (main file + subagent files), read as
    a stream. The figures a finished run is recorded with."""
    return RunningCost(main, roots).update(final=True)
