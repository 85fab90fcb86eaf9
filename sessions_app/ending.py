"""Why a run ended, in the CLI's own words: what the session page, History, the API and
alerts show of the completion record's reason fields (wrapper.formats.REASON_FIELDS).

The text is claude's (already bounded and redacted by the wrapper and again on ingest):
templates escape it like transcript text, never mark it safe.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sessions_app.models import Session, Status
from sessions_app.outcome import RATE_LIMITED, outcome_of

# Runs whose page opens with why they ended.
SHOWN_FOR = (
    Status.FAILED,
    Status.REFUSED,
    Status.KILLED,
    Status.FALSE_SUCCESS,
    Status.CHECK_FAILED,
    RATE_LIMITED,
)


@dataclass
class Ending:
    headline: str  # one line: the first thing claude said about it
    result_text: str = ""
    stderr_tail: str = ""
    stdout_tail: str = ""
    errors: list[str] = field(default_factory=list)
    permission_denials: list[str] = field(default_factory=list)
    last_api_error: str = ""
    terminal_reason: str = ""
    subtype: str = ""

    @property
    def has_details(self) -> bool:
        texts = (self.result_text, self.stderr_tail, self.stdout_tail, self.last_api_error)
        return any(texts) or bool(self.errors or self.permission_denials or self.terminal_reason)


def _details(session: Session) -> dict:
    details = session.end_details
    return details if isinstance(details, dict) else {}


def _text(details: dict, name: str) -> str:
    value = details.get(name)
    return value if isinstance(value, str) else ""


def _texts(details: dict, name: str) -> list[str]:
    value = details.get(name)
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def reason_line(session: Session) -> str:
    """One line: claude's result text, else its errors, the API error it retried on, the
    last line it printed on stderr or stdout, else the wrapper's own error; "" if none."""
    details = _details(session)
    if session.status == Status.CHECK_FAILED and session.error:
        return _first_line(session.error)  # which check, wanted, seen: the news
    for candidate in (
        _first_line(_text(details, "result_text")),
        _first_line("\n".join(_texts(details, "errors"))),
        _text(details, "last_api_error"),
        _last_line(_text(details, "stderr_tail")),
        _last_line(_text(details, "stdout_tail")),
        _first_line(session.error or ""),
    ):
        if candidate:
            return candidate
    return ""


def reason_lines(session: Session, limit: int) -> list[str]:
    """Up to `limit` lines for an alert: the reason line, then the last lines claude
    printed on stderr (then stdout) that say more."""
    details = _details(session)
    lines = [reason_line(session)]
    for name in ("stderr_tail", "stdout_tail"):
        tail = [line.strip() for line in _text(details, name).splitlines() if line.strip()]
        lines.extend(tail[-limit:])
    kept: list[str] = []
    for line in lines:
        if line and line not in kept:
            kept.append(line)
    return kept[:limit]


def shows_ending(session: Session | None) -> bool:
    return session is not None and outcome_of(session).kind in SHOWN_FOR


def ending_of(session: Session | None) -> Ending | None:
    """Why a failed, refused, killed or rate-limited run ended; None for other runs."""
    if not shows_ending(session):
        return None
    details = _details(session)
    return Ending(
        headline=reason_line(session),
        result_text=_text(details, "result_text"),
        stderr_tail=_text(details, "stderr_tail"),
        stdout_tail=_text(details, "stdout_tail"),
        errors=_texts(details, "errors"),
        permission_denials=_texts(details, "permission_denials"),
        last_api_error=_text(details, "last_api_error"),
        terminal_reason=_text(details, "terminal_reason"),
        subtype=_text(details, "subtype"),
    )


def no_transcript_reason(session: Session | None) -> str:
    """Why a finished run has no transcript to show, from what the wrapper saw."""
    if session is None:
        return ""
    details = _details(session)
    if session.status == Status.QUOTA_SKIP or details.get("claude_started") is False:
        return "claude was never started, so it wrote no transcript" + (
            f": {_first_line(session.error)}" if session.error else "."
        )
    if details.get("transcript_written") is False:
        return (
            "claude started but exited before it wrote a transcript"
            + (f" (pid {session.claude_pid})" if session.claude_pid else "")
            + ": see what it printed above."
        )
    if details.get("transcript_written") or session.archive_path:
        return (
            "claude wrote a transcript, but the file has since been removed "
            "(neither Claude Code's file nor the archived copy is there)."
        )
    return ""


def ending_payload(session: Session | None) -> dict | None:
    """The API's `reason`: every reason field on record, and the one line History shows."""
    if session is None:
        return None
    details = _details(session)
    return {
        "line": reason_line(session) or None,
        "result_text": _text(details, "result_text") or None,
        "subtype": _text(details, "subtype") or None,
        "terminal_reason": _text(details, "terminal_reason") or None,
        "errors": _texts(details, "errors"),
        "permission_denials": _texts(details, "permission_denials"),
        "last_api_error": _text(details, "last_api_error") or None,
        "stderr_tail": _text(details, "stderr_tail") or None,
        "stdout_tail": _text(details, "stdout_tail") or None,
        "claude_started": details.get("claude_started"),
        "transcript_written": details.get("transcript_written"),
    }
