"""Template filters for figures an operator reads at a glance. Plain text out; Django escapes."""

from __future__ import annotations

import time
from datetime import datetime
from urllib.parse import quote

from django import template
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape, format_html
from django.utils.safestring import mark_safe

from sessions_app.costs import total_words, usd_words
from sessions_app.ending import reason_line, shows_ending
from sessions_app.human_time import human_time
from sessions_app.outcome import outcome_of

register = template.Library()

STATUS_LABELS = {
    "quota_skip": "quota skip",
    "overlap_skip": "overlap skip",
    "check_failed": "check failed",
}


def _span(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s" if minutes < 10 else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


@register.filter
def age(value) -> str:
    """How long ago: a datetime or epoch seconds -> '4s', '12m', '3h 05m', '2d 4h'."""
    if value is None or value == "":
        return "—"
    if isinstance(value, datetime):
        return _span((timezone.now() - value).total_seconds())
    return _span(time.time() - float(value))


@register.filter
def when(value) -> str:
    """A moment as every page and message writes it: '2026-12-07 02:14:05 UTC'."""
    return human_time(value) if isinstance(value, datetime) else "—"


@register.filter(expects_localtime=True)
def iso(value) -> str:
    """ISO 8601 in the page's time zone, as date:'c' gives, without the format machinery
    (the live table has one per row)."""
    return value.isoformat() if isinstance(value, datetime) else ""


@register.filter
def duration_ms(value) -> str:
    if value is None or value == "":
        return "—"
    milliseconds = int(value)
    if milliseconds < 1000:
        return f"{milliseconds} ms"
    return _span(milliseconds / 1000)


@register.filter
def filesize(value) -> str:
    if value is None or value == "":
        return "—"
    size = float(value)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"  # pragma: no cover


@register.filter
def usd(value) -> str:
    """Dollars; an unknown cost says so rather than pretending to be free."""
    return usd_words(value)


@register.filter
def cost_total(line) -> str:
    """A sum over runs (a costs.CostLine): never "$0.00" when some runs' cost is unknown."""
    return total_words(line.cost_usd, line.unknown_cost_runs, line.runs)


@register.filter
def tokens(value) -> str:
    if value is None or value == "":
        return "—"
    count = int(value)
    if count < 1000:
        return str(count)
    if count < 1_000_000:
        return f"{count / 1000:.1f}k"
    return f"{count / 1_000_000:.2f}M"


# The cells after a Costs table's first (its host, tag or day), in its column order.
COST_CELLS = (
    '<td data-label="Cost" class="num{muted}">{cost}</td>'
    '<td data-label="Runs" class="num">{runs}</td>'
    '<td data-label="Unknown cost" class="num">{unknown}</td>'
    '<td data-label="Tokens" class="num">{tokens}</td></tr>'
)


@register.simple_tag
def cost_rows(lines, kind: str, days: int = 0) -> str:
    """The rows of a Costs table, `kind` "host", "tag" or "day", built in one pass: a
    template loop over 200 tags and 90 days, five filtered cells a row, was most of
    the page's time. Every text not ours (a host, a tag) is escaped."""
    history = reverse("history")
    rows = []
    for line in lines:
        if kind == "host":
            first = (
                f'<tr><td data-label="Host"><a href="?days={days}&amp;host='
                f'{escape(quote(line.key))}">{escape(line.key or "(no host)")}</a></td>'
            )
        elif kind == "tag":
            first = (
                f'<tr><td data-label="Tag"><a href="{history}?tag={escape(quote(line.key))}">'
                f"{escape(line.key)}</a></td>"
            )
        else:
            first = f'<tr><td data-label="Day" class="mono">{escape(line.key)}</td>'
        shown = cost_total(line) if line.runs or kind != "day" else "—"
        cells = COST_CELLS.format(
            muted=" muted" if kind != "day" and not line.known_cost_runs else "",
            cost=escape(shown),
            runs=line.runs,
            unknown=line.unknown_cost_runs or "—",
            tokens=tokens(line.tokens),
        )
        rows.append(first + cells)
    return mark_safe("\n".join(rows))  # noqa: S308 - every text not ours is escaped


@register.filter
def status_label(value) -> str:
    return STATUS_LABELS.get(str(value), str(value).replace("_", " "))


@register.filter
def badge(status, label="") -> str:
    """A status badge (opsconsole/_badge.html): the status word is its CSS class, its
    label (the status, unless given) the text. A filter, so a table of hundreds of rows
    pays no include per row."""
    dot = mark_safe('<span class="dot" aria-hidden="true"></span>') if status == "live" else ""
    text = status_label(label or status)
    return format_html('<span class="badge badge--{}">{}{}</span>', status, dot, text)


@register.filter
def shortid(value) -> str:
    return str(value)[:8]


@register.filter
def outcome_label(run) -> str:
    """How a run ended, in words: 'failed (exit 2)', 'quota skip', 'rate-limited until 14:05'."""
    return outcome_of(run).label


@register.filter
def outcome_kind(run) -> str:
    """The badge class for how a run ended: its status, or 'rate_limited'."""
    return outcome_of(run).kind


# A shape per outcome, so the run strip does not speak in colour alone.
STATUS_GLYPHS = {
    "succeeded": "✓",
    "failed": "✕",
    "killed": "!",
    "refused": "R",
    "quota_skip": "Q",
    "overlap_skip": "O",
    "check_failed": "C",
    "rate_limited": "L",
    "live": "●",
    "orphaned": "◌",
    "imported": "·",
}


@register.filter
def status_glyph(kind) -> str:
    return STATUS_GLYPHS.get(str(kind), "?")


@register.filter
def stopped_by_label(record) -> str:
    """Who stopped a run, said as what they are: a person, the watchdog, a leftover rule."""
    return describe_stopper(getattr(record, "stopped_by", ""), getattr(record, "end_reason", ""))


def describe_stopper(stopped_by: str, end_reason: str = "") -> str:
    if not stopped_by:
        return ""
    if stopped_by == "watchdog":
        return "the watchdog (past the job's time limit)"
    if stopped_by == "cost-cap":
        return "the cost cap (its running cost passed the job's cap)"
    if stopped_by.startswith(("rule", "leftover", "monitor")) or "leftover" in end_reason:
        return f"a leftover rule ({stopped_by})"
    return f"{stopped_by} (a person, from the console)"


@register.filter
def attempt_label(attempt) -> str:
    return f"attempt {attempt}"


@register.filter
def ending_line(session) -> str:
    """One line of why a failed, refused, killed or rate-limited run ended; "" otherwise."""
    return reason_line(session) if shows_ending(session) else ""
