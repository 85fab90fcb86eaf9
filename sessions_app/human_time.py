"""One way to write a moment for people, on every page and in every message:
"2026-12-07 02:14:05 UTC", in the console's time zone (OPSCONSOLE_TIME_ZONE), zone named.

A message read on a phone at 2 a.m. and a page read the next morning then say the
same thing, and neither leaves the reader guessing which zone it meant.
"""

from __future__ import annotations

from datetime import datetime

from django.utils import timezone

HUMAN_TIME_FORMAT = "%Y-%m-%d %H:%M:%S %Z"


def human_time(moment: datetime | None, missing: str = "unknown") -> str:
    """`moment` in the console's zone, with the zone's name; `missing` for None."""
    if moment is None:
        return missing
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment, timezone.get_default_timezone())
    return timezone.localtime(moment, timezone.get_default_timezone()).strftime(HUMAN_TIME_FORMAT)
