"""GET /api/hosts/actions/wait: a reporting host's held poll for its requests.

Authenticated like a report (the host's bearer token). Answers at once when a request
for the host is pending, as soon as one is queued (on any console sharing the
database), or with none after `wait` seconds (fleet.action_push). A poll with nothing
to hand out waits parked in the web worker's event loop, a socket with no thread
(opsconsole.web_worker). Not parked (OPSCONSOLE_PARK_HELD_POLLS off, gunicorn's own
TLS, every parking place taken), it holds a thread, so a worker holds at most
OPSCONSOLE_HELD_POLLS_PER_WORKER of those (a quarter of its threads by default); past
that the poll is answered 503 with Retry-After, and that host's requests ride its
reports until it gets a slot.
"""

from __future__ import annotations

import json
import logging
import random
import time
from functools import partial

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.http import require_GET

from fleet.action_push import LONGEST_WAIT_SECONDS, HeldPolls, hand_out, wait_for_actions
from monitor_app.action_bell import bell
from opsconsole.api.hosts import host_of_request
from opsconsole.auth import json_error
from opsconsole.web_worker import (
    Parking,
    closing_answer,
    parking_for_this_request,
    stopping_hooks,
)
from sessions_app.database import DATABASE_AWAY

log = logging.getLogger(__name__)

held_polls = HeldPolls(settings.OPSCONSOLE_HELD_POLLS_PER_WORKER)
# A stopping worker answers its held polls at once (they ask again, elsewhere).
stopping_hooks.append(bell.close)
# A host turned away comes back after this long (spread, so they do not come together).
RETRY_AFTER_SECONDS = (10, 30)
# A parked poll's answer when nothing came before its deadline (as JsonResponse gives it).
NOTHING_CAME = closing_answer("application/json", json.dumps({"actions": []}).encode())


@login_not_required
@require_GET
def wait_for_requests(request):
    host, refusal = host_of_request(request)
    if refusal is not None:
        return refusal
    try:
        wait = float(request.GET.get("wait", LONGEST_WAIT_SECONDS))
    except ValueError:
        return json_error("wait is a number of seconds.", 400)
    if not 0 <= wait <= LONGEST_WAIT_SECONDS:
        return json_error(f"wait is 0 to {LONGEST_WAIT_SECONDS:g} seconds.", 400)
    parking = parking_for_this_request() if settings.OPSCONSOLE_PARK_HELD_POLLS else None
    if parking is not None:
        return look_or_park(host, wait, parking)
    if not held_polls.take():
        response = json_error(
            f"this console holds {held_polls.most} polls per worker, all taken: "
            "your requests come with your reports meanwhile",
            503,
        )
        response["Retry-After"] = str(random.randint(*RETRY_AFTER_SECONDS))  # noqa: S311
        return response
    try:
        actions = wait_for_actions(host, wait)
    except DATABASE_AWAY as exc:
        return database_away(host, exc)
    finally:
        held_polls.give_back()
    return JsonResponse({"actions": actions})


def look_or_park(host: str, wait: float, parking: Parking):
    """The host's pending requests now; none: the poll parked until the bell rings for
    its host (then this again) or its deadline passes (answered none by the loop)."""
    deadline = parking.deadline or time.monotonic() + wait
    bell.add(host, parking)  # before the look: a request queued meanwhile rings it
    try:
        actions = hand_out(host, timezone.now())
    except DATABASE_AWAY as exc:
        bell.discard(host, parking)
        return database_away(host, exc)
    if actions or time.monotonic() >= deadline or bell.closing:
        bell.discard(host, parking)
    else:
        parking.park(deadline, partial(bell.discard, host, parking), NOTHING_CAME)
    return JsonResponse({"actions": actions})  # not sent when parked


def database_away(host: str, exc: Exception):
    log.warning("requests for %s not handed out: %s", host, exc)
    return json_error("database unavailable: ask again", 503)
