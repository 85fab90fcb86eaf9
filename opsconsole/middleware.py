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
from importlib import import_module

from django.conf import settings
from django.core.handlers.exception import convert_exception_to_response
from django.db import DatabaseError, OperationalError, connection
from django.http import HttpResponse, JsonResponse
from django.template.loader import render_to_string
from django.urls import resolve
from django.utils.cache import patch_cache_control
from django.utils.module_loading import import_string
from django.views.defaults import server_error as django_server_error

from opsconsole.views import sessions as views
from sessions_app.database import DATABASE_AWAY

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


# Pages a person already logged in still gets during an outage, from the monitor's sample
# (the overview at / needs the database: the live page stands in for it).
LIVE_PATHS = ("/", "/live/", "/live/rows/")


def polls_with_a_token(request) -> bool:
    """/api/claude-active with a bearer token needs no database (the monitor's sample, a
    token seen before the outage): it is tried even while an outage is current."""
    return request.path_info == "/api/claude-active" and request.headers.get(
        "Authorization", ""
    ).lower().startswith("bearer ")


def database_unavailable(request, reason: str) -> HttpResponse:
    """The 503 a person or a script gets while the database cannot be reached; for a
    person who was logged in, the live page from the monitor's sample instead."""
    if request.method in ("GET", "HEAD") and request.path_info in LIVE_PATHS:
        live = live_view_during_outage(request, reason)
        if live is not None:
            return live
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
        # No connection is made up front: the live view and the API's hot path need no
        # database (the monitor's sample, remembered tokens), so they must not pay for
        # one. The first query that fails records the outage; until it is retried,
        # requests that would need the database are answered at once.
        if not needs_no_database(request):
            reason = outage.current()
            if reason is not None and not polls_with_a_token(request):
                return database_unavailable(request, reason)
        with connection.execute_wrapper(fail_fast_during_outage):
            return self.get_response(request)

    def process_exception(self, request, exception):
        if isinstance(exception, DatabaseError) and is_outage(exception):
            return database_unavailable(request, outage.record(exception))
        return None


def fail_fast_during_outage(execute, sql, params, many, context):
    """Each query of a request: once one has found the database away, the others do not
    wait their own timeout on it (a page that asks three times would take three).
    Whichever query meets the outage first puts it on record, caught or not."""
    reason = outage.current()
    if reason is not None:
        raise OperationalError(f"database unreachable (on record: {reason})")
    try:
        return execute(sql, params, many, context)
    except DATABASE_AWAY as exc:
        outage.record(exc)
        raise


def live_view_during_outage(request, reason: str) -> HttpResponse | None:
    """The live page for a session that logged in before the outage (read from the
    session cache, never the database), or None for anyone else."""
    from django.core.cache import caches

    session = getattr(request, "session", None)
    if session is None:
        # Answered before SessionMiddleware ran (an outage already on record): the
        # session from its cookie, never loaded (that would ask the database).
        key = request.COOKIES.get(settings.SESSION_COOKIE_NAME)
        session = import_module(settings.SESSION_ENGINE).SessionStore(session_key=key)
    key = getattr(session, "session_key", None)
    if not key or not hasattr(session, "cache_key"):
        return None
    # The session cache only: asking the database again would wait out its timeout.
    data = caches[settings.SESSION_CACHE_ALIAS].get(session.cache_key) or {}
    user_id, username = data.get("_auth_user_id"), data.get(OUTAGE_USERNAME_KEY)
    if not user_id or not username:
        return None
    request.user = OutageUser(username)
    response = views.render_live(request, outage_reason=reason)
    patch_cache_control(response, no_store=True, private=True)
    return response


# Stored in the session at login so an outage page can say who is looking.
OUTAGE_USERNAME_KEY = "opsconsole_username"


class OutageUser:
    """Who a session says is logged in, while the database cannot confirm it: enough to
    show the read-only live view, never staff (no control works without the database)."""

    is_authenticated = True
    is_active = True
    is_anonymous = False
    is_staff = False
    is_superuser = False

    def __init__(self, username: str) -> None:
        self.username = username

    def get_username(self) -> str:
        return self.username

    def __str__(self) -> str:
        return self.username


def is_outage(exc: DatabaseError) -> bool:
    """A database that cannot be reached or gave up (connection lost, timeout), as opposed
    to a query it refused (IntegrityError, DataError): those are bugs, answered 500."""
    return isinstance(exc, DATABASE_AWAY)


def server_error(request, *args, **kwargs):
    """handler500: a database outage met outside a view (the session or user lookup in a
    middleware) is a 503 too; anything else is Django's own 500."""
    exc = sys.exc_info()[1]
    if isinstance(exc, DatabaseError) and is_outage(exc):
        return database_unavailable(request, outage.record(exc))
    return django_server_error(request, *args, **kwargs)


# What has nothing to do for a bearer token's GET of /api/claude-active: static files,
# the cookie session and the user it names, CSRF (a bearer token is not ambient, and GET
# is safe), the login redirect (API views answer 401 themselves), flash messages, htmx,
# and login throttling (no password is checked). Everything else runs as configured.
NOTHING_TO_DO_FOR_A_POLL = frozenset(
    {
        "whitenoise.middleware.WhiteNoiseMiddleware",
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.auth.middleware.LoginRequiredMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
        "django_htmx.middleware.HtmxMiddleware",
        "axes.middleware.AxesMiddleware",
    }
)


def resolved_view(request):
    """The view the URLconf names for the request, called as Django's handler would."""
    match = resolve(request.path_info)
    request.resolver_match = match
    return match.func(request, *match.args, **match.kwargs)


class BearerPollMiddleware:
    """GET /api/claude-active with a bearer token (scripts and pollers, every 50 ms to
    2 s) goes through the configured middleware below this one less those with nothing
    to do for it (NOTHING_TO_DO_FOR_A_POLL): the same instances' classes in the same
    order, so the host check, the security and CSP headers and private caching are
    exactly the full chain's. Any other request takes the full chain."""

    def __init__(self, get_response):
        self.get_response = get_response
        names = list(settings.MIDDLEWARE)
        below = names[names.index(f"{__name__}.{type(self).__name__}") + 1 :]
        self.chain = [name for name in below if name not in NOTHING_TO_DO_FOR_A_POLL]
        handler = convert_exception_to_response(resolved_view)
        for name in reversed(self.chain):
            handler = convert_exception_to_response(import_string(name)(handler))
        self.poll = handler

    def __call__(self, request):
        if request.method == "GET" and polls_with_a_token(request):
            return self.poll(request)
        return self.get_response(request)


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
