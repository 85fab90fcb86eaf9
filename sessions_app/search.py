"""Full-text search over every transcript on record: prompts, answers, tool calls, results.

The index lives in its own table, `sessions_app_transcriptline`, made per database by
migration 0005: an FTS5 virtual table on SQLite (the embedded default), a table with a
generated `tsvector` column and a GIN index on PostgreSQL. One row per conversation
entry (what the session page shows as one row), keyed by session, file and byte offset
so a match links to its place. Files are indexed as a stream: a 1 GB transcript is
never held in memory, only one chunk of it and one batch of rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from django.db import connection, transaction

from sessions_app.models import Session
from sessions_app.transcripts.parse import record_entries
from wrapper.formats import clean_text

TABLE = "sessions_app_transcriptline"
# Entries worth finding; progress, snapshots and other bookkeeping are left out.
INDEXED_KINDS = {
    "user_prompt",
    "assistant_text",
    "thinking",
    "tool_call",
    "tool_result",
    "error",
    "summary",
    "compact_summary",
    "system",
}
INDEXED_CHARS = 4000  # of each entry: as much as the page shows unfolded
BATCH_ROWS = 500
CHUNK_BYTES = 4 * 1024 * 1024
RESULTS = 50
HIT_START, HIT_END = "\x02", "\x03"  # marks around matched words in a snippet


def supported() -> bool:
    return connection.vendor in ("sqlite", "postgresql")


# ----------------------------------------------------------------------------- indexing


class Indexer:
    """Puts one session's lines in the index as records stream past (fed by the same
    read that counts its tokens): `with Indexer(id, main) as index: ... index.add(path,
    record)`. Rows go in batches inside one transaction."""

    INSERT = (
        f"INSERT INTO {TABLE} (session_id, part, byte_offset, kind, text) "
        "VALUES (%s, %s, %s, %s, %s)"
    )

    def __init__(self, session_id: str, main: Path, *, replace: bool = True) -> None:
        self.session_id = str(session_id)
        self.main = main
        self.replace = replace
        self.count = 0
        self._batch: list[tuple] = []
        self._atomic = transaction.atomic()
        self._cursor = None

    def __enter__(self) -> Indexer:
        if supported():
            self._atomic.__enter__()
            self._cursor = connection.cursor()
            if self.replace:
                self._cursor.execute(
                    f"DELETE FROM {TABLE} WHERE session_id = %s", [self.session_id]
                )
        return self

    def add(self, path: Path, record) -> None:
        if self._cursor is None:
            return
        part = "" if path == self.main else path.stem
        for entry in record_entries(record):
            if entry.kind in INDEXED_KINDS and entry.text.strip():
                text = entry.text[:INDEXED_CHARS]
                if entry.label and entry.kind == "tool_call":
                    text = f"{entry.label} {text}"
                # Raw SQL, past sessions_app.fields: cleaned here (an agent that reads a
                # binary file writes a NUL, which PostgreSQL's text refuses).
                text = clean_text(text)
                self._batch.append((self.session_id, part, entry.offset, entry.kind, text))
        if len(self._batch) >= BATCH_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self._batch:
            self._cursor.executemany(self.INSERT, self._batch)
            self.count += len(self._batch)
            self._batch.clear()

    def __exit__(self, kind, value, traceback) -> None:
        if self._cursor is None:
            return
        try:
            if kind is None:
                self._flush()
        finally:
            self._cursor.close()
            self._atomic.__exit__(kind, value, traceback)


def forget_sessions(session_ids) -> None:
    """Take runs' lines out of the index (their records are being deleted)."""
    if not supported():
        return
    ids = [str(session_id) for session_id in session_ids]
    with connection.cursor() as cursor:
        for start in range(0, len(ids), 500):  # one pass over the table per 500 runs
            chunk = ids[start : start + 500]
            marks = ", ".join(["%s"] * len(chunk))
            cursor.execute(f"DELETE FROM {TABLE} WHERE session_id IN ({marks})", chunk)


# ----------------------------------------------------------------------------- querying

_WORD_RE = re.compile(r"\w+", re.UNICODE)


@dataclass
class Hit:
    session_id: str
    part: str  # "" for the main transcript, else the subagent file's name
    offset: int
    kind: str
    snippet: list[tuple[str, bool]]  # (text, is a matched word): the template escapes both
    session: object = None  # the Session row, when search_with_sessions found it


def _words(query: str) -> list[str]:
    return _WORD_RE.findall(query)[:12]


def _split_snippet(text: str) -> list[tuple[str, bool]]:
    parts: list[tuple[str, bool]] = []
    for piece in re.split(f"({HIT_START}[^{HIT_END}]*{HIT_END})", text or ""):
        if piece.startswith(HIT_START):
            parts.append((piece.strip(HIT_START + HIT_END), True))
        elif piece:
            parts.append((re.sub(r"\s+", " ", piece), False))
    return parts


# Below this many matches a word is rare: its matches are read through the GIN index
# and sorted; above, they are dense and the newest are found walking the primary key
# backwards. PostgreSQL cannot tell the two apart itself (a word absent from its
# statistics is estimated at 0.5% of rows), and each plan is slow for the other case.
RARE_MATCHES = 1000


def _postgres_newest_matches(cursor, text: str, limit: int) -> list[int]:
    with transaction.atomic():
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_indexscan = off")
        cursor.execute(
            f"SELECT id FROM {TABLE} WHERE tsv @@ plainto_tsquery('simple', %s) LIMIT %s",
            [text, RARE_MATCHES],
        )
        ids = [row[0] for row in cursor.fetchall()]
        # Back to normal at once, in case a transaction of the caller's goes on.
        cursor.execute("SET LOCAL enable_seqscan = on")
        cursor.execute("SET LOCAL enable_indexscan = on")
    if len(ids) < RARE_MATCHES:
        return sorted(ids, reverse=True)[:limit]
    cursor.execute(
        f"SELECT id FROM {TABLE} WHERE tsv @@ plainto_tsquery('simple', %s) "
        "ORDER BY id DESC LIMIT %s",
        [text, limit],
    )
    return [row[0] for row in cursor.fetchall()]


def search(query: str, limit: int = RESULTS) -> list[Hit]:
    """Lines matching every word of `query` (any order), most recently indexed first.
    The query is reduced to plain words: no syntax of either engine reaches it."""
    words = _words(query)
    if not words or not supported():
        return []
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            match = " ".join('"' + w.replace('"', "") + '"' for w in words)
            cursor.execute(
                f"SELECT session_id, part, byte_offset, kind, "
                f"snippet({TABLE}, 0, %s, %s, '…', 24) FROM {TABLE} "
                f"WHERE {TABLE} MATCH %s ORDER BY rowid DESC LIMIT %s",
                [HIT_START, HIT_END, match, limit],
            )
        else:
            ids = _postgres_newest_matches(cursor, " ".join(words), limit)
            cursor.execute(
                f"SELECT session_id, part, byte_offset, kind, "
                f"ts_headline('simple', text, plainto_tsquery('simple', %s), %s) "
                f"FROM {TABLE} WHERE id = ANY(%s) ORDER BY id DESC",
                [
                    " ".join(words),
                    f"StartSel={HIT_START}, StopSel={HIT_END}, MaxWords=30, MinWords=12",
                    ids,
                ],
            )
        rows = cursor.fetchall()
    return [
        Hit(
            session_id=str(session_id),
            part=part or "",
            offset=int(offset),
            kind=kind,
            snippet=_split_snippet(snippet),
        )
        for session_id, part, offset, kind, snippet in rows
    ]


def indexed_lines() -> int:
    if not supported():
        return 0
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {TABLE}")
        return int(cursor.fetchone()[0])


def search_with_sessions(query: str, limit: int = RESULTS) -> list[Hit]:
    """`search`, each hit carrying its Session row (tag, start) when there is one."""
    hits = search(query, limit)
    rows = Session.objects.in_bulk([hit.session_id for hit in hits], field_name="session_id")
    by_id = {str(key): value for key, value in rows.items()}
    for hit in hits:
        hit.session = by_id.get(hit.session_id)
    # Lines of a run whose record was pruned lead nowhere: leave them out.
    return [hit for hit in hits if hit.session is not None]
