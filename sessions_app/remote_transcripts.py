"""Transcripts of runs on reporting hosts, kept and read through Django's storage API.

A reporting monitor ships the new bytes of each run's transcript with every
report, from the offset the console last acknowledged (bounded per post, so a
huge transcript never stalls a sample). The console keeps them through
STORAGES["opsconsole_transcripts"], in one of two shapes:

- A FileSystemStorage (the default is one under
  `$OPSCONSOLE_HOME/archive/hosts/<host>/`): new bytes are appended to one file
  per run, `<host>/transcript_<session id>.jsonl`. The Session row's
  archive_path points there, and the session page, the raw tail and the
  `Range:` follower read it like any archived transcript.
- Any other storage (object storage, django-storages; no append): each new piece is an
  object of its own, never rewritten, named
  `<host>/transcript_<session id>.jsonl.d/<MiB>/<offset:016d>-<length>` (grouped
  by the MiB its offset falls in, so a report lists one small folder, not every
  piece of a long run). What the console holds is the end of the run of pieces
  in the last folder: pieces are only ever written where the held bytes end, so
  the folders before it are complete. The pages read a private local copy
  (`$OPSCONSOLE_HOME/cache/transcripts/<host>/transcript_<session id>.jsonl`,
  0600 in 0700 folders, named from the validated host and session id only).
  The console adds each piece it stores to that copy as it goes; each read
  first fetches the pieces the copy lacks (another console's, or all of them
  when the copy was deleted), so the storage stays the truth.

Either way a piece sent twice, or overlapping what is held, changes nothing; a
piece past what is held (a gap) is not written, and the answer tells the host
where to start again. A single whole object at the run's plain name (what a
console before the pieces wrote to object storage) is read as the start of the
transcript.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage, storages

from sessions_app.transcripts.locate import regular_file_within
from wrapper.formats import ensure_private_dir, is_session_id

log = logging.getLogger(__name__)

STORAGE_ALIAS = "opsconsole_transcripts"
# Per run per report, and per report in all (the host bounds itself the same way).
MAX_CHUNK_BYTES = 256 * 1024
MAX_REPORT_TRANSCRIPT_BYTES = 1024 * 1024
# Pieces in object storage are grouped by the MiB their offset falls in.
FOLDER_BYTES = 1024 * 1024
PIECE_NAME = re.compile(r"(\d{16})-(\d{1,16})")
FOLDER_NAME = re.compile(r"\d{10}")
COPY_BLOCK = 1024 * 1024


def storage():
    """STORAGES["opsconsole_transcripts"] when configured; else files under the archive."""
    if STORAGE_ALIAS in settings.STORAGES:
        return storages[STORAGE_ALIAS]
    return FileSystemStorage(
        location=settings.OPSCONSOLE_STATE.archive / "hosts",
        file_permissions_mode=0o600,
        directory_permissions_mode=0o700,
    )


def safe_host(host: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", host).lstrip(".") or "_"


def name_for(host: str, session_id: str) -> str:
    if not is_session_id(session_id):
        raise ValueError("a session id is a lowercase UUID")
    # "<anything>_<session id>.jsonl": the archive's naming, so the locator accepts it.
    return f"{safe_host(host)}/transcript_{session_id}.jsonl"


def _path_of(store, name: str) -> Path | None:
    """The file a FileSystemStorage keeps `name` in; None for any other storage (object
    storage has no path(); InMemoryStorage's names a file that is not there)."""
    return Path(store.path(name)) if isinstance(store, FileSystemStorage) else None


# ------------------------------------------------------------------------ write side


def append_chunk(host: str, session_id: str, offset: int, data: bytes) -> int:
    """Keep what is new in `data` (which starts at byte `offset` of the host's file);
    returns how many bytes the console now holds. A gap (offset past what is held) is
    not written: the answer tells the host where to start again."""
    name = name_for(host, session_id)
    store = storage()
    path = _path_of(store, name)
    if path is None:
        return _save_piece(store, name, offset, data, cache_path(host, session_id))
    held = store.size(name) if store.exists(name) else 0
    if offset > held or offset + len(data) <= held:
        return held
    new = data[held - offset :]
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        _write_all(fd, new)
    finally:
        os.close(fd)
    return held + len(new)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _save_piece(store, name: str, offset: int, data: bytes, copy: Path) -> int:
    held = held_in_pieces(store, name)
    if offset > held or offset + len(data) <= held:
        return held
    new = data[held - offset :]
    store.save(piece_name(name, held, len(new)), ContentFile(new))
    _add_to_copy(copy, held, new)
    return held + len(new)


def _add_to_copy(copy: Path, offset: int, data: bytes) -> None:
    """A piece just stored, into this console's private copy too when the copy ends
    where it starts: the pages then fetch nothing for what this console received."""
    if offset and not copy.is_file():
        return
    try:
        fd = _open_copy(copy)
    except OSError as exc:
        log.warning("cannot keep a local copy of %s: %s", copy.name, exc)
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_size == offset:
            _write_all(fd, data)
    finally:
        os.close(fd)


def _open_copy(copy: Path) -> int:
    root = cache_root()
    for folder in (root.parent, root, copy.parent):
        ensure_private_dir(folder)
    return os.open(copy, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)


def piece_name(name: str, offset: int, length: int) -> str:
    return f"{name}.d/{offset // FOLDER_BYTES:010d}/{offset:016d}-{length}"


def _listdir(store, path: str) -> tuple[list[str], list[str]]:
    try:
        return store.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return [], []


def _folders(store, name: str) -> list[int]:
    dirs, _ = _listdir(store, f"{name}.d")
    return sorted(int(d) for d in dirs if FOLDER_NAME.fullmatch(d))


def _pieces_in(store, name: str, folder: int) -> list[tuple[int, int]]:
    """(offset, length) of the pieces in one folder, by offset. Other names (a storage's
    renamed duplicate of a piece written twice at once) are not pieces."""
    _, files = _listdir(store, f"{name}.d/{folder:010d}")
    found = []
    for file_name in files:
        match = PIECE_NAME.fullmatch(file_name)
        if match and int(match[2]) > 0 and int(match[1]) // FOLDER_BYTES == folder:
            found.append((int(match[1]), int(match[2])))
    return sorted(found)


def _run_end(pieces: list[tuple[int, int]], start: int) -> int:
    """Where the contiguous run of `pieces` (by offset) that covers `start` ends."""
    end = start
    for offset, length in pieces:
        if offset > end:
            break
        end = max(end, offset + length)
    return end


def _whole_object_size(store, name: str) -> int:
    return store.size(name) if store.exists(name) else 0


def held_in_pieces(store, name: str) -> int:
    """Bytes held in object storage: two listings (the folders, then the last one)."""
    for folder in reversed(_folders(store, name)):
        pieces = _pieces_in(store, name, folder)
        if pieces:
            return _run_end(pieces, pieces[0][0])
    return _whole_object_size(store, name)


# ------------------------------------------------------------------------- read side


def local_path(host: str, session_id: str) -> str | None:
    """The stored copy as a local file path, if the storage has one."""
    path = _path_of(storage(), name_for(host, session_id))
    return str(path) if path is not None and path.is_file() else None


def cache_root() -> Path:
    return Path(settings.OPSCONSOLE_STATE.home) / "cache" / "transcripts"


def cache_path(host: str, session_id: str) -> Path:
    return cache_root() / name_for(host, session_id)


def readable_copy(host: str, session_id: str) -> Path | None:
    """A local file with the transcript the console holds for a run on `host`, inside
    the console's roots: the stored file itself when it lies in the archive, else the
    private copy, first extended by what the storage holds past its end."""
    store = storage()
    name = name_for(host, session_id)
    path = _path_of(store, name)
    if path is not None and regular_file_within(path, [settings.OPSCONSOLE_STATE.archive]):
        return path
    copy = cache_path(host, session_id)
    try:
        return extend_copy(store, name, copy)
    except Exception as exc:  # the storage cannot be read now: what the copy has so far
        log.warning("cannot read the stored transcript %s: %s", name, exc)
        if regular_file_within(copy, [cache_root()]) and copy.stat().st_size:
            return copy
        return None


def extend_copy(store, name: str, copy: Path) -> Path | None:
    """Fetch into `copy` only the stored bytes past its end; None while nothing is held."""
    have = copy.stat().st_size if copy.is_file() else 0
    plan = list(_plan(store, name, have))
    if not plan and have == 0:
        return None
    fd = _open_copy(copy)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # one writer; readers see whole pieces only grow it
        now = os.fstat(fd).st_size
        if now != have:  # another request extended it meanwhile
            plan = list(_plan(store, name, now))
        for source, skip, length in plan:
            if not _copy_range(store, source, skip, length, fd):
                break
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if size == 0 or not regular_file_within(copy, [cache_root()]):
        return None
    return copy


def _copy_range(store, source: str, skip: int, length: int, fd: int) -> bool:
    """Append `length` bytes of `source` from `skip`; False if the object is short."""
    with store.open(source, "rb") as handle:
        if skip:
            handle.seek(skip)
        while length > 0:
            block = handle.read(min(length, COPY_BLOCK))
            if not block:
                return False
            _write_all(fd, block)
            length -= len(block)
    return True


def _plan(store, name: str, start: int) -> Iterator[tuple[str, int, int]]:
    """(object, from byte, length) to read, in order, for the held bytes past `start`.
    Usually one listing: the folder `start` falls in."""
    listed: dict[int, list[tuple[int, int]]] = {}

    def pieces(folder: int) -> list[tuple[int, int]]:
        if folder not in listed:
            listed[folder] = _pieces_in(store, name, folder) if folder >= 0 else []
        return listed[folder]

    pos = start
    whole_checked = False
    while True:
        folder = pos // FOLDER_BYTES
        near = pieces(folder)
        if not any(offset <= pos for offset, _ in near):
            # A piece that covers pos may start in the folder before.
            near = pieces(folder - 1) + near
        covering = [(o, n) for o, n in near if o <= pos < o + n]
        if covering:
            offset, length = max(covering, key=lambda piece: piece[0] + piece[1])
            yield piece_name(name, offset, length), pos - offset, offset + length - pos
            pos = offset + length
            continue
        if any(offset <= pos for offset, _ in near) or whole_checked:
            return
        whole_checked = True  # nothing at or before pos: a whole object, if one is kept
        size = _whole_object_size(store, name)
        if size <= pos:
            return
        yield name, pos, size - pos
        pos = size
