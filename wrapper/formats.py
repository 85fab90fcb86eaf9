"""The on-disk protocol between the run wrapper and the console.

One definition of each file format: the sidecar (one per live wrapper), the
spool record (one per finished attempt), the quota stamp (org-level), and the
paths they live at. Stdlib only: the console imports this module too, and the
wrapper must run on a host with nothing but Python.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

FORMAT_VERSION = 1

# Exit codes the wrapper itself chooses (everything else is claude's own).
EXIT_QUOTA_SKIP = 79
EXIT_UNSAFE_STATE_DIR = 78  # sysexits EX_CONFIG
EXIT_NO_CLAUDE = 127

# Sidecars and spool records are small; anything bigger is not ours.
MAX_RECORD_BYTES = 64 * 1024

END_REASONS = ("succeeded", "failed", "refused", "quota_skip", "signalled")

_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class FormatError(ValueError):
    """A protocol file that cannot be trusted; the message says why."""


class UnsafeDirectory(OSError):
    """A state directory that another user could tamper with."""


# --------------------------------------------------------------------------- paths


def default_home() -> Path:
    return Path(os.path.expanduser("~/.local/state/opsconsole"))


@dataclass(frozen=True)
class StatePaths:
    """Where the wrapper leaves things for the console to find."""

    home: Path
    active: Path

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> StatePaths:
        env = os.environ if environ is None else environ
        home = Path(env.get("OPSCONSOLE_HOME") or default_home()).expanduser()
        active = Path(env.get("OPSCONSOLE_ACTIVE_DIR") or home / "active").expanduser()
        return cls(home=home, active=active)

    @property
    def spool(self) -> Path:
        return self.home / "spool"

    @property
    def archive(self) -> Path:
        return self.home / "archive"

    @property
    def quota_stamp(self) -> Path:
        return self.home / "quota-stamp.json"

    def sidecar_path(self, wrapper_pid: int) -> Path:
        return self.active / f"{wrapper_pid}.json"

    def spool_path(self, session_id: str) -> Path:
        return self.spool / f"{session_id}.json"

    def archive_path(self, started_at: str, script_tag: str, session_id: str) -> Path:
        day = started_at[:10] if re.match(r"^\d{4}-\d{2}-\d{2}", started_at) else "undated"
        return self.archive / day / f"{safe_tag(script_tag)}_{session_id}.jsonl"


def host_name(environ: dict[str, str] | None = None) -> str:
    """The host runs are recorded under; the wrapper and the console must agree on it."""
    env = os.environ if environ is None else environ
    return env.get("OPSCONSOLE_HOST_NAME") or socket.gethostname()


def claude_config_dir(environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get("CLAUDE_CONFIG_DIR") or os.path.expanduser("~/.claude")).expanduser()


def encode_project_dir(cwd: str) -> str:
    """Claude Code's directory name for a cwd under projects/ (lossy).

    Every character outside [a-zA-Z0-9] becomes '-'. Names past 200 characters
    get a runtime-dependent hash suffix, so callers match long ones by prefix.
    """
    return re.sub(r"[^a-zA-Z0-9]", "-", cwd)


PROJECT_DIR_NAME_LIMIT = 200


def transcript_path(config_dir: Path, cwd: str, session_id: str) -> Path:
    return (
        config_dir
        / "projects"
        / encode_project_dir(cwd)[:PROJECT_DIR_NAME_LIMIT]
        / (f"{session_id}.jsonl")
    )


# --------------------------------------------------------------------------- values


def is_session_id(value: object) -> bool:
    return isinstance(value, str) and bool(_UUID_RE.match(value))


def new_session_id() -> str:
    return str(uuid.uuid4())


def safe_tag(tag: str) -> str:
    """A tag as it may appear in a file name: nothing that walks paths."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", tag).lstrip(".")
    return cleaned[:100] or "untagged"


def is_valid_tag(tag: str) -> bool:
    return bool(_TAG_RE.match(tag))


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(value: str) -> datetime:
    """Parse our ISO 8601 UTC timestamps ('Z' suffix accepted)."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


# --------------------------------------------------------------------------- process identity


def process_start_time(pid: int) -> float | None:
    """Seconds since the epoch at which `pid` started, or None if it is gone.

    Same arithmetic as psutil's create_time() on Linux (boot time + start ticks
    / CLK_TCK), so the console's psutil reading compares equal. Elsewhere `ps`
    gives whole seconds; compare with START_TIME_TOLERANCE.
    """
    stat_file = Path(f"/proc/{pid}/stat")
    if Path("/proc/self/stat").exists():
        try:
            raw = stat_file.read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return None
        # comm may hold spaces and parentheses: split after the last ')'.
        fields = raw[raw.rfind(")") + 2 :].split()
        start_ticks = int(fields[19])
        return _boot_time() + start_ticks / os.sysconf("SC_CLK_TCK")
    return _ps_start_time(pid)


_BOOT_TIME: float | None = None


def _boot_time() -> float:
    global _BOOT_TIME
    if _BOOT_TIME is None:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime"):
                _BOOT_TIME = float(line.split()[1])
                break
        else:  # pragma: no cover - every Linux has btime
            _BOOT_TIME = 0.0
    return _BOOT_TIME


def _ps_start_time(pid: int) -> float | None:
    import subprocess

    try:
        out = subprocess.run(
            ["ps", "-o", "lstart=", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=5,
            env={"LC_ALL": "C", "PATH": "/bin:/usr/bin"},
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if not out:
        return None
    try:
        return datetime.strptime(out, "%a %b %d %H:%M:%S %Y").timestamp()
    except ValueError:
        return None


# Linux readings agree exactly; `ps` on macOS rounds to the second.
START_TIME_TOLERANCE = 1.0


def same_start_time(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and abs(a - b) <= START_TIME_TOLERANCE


# --------------------------------------------------------------------------- safe files


def ensure_private_dir(path: Path) -> Path:
    """Create `path` 0700 if missing; refuse one another user could tamper with."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise UnsafeDirectory(f"{path} exists and is not a directory") from exc
    check_private_dir(path)
    return path


def check_private_dir(path: Path) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError as exc:
        raise UnsafeDirectory(f"{path} does not exist") from exc
    if stat.S_ISLNK(info.st_mode):
        raise UnsafeDirectory(f"{path} is a symlink; refusing to use it")
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeDirectory(f"{path} is not a directory")
    if info.st_uid != os.geteuid():
        raise UnsafeDirectory(f"{path} is owned by uid {info.st_uid}, not by uid {os.geteuid()}")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeDirectory(
            f"{path} is group- or world-writable (mode {stat.S_IMODE(info.st_mode):o}); "
            "chmod 700 it"
        )


@contextlib.contextmanager
def atomic_file(path: Path, mode: int = 0o600) -> Iterator[BinaryIO]:
    """A file that appears at `path` whole, or not at all (temp file + fsync + rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path, data: dict[str, Any], mode: int = 0o600) -> None:
    """Write JSON so a reader sees the old file or the new one, never half of one."""
    with atomic_file(path, mode) as handle:
        handle.write(json.dumps(data, sort_keys=True, indent=1).encode("utf-8") + b"\n")


def read_json_record(path: Path, *, require_owner: bool = True) -> dict[str, Any]:
    """Read a small JSON object without following links or trusting its size."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if os.path.islink(path):
            raise FormatError("is a symlink") from exc
        raise FormatError(f"unreadable: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise FormatError("not a regular file")
        if require_owner and info.st_uid != os.geteuid():
            raise FormatError(f"owned by uid {info.st_uid}, not {os.geteuid()}")
        if info.st_size > MAX_RECORD_BYTES:
            raise FormatError(f"too large ({info.st_size} bytes > {MAX_RECORD_BYTES})")
        raw = handle.read(MAX_RECORD_BYTES + 1)
    if len(raw) > MAX_RECORD_BYTES:
        raise FormatError("too large")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise FormatError("not a JSON object")
    return data


# --------------------------------------------------------------------------- typed records


def _check_fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """Keep known fields, check each against its declared type; unknown keys are ignored."""
    values: dict[str, Any] = {}
    for spec in dataclasses.fields(cls):
        if spec.name not in data:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise FormatError(f"missing field {spec.name!r}")
            continue
        value = data[spec.name]
        allowed = _FIELD_TYPES[str(spec.type)]
        if value is None and type(None) in allowed:
            values[spec.name] = value
            continue
        # bool is an int in Python; a PID of `true` is still garbage.
        if isinstance(value, bool) and bool not in allowed:
            raise FormatError(f"field {spec.name!r} has the wrong type (bool)")
        if not isinstance(value, allowed):
            raise FormatError(f"field {spec.name!r} has the wrong type ({type(value).__name__})")
        if float in allowed and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        values[spec.name] = value
    return values


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (float, int),
    "bool": (bool,),
    "str | None": (str, type(None)),
    "int | None": (int, type(None)),
    "float | None": (float, int, type(None)),
    "bool | None": (bool, type(None)),
    "dict[str, int] | None": (dict, type(None)),
}


@dataclass
class Sidecar:
    """What a live wrapper says about itself, at <active dir>/<wrapper_pid>.json."""

    session_id: str
    script_tag: str
    wrapper_pid: int
    wrapper_started: float  # process start time, epoch seconds (PIDs are reused)
    started_at: str  # ISO 8601 UTC, when this attempt began
    attempt: int
    platform: str
    host: str
    cwd: str
    claude_config_dir: str
    transcript_path: str
    claude_pid: int | None = None
    claude_started: float | None = None
    retry_of: str | None = None
    orchestrator_cost_usd: float | None = None
    version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sidecar:
        sidecar = cls(**_check_fields(cls, data))
        if not is_session_id(sidecar.session_id):
            raise FormatError("session_id is not a lowercase UUID")
        if sidecar.retry_of is not None and not is_session_id(sidecar.retry_of):
            raise FormatError("retry_of is not a UUID")
        for name in ("wrapper_pid", "claude_pid"):
            pid = getattr(sidecar, name)
            if pid is not None and pid <= 1:
                raise FormatError(f"{name} {pid} cannot be a wrapper or an agent")
        if sidecar.attempt < 1:
            raise FormatError("attempt must be >= 1")
        try:
            parse_iso(sidecar.started_at)
        except ValueError as exc:
            raise FormatError("started_at is not an ISO 8601 time") from exc
        return sidecar


def read_sidecar(path: Path) -> Sidecar:
    """Parse and validate one sidecar; FormatError says why it is not trusted."""
    sidecar = Sidecar.from_dict(read_json_record(path))
    if path.name != f"{sidecar.wrapper_pid}.json":
        raise FormatError(f"file name does not match wrapper_pid {sidecar.wrapper_pid}")
    return sidecar


@dataclass
class SpoolRecord:
    """The completion record of one attempt, at <home>/spool/<session_id>.json."""

    session_id: str
    script_tag: str
    platform: str
    host: str
    attempt: int
    started_at: str
    ended_at: str
    end_reason: str  # one of END_REASONS
    exit_code: int | None = None
    retry_of: str | None = None
    wrapper_pid: int | None = None
    cwd: str | None = None
    claude_config_dir: str | None = None
    transcript_path: str | None = None  # where claude wrote it
    archive_path: str | None = None  # where the wrapper copied it; None if it could not
    signal: int | None = None  # the signal that ended the run, for end_reason "signalled"
    error: str | None = None  # one line for a person: why the attempt ended as it did
    # Fields of claude's final `result` event, when the output format gave one.
    is_error: bool | None = None
    subtype: str | None = None
    stop_reason: str | None = None
    api_error_status: int | None = None
    num_turns: int | None = None
    duration_ms: int | None = None
    cost_usd: float | None = None  # total_cost_usd; None when unknown, never made up
    usage: dict[str, int] | None = None  # input/output/cache token counts, when given
    model: str | None = None
    version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpoolRecord:
        record = cls(**_check_fields(cls, data))
        if not is_session_id(record.session_id):
            raise FormatError("session_id is not a lowercase UUID")
        if record.end_reason not in END_REASONS:
            raise FormatError(f"end_reason {record.end_reason!r} is not one of {END_REASONS}")
        if record.usage is not None:
            record.usage = {
                str(k): int(v)
                for k, v in record.usage.items()
                if isinstance(v, int) and not isinstance(v, bool)
            }
        for name in ("started_at", "ended_at"):
            try:
                parse_iso(getattr(record, name))
            except ValueError as exc:
                raise FormatError(f"{name} is not an ISO 8601 time") from exc
        return record


def read_spool_record(path: Path) -> SpoolRecord:
    return SpoolRecord.from_dict(read_json_record(path))


@dataclass
class QuotaStamp:
    """While `until` is in the future, every wrapper exits 79 without starting claude."""

    until: str  # ISO 8601 UTC
    set_at: str
    reason: str  # one line: what the CLI said
    session_id: str | None = None  # the run that hit the limit
    script_tag: str | None = None
    version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuotaStamp:
        stamp = cls(**_check_fields(cls, data))
        try:
            parse_iso(stamp.until)
        except ValueError as exc:
            raise FormatError("until is not an ISO 8601 time") from exc
        return stamp

    def holds(self, now: datetime | None = None) -> bool:
        return parse_iso(self.until) > (now or datetime.now(UTC))


def read_quota_stamp(paths: StatePaths) -> QuotaStamp | None:
    """The stamp in force, or None. A stamp that cannot be read holds nothing."""
    if not os.path.lexists(paths.quota_stamp):
        return None
    try:
        stamp = QuotaStamp.from_dict(read_json_record(paths.quota_stamp))
    except FormatError:
        return None
    return stamp if stamp.holds() else None


def clear_quota_stamp(paths: StatePaths) -> bool:
    try:
        paths.quota_stamp.unlink()
    except FileNotFoundError:
        return False
    return True


def copy_into_archive(source: Path, dest: Path) -> None:
    """Stream a transcript into the archive (0600 in a 0700 dir), atomically.

    Claude Code deletes its transcripts after cleanupPeriodDays; this copy is what
    keeps a run readable. Raises OSError when the source cannot be read.
    """
    ensure_private_dir(dest.parent.parent)
    ensure_private_dir(dest.parent)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    with os.fdopen(os.open(source, flags), "rb") as src:
        if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
            raise OSError(f"{source} is not a regular file")
        with atomic_file(dest) as out:
            shutil.copyfileobj(src, out, 1024 * 1024)


# --------------------------------------------------------------------------- Claude Code's registry


@dataclass
class RegistryEntry:
    """Claude Code's own record of a live session: $CLAUDE_CONFIG_DIR/sessions/<pid>.json.

    Every session on the host has one, wrapped or not. Removed on a normal exit and
    left behind after SIGKILL, so a stale file is evidence that the session was killed.
    Unknown keys are ignored; only what we use is checked.
    """

    pid: int
    session_id: str
    cwd: str
    started_at_ms: int | None = None  # startedAt: epoch milliseconds
    proc_start_ticks: int | None = None  # procStart: field 22 of /proc/<pid>/stat
    version: str = ""
    kind: str = ""
    entrypoint: str = ""
    name: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RegistryEntry:
        def text(key: str, limit: int = 200) -> str:
            value = data.get(key)
            if value is None:
                return ""
            if not isinstance(value, str) or len(value) > limit or "\x00" in value:
                raise FormatError(f"field {key!r} is not a short string")
            return value

        pid = data.get("pid")
        if not isinstance(pid, int) or isinstance(pid, bool) or not 1 < pid < 2**31:
            raise FormatError("pid is not a process id")
        session_id = data.get("sessionId")
        if not is_session_id(session_id):
            raise FormatError("sessionId is not a lowercase UUID")
        cwd = text("cwd", 4096)
        if not cwd.startswith("/"):
            raise FormatError("cwd is not an absolute path")
        started = data.get("startedAt")
        if started is not None and (
            not isinstance(started, int) or isinstance(started, bool) or not 0 < started < 2**53
        ):
            raise FormatError("startedAt is not epoch milliseconds")
        ticks = data.get("procStart")
        if ticks is not None:
            if isinstance(ticks, int) and not isinstance(ticks, bool):
                ticks = str(ticks)
            if not isinstance(ticks, str) or not ticks.isascii() or not ticks.isdigit():
                raise FormatError("procStart is not a number of clock ticks")
            if len(ticks) > 18:
                raise FormatError("procStart is out of range")
            ticks = int(ticks)
        return cls(
            pid=pid,
            session_id=session_id,
            cwd=cwd,
            started_at_ms=started,
            proc_start_ticks=ticks,
            version=text("version", 64),
            kind=text("kind", 64),
            entrypoint=text("entrypoint", 64),
            name=text("name"),
        )

    def process_started(self) -> float | None:
        """The start time as epoch seconds, comparable with `process_start_time`."""
        if self.proc_start_ticks is not None and Path("/proc/self/stat").exists():
            return _boot_time() + self.proc_start_ticks / os.sysconf("SC_CLK_TCK")
        return None

    def started_at_iso(self) -> str:
        if self.started_at_ms is None:
            return utc_now_iso()
        moment = datetime.fromtimestamp(self.started_at_ms / 1000, UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def registry_dir(config_dir: Path) -> Path:
    return config_dir / "sessions"


def read_registry_entry(path: Path) -> RegistryEntry:
    """Parse one registry file as strictly as a sidecar (owner, size, no links, types)."""
    entry = RegistryEntry.from_dict(read_json_record(path))
    if path.name != f"{entry.pid}.json":
        raise FormatError(f"file name does not match pid {entry.pid}")
    return entry
