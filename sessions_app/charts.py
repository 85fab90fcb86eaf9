"""Server-rendered SVG: cost per day, stacked by the top tags. No script, no CDN."""

from __future__ import annotations

import hashlib
from decimal import Decimal

from django.utils.html import format_html
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
MAX_SERIES = 6
WIDTH, HEIGHT = 900, 240
NARROW_WIDTH = 420
MARGIN_LEFT, MARGIN_BOTTOM, MARGIN_TOP = 56, 28, 12


def colour_of(tag: str) -> str:
    """One colour per job, the same on every load and in every range (a hash of its tag)."""
    return PALETTE[int(hashlib.sha256(tag.encode()).hexdigest(), 16) % len(PALETTE)]


def series_colours(report: CostReport) -> list[tuple[str, str]]:
    """(tag, colour) for the costliest tags; the rest are drawn as 'other'."""
    top = [line.key for line in report.by_tag if line.cost_usd > 0][:MAX_SERIES]
    return [(tag, colour_of(tag)) for tag in top]


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
    colours = series_colours(report)
    named = {tag for tag, _ in colours}
    peak = max((line.cost_usd for line in report.by_day), default=Decimal("0"))
    if peak <= 0:
        return format_html('<p class="empty">No known cost in the last {} days.</p>', report.days)
    plot_height = HEIGHT - MARGIN_BOTTOM - MARGIN_TOP
    slot = (width - MARGIN_LEFT) / max(1, len(report.by_day))
    bar = max(2.0, slot * 0.7)
    parts = [
        format_html(
            '<svg class="chart {}" viewBox="0 0 {} {}" role="img" aria-labelledby="{}">'
            '<title id="{}">Cost per day, last {} days, highest ${}</title>',
            css,
            width,
            HEIGHT,
            title_id,
            title_id,
            report.days,
            f"{peak:.2f}",
        )
    ]
    for fraction in (0, 0.5, 1):
        y = MARGIN_TOP + plot_height * (1 - fraction)
        parts.append(
            format_html(
                '<line x1="{}" x2="{}" y1="{}" y2="{}" class="grid"/>'
                '<text x="{}" y="{}" class="axis" text-anchor="end">${}</text>',
                MARGIN_LEFT,
                width,
                f"{y:.1f}",
                f"{y:.1f}",
                MARGIN_LEFT - 6,
                f"{y + 4:.1f}",
                f"{peak * Decimal(str(fraction)):.2f}",
            )
        )
    for index, line in enumerate(report.by_day):
        x = MARGIN_LEFT + index * slot + (slot - bar) / 2
        y = MARGIN_TOP + plot_height
        stack = [(tag, line.by_tag.get(tag, Decimal("0")), colour) for tag, colour in colours]
        other = sum((c for t, c in line.by_tag.items() if t not in named), Decimal("0"))
        stack.append(("other", other, OTHER_COLOUR))
        for tag, cost, colour in stack:
            if cost <= 0:
                continue
            height = float(cost / peak) * plot_height
            y -= height
            parts.append(
                format_html(
                    '<rect x="{}" y="{}" width="{}" height="{}" fill="{}">'
                    "<title>{}: {} ${}</title></rect>",
                    f"{x:.1f}",
                    f"{y:.1f}",
                    f"{bar:.1f}",
                    f"{height:.1f}",
                    colour,
                    line.key,
                    tag,
                    f"{cost:.4f}",
                )
            )
        step = max(1, -(-len(report.by_day) // labels))
        if index % step == 0:
            parts.append(
                format_html(
                    '<text x="{}" y="{}" class="axis" text-anchor="middle">{}</text>',
                    f"{x + bar / 2:.1f}",
                    HEIGHT - 8,
                    line.key[5:],
                )
            )
    parts.append(mark_safe("</svg>"))
    return "".join(parts)
