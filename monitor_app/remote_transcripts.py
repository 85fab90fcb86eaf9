"""Transcripts of runs on reporting hosts, kept by the console through Django's storage API.

A reporting monitor ships the new bytes of each run's transcript with every
report, from the offset the console last acknowledged (bounded per post, so a
huge transcript never stalls a sample). The console appends them to one file
per run through Django's storage API: by default files under the archive
root (`$OPSCONSOLE_HOME/archive/hosts/<host>/`), where the session
page, the raw tail and the `Range:` follower find them like any archived
transcript (the Session row's archive_path points there). Object storage
(django-storages) can be configured as STORAGES["opsconsole_transcripts"]; it
keeps the copies, but the pages read local files only.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage, storages

STORAGE_ALIAS = "opsconsole_transcripts"
# Per run per report, and per report in all (the host bounds itself the same way).
MAX_CHUNK_BYTES = 256 * 1024
MAX_REPORT_TRANSCRIPT_BYTES = 1024 * 1024


def storage():
    """STORAGES["opsconsole_transcripts"] when configured; else files under the archive."""
    if STORAGE_ALIAS in settings.STORAGES:
        return storages[STORAGE_ALIAS]
    return FileSystemStorage(
        location=settings.OPSCONSOLE_STATE.archive / "hosts",
        file_permissions_mode=0o600,
        directory_permissions_mode=0o700,
    )


def name_for(host: str, session_id: str) -> str:
    safe_host = re.sub(r"[^A-Za-z0-9._-]", "_", host).lstrip(".") or "_"
    # "<anything>_<session id>.jsonl": the archive's naming, so the locator accepts it.
    return f"{safe_host}/transcript_{session_id}.jsonl"


def stored_size(name: str) -> int:
    store = storage()
    return store.size(name) if store.exists(name) else 0


def append_chunk(host: str, session_id: str, offset: int, data: bytes) -> int:
    """Append what is new in `data` (which starts at byte `offset` of the host's file);
    returns how many bytes the console now holds. A gap (offset past what is held) is
    not written: the answer tells the host where to start again."""
    name = name_for(host, session_id)
    store = storage()
    held = stored_size(name)
    if offset > held or offset + len(data) <= held:
        return held
    new = data[held - offset :]
    try:
        path = Path(store.path(name))
    except NotImplementedError:  # object storage: no appending, rewrite the object
        old = store.open(name).read() if held else b""
        store.delete(name)
        store.save(name, ContentFile(old + new))
        return held + len(new)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, new)
    finally:
        os.close(fd)
    return held + len(new)


def local_path(host: str, session_id: str) -> str | None:
    """The stored copy as a local file path, if the storage has one."""
    name = name_for(host, session_id)
    try:
        path = storage().path(name)
    except NotImplementedError:
        return None
    return path if os.path.isfile(path) else None
