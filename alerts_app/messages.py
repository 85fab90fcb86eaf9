"""What an alert says: short enough for a phone's lock screen, enough to act on.

Job, host, status and the reason in words, cost and duration, the last lines of
the run's result or error, and a link to the session page.
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.conf import settings

from sessions_app import transcript_store
from sessions_app.ending import reason_lines, shows_ending
from sessions_app.human_time import human_time
from sessions_app.models import Session, Status
from sessions_app.transcripts.parse import iter_records, to_entries
from sessions_app.transcripts.tail import read_tail

log = logging.getLogger(__name__)

TAIL_WINDOW = 64 * 1024
LAST_LINES = 5
LINE_CHARS = 200


def link(path: str) -> str:
    base = settings.OPSCONSOLE_BASE_URL.rstrip("/")
    return f"{base}{path}" if base else path


def session_link(session_id) -> str:
    return link(f"/sessions/{session_id}/")


def job_link(job) -> str:
    return link(f"/jobs/{job.pk}/") if job is not None else ""


def duration_words(milliseconds: int | None) -> str:
    if milliseconds is None:
        return "unknown"
    seconds = int(milliseconds // 1000)
    if seconds < 60:
        return f"{seconds}s" if seconds else f"{milliseconds} ms"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def cost_words(cost) -> str:
    return "unknown" if cost is None else f"${float(cost):.4f}"


def when_words(moment: datetime | None) -> str:
    """The one human format pages use too (sessions_app.human_time), zone named."""
    return human_time(moment)


def subject_name(job, script_tag: str) -> str:
    return job.label if job is not None else script_tag or "unwrapped session"


def reason_words(session: Session) -> str:
    """Why the run ended as it did, in words a person reads at 2 a.m."""
    status = session.status
    if status == Status.REFUSED:
        every = f" on all {session.attempt} attempts" if session.attempt > 1 else ""
        return f"the model refused the request (usage policy){every}"
    if status == Status.FALSE_SUCCESS:
        return session.error or "exit 0, but the result was an error"
    if status == Status.CHECK_FAILED:
        return session.error or "exit 0, but an output check failed"
    if status == Status.KILLED:
        if session.stopped_by:
            return f"stopped by {session.stopped_by} ({session.end_reason or 'stop'})"
        if session.end_reason == "vanished":
            return "vanished: the wrapper and the agent exited without a completion record"
        if session.exit_code and session.exit_code > 128:
            return f"ended by signal {session.exit_code - 128}"
        return "killed"
    if status == Status.FAILED:
        parts = [f"exit {session.exit_code}" if session.exit_code is not None else "failed"]
        if session.api_error_status:
            parts.append(f"API error {session.api_error_status}")
        if session.stop_reason and session.stop_reason not in ("end_turn",):
            parts.append(f"stop reason {session.stop_reason}")
        return ", ".join(parts)
    return status.replace("_", " ")


def last_lines(session: Session) -> list[str]:
    """The last words of the run: why it ended in claude's own words (its result text,
    the API error, what it printed last), then the wrapper's error and the end of its
    transcript's last answer."""
    lines: list[str] = reason_lines(session, LAST_LINES) if shows_ending(session) else []
    if session.error:
        lines.extend(session.error.strip().splitlines()[-LAST_LINES:])
    try:
        located = transcript_store.locate(str(session.session_id), session=session)
        if located is not None:
            chunk = read_tail(located.path, TAIL_WINDOW)
            entries = to_entries(iter_records(chunk.data, chunk.start))
            wanted = [e for e in entries if e.kind in ("assistant_text", "error")]
            if wanted:
                text = wanted[-1].text.strip().splitlines()
                lines.extend(line for line in text[-LAST_LINES:] if line.strip())
    except Exception as exc:  # the message goes out without them rather than not at all
        log.debug("no transcript lines for %s: %s", session.session_id, exc)
    seen: list[str] = []
    for line in lines:
        line = line.strip()[:LINE_CHARS]
        if line and line not in seen:
            seen.append(line)
    # Why it ended comes first and stays; the transcript's words fill what is left.
    return seen[:LAST_LINES] if shows_ending(session) else seen[-LAST_LINES:]


def run_message(session: Session, job, headline: str) -> tuple[str, str]:
    """(title, body) for an alert about one finished run."""
    name = subject_name(job, session.script_tag)
    title = f"[opsconsole] {name} {headline} on {session.host}"
    # The title is the first thing every channel shows; the body does not repeat it.
    body = [
        f"Status: {session.get_status_display()} ({reason_words(session)})",
        f"Started: {when_words(session.started_at)}, "
        f"duration {duration_words(session.duration_ms)}, attempt {session.attempt}",
        f"Cost: {cost_words(session.shown_cost_usd)}",
    ]
    words = last_lines(session)
    if words:
        body.append("Last lines:")
        body.extend(f"  {line}" for line in words)
    body.append(f"Session: {session_link(session.session_id)}")
    if job is not None:
        body.append(f"Job: {job_link(job)}")
    return title[:250], "\n".join(body)


def plain_message(headline: str, host: str, lines: list[str], job=None) -> tuple[str, str]:
    title = f"[opsconsole] {headline}" + (f" on {host}" if host else "")
    body = [line for line in lines if line]
    if job is not None:
        body.append(f"Job: {job_link(job)}")
    body.append(f"Alerts: {link('/alerts/')}")
    return title[:250], "\n".join(body)
