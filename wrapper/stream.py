"""Pass claude's output through unchanged while reading the events in it.

Bytes go out as they come in (no line buffering), so `| jq` pipelines and
stream-json followers behave as if the wrapper were not there. Outcomes are
decided from the `result` event's fields and the system refusal event only,
never from anything else the agent printed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

CHUNK = 64 * 1024
# A stream-json line can carry a large tool result; the events we read are small.
MAX_SCANNED_LINE = 8 * 1024 * 1024
# More than a record keeps (formats.TAIL_CHARS): secrets are redacted before the tail is
# clipped, so a key cut at this buffer's edge falls outside what is kept.
TAIL_KEPT = 16 * 1024

# The CLI's own words when an account or org limit is hit (seen across 1.x-2.1.x).
USAGE_LIMIT_RE = re.compile(
    r"usage limit reached|hit your limit|limit reached\s*[∙·]\s*resets|"
    r"Request rejected \(429\)|rate_limit_error",
    re.IGNORECASE,
)
RESET_EPOCH_RE = re.compile(r"\|(\d{10})\b")


@dataclass
class Observed:
    """What the wrapper learned from one attempt's output."""

    result: dict[str, Any] | None = None
    refusal_event: bool = False
    model: str | None = None
    stdout_tail: bytes = b""
    stderr_tail: bytes = b""
    # stdout without its stream-json event lines: what a person would have read there.
    stdout_text_tail: bytes = b""
    # The last `system`/`api_retry` event: {"attempt", "max_retries", "error_status",
    # "error", ...}: the API error claude was retrying on.
    api_retry: dict[str, Any] | None = None

    @property
    def refused(self) -> bool:
        return self.refusal_event or (self.result or {}).get("stop_reason") == "refusal"

    def usage_limit_text(self) -> str | None:
        """The CLI's usage-limit message, if the attempt ended on one; else None."""
        result = self.result
        if result is not None:
            if not result.get("is_error"):
                return None
            text = str(result.get("result") or "")
            if result.get("api_error_status") == 429 or USAGE_LIMIT_RE.search(text):
                return text.strip().splitlines()[0][:300] if text.strip() else "HTTP 429"
            return None
        # Text output has no result event: only the very last line counts.
        for tail in (self.stdout_tail, self.stderr_tail):
            lines = tail.decode("utf-8", errors="replace").strip().splitlines()
            if lines and USAGE_LIMIT_RE.search(lines[-1]):
                return lines[-1][:300]
        return None

    def reset_epoch(self) -> int | None:
        text = self.usage_limit_text() or ""
        match = RESET_EPOCH_RE.search(text)
        return int(match.group(1)) if match else None

    def usage(self) -> dict[str, int] | None:
        usage = (self.result or {}).get("usage")
        if not isinstance(usage, dict):
            return None
        return {
            key: int(value)
            for key, value in usage.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }

    def see_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        subtype = str(event.get("subtype") or "")
        if kind == "result":
            self.result = event
            model_usage = event.get("modelUsage")
            if isinstance(model_usage, dict) and model_usage and self.model is None:
                self.model = str(next(iter(model_usage)))
        elif kind == "system" and subtype.startswith("model_refusal"):
            self.refusal_event = True
        elif kind == "system" and subtype == "init" and isinstance(event.get("model"), str):
            self.model = event["model"]
        elif kind == "system" and subtype == "api_retry":
            self.api_retry = event

    def last_api_error(self) -> str | None:
        """The API error of the last retry, in words: 'authentication_failed (HTTP 401),
        retry 10 of 10'."""
        retry = self.api_retry
        if retry is None:
            return None
        words = str(retry.get("error") or "API error")
        if isinstance(retry.get("error_status"), int):
            words += f" (HTTP {retry['error_status']})"
        if retry.get("attempt") is not None:
            words += f", retry {retry['attempt']}"
            if retry.get("max_retries") is not None:
                words += f" of {retry['max_retries']}"
        return words


def _write_all(fd: int, data: bytes) -> bool:
    """Write everything; False once the reader has gone (EPIPE), so we stop trying."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except InterruptedError:
            continue
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.EBADF):
                return False
            raise
        view = view[written:]
    return True


class Pump(threading.Thread):
    """Copy one pipe of claude's to one of ours; optionally scan its lines for events."""

    def __init__(self, source_fd: int, dest_fd: int, observed: Observed, *, scan: bool):
        super().__init__(daemon=True)
        self.source_fd = source_fd
        self.dest_fd = dest_fd
        self.observed = observed
        self.scan = scan
        self.tail = b""
        self.text_tail = bytearray()  # lines that were not stream-json events (scanned pipes)
        self._line = bytearray()
        self._line_too_long = False

    def run(self) -> None:
        forwarding = True
        while True:
            try:
                data = os.read(self.source_fd, CHUNK)
            except InterruptedError:
                continue
            except OSError:
                break
            if not data:
                break
            if forwarding:
                forwarding = _write_all(self.dest_fd, data)
            self.tail = (self.tail + data)[-TAIL_KEPT:]
            if self.scan:
                self._scan(data)
        if self.scan and self._line and not self._line_too_long:
            self._see_line(bytes(self._line))
        with contextlib.suppress(OSError):
            os.close(self.source_fd)

    def _scan(self, data: bytes) -> None:
        start = 0
        while True:
            newline = data.find(b"\n", start)
            piece = data[start:] if newline == -1 else data[start:newline]
            if not self._line_too_long:
                if len(self._line) + len(piece) > MAX_SCANNED_LINE:
                    self._line_too_long = True
                    self._line.clear()
                else:
                    self._line += piece
            if newline == -1:
                return
            if not self._line_too_long:
                self._see_line(bytes(self._line))
            self._line.clear()
            self._line_too_long = False
            start = newline + 1

    def _see_line(self, line: bytes) -> None:
        stripped = line.strip()
        event = None
        if stripped.startswith(b"{"):
            with contextlib.suppress(ValueError, RecursionError):
                event = json.loads(stripped)
        if isinstance(event, dict):
            self.observed.see_event(event)
        elif stripped:
            self.text_tail += line + b"\n"
            if len(self.text_tail) > 2 * TAIL_KEPT:  # trimmed now and then, not per line
                del self.text_tail[:-TAIL_KEPT]


@dataclass
class Pumps:
    observed: Observed = field(default_factory=Observed)
    threads: list[Pump] = field(default_factory=list)

    def start(self, stdout_fd: int, stderr_fd: int) -> None:
        self.threads = [
            Pump(stdout_fd, 1, self.observed, scan=True),
            Pump(stderr_fd, 2, self.observed, scan=False),
        ]
        for thread in self.threads:
            thread.start()

    def join(self, timeout: float) -> Observed:
        """Wait for the output to drain; children of claude may hold the pipes open longer."""
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self.threads:
            self.observed.stdout_tail = self.threads[0].tail
            self.observed.stdout_text_tail = bytes(self.threads[0].text_tail[-TAIL_KEPT:])
            self.observed.stderr_tail = self.threads[1].tail
        return self.observed
