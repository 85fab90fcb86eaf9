"""Server-rendered SVG: cost per day, stacked by the top tags. No script, no CDN."""

from __future__ import annotations

import hashlib
from decimal import Decimal

from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe

from sessions_app.costs import CostReport

# Colour-blind-safe (Okabe-Ito, then Tol's), more colours than series so two jobs
# rarely share one; grey for everything else.
PALETTE = [
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#CC79A7",
    "#56B4E9",
    "#D55E00",
    "#882255",
    "#44AA99",
    "#999933",
    "#332288",
]
OTHER_COLOUR = "#9ca3af"
WIDTH, HEIGHT = 900, 240
NARROW_WIDTH = 420
MARGIN_LEFT, MARGIN_BOTTOM, MARGIN_TOP = 56, 28, 12


def colour_of(tag: str) -> str:
    """One colour per job, the same on every load and in every range (a hash of its tag)."""
    return PALETTE[int(hashlib.sha256(tag.encode()).hexdigest(), 16) % len(PALETTE)]


def series_colours(report: CostReport) -> list[tuple[str, str]]:
    """(tag, colour) for the costliest tags; the rest are drawn as 'other'."""
    return [(tag, colour_of(tag)) for tag in report.chart_tags]


def cost_chart(report: CostReport) -> SafeString:
    """Two drawings of one chart: wide for screens, narrow (fewer, larger labels) for phones;
    CSS shows one."""
    wide = _cost_svg(report, WIDTH, "chart--wide", "chart-title", 10)
    if not wide.startswith("<svg"):
        return wide
    narrow = _cost_svg(report, NARROW_WIDTH, "chart--narrow", "chart-title-narrow", 4)
    # The swatch is a tiny SVG: a fill attribute, not a style attribute (the CSP forbids
    # those), so one colour per job needs no stylesheet rule per job.
    legend = [
        format_html(
            '<li><svg class="swatch" viewBox="0 0 10 10" aria-hidden="true">'
            '<rect width="10" height="10" rx="2" fill="{}"></rect></svg>{}</li>',
            colour,
            tag,
        )
        for tag, colour in [*series_colours(report), ("other", OTHER_COLOUR)]
    ]
    return mark_safe(  # noqa: S308 - every part was built with format_html
        wide + narrow + '<ul class="legend">' + "".join(legend) + "</ul>"
    )


def _cost_svg(report: CostReport, width: int, css: str, title_id: str, labels: int) -> str:
    """The SVG as one string, built with f-strings: a bar per day and series (up to
    7 x 90 of them) through format_html measured 35 ms a drawing. The only text that
    is not ours, the tags, is escaped once each."""
    colours = [(tag, escape(tag), colour) for tag, colour in series_colours(report)]
    peak = max((line.cost_usd for line in report.by_day), default=Decimal("0"))
    if peak <= 0:
        return format_html('<p class="empty">No known cost in the last {} days.</p>', report.days)
    plot_height = HEIGHT - MARGIN_BOTTOM - MARGIN_TOP
    slot = (width - MARGIN_LEFT) / max(1, len(report.by_day))
    bar = max(2.0, slot * 0.7)
    parts = [
        f'<svg class="chart {css}" viewBox="0 0 {width} {HEIGHT}" role="img" '
        f'aria-labelledby="{title_id}"><title id="{title_id}">Cost per day, last '
        f"{report.days} days, highest ${peak:.2f}</title>"
    ]
    for fraction in (0, 0.5, 1):
        y = MARGIN_TOP + plot_height * (1 - fraction)
        parts.append(
            f'<line x1="{MARGIN_LEFT}" x2="{width}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{MARGIN_LEFT - 6}" y="{y + 4:.1f}" class="axis" text-anchor="end">'
            f"${peak * Decimal(str(fraction)):.2f}</text>"
        )
    step = max(1, -(-len(report.by_day) // labels))
    scale = plot_height / float(peak)
    for index, line in enumerate(report.by_day):
        x = MARGIN_LEFT + index * slot + (slot - bar) / 2
        y = MARGIN_TOP + plot_height
        named = Decimal("0")
        stack = []
        for tag, shown, colour in colours:
            cost = line.by_tag.get(tag, Decimal("0"))
            named += cost
            stack.append((shown, cost, colour))
        stack.append(("other", line.cost_usd - named, OTHER_COLOUR))
        for shown, cost, colour in stack:
            if cost <= 0:
                continue
            height = float(cost) * scale
            y -= height
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{height:.1f}" '
                f'fill="{colour}"><title>{line.key}: {shown} ${cost:.4f}</title></rect>'
            )
        if index % step == 0:
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{HEIGHT - 8}" class="axis" '
                f'text-anchor="middle">{line.key[5:]}</text>'
            )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - the tags are escaped, the rest is ours
