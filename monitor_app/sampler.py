"""Reading the host for one sample: sidecars, Claude Code's registry, the process table.

Nothing here touches the database. What does not change between samples is
kept: a sidecar or registry file is re-parsed only when its size or mtime moved,
a transcript is re-read only when it grew, a command line is read once per
process (proctree). The monitor turns two consecutive samples into history.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Container
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from monitor_app.snapshot import SkippedSidecar, Snapshot
from sessions_app import transcript_store
from sessions_app.proctree import ProcessTable
from sessions_app.transcripts.locate import regular_file_within
from sessions_app.trust import claude_code_problem, sidecar_trust_problem
from wrapper.formats import (
    FormatError,
    RegistryEntry,
    Sidecar,
    StatePaths,
    UnsafeDirectory,
    check_private_dir,
    read_registry_entry,
    read_sidecar,
    registry_dir,
    scan_registry,
    transcript_path,
)

log = logging.getLogger(__name__)

# Where start times come from /proc (Linux), a registry file must give procStart: it is
# what tells the process that wrote the file from a later one with the same PID.
PROC_START_REQUIRED = Path("/proc/stat").exists()

# New sidecars whose wrapper PID is not running (dead runs, by their file name) are parsed
# at most this many per sample: ten thousand of them at once cost seconds to validate.
# Those of running wrappers are always read at once.
DEAD_SIDECAR_READS_PER_SAMPLE = 500

# Transcripts not found yet (claude has not written a line) are searched for each
# sample, but at most this many per sample, so a thousand new runs cannot stall one.
SEARCHES_PER_SAMPLE = 50


@dataclass
class FileCache:
    """Parsed protocol files, trusted again only while (size, mtime, inode) hold."""

    entries: dict[str, tuple[tuple[int, int, int], object]] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)

    def parse(self, path: Path, parse):
        """`parse(path)`, from the cache while the file is unchanged; a file that did not
        parse raises its FormatError again (a new one: a re-raised exception grows)."""
        self.seen.add(str(path))
        try:
            info = os.lstat(path)
        except OSError as exc:
            raise FormatError(f"unreadable: {exc.strerror or exc}") from exc
        key = (info.st_size, info.st_mtime_ns, info.st_ino)
        cached = self.entries.get(str(path))
        if cached is None or cached[0] != key:
            try:
                value = parse(path)
            except FormatError as exc:
                value = exc
            cached = self.entries[str(path)] = (key, value)
        if isinstance(cached[1], FormatError):
            raise FormatError(str(cached[1]))
        return cached[1]

    def forget_unseen(self) -> None:
        """Drop the files no read asked for since the last call (they are gone)."""
        for path in [p for p in self.entries if p not in self.seen]:
            del self.entries[path]
        self.seen = set()


@dataclass
class TranscriptWatch:
    """What the monitor knows of one live session's transcript between samples."""

    path: Path | None = None
    size: int = -1
    mtime_ns: int = 0
    last_tool_call: str | None = None


class Sampler:
    def __init__(
        self,
        paths: StatePaths,
        config_dirs: list[Path],
        trusted_uids: list[int] | None = None,
    ) -> None:
        self.paths = paths
        self.trusted_uids = trusted_uids
        self.config_dirs = list(config_dirs)
        self.sidecar_files = FileCache()
        self.registry_files = FileCache()
        self.transcripts: dict[str, TranscriptWatch] = {}
        self.searches_left = SEARCHES_PER_SAMPLE
        self.unread_sidecars = 0  # dead runs' sidecars left for the next samples
        # (pid, start) -> why the process a registry file names is not Claude Code, None
        # when it is: judged (and a refusal logged) once per process, never every sample.
        self.registry_verdicts: dict[tuple[int, float], str | None] = {}
        # Registry files (path, pid) once refused: when their process exits they are not
        # a killed session either, only a file that was never believed.
        self.registry_refused: set[tuple[str, int]] = set()

    def new_sample(self) -> None:
        self.searches_left = SEARCHES_PER_SAMPLE

    # ------------------------------------------------------------------ sidecars

    def read_sidecars(
        self, snapshot: Snapshot, running: Container[int] | None = None
    ) -> list[Sidecar]:
        """Every trustworthy sidecar; the others are skipped and counted. With `running`
        (the PIDs of the process table), a new sidecar named after a PID not running is
        read only within DEAD_SIDECAR_READS_PER_SAMPLE; `unread_sidecars` counts the rest,
        which wait for the next samples."""
        self.unread_sidecars = 0
        reads_left = DEAD_SIDECAR_READS_PER_SAMPLE
        active = self.paths.active
        try:
            check_private_dir(active)
        except UnsafeDirectory as exc:
            if active.exists() or active.is_symlink():
                snapshot.active_dir_error = str(exc)
            return []
        sidecars: list[Sidecar] = []
        seen_sessions: set[str] = set()
        try:
            listing = sorted(os.scandir(active), key=lambda e: e.name)
        except OSError as exc:
            snapshot.active_dir_error = f"{active}: {exc.strerror or exc}"
            return []
        for entry in listing:
            if entry.name.startswith(".") or not entry.name.endswith(".json"):
                continue  # a wrapper's temp file mid-rename, or not ours
            if (
                running is not None
                and entry.path not in self.sidecar_files.entries
                and _named_pid(entry.name) not in running
            ):
                if reads_left <= 0:
                    self.unread_sidecars += 1
                    continue
                reads_left -= 1
            try:
                parsed = self.sidecar_files.parse(Path(entry.path), self.read_trusted_sidecar)
            except FormatError as exc:
                snapshot.skipped.append(SkippedSidecar(entry.name, str(exc)))
                continue
            if parsed.session_id in seen_sessions:
                snapshot.skipped.append(
                    SkippedSidecar(
                        entry.name, f"session {parsed.session_id} is claimed by another sidecar"
                    )
                )
                continue
            seen_sessions.add(parsed.session_id)
            sidecars.append(parsed)
        self.sidecar_files.forget_unseen()
        return sidecars

    def read_trusted_sidecar(self, path: Path) -> Sidecar:
        """A sidecar that parses *and* names processes of its file's owner, a watched
        user: otherwise Stop or the watchdog could be pointed at anyone's process. Checked
        once per version of the file (the cache), not every sample."""
        sidecar = read_sidecar(path)
        problem = sidecar_trust_problem(sidecar, path, allowed_uids=self.trusted_uids)
        if problem:
            raise FormatError(f"not trusted: {problem}")
        return sidecar

    # ------------------------------------------------------------------ registry

    def read_registry(self, snapshot: Snapshot) -> list[tuple[Path, Path, RegistryEntry]]:
        """(config dir, file, entry) for every trustworthy registry file of every config dir
        (the format layer's scan, each file parsed again only when it changed)."""
        found = []
        for config_dir in self.config_dirs:
            folder = registry_dir(config_dir)
            entries, skipped = scan_registry(
                config_dir, read=lambda path: self.registry_files.parse(path, read_registry_entry)
            )
            found += [(config_dir, folder / f"{entry.pid}.json", entry) for entry in entries]
            for name, reason in skipped:
                if name == str(folder):  # the folder itself cannot be listed
                    log.debug("cannot list %s: %s", folder, reason)
                    continue
                snapshot.skipped.append(
                    SkippedSidecar(f"{folder.name}/{name} ({config_dir})", reason)
                )
        self.registry_files.forget_unseen()
        return found

    def registry_process(
        self, path: Path, entry: RegistryEntry, table: ProcessTable
    ) -> tuple[float | None, str | None]:
        """What the process a registry file names is: (its start time, None) when it is
        the live Claude Code process that wrote the file; (None, None) when that process
        is gone (the file was left behind); (None, why) when the file is not believed, so
        nothing it names is shown, stopped or signalled."""
        started = entry.process_started
        process = table.entries.get(entry.pid)
        if started is None:
            if PROC_START_REQUIRED:
                return None, "no procStart: nothing tells that this pid wrote the file"
            if process is None:
                return None, None
            started = process.started  # no /proc to anchor procStart to (macOS)
        elif not table.is_same_process(entry.pid, started):
            if (str(path), entry.pid) in self.registry_refused:
                return None, "named a process that was not Claude Code"
            return None, None
        key = (entry.pid, started)
        if key not in self.registry_verdicts:
            problem = claude_code_problem(entry.pid)
            self.registry_verdicts[key] = problem
            if problem is not None:
                log.warning("%s not believed (never signalled): %s", path, problem)
        problem = self.registry_verdicts[key]
        if problem is not None:
            self.registry_refused.add((str(path), entry.pid))
            return None, problem
        return started, None

    def forget_exited(self, table: ProcessTable, registry_files: set[str]) -> None:
        """Drop verdicts on processes that are gone and refusals of files that are."""
        for key in [k for k in self.registry_verdicts if not table.is_same_process(*k)]:
            del self.registry_verdicts[key]
        self.registry_refused = {r for r in self.registry_refused if r[0] in registry_files}

    # ------------------------------------------------------------------ transcripts

    def watch_transcript(self, sidecar: Sidecar) -> tuple[TranscriptWatch, bool]:
        """The session's transcript watch, and whether the transcript grew since last time.

        The tail is re-read (for the latest tool call) only when the file changed.
        """
        watch = self.transcripts.setdefault(sidecar.session_id, TranscriptWatch())
        if watch.path is None:
            # Where Claude Code should write it (one stat), else the wider search.
            expected = transcript_path(
                Path(sidecar.claude_config_dir), sidecar.cwd, sidecar.session_id
            )
            if regular_file_within(expected, self.config_dirs):
                watch.path = expected
            elif self.searches_left > 0:
                self.searches_left -= 1
                watch.path = transcript_store.find_live_transcript(sidecar)
        if watch.path is None:
            return watch, False
        try:
            info = os.stat(watch.path)
        except OSError:
            watch.path = None
            return watch, False
        if info.st_size == watch.size and info.st_mtime_ns == watch.mtime_ns:
            return watch, False
        watch.size, watch.mtime_ns = info.st_size, info.st_mtime_ns
        try:
            watch.last_tool_call = transcript_store.last_tool_call(watch.path)
        except OSError as exc:
            log.debug("cannot read %s: %s", watch.path, exc)
        return watch, True

    def forget_transcripts(self, live_ids: set[str]) -> None:
        for session_id in [s for s in self.transcripts if s not in live_ids]:
            del self.transcripts[session_id]


def _named_pid(file_name: str) -> int | None:
    """The wrapper PID a sidecar's file name gives (`<pid>.json`), None if it gives none."""
    stem = file_name.removesuffix(".json")
    return int(stem) if stem.isdigit() and len(stem) < 11 else None


def sidecar_for_unwrapped(
    config_dir: Path, entry: RegistryEntry, started: float, host: str
) -> Sidecar:
    """A session no wrapper started, in the shape every live reader already knows.

    The agent is its own root (there is no wrapper), so stop, the tree and the
    transcript lookup work on it unchanged.
    """
    return Sidecar(
        session_id=entry.session_id,
        script_tag="unwrapped",
        wrapper_pid=entry.pid,
        wrapper_started=started,
        started_at=datetime.fromtimestamp(entry.started_at, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        attempt=1,
        platform=(entry.entrypoint or entry.kind or "")[:100],
        host=host,
        cwd=entry.cwd,
        claude_config_dir=str(config_dir),
        transcript_path=str(transcript_path(config_dir, entry.cwd, entry.session_id)),
        claude_pid=entry.pid,
        claude_started=started,
    )
