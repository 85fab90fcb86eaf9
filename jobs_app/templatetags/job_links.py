"""Links from a run to its job and to that job's runs before and after it."""

from __future__ import annotations

from django import template

from jobs_app.runs import neighbours

register = template.Library()


@register.inclusion_tag("jobs_app/_run_links.html")
def run_links(run):
    """`run`: a sessions_app Run (its `record` is the Session row, if any)."""
    return {"run": run, "links": neighbours(getattr(run, "record", None))}
