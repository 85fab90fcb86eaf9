"""A job's runs as inline SVG: duration and cost per run, oldest left. No script, no CDN.

Each bar is coloured by how the run ended (a CSS class, so dark mode applies), has
a <title> that says when, how long, what it cost and how it ended, and links to
the run. A run's cost is Session.shown_cost_usd, as History shows it (reported, else
computed from its transcript); one of unknown cost is drawn as a "?" on the axis,
never as a $0 bar.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from opsconsole.templatetags.console import duration_ms, usd
from sessions_app.human_time import human_time
from sessions_app.models import Session
from sessions_app.outcome import outcome_of

WIDTH, HEIGHT = 600, 160
MARGIN_LEFT, MARGIN_BOTTOM, MARGIN_TOP = 62, 24, 12


def run_title(run: Session) -> str:
    return (
        f"{human_time(run.started_at)} · {duration_ms(run.duration_ms)} · "
        f"{usd(run.shown_cost_usd)} · {outcome_of(run).label}"
    )


def _bars(
    runs: list[Session],
    *,
    value: Callable[[Session], float | None],
    axis: Callable[[float], str],
    title: str,
    css: str,
    empty: str,
) -> SafeString:
    known = [v for v in (value(run) for run in runs) if v is not None]
    peak = max(known, default=0)
    if peak <= 0:
        return format_html('<p class="empty small">{}</p>', empty)
    plot = HEIGHT - MARGIN_BOTTOM - MARGIN_TOP
    slot = (WIDTH - MARGIN_LEFT) / max(len(runs), 10)
    bar = max(2.0, slot * 0.75)
    base = MARGIN_TOP + plot
    parts = [
        format_html(
            '<svg class="chart chart--runs {}" viewBox="0 0 {} {}" role="img" aria-label="{}">',
            css,
            WIDTH,
            HEIGHT,
            f"{title}, last {len(runs)} runs, highest {axis(peak)}",
        )
    ]
    for fraction in (0, 0.5, 1):
        y = MARGIN_TOP + plot * (1 - fraction)
        parts.append(
            format_html(
                '<line x1="{}" x2="{}" y1="{}" y2="{}" class="grid"/>'
                '<text x="{}" y="{}" class="axis" text-anchor="end">{}</text>',
                MARGIN_LEFT,
                WIDTH,
                f"{y:.1f}",
                f"{y:.1f}",
                MARGIN_LEFT - 5,
                f"{y + 4:.1f}",
                axis(peak * fraction),
            )
        )
    for index, run in enumerate(runs):
        x = MARGIN_LEFT + index * slot + (slot - bar) / 2
        amount = value(run)
        url = reverse("session", args=[run.session_id])
        kind = outcome_of(run).kind
        if amount is None:
            shape = format_html(
                '<text x="{}" y="{}" class="unknown" text-anchor="middle">?</text>',
                f"{x + bar / 2:.1f}",
                f"{base - 3:.1f}",
            )
        else:
            height = max(1.0, amount / peak * plot)
            shape = format_html(
                '<rect x="{}" y="{}" width="{}" height="{}" class="bar bar--{}"/>',
                f"{x:.1f}",
                f"{base - height:.1f}",
                f"{bar:.1f}",
                f"{height:.1f}",
                kind,
            )
        parts.append(
            format_html('<a href="{}"><title>{}</title>{}</a>', url, run_title(run), shape)
        )
    if runs:  # the first and the last run's start, under the axis
        for index, x, anchor in ((0, MARGIN_LEFT, "start"), (len(runs) - 1, WIDTH, "end")):
            parts.append(
                format_html(
                    '<text x="{}" y="{}" class="axis" text-anchor="{}">{}</text>',
                    x,
                    HEIGHT - 6,
                    anchor,
                    f"{runs[index].started_at:%m-%d %H:%M}",
                )
            )
    parts.append(mark_safe("</svg>"))
    return mark_safe("".join(parts))  # noqa: S308 - every part was built with format_html


def _seconds(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    if seconds >= 60:
        return f"{seconds / 60:.0f}m"
    return f"{seconds:.0f}s"


def duration_chart(runs: list[Session]) -> SafeString:
    return _bars(
        runs,
        value=lambda run: None if run.duration_ms is None else run.duration_ms / 1000,
        axis=_seconds,
        title="Duration per run",
        css="chart--duration",
        empty="No run with a known duration yet.",
    )


def cost_chart(runs: list[Session]) -> SafeString:
    return _bars(
        runs,
        value=lambda run: None if run.shown_cost_usd is None else float(run.shown_cost_usd),
        axis=lambda dollars: (
            f"${Decimal(str(dollars)):.2f}" if dollars >= 0.1 or dollars == 0 else f"${dollars:.3f}"
        ),
        title="Cost per run",
        css="chart--cost",
        empty="No run with a known cost yet (unknown is never drawn as $0).",
    )
