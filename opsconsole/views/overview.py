"""The overview at `/`. Thin: opsconsole.overview answers. While the database is out the
middleware answers `/` with the live page from the monitor's sample instead."""

from __future__ import annotations

from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET

from monitor_app.live import get_snapshot
from opsconsole.overview import overview


@require_GET
def overview_page(request):
    if "host" in request.GET:
        # /?host=NAME was the live page of one host before the overview took `/`.
        return redirect(f"{reverse('live')}?{request.GET.urlencode()}")
    return render(request, "opsconsole/overview.html", {"overview": overview(get_snapshot())})
