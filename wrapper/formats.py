"""The on-disk protocol between the run wrapper and the console.

One definition of each file format: the sidecar (one per live wrapper), the
spool record (one per finished attempt, with what claude said about why it ended,
bounded and redacted), the quota stamp (org-level), and the paths they live at.
Stdlib only: the console imports this module too, and the
wrapper must run on a host with nothing but Python.

One piece: the protocol in one file, so each format and each limit has exactly one
definition that the wrapper, the console and a reporting host share.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
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

# 2: spool records carry why the run ended (REASON_FIELDS). Readers of either version
# read both: a field an older record lacks is None.
FORMAT_VERSION = 2

# Exit codes the wrapper itself chooses (everything else is claude's own).
EXIT_QUOTA_SKIP = 79
EXIT_UNSAFE_STATE_DIR = 78  # sysexits EX_CONFIG
EXIT_NO_CLAUDE = 127
EXIT_SESSION_ID_IN_USE = 75  # sysexits EX_TEMPFAIL: CLAUDE_SESSION_ID is another run's
# --overlap skip (or queue, after its wait): the job's previous run was still live.
EXIT_OVERLAP_SKIP = 80

# Sidecars and spool records are small; anything bigger is not ours.
MAX_RECORD_BYTES = 64 * 1024

END_REASONS = ("succeeded", "failed", "refused", "quota_skip", "overlap_skip", "signalled")

# What a wrapper does when a run of its tag is still live (`opsconsole-run --overlap`).
OVERLAP_POLICIES = ("allow", "skip", "queue")
_OVERLAP_FLAG_RE = re.compile(r"--overlap(?:=|\s+)['\"]?(allow|skip|queue)\b")

# Always fullmatch: `$` also matches before a final newline, and "<uuid>\n" is not an id.
_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TAG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


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
    return isinstance(value, str) and _UUID_RE.fullmatch(value) is not None


def new_session_id() -> str:
    return str(uuid.uuid4())


def safe_tag(tag: str) -> str:
    """A tag as it may appear in a file name: nothing that walks paths."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", tag).lstrip(".")
    return cleaned[:100] or "untagged"


def is_valid_tag(tag: object) -> bool:
    return isinstance(tag, str) and _TAG_RE.fullmatch(tag) is not None


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(value: str) -> datetime:
    """Parse our ISO 8601 UTC timestamps ('Z' suffix accepted), as UTC.

    ValueError (or OverflowError, for year 1 or 9999 with an offset) when it is not one.
    """
    if not isinstance(value, str):
        raise ValueError(f"{type(value).__name__} is not an ISO 8601 time")
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


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
        return ticks_to_epoch(int(fields[19]))
    return _ps_start_time(pid)


def ticks_to_epoch(start_ticks: int) -> float:
    """A process start time in clock ticks after boot (field 22 of /proc/<pid>/stat, Claude
    Code's `procStart`) as epoch seconds, the way process_start_time() computes it."""
    return _boot_time() + start_ticks / os.sysconf("SC_CLK_TCK")


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


def owner_alive(sidecar: Sidecar) -> bool:
    """The sidecar's wrapper still runs: its PID lives and started when the sidecar says
    (PIDs are reused). What GC calls "gone" is the opposite."""
    return same_start_time(process_start_time(sidecar.wrapper_pid), sidecar.wrapper_started)


def live_sidecars(paths: StatePaths, *, tag: str | None = None) -> list[Sidecar]:
    """The readable sidecars in the active dir whose owner is alive (of one tag, if
    given). Unreadable ones are skipped: they name no run anyone can tell is live."""
    found = []
    try:
        entries = list(paths.active.glob("*.json"))
    except OSError:
        return []
    for entry in entries:
        try:
            sidecar = read_sidecar(entry)
        except (FormatError, OSError):
            continue
        if (tag is None or sidecar.script_tag == tag) and owner_alive(sidecar):
            found.append(sidecar)
    return found


def overlap_policy_of(command: str) -> str:
    """The --overlap policy a job's command gives its wrapper ("allow" without one)."""
    match = _OVERLAP_FLAG_RE.search(command or "")
    return match.group(1) if match else "allow"


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


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")


def overwrite_json_in_place(path: Path, data: dict[str, Any]) -> None:
    """Rewrite a small JSON file in its own blocks, for when the disk is full and a temp
    file cannot be made: not atomic (a reader may see it half-written for an instant and
    skip it), so only a last resort. Compact JSON, so it fits where the indented one was."""
    payload = json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8") + b"\n"
    fd = os.open(path, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        os.pwrite(fd, payload, 0)
        os.ftruncate(fd, len(payload))
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json_record(
    path: Path, *, require_owner: bool = True, max_bytes: int = MAX_RECORD_BYTES
) -> dict[str, Any]:
    """Read a small JSON object without following links or trusting its size."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        if isinstance(exc, OSError) and os.path.islink(path):
            raise FormatError("is a symlink") from exc
        raise FormatError(f"unreadable: {getattr(exc, 'strerror', None) or exc}") from exc
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise FormatError("not a regular file")
        if require_owner and info.st_uid != os.geteuid():
            raise FormatError(f"owned by uid {info.st_uid}, not {os.geteuid()}")
        if info.st_size > max_bytes:
            raise FormatError(f"too large ({info.st_size} bytes > {max_bytes})")
        try:
            raw = handle.read(max_bytes + 1)
        except OSError as exc:
            raise FormatError(f"unreadable: {exc.strerror or exc}") from exc
    if len(raw) > max_bytes:
        raise FormatError("too large")
    return parse_json_record(raw)


def parse_json_record(raw: bytes) -> dict[str, Any]:
    """A JSON object from bytes, or FormatError: never another exception, whatever the bytes.

    NaN and Infinity are refused (not JSON, and no column holds them); so are integers
    past Python's digit limit (ValueError) and nesting past the recursion limit.
    """
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError, JSONDecodeError too
        raise FormatError(f"not valid JSON ({str(exc)[:200]})") from exc
    if not isinstance(data, dict):
        raise FormatError("not a JSON object")
    return data


# --------------------------------------------------------------------------- field limits

# What every field of every file may hold. The text limits and integer ranges are the
# console's columns (sessions_app.models.Session: CharField max_length,
# PositiveSmallIntegerField, IntegerField, BigIntegerField, DecimalField(12, 6)), so a
# record that passes here fits the row it becomes; the rest are sane bounds. The
# wrapper checks before it writes, the console before it ingests (tests check the
# model still agrees).
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
MAX_PATH_CHARS = 4096
MAX_COST_USD = 10**6  # DecimalField(max_digits=12, decimal_places=6) holds less than this
MAX_ERROR_CHARS = 4000
# The tail of claude's stderr and stdout a completion record keeps (each).
TAIL_CHARS = 4000
TAIL_LINES = 40
MAX_LIST_ITEMS = 10
LIST_ITEM_CHARS = 500
# Epoch seconds a start time may be: after 1970, before 2514 (2**34).
MAX_EPOCH_SECONDS = float(2**34)
MIN_YEAR, MAX_YEAR = 1970, 9000

# Names: one line, no control characters.
NAME_LIMITS: dict[str, int] = {
    "script_tag": 100,
    "platform": 100,
    "host": 255,
    "model": 100,
    "stop_reason": 64,
    "end_reason": 32,
    "subtype": 64,
    "terminal_reason": 64,
    "session_id": 36,
    "retry_of": 36,
    "started_at": 40,
    "ended_at": 40,
    "until": 40,
    "set_at": 40,
}
# Free text and paths: anything but NUL (no database text column holds one).
TEXT_LIMITS: dict[str, int] = {
    "cwd": MAX_PATH_CHARS,
    "claude_config_dir": MAX_PATH_CHARS,
    "transcript_path": MAX_PATH_CHARS,
    "archive_path": MAX_PATH_CHARS,
    "error": MAX_ERROR_CHARS,
    "reason": MAX_ERROR_CHARS,
    "stderr_tail": TAIL_CHARS,
    "stdout_tail": TAIL_CHARS,
    "result_text": MAX_ERROR_CHARS,
    "last_api_error": LIST_ITEM_CHARS,
}
# Claude's own words kept in a spool record: at most this many lines each.
LINE_LIMITS: dict[str, int] = {"stderr_tail": TAIL_LINES, "stdout_tail": TAIL_LINES}
# Lists of short texts: (most items, most characters per item).
LIST_LIMITS: dict[str, tuple[int, int]] = {
    "errors": (MAX_LIST_ITEMS, LIST_ITEM_CHARS),
    "permission_denials": (MAX_LIST_ITEMS, LIST_ITEM_CHARS),
}
INT_RANGES: dict[str, tuple[int, int]] = {
    "attempt": (1, 32767),  # PositiveSmallIntegerField
    "wrapper_pid": (2, INT32_MAX),  # 0 and 1 are never a wrapper or an agent
    "claude_pid": (2, INT32_MAX),
    "exit_code": (0, 255),
    "signal": (1, 255),
    "api_error_status": (0, 999),
    "num_turns": (0, INT32_MAX),
    "duration_ms": (0, INT64_MAX),
    "version": (0, 1000),
}
TOKEN_RANGE = (0, INT64_MAX)  # every usage count (BigIntegerField)
MAX_USAGE_KEYS = 32
# (low, high): low <= value < high, and finite.
FLOAT_RANGES: dict[str, tuple[float, float]] = {
    "wrapper_started": (0.0, MAX_EPOCH_SECONDS),
    "claude_started": (0.0, MAX_EPOCH_SECONDS),
    "cost_usd": (0.0, MAX_COST_USD),
    "orchestrator_cost_usd": (0.0, MAX_COST_USD),
}
TIME_FIELDS = ("started_at", "ended_at", "until", "set_at")


# A report's other items (fleet.console takes them one by one): an event
# (monitor_app.models.Event), a job a host's collector found (jobs_app.models.Job), an
# entry of a host's own rules (jobs_app.models.AuditEntry), the sample's sequence number
# (HostSample.seq). Same rule: what passes fits its column.
REPORT_NAME_LIMITS: dict[str, int] = {
    "kind": 32,
    "status": 16,
    "dedupe_key": 200,
    "scheduler": 16,
    "label": 255,
    "schedule_text": 255,
    "state": 64,
    "scope": 16,
    "actor": 150,
    "action": 32,
}
REPORT_TEXT_LIMITS: dict[str, int] = {
    "message": MAX_ERROR_CHARS,
    "command": 20_000,
    "schedule_raw": 20_000,
    "source": MAX_PATH_CHARS,
    "target": 2000,
    "output": 20_000,
}
REPORT_INT_RANGES: dict[str, tuple[int, int]] = {
    "seq": (0, INT64_MAX),
    "monitor_pid": (2, INT32_MAX),
    "interval_seconds": (0, INT32_MAX),
    "last_exit_status": (-INT32_MAX, INT32_MAX),
}


# A run's telemetry in a report (sessions_app.telemetry: a Rollup, a span row), checked by
# fleet.telemetry_items and rebuilt from what passes: names and texts at most this many
# characters (the columns of RunTelemetry and TelemetrySpan, and what a host's monitor
# keeps of each), every count and time a whole number in its range, every figure finite.
REPORT_TELEMETRY_TEXT_LIMITS: dict[str, int] = {
    "job": 100,  # RunTelemetry.job_tag
    "host": 255,
    "name": 100,  # a span's, a tool's
    "requests_by": 200,  # "model · query_source"
    "status": 16,  # an API error's status code
    "error": 300,  # an API error's text
    "attribute": 200,  # a span attribute's name
    "attribute_value": 300,  # sessions_app.telemetry.SPAN_VALUE_CHARS
}
REPORT_TELEMETRY_INT_RANGES: dict[str, tuple[int, int]] = {
    "count": (0, INT32_MAX),  # requests, errors, tool calls (IntegerField)
    "tokens": (0, INT64_MAX),  # BigIntegerField
    "ns": (0, INT64_MAX),  # nanoseconds since the epoch
    "attribute": (-INT64_MAX, INT64_MAX),
}
# Milliseconds, seconds, a span attribute's float: finite and at most this (what the
# rollup itself keeps of a number the CLI sent).
MAX_TELEMETRY_FIGURE = 1e15


def report_item_problem(item: dict[str, Any]) -> str | None:
    """Why one item of a host's report cannot be recorded (the first field that does not
    fit), or None. Fields without a limit here are checked by the code that reads them."""
    for name, value in item.items():
        problem = _report_field_problem(name, value)
        if problem:
            return problem
    return None


def _report_field_problem(name: str, value: object) -> str | None:
    # Free text may hold a NUL or a lone surrogate: clean_text removes them where it is
    # written (sessions_app.fields). A name may not.
    limit = REPORT_NAME_LIMITS.get(name) or REPORT_TEXT_LIMITS.get(name)
    if limit is not None and isinstance(value, str):
        if name in REPORT_NAME_LIMITS and _CONTROL_RE.search(value):
            return f"{name} holds a control character"
        if name in REPORT_NAME_LIMITS and _LONE_SURROGATE_RE.search(value):
            return f"{name} is not valid UTF-8 (a lone surrogate)"
        if len(value) > limit:
            return f"{name} is {len(value)} characters long (at most {limit})"
        return None
    if name in REPORT_INT_RANGES and isinstance(value, int) and not isinstance(value, bool):
        low, high = REPORT_INT_RANGES[name]
        return None if low <= value <= high else f"{name} {_short(value)} is out of range"
    return field_problem(name, value)


_LONE_SURROGATE_RE = re.compile(r"[\ud800-\udfff]")


def clean_text(value: str) -> str:
    """Text a database column can hold on every backend: no NUL (PostgreSQL refuses it),
    no lone surrogate (not encodable as UTF-8; U+FFFD instead)."""
    if "\x00" in value:
        value = value.replace("\x00", "")
    return _LONE_SURROGATE_RE.sub("\ufffd", value)


def clean_json(value: Any) -> Any:
    """clean_text on every string of a JSON value, keys included."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_json(key): clean_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(item) for item in value]
    return value


def field_problem(name: str, value: object) -> str | None:
    """Why `value` cannot be field `name` of a protocol file, or None when it can."""
    if value is None:
        return None
    if isinstance(value, str):
        if "\x00" in value:
            return f"{name} holds a NUL byte"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"{name} is not valid UTF-8 (a lone surrogate)"
        limit = NAME_LIMITS.get(name) or TEXT_LIMITS.get(name)
        if limit is not None and len(value) > limit:
            return f"{name} is {len(value)} characters long (at most {limit})"
        if name in LINE_LIMITS and value.count("\n") >= LINE_LIMITS[name]:
            return f"{name} has more than {LINE_LIMITS[name]} lines"
        if name in NAME_LIMITS and _CONTROL_RE.search(value):
            return f"{name} holds a control character"
        if name in TIME_FIELDS:
            return _time_problem(name, value)
        return None
    if isinstance(value, list) and name in LIST_LIMITS:
        most, chars = LIST_LIMITS[name]
        if len(value) > most:
            return f"{name} has {len(value)} items (at most {most})"
        for item in value:
            if not isinstance(item, str):
                return f"{name} holds a {type(item).__name__}, not text"
            if len(item) > chars or "\x00" in item:
                return f"{name} holds an item longer than {chars} characters or with a NUL"
        return None
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and name in INT_RANGES:
        low, high = INT_RANGES[name]
        if name.endswith("_pid") and value <= 1:
            return f"{name} {value} cannot be a wrapper or an agent"
        if not low <= value <= high:
            return f"{name} {_short(value)} is out of range ({low}..{high})"
        return None
    if isinstance(value, int | float) and name in FLOAT_RANGES:
        low, high = FLOAT_RANGES[name]
        if isinstance(value, float) and not math.isfinite(value):
            return f"{name} is {value}"
        if not low <= value < high:
            return f"{name} {_short(value)} is out of range ({low:g} <= value < {high:g})"
        return None
    return None


def _short(value: int | float) -> str:
    text = repr(value)
    return text if len(text) <= 30 else f"{text[:12]}...({len(text)} digits)"


def _time_problem(name: str, value: str) -> str | None:
    try:
        parsed = parse_iso(value)
    except (ValueError, OverflowError):
        return f"{name} is not an ISO 8601 time"
    if not MIN_YEAR <= parsed.year <= MAX_YEAR:
        return f"{name} is outside the years {MIN_YEAR}..{MAX_YEAR}"
    return None


# An output check's verdict (SpoolRecord.output_check): verdict is "passed" or "failed";
# check names the one that failed, wanted what it asked, seen what was found; checked
# lists the checks judged (comma-separated). Each at most OUTPUT_CHECK_CHARS.
OUTPUT_CHECK_KEYS = ("verdict", "check", "wanted", "seen", "checked")
OUTPUT_CHECK_CHARS = 500


def output_check_problem(verdict: dict[str, Any]) -> str | None:
    for key, value in verdict.items():
        if key not in OUTPUT_CHECK_KEYS:
            return f"output_check has an unknown key {str(key)[:40]!r}"
        if not isinstance(value, str):
            return f"output_check[{key!r}] is not text"
        if len(value) > OUTPUT_CHECK_CHARS or "\x00" in value:
            return f"output_check[{key!r}] is over {OUTPUT_CHECK_CHARS} characters or holds a NUL"
    if verdict.get("verdict") not in ("passed", "failed"):
        return "output_check's verdict is neither passed nor failed"
    return None


def fit_output_check(verdict: dict[str, object]) -> dict[str, str]:
    """A verdict made to fit its limits: known keys, text, clipped, no NUL."""
    return {
        key: str(verdict[key]).replace("\x00", "")[:OUTPUT_CHECK_CHARS]
        for key in OUTPUT_CHECK_KEYS
        if verdict.get(key) is not None
    }


def usage_problem(usage: dict[str, Any]) -> str | None:
    if len(usage) > MAX_USAGE_KEYS:
        return f"usage has {len(usage)} keys (at most {MAX_USAGE_KEYS})"
    for key, count in usage.items():
        if len(key) > 100 or "\x00" in key:
            return "usage has a key that is not a name"
        if isinstance(count, int) and not isinstance(count, bool):
            low, high = TOKEN_RANGE
            if not low <= count <= high:
                return f"usage[{key[:40]!r}] {_short(count)} is out of range ({low}..{high})"
    return None


def fit_name(name: str, value: object) -> str | None:
    """A name taken from claude's output, made to fit field `name`: control characters
    dropped, clipped to its limit; None when nothing usable is left."""
    if not isinstance(value, str):
        return None
    cleaned = _CONTROL_RE.sub("", value).encode("utf-8", "replace").decode("utf-8")
    limit = NAME_LIMITS.get(name) or TEXT_LIMITS.get(name) or MAX_ERROR_CHARS
    return cleaned[:limit] or None


def fit_text(name: str, value: str | None) -> str | None:
    """Free text (an error line) made to fit field `name`: no NUL, clipped."""
    if value is None:
        return None
    cleaned = value.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    return cleaned[: TEXT_LIMITS.get(name, MAX_ERROR_CHARS)]


def fit_number(name: str, value: object) -> int | float | None:
    """A number taken from claude's output, or None when it is not one field `name` holds."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if name in FLOAT_RANGES:
        return float(value) if field_problem(name, value) is None else None
    if not isinstance(value, int):
        return None
    return value if field_problem(name, value) is None else None


def fit_usage(usage: object) -> dict[str, int] | None:
    """Token counts from claude's `result` event, kept only where they fit a column."""
    if not isinstance(usage, dict):
        return None
    low, high = TOKEN_RANGE
    kept: dict[str, int] = {}
    for key, count in usage.items():
        if not isinstance(key, str) or len(key) > 100 or "\x00" in key:
            continue
        if isinstance(count, float) and math.isfinite(count):
            count = int(count)
        if isinstance(count, int) and not isinstance(count, bool) and low <= count <= high:
            kept[key] = count
        if len(kept) >= MAX_USAGE_KEYS:
            break
    return kept


# --------------------------------------------------------------------------- why a run ended

# What a completion record says about why the run ended, beyond its exit code: the end
# of claude's stderr and stdout, the `result` event's text and error fields, the last
# API error it retried on, and whether claude started and wrote a transcript. The
# console keeps them together (sessions_app.models.Session.end_details).
REASON_FIELDS = (
    "stderr_tail",
    "stdout_tail",
    "result_text",
    "subtype",
    "terminal_reason",
    "errors",
    "permission_denials",
    "last_api_error",
    "claude_started",
    "transcript_written",
)

# A value after `key=` or `key:`: quoted (a JSON string, escapes and all; or quoted
# inside one, `\"…\"`, as json.dumps writes a shell command), or one word.
_QUOTED = r"""\\"(?:[^"\\]|\\[^"])*\\"|"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'"""
_VALUE = rf"""({_QUOTED}|\\?["']?[^\s"',;]+)"""
# A header whose whole value is the secret (any scheme, every cookie): quoted, or the rest
# of the line.
_HEADER_VALUE = rf"""({_QUOTED}|[^\r\n]+)"""
# A key that names a secret, bare or quoted (`"password": "…"`, as json.dumps writes a
# denied tool's input), with any prefix or suffix: PGPASSWORD, AWS_SECRET_ACCESS_KEY.
_SECRET_KEY = re.compile(
    r"(?i)([\"']?\b[\w-]*(?:api[_-]?key|token|secret|passw(?:or)?d|access[_-]?key"
    r"|private[_-]?key|credential)[\w-]*[\"']?\s*[=:]\s*)" + _VALUE
)
_SECRET_HEADER = re.compile(
    r"(?i)([\"']?\b(?:proxy-)?(?:authorization|set-cookie|cookie)[\"']?\s*[=:]\s*)" + _HEADER_VALUE
)


def _redact_value(match: re.Match[str]) -> str:
    key, value = match.group(1), match.group(2)
    if value.rstrip(")]}").isdigit() and re.search(r"(?i)tokens[\"']?\s*[=:]\s*$", key):
        return match.group(0)  # input_tokens: 5 is a count, not a credential
    quote = next((q for q in ('\\"', '"', "'") if value.startswith(q)), "")
    quote = quote if len(value) >= 2 * len(quote) and value.endswith(quote) else ""
    return f"{key}{quote}[redacted]{quote}"


# Credentials that must never reach a record, a page or an alert, whatever printed them.
_SECRETS = (
    (re.compile(r"sk-ant-[A-Za-z0-9_-]+"), "sk-ant-[redacted]"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{20,}"), "sk-[redacted]"),
    (re.compile(r"\boc_(host_)?[A-Za-z0-9_-]{8,}"), r"oc_\1[redacted]"),
    (re.compile(r"\b(gh[pousr]_)[A-Za-z0-9]{8,}"), r"\1[redacted]"),  # GitHub tokens
    (re.compile(r"\bgithub_pat_[A-Za-z0-9_]{8,}"), "github_pat_[redacted]"),
    (re.compile(r"\b(xox[baprs]-)[A-Za-z0-9-]{8,}"), r"\1[redacted]"),  # Slack tokens
    (re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"), r"\1[redacted]"),  # AWS access key ids
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]{8,}"), r"\1\2[redacted]"),
    # A password in a URL: scheme://user:password@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s/:@]*:)[^\s/@]+@"), r"\1[redacted]@"),
    (_SECRET_HEADER, _redact_value),
    (_SECRET_KEY, _redact_value),
)
_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?")
_CONTROL_BUT_LINES_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def redact(text: str) -> str:
    """`text` with API keys, tokens (bearer, opsconsole, GitHub, Slack, AWS key ids),
    URL passwords, Authorization and Cookie headers and `secret-key=value` pairs (quoted
    or not, as in JSON) replaced by `[redacted]`. Idempotent."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def fit_tail(name: str, raw: bytes | str | None) -> str | None:
    """The end of what claude printed, as field `name` keeps it: decoded, colours and
    control characters dropped, secrets redacted (before clipping, so a key cut in
    half cannot slip through), then its last lines and characters; None when empty."""
    if raw is None:
        return None
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    text = _ANSI_RE.sub("", text).replace("\r\n", "\n").replace("\r", "\n")
    text = redact(_CONTROL_BUT_LINES_RE.sub("", text)).encode("utf-8", "replace").decode()
    lines = [line.rstrip() for line in text.strip("\n").splitlines()]
    lines = lines[-LINE_LIMITS.get(name, TAIL_LINES) :]
    kept = "\n".join(lines).strip()[-TEXT_LIMITS.get(name, TAIL_CHARS) :]
    return kept or None


def fit_message(name: str, value: object) -> str | None:
    """A message from claude (its result text, an API error) for field `name`: secrets
    redacted, no NUL or control characters but newlines, clipped to its limit."""
    if not isinstance(value, str):
        return None
    text = redact(_CONTROL_BUT_LINES_RE.sub("", _ANSI_RE.sub("", value)))
    text = text.encode("utf-8", "replace").decode().strip()
    return text[: TEXT_LIMITS.get(name, MAX_ERROR_CHARS)] or None


def fit_list(name: str, items: object) -> list[str] | None:
    """A list from claude's result event (`errors`, `permission_denials`) as short texts:
    an object is shown as `tool_name: tool_input` (a denial) or as JSON."""
    if not isinstance(items, list):
        return None
    most, chars = LIST_LIMITS[name]
    kept: list[str] = []
    for item in items[:most]:
        if isinstance(item, dict) and "tool_name" in item:
            item = f"{item.get('tool_name')}: {json.dumps(item.get('tool_input'), default=str)}"
        elif not isinstance(item, str):
            item = json.dumps(item, default=str)
        text = fit_message("error", item)
        if text:
            kept.append(text[:chars])
    return kept


def fit_reason(record: SpoolRecord) -> SpoolRecord:
    """Make the record's reason fields (and its error line) fit their limits, secrets
    redacted: what the wrapper does before it writes and the console after it reads, so
    a record from any wrapper (or host) is held to the same limits. Idempotent."""
    for name in ("stderr_tail", "stdout_tail"):
        setattr(record, name, fit_tail(name, getattr(record, name)))
    for name in ("result_text", "last_api_error"):
        setattr(record, name, fit_message(name, getattr(record, name)))
    if record.error:  # the wrapper's line may quote claude (a usage-limit message)
        record.error = redact(record.error)[:MAX_ERROR_CHARS]
    for name in ("errors", "permission_denials"):
        setattr(record, name, fit_list(name, getattr(record, name)))
    record.terminal_reason = fit_name("terminal_reason", record.terminal_reason)
    # The whole file stays under MAX_RECORD_BYTES (JSON escapes can make a character six
    # bytes): the reason fields give way, halving, what says least about the end first.
    for name in _GIVE_WAY_ORDER:
        while getattr(record, name) and _encoded_size(record) > MAX_RECORD_BYTES:
            setattr(record, name, _halved(name, getattr(record, name)))
    return record


_GIVE_WAY_ORDER = (
    "stdout_tail",
    "permission_denials",
    "errors",
    "stderr_tail",
    "result_text",
    "last_api_error",
)


def _halved(name: str, value: str | list[str]) -> str | list[str] | None:
    """Half of a reason field: a tail keeps its end, a message its start, a list its first
    items; None once too little is left to say anything."""
    if isinstance(value, list):
        return value[: len(value) // 2] or None
    kept = value[len(value) // 2 :] if name.endswith("_tail") else value[: len(value) // 2]
    return kept if len(kept) >= 16 else None


def _encoded_size(record: SpoolRecord) -> int:
    return len(json.dumps(record.to_dict(), sort_keys=True, indent=1).encode("utf-8")) + 1


# --------------------------------------------------------------------------- typed records


def _check_fields(cls: type, data: dict[str, Any], fitted: tuple[str, ...] = ()) -> dict[str, Any]:
    """Keep known fields, check each against its declared type and its limits; unknown keys
    are ignored. Fields named in `fitted` are only type-checked: the caller makes them fit."""
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
        problem = None if spec.name in fitted else field_problem(spec.name, value)
        if problem:
            raise FormatError(problem)
        if float in allowed and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # in range, so this cannot overflow
        values[spec.name] = value
    return values


def check_record(record: Any) -> None:
    """Raise FormatError unless every field of `record` (a dataclass below) is within its
    limits: what the wrapper calls before it writes a file."""
    for spec in dataclasses.fields(record):
        problem = field_problem(spec.name, getattr(record, spec.name))
        if problem:
            raise FormatError(problem)
    for name in ("session_id", "retry_of"):
        value = getattr(record, name, None)
        if value is not None and not is_session_id(value):
            raise FormatError(f"{name} is not a lowercase UUID")
    tag = getattr(record, "script_tag", None)
    if tag is not None and not is_valid_tag(tag):
        raise FormatError("script_tag is not 1-100 characters of [A-Za-z0-9._-]")
    usage = getattr(record, "usage", None)
    if usage is not None:
        problem = usage_problem(usage)
        if problem:
            raise FormatError(problem)
    verdict = getattr(record, "output_check", None)
    if verdict is not None:
        problem = output_check_problem(verdict)
        if problem:
            raise FormatError(problem)


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
    "dict[str, str] | None": (dict, type(None)),
    "list[str] | None": (list, type(None)),
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
    # Set by the wrapper when claude has exited but the completion record could not be
    # written (disk full): the run ended with this end reason and exit code, it was not
    # killed. ISO 8601 UTC.
    ended_at: str | None = None
    end_reason: str | None = None
    exit_code: int | None = None
    version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        # Every field is a scalar: a shallow copy is asdict() without its deep copies,
        # which cost a monitor (and a console taking many hosts' reports) real time.
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sidecar:
        sidecar = cls(**_check_fields(cls, data))
        check_record(sidecar)
        if sidecar.end_reason is not None and sidecar.end_reason not in END_REASONS:
            raise FormatError(f"end_reason {sidecar.end_reason!r} is not one of {END_REASONS}")
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
    # Why it ended (REASON_FIELDS; format 2, None in older records), bounded and redacted.
    claude_pid: int | None = None
    claude_started: bool | None = None  # False: the wrapper never started claude
    transcript_written: bool | None = None  # claude's transcript existed when it ended
    stderr_tail: str | None = None  # the last TAIL_LINES lines / TAIL_CHARS characters
    stdout_tail: str | None = None  # the same, without the stream-json event lines
    result_text: str | None = None  # the `result` event's text
    terminal_reason: str | None = None
    errors: list[str] | None = None  # the `result` event's errors[]
    permission_denials: list[str] | None = None  # "tool_name: tool_input" each
    last_api_error: str | None = None  # from the last system/api_retry event
    # The verdict of the job's output checks, added by the host's monitor when it reads
    # the record (never by the wrapper): OUTPUT_CHECK_KEYS, text each. None: not judged.
    output_check: dict[str, str] | None = None
    version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpoolRecord:
        # Claude's words are clipped and redacted, not refused: a long tail is no reason
        # to quarantine how a run ended.
        record = fit_reason(cls(**_check_fields(cls, data, fitted=REASON_FIELDS)))
        if record.usage is not None:
            record.usage = {
                str(k): v
                for k, v in record.usage.items()
                if isinstance(v, int) and not isinstance(v, bool)
            }
        check_record(record)
        if record.end_reason not in END_REASONS:
            raise FormatError(f"end_reason {record.end_reason!r} is not one of {END_REASONS}")
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
        check_record(stamp)
        return stamp

    def holds(self, now: datetime | None = None) -> bool:
        return parse_iso(self.until) > (now or datetime.now(UTC))


def read_quota_stamp(paths: StatePaths, now: datetime | None = None) -> QuotaStamp | None:
    """The stamp in force at `now` (default: the clock), or None. A stamp that cannot be
    read holds nothing."""
    if not os.path.lexists(paths.quota_stamp):
        return None
    try:
        stamp = QuotaStamp.from_dict(read_json_record(paths.quota_stamp))
    except FormatError:
        return None
    return stamp if stamp.holds(now) else None


def clear_quota_stamp(paths: StatePaths) -> bool:
    try:
        paths.quota_stamp.unlink()
    except FileNotFoundError:
        return False
    return True


# --------------------------------------------------------------------------- Claude Code's registry

# While a Claude Code session runs (any session: wrapped or not, terminal, IDE, CI), the
# CLI keeps $CLAUDE_CONFIG_DIR/sessions/<pid>.json (mode 0644 in a 0700 directory):
# {"pid", "sessionId", "cwd", "startedAt" (epoch ms), "procStart" (field 22 of
# /proc/<pid>/stat, a string of clock ticks), "version", "kind", "entrypoint", "name",
# ...}. It is removed on a normal exit and left behind after SIGKILL: compare procStart
# with the live process's start time before believing it.
MAX_REGISTRY_BYTES = 16 * 1024
REGISTRY_TEXT_LIMITS = {"version": 64, "kind": 32, "entrypoint": 64, "name": 255, "status": 32}
_PROC_START_RE = re.compile(r"[0-9]{1,20}")
# startedAt in epoch milliseconds: after 1970, before 2514.
MAX_EPOCH_MS = 2**34 * 1000


def registry_dir(config_dir: Path) -> Path:
    return config_dir / "sessions"


@dataclass(frozen=True)
class RegistryEntry:
    """One live (or left-behind) Claude Code session, from the CLI's own registry file."""

    pid: int
    session_id: str
    cwd: str
    started_at: float  # epoch seconds (the file's startedAt is in milliseconds)
    proc_start_ticks: int | None  # procStart: clock ticks after boot; None if absent
    version: str | None = None
    kind: str | None = None  # "interactive", ...
    entrypoint: str | None = None  # "cli", "sdk-cli", ...
    name: str | None = None
    status: str | None = None  # "busy" | "idle" in builds that write it

    @property
    def process_started(self) -> float | None:
        """procStart as epoch seconds, comparable with process_start_time(pid); None when
        the file gave none or this is not Linux (no /proc to anchor the ticks to)."""
        if self.proc_start_ticks is None or not Path("/proc/stat").exists():
            return None
        return ticks_to_epoch(self.proc_start_ticks)

    def is_running(self) -> bool:
        """True when `pid` is alive and is still the process that wrote the file."""
        started = self.process_started
        return started is not None and same_start_time(started, process_start_time(self.pid))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RegistryEntry:
        pid = data.get("pid")
        if isinstance(pid, bool) or not isinstance(pid, int) or not 2 <= pid <= INT32_MAX:
            raise FormatError("pid is not a process id > 1")
        session_id = data.get("sessionId")
        if not is_session_id(session_id):
            raise FormatError("sessionId is not a lowercase UUID")
        cwd = data.get("cwd")
        if not isinstance(cwd, str) or not cwd.startswith("/"):
            raise FormatError("cwd is not an absolute path")
        problem = field_problem("cwd", cwd)
        if problem:
            raise FormatError(problem)
        started_ms = data.get("startedAt")
        if (
            isinstance(started_ms, bool)
            or not isinstance(started_ms, int | float)
            or not 0 < started_ms < MAX_EPOCH_MS  # NaN fails this too
        ):
            raise FormatError("startedAt is not epoch milliseconds")
        proc_start = data.get("procStart")
        if proc_start is not None and (
            not isinstance(proc_start, str) or _PROC_START_RE.fullmatch(proc_start) is None
        ):
            raise FormatError("procStart is not a string of digits")
        texts: dict[str, str | None] = {}
        for key, limit in REGISTRY_TEXT_LIMITS.items():
            value = data.get(key)
            if value is not None and (
                not isinstance(value, str)
                or len(value) > limit
                or "\x00" in value
                or field_problem(key, value) is not None
            ):
                raise FormatError(f"{key} is not a string of at most {limit} characters")
            texts[key] = value
        return cls(
            pid=pid,
            session_id=session_id,
            cwd=cwd,
            started_at=started_ms / 1000,
            proc_start_ticks=None if proc_start is None else int(proc_start),
            **texts,
        )


def read_registry_entry(path: Path) -> RegistryEntry:
    """Parse and validate one `sessions/<pid>.json`; FormatError says why it is not trusted.

    Same strictness as a sidecar: no symlinks (O_NOFOLLOW), a regular file owned by this
    user, at most MAX_REGISTRY_BYTES, every field typed and bounded, and the file name
    must be the pid it holds.
    """
    entry = RegistryEntry.from_dict(read_json_record(path, max_bytes=MAX_REGISTRY_BYTES))
    if path.name != f"{entry.pid}.json":
        raise FormatError(f"file name does not match pid {entry.pid}")
    return entry


def scan_registry(
    config_dir: Path, read=read_registry_entry
) -> tuple[list[RegistryEntry], list[tuple[str, str]]]:
    """Every entry of `config_dir`'s registry that can be trusted, and (file name, why) for
    every other *.json file there. A missing directory is an empty registry. `read` parses
    one file (the monitor passes one that remembers unchanged files)."""
    entries: list[RegistryEntry] = []
    skipped: list[tuple[str, str]] = []
    folder = registry_dir(config_dir)
    try:
        names = sorted(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return entries, skipped
    except OSError as exc:
        return entries, [(str(folder), f"unreadable: {exc.strerror or exc}")]
    for name in names:
        if not name.endswith(".json") or name.startswith("."):
            continue
        try:
            entries.append(read(folder / name))
        except FormatError as exc:
            skipped.append((name, str(exc)))
    return entries, skipped


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
