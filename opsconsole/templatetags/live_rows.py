"""The live table's rows: each rendered once per content and reused while it is unchanged.

A fleet page lists hundreds of runs and is rendered again every time any host reports;
most rows read the same as last time but for their age and figures. A row's HTML is
kept by what it shows (ROW_FIELDS, the only values its template is given); the age,
which moves with the clock, and the tree's CPU and memory, which move with every
sample of a busy run, are put in on every render.
"""

from __future__ import annotations

from django import template
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.formats import localize
from django.utils.html import conditional_escape
from django.utils.safestring import mark_safe

from opsconsole.templatetags.console import age, filesize

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
)
# Where the row template leaves what is put in at render: tags no escaped value contains.
AGE_MARK = "<live-age/>"
CPU_MARK = "<live-cpu/>"
MEMORY_MARK = "<live-memory/>"
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
    # As the template would show them: {{ cpu_percent }} (localised) and |filesize.
    cpu = conditional_escape(localize(run.cpu_percent))
    memory = conditional_escape(filesize(run.rss))
    html = html.replace(AGE_MARK, age(run.started_at), 1)
    return mark_safe(html.replace(CPU_MARK, cpu, 1).replace(MEMORY_MARK, memory, 1))  # noqa: S308 - every part escaped
