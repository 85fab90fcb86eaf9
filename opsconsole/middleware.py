"""Middleware of the console itself: a database outage answered with a clear 503 (never a
bare 500 or a hung thread), and authenticated answers kept out of every cache.

DatabaseUnavailableMiddleware goes first: sessions and API tokens are read from the
database before any view runs, so the outage must be caught before them. It checks the
connection up front (connect timeout from settings), remembers a failure for
OPSCONSOLE_DB_RETRY_SECONDS so that a dead database costs one connect attempt per
window instead of one per request, and turns a DatabaseError raised later in the
request (a view, or a middleware further in, through `server_error`) into the same 503.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connections
from django.http import HttpResponse, JsonResponse
from django.template.loader import render_to_string
from django.utils.cache import patch_cache_control
from django.views.defaults import server_error as django_server_error

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5


class _Outage:
    """When the database was last found unreachable, and why (shared by all threads)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.until = 0.0
        self.reason = ""

    def current(self) -> str | None:
        with self.lock:
            return self.reason if time.monotonic() < self.until else None

    def record(self, exc: BaseException) -> str:
        lines = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {lines[0] if lines else 'no detail'}"
        window = getattr(settings, "OPSCONSOLE_DB_RETRY_SECONDS", RETRY_AFTER_SECONDS)
        with self.lock:
            self.until = time.monotonic() + window
            self.reason = reason[:300]
        return self.reason

    def clear(self) -> None:
        with self.lock:
            self.until = 0.0
            self.reason = ""


outage = _Outage()


def needs_no_database(request) -> bool:
    """Requests answered without the database: static files, and the login form itself
    (a person can still reach the console and read why it cannot serve them)."""
    path = request.path_info
    static = "/" + settings.STATIC_URL.lstrip("/")
    return path.startswith(static) or (path == "/login/" and request.method in ("GET", "HEAD"))


def database_unavailable(request, reason: str) -> HttpResponse:
    """The 503 a person or a script gets while the database cannot be reached."""
    message = f"Database unreachable: {reason}"
    if request.path_info.startswith("/api/"):
        response = JsonResponse({"error": message, "database_error": reason}, status=503)
    else:
        body = render_to_string("opsconsole/database_unavailable.html", {"reason": reason})
        response = HttpResponse(body, status=503)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    patch_cache_control(response, no_store=True, private=True)
    return response


class DatabaseUnavailableMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if not needs_no_database(request):
            reason = outage.current()
            if reason is None:
                try:
                    connections["default"].ensure_connection()
                except DatabaseError as exc:
                    reason = outage.record(exc)
                    log.warning("database unreachable: %s", reason)
            if reason is not None:
                return database_unavailable(request, reason)
        return self.get_response(request)

    def process_exception(self, request, exception):
        if isinstance(exception, DatabaseError) and _is_outage(exception):
            return database_unavailable(request, outage.record(exception))
        return None


def _is_outage(exc: DatabaseError) -> bool:
    """A database that cannot be reached or gave up (connection lost, timeout), as opposed
    to a query it refused (IntegrityError, DataError): those are bugs, answered 500."""
    return isinstance(exc, OperationalError | InterfaceError)


def server_error(request, *args, **kwargs):
    """handler500: a database outage met outside a view (the session or user lookup in a
    middleware) is a 503 too; anything else is Django's own 500."""
    exc = sys.exc_info()[1]
    if isinstance(exc, DatabaseError) and _is_outage(exc):
        return database_unavailable(request, outage.record(exc))
    return django_server_error(request, *args, **kwargs)


class PrivateCacheMiddleware:
    """`Cache-Control: private, no-store` on everything an authenticated user is shown:
    pages and API answers hold transcripts and host details."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        user = getattr(request, "user", None)
        if user is not None and getattr(user, "is_authenticated", False):
            patch_cache_control(response, private=True, no_store=True)
        return response
