"""The live table's rows: each rendered once per content and reused while it is unchanged.

A fleet page lists hundreds of runs and is rendered again every time any host reports;
most rows read the same as last time but for their age. A row's HTML is kept by what
it shows (ROW_FIELDS, the only values its template is given), and the age, which moves
with the clock, is put in on every render.
"""

from __future__ import annotations

from django import template
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.safestring import mark_safe

from opsconsole.templatetags.console import age

register = template.Library()

ROW_FIELDS = (
    "session_id",
    "html_url",
    "status",
    "attempt",
    "script_tag",
    "platform",
    "host",
    "started_at",
    "last_tool_call",
    "cpu_percent",
    "rss",
)
# Where the row template leaves the age: a tag no escaped value can contain.
AGE_MARK = "<live-age/>"
MAX_ROWS = 20_000

_rows: dict[tuple, str] = {}


@register.simple_tag
def live_row(run) -> str:
    values = tuple(getattr(run, name) for name in ROW_FIELDS)
    key = (timezone.get_current_timezone_name(), *values)
    html = _rows.get(key)
    if html is None:
        row = dict(zip(ROW_FIELDS, values, strict=True))
        html = render_to_string("sessions_app/_live_row.html", {"row": row})
        if len(_rows) >= MAX_ROWS:
            _rows.clear()
        _rows[key] = html
    return mark_safe(html.replace(AGE_MARK, age(run.started_at)))  # noqa: S308 - escaped in the template
