"""Every run on record, filtered: what the history page, its export and the API read.

Pages are keyset-paginated on (started_at, id), newest first: page 5,000 costs
what page 1 does, and no COUNT(*) runs over a million rows.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, time, timedelta

from django.db.models import Q, QuerySet

from sessions_app.models import Session, Status
from sessions_app.outcome import RATE_LIMITED, rate_limited_q
from wrapper.formats import field_problem

PAGE_SIZE = 50
# Stored statuses, and "rate_limited": failed runs that hit a 429 or the usage limit.
STATUS_FILTERS = (*Status.values, RATE_LIMITED)
_HEX_PREFIX_RE = re.compile(r"[0-9a-f-]{4,36}")
# A Job id the database can hold (BigAutoField); ASCII digits only ("²".isdigit() is True).
_JOB_ID_RE = re.compile(r"[0-9]{1,18}")
# Dates whose day boundaries (and the day after) exist in every time zone.
_YEARS = range(1970, 9000)


@dataclass
class HistoryFilters:
    tag: str = ""
    platform: str = ""
    host: str = ""
    status: str = ""
    job: str = ""  # a Job id
    date_from: str = ""  # YYYY-MM-DD, inclusive (UTC)
    date_to: str = ""  # YYYY-MM-DD, inclusive (UTC)
    q: str = ""  # a session id, or the start of one
    errors: list[str] = field(default_factory=list)

    @classmethod
    def from_query(cls, query) -> HistoryFilters:
        values = {
            spec.name: str(query.get(spec.name, "")).strip()[:200]
            for spec in fields(cls)
            if spec.name != "errors"
        }
        filters = cls(**values)
        filters.validate()
        return filters

    def validate(self) -> None:
        for name in ("tag", "platform", "host"):
            if field_problem(name if name != "tag" else "script_tag", getattr(self, name)):
                self.errors.append(f"{name} is not a name a run can have")
                setattr(self, name, "")
        if self.status and self.status not in STATUS_FILTERS:
            self.errors.append(f"status must be one of {', '.join(STATUS_FILTERS)}")
            self.status = ""
        for name in ("date_from", "date_to"):
            value = getattr(self, name)
            if value:
                try:
                    if date.fromisoformat(value).year not in _YEARS:
                        raise ValueError(value)
                except ValueError:
                    self.errors.append(f"{name} must be a date (YYYY-MM-DD)")
                    setattr(self, name, "")
        if self.job and not _JOB_ID_RE.fullmatch(self.job):
            self.errors.append("job must be a job id")
            self.job = ""
        if self.q and not _HEX_PREFIX_RE.fullmatch(self.q.lower()):
            self.errors.append("search takes a session id or its first characters (hex)")
            self.q = ""

    def as_query(self) -> dict[str, str]:
        return {
            spec.name: getattr(self, spec.name)
            for spec in fields(self)
            if spec.name != "errors" and getattr(self, spec.name)
        }

    @property
    def active(self) -> bool:
        return bool(self.as_query())


def session_id_range(text: str) -> tuple[uuid.UUID, uuid.UUID] | None:
    """The UUIDs a prefix covers, so a prefix search is a range scan on the unique index."""
    hex_digits = text.lower().replace("-", "")
    if not hex_digits or len(hex_digits) > 32:
        return None
    return (
        uuid.UUID(hex_digits.ljust(32, "0")),
        uuid.UUID(hex_digits.ljust(32, "f")),
    )


def filtered_sessions(filters: HistoryFilters) -> QuerySet[Session]:
    rows = Session.objects.all()
    if filters.tag:
        rows = rows.filter(script_tag=filters.tag)
    if filters.platform:
        rows = rows.filter(platform=filters.platform)
    if filters.host:
        rows = rows.filter(host=filters.host)
    if filters.status == RATE_LIMITED:
        rows = rows.filter(rate_limited_q())
    elif filters.status:
        rows = rows.filter(status=filters.status)
    if filters.job:
        rows = rows.filter(job_id=int(filters.job))
    if filters.date_from:
        start = datetime.combine(date.fromisoformat(filters.date_from), time.min, UTC)
        rows = rows.filter(started_at__gte=start)
    if filters.date_to:
        end = datetime.combine(date.fromisoformat(filters.date_to), time.min, UTC)
        rows = rows.filter(started_at__lt=end + timedelta(days=1))
    if filters.q:
        bounds = session_id_range(filters.q)
        if bounds:
            rows = rows.filter(session_id__gte=bounds[0], session_id__lte=bounds[1])
    return rows


@dataclass
class HistoryPage:
    rows: list[Session]
    next_cursor: str | None  # older rows: ?before=<cursor>
    is_first: bool


def encode_cursor(row: Session) -> str:
    return f"{row.started_at.isoformat()}~{row.pk}"


def decode_cursor(cursor: str) -> tuple[datetime, int] | None:
    """The position a `before` cursor names; None for anything that is not one."""
    stamp, _, pk = cursor.partition("~")
    if not _JOB_ID_RE.fullmatch(pk):  # a row id: digits a BigAutoField holds
        return None
    try:
        started = datetime.fromisoformat(stamp)
        started = started.replace(tzinfo=UTC) if started.tzinfo is None else started
        started = started.astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    if started.year not in _YEARS:
        return None
    return started, int(pk)


def history_page(
    filters: HistoryFilters, before: str | None = None, page_size: int = PAGE_SIZE
) -> HistoryPage:
    rows = filtered_sessions(filters).select_related("job").order_by("-started_at", "-id")
    position = decode_cursor(before) if before else None
    if position is not None:
        started, pk = position
        # (started_at, id) < (started, pk), with the bound on started_at alone spelled
        # out: the index scan starts at the cursor instead of filtering every newer row.
        rows = rows.filter(started_at__lte=started).filter(
            Q(started_at__lt=started) | Q(started_at=started, id__lt=pk)
        )
    fetched = list(rows[: page_size + 1])
    has_more = len(fetched) > page_size
    shown = fetched[:page_size]
    return HistoryPage(
        rows=shown,
        next_cursor=encode_cursor(shown[-1]) if has_more and shown else None,
        is_first=position is None,
    )
