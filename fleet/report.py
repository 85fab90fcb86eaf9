"""Report mode, the host's side: each sample posted to a central console.

`opsconsole monitor --report-to URL --token-file PATH` makes the monitor a
second kind of sink: instead of writing a database it posts its samples (whole, or
what changed since the one the console holds: fleet.sample_delta; with nothing
live and nothing to send, a heartbeat), the events it has not had acknowledged,
and the completion records waiting in its spool to `POST /api/hosts/report`. The
console answers with what it recorded (session ids, event keys); only then do
spool files leave the spool and events leave the outbox, so a console restart
or a network cut loses nothing. The answer also carries operator requests for
this host (stop a run, kill leftovers), carried out here with the same code
as on a console's own host.
"""

from __future__ import annotations

import gzip
import ipaddress
import json
import os
import stat
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

REPORT_PATH = "/api/hosts/report"
REPORT_FORMAT = 1
# Bounds per post, so a backlog (a long outage) drains over several samples instead of
# making one post too big to send.
MAX_COMPLETIONS_PER_REPORT = 100
MAX_EVENTS_PER_REPORT = 1000
# A run's telemetry (fleet.reporting): rollups and spans per report, and the bytes of JSON
# they may take; the rest wait for the next report. The console refuses more.
MAX_ROLLUPS_PER_REPORT = 200
MAX_SPANS_PER_REPORT = 500
MAX_TELEMETRY_BYTES_PER_REPORT = 2 * 1024 * 1024
# Origins of live runs (fleet.report_origins), each sent until acknowledged: the rest wait.
MAX_ORIGINS_PER_REPORT = 200
MAX_REPORT_BYTES = 8 * 1024 * 1024  # the console refuses more (413)
# Smaller bodies gain nothing from gzip (a heartbeat); a delta of a run or more is sent
# gzipped.
GZIP_ABOVE_BYTES = 1024
# The longest heartbeat a host may declare (OPSCONSOLE_HEARTBEAT_SECONDS): past it, the
# console would call a dead host silent only an hour later.
MAX_HEARTBEAT_SECONDS = 600
# A host's own rules act as this actor, and only these actions (the console records
# nothing else from a host's audit entries).
HOST_RULE_ACTOR = "watchdog"
HOST_RULE_ACTIONS = ("stop", "kill_leftovers")


class ReportError(Exception):
    """The console did not take the report: `status` is its HTTP status, 0 for no answer."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status

    @property
    def refused(self) -> bool:
        """The console answered and said no (auth, host mismatch, malformed): retrying
        the same report will not help, unlike a network error, a 5xx or a 429 (too
        many reports this minute: the next one is taken)."""
        return 400 <= self.status < 500 and self.status != 429


def is_loopback(hostname: str) -> bool:
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname.strip("[]")).is_loopback
    except ValueError:
        return False


def check_report_url(url: str, *, insecure: bool = False) -> str:
    """The console's base URL, or ValueError: plain http only to loopback unless insecure."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--report-to must be an http(s) URL of the console, not {url!r}")
    if parts.scheme == "http" and not insecure and not is_loopback(parts.hostname):
        raise ValueError(
            f"refusing to send a host token in clear text to {parts.hostname}: use https:// "
            "(TLS in front of `opsconsole serve`, see docs/many-hosts.md) or --insecure"
        )
    return url.rstrip("/")


# Names of environment variables, not secrets.
TOKEN_ENV = "OPSCONSOLE_REPORT_TOKEN"  # noqa: S105
TOKEN_FILE_ENV = "OPSCONSOLE_REPORT_TOKEN_FILE"  # noqa: S105
TOKEN_ON_COMMAND_LINE = (
    "warning: --token puts the host token on the command line, where every user of this "
    f"host reads it (ps, /proc): use {TOKEN_ENV} or --token-file (mode 0600) instead"
)


def read_token_file(path: str) -> str:
    """The host token from a file only its owner can read (first line), or ValueError."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise ValueError(f"cannot read the token file {path}: {exc.strerror}") from exc
    with os.fdopen(fd) as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"the token file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise ValueError(
                f"the token file {path} is readable by others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}): chmod 600 {path}"
            )
        token = handle.readline().strip()
    if not token:
        raise ValueError(f"the token file {path} is empty")
    return token


def host_token(
    flag: str | None, token_file: str | None, environ: dict[str, str]
) -> tuple[str, str | None]:
    """(token, warning): from --token-file (or OPSCONSOLE_REPORT_TOKEN_FILE), else --token
    (with a warning: it shows in `ps`), else OPSCONSOLE_REPORT_TOKEN; "" when none."""
    token_file = token_file or environ.get(TOKEN_FILE_ENV, "")
    if token_file:
        return read_token_file(token_file), None
    if flag:
        return flag, TOKEN_ON_COMMAND_LINE
    return environ.get(TOKEN_ENV, ""), None


Transport = Callable[[bytes, dict[str, str]], tuple[int, bytes]]


@dataclass
class Reporter:
    url: str
    token: str
    insecure: bool = False
    timeout: float = 10.0
    # Tests may post through Django's test client; the monitor posts over HTTP(S).
    transport: Transport | None = None

    def __post_init__(self) -> None:
        self.url = check_report_url(self.url, insecure=self.insecure)
        if not self.token:
            raise ValueError(
                f"a host token is needed: --token-file PATH (mode 0600) or {TOKEN_ENV}"
            )

    @property
    def endpoint(self) -> str:
        return self.url + REPORT_PATH

    def send(self, payload: dict) -> dict:
        """Post one report; the console's answer (acks, actions) or ReportError."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {self.token}",
        }
        if len(body) > GZIP_ABOVE_BYTES:
            body = gzip.compress(body, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        if len(body) > MAX_REPORT_BYTES:
            raise ReportError(f"report of {len(body)} bytes is over the limit", 413)
        status, answer = (self.transport or self._post)(body, headers)
        if status != 200:
            try:
                message = json.loads(answer).get("error", "")
            except (ValueError, AttributeError):
                message = answer[:200].decode(errors="replace")
            raise ReportError(f"console answered {status}: {message}", status)
        try:
            return json.loads(answer)
        except ValueError as exc:
            raise ReportError(f"console's answer is not JSON: {exc}", status) from exc

    def _post(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        request = urllib.request.Request(  # noqa: S310 - the URL was checked: http(s) only
            self.endpoint, data=body, headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                return response.status, response.read(1024 * 1024)
        except urllib.error.HTTPError as error:
            return error.code, error.read(64 * 1024)
        except (OSError, ValueError) as exc:  # refused, reset, timeout, DNS, TLS
            raise ReportError(f"console unreachable: {exc}") from exc
