"""API authentication: a logged-in session, or `Authorization: Bearer <token>`.

Pages use Django's LoginRequiredMiddleware (redirect to the login page). API
views answer 401 with a JSON error instead: a script must never be sent a
login form.
"""

from __future__ import annotations

import contextlib
import threading
import time
from functools import wraps

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_not_required
from django.contrib.auth.signals import user_logged_in
from django.contrib.auth.views import LoginView
from django.core.cache import caches
from django.db import DEFAULT_DB_ALIAS, DatabaseError
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.http import HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.csrf import csrf_exempt

from opsconsole.middleware import OUTAGE_USERNAME_KEY, is_outage, outage
from opsconsole.models import ApiToken, hash_token


def json_error(message: str, status: int, **extra) -> JsonResponse:
    return JsonResponse({"error": message, **extra}, status=status)


def unauthorized(message: str) -> JsonResponse:
    response = json_error(message, 401)
    response["WWW-Authenticate"] = 'Bearer realm="opsconsole"'
    return response


def api_view(view):
    """Authenticate an API view by session or bearer token; 401 JSON otherwise."""

    @wraps(view)
    def wrapped(request, *args, **kwargs):
        header = request.headers.get("Authorization", "")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return unauthorized("Authorization must be 'Bearer <token>'.")
            user = authenticate_token(token.strip())
            if user is None:
                return unauthorized("Invalid or revoked API token.")
            request.user = user
        elif not request.user.is_authenticated:
            return unauthorized(
                "Authentication required: log in, or send 'Authorization: Bearer <token>' "
                "(opsconsole create_api_token USERNAME)."
            )
        elif csrf_rejects(request):
            return json_error("CSRF check failed: send the X-CSRFToken header.", 403)
        return view(request, *args, **kwargs)

    # CSRF is checked above for cookie sessions only; a bearer token is not ambient.
    return csrf_exempt(login_not_required(wrapped))


# Pollers send the same token every second or two; remembering a good one briefly keeps
# the database out of the hot path. A revoked token stops working within this many seconds.
TOKEN_CACHE_SECONDS = 5.0
_token_cache: dict[str, tuple[object, float]] = {}
_token_cache_lock = threading.Lock()
# Each web worker remembers the tokens it checked, and so do the host's other workers:
# the check is also kept in the host's shared (file) cache, so that one database check
# per TOKEN_CACHE_SECONDS serves every worker. A tab polling every 2 s through four
# workers otherwise met an expired memory, and a database connection, most times.
# Revoking or deleting a token, or changing its user, forgets it there at once.
_SHARED_PREFIX = "opsconsole-token:"
# What is kept of the user: never the password hash (the cache is a file).
_USER_FIELDS = ("id", "username", "is_active", "is_staff", "is_superuser")


def _shared_cache():
    return caches[settings.SESSION_CACHE_ALIAS]


def _remember_shared(key: str, user) -> None:
    """The user a token checked good belongs to, for the host's other workers."""
    fields = tuple(getattr(user, name) for name in _USER_FIELDS)
    with contextlib.suppress(OSError):
        _shared_cache().set(_SHARED_PREFIX + key, fields, TOKEN_CACHE_SECONDS)


def _recall_shared(key: str):
    """The user another worker of this host checked the token good for, or None. The user
    comes back with only those fields loaded: any other is read on first use, and save()
    writes back only what was loaded."""
    try:
        fields = _shared_cache().get(_SHARED_PREFIX + key)
    except (OSError, EOFError, ValueError):
        return None
    if not fields or len(fields) != len(_USER_FIELDS):
        return None
    # from_db takes the values in the model's field order, whatever order the names are
    # given in (in _USER_FIELDS' order the username came back as is_active's True).
    model = get_user_model()
    kept = dict(zip(_USER_FIELDS, fields, strict=True))
    names = [f.attname for f in model._meta.concrete_fields if f.attname in kept]
    return model.from_db(DEFAULT_DB_ALIAS, names, [kept[name] for name in names])


# During a database outage a token seen this recently still reads the live sample.
TOKEN_OUTAGE_GRACE_SECONDS = 3600.0


def authenticate_token(plain: str):
    """The active user of a bearer token (ApiToken.authenticate), remembered briefly.

    With the database unreachable, a token that authenticated within the last
    TOKEN_OUTAGE_GRACE_SECONDS is still believed, so a poller keeps the live view;
    any other token raises the DatabaseError (a 503, not a 401).
    """
    key = hash_token(plain)
    now = time.monotonic()
    cached = _token_cache.get(key)
    if cached is not None and cached[1] > now:
        return cached[0]
    shared = _recall_shared(key)
    if shared is not None:
        with _token_cache_lock:
            _token_cache[key] = (shared, now + TOKEN_CACHE_SECONDS)
        return shared
    # An outage on record: asking the database again would wait out its timeout.
    in_grace = cached is not None and now - cached[1] < TOKEN_OUTAGE_GRACE_SECONDS
    if in_grace and outage.current() is not None:
        return cached[0]
    try:
        user = ApiToken.authenticate(plain)
    except DatabaseError as exc:
        if cached is not None and now - cached[1] < TOKEN_OUTAGE_GRACE_SECONDS:
            if is_outage(exc):
                outage.record(exc)  # the next polls need not wait for it again
            return cached[0]
        raise
    with _token_cache_lock:
        if len(_token_cache) > 1000:
            _token_cache.clear()
        if user is not None:
            _token_cache[key] = (user, now + TOKEN_CACHE_SECONDS)
        else:
            _token_cache.pop(key, None)
    if user is not None:
        _remember_shared(key, user)
    return user


@receiver(post_save, sender=ApiToken)
@receiver(post_delete, sender=ApiToken)
def forget_tokens(instance=None, **_kwargs) -> None:
    """A token saved (revoked) or deleted is forgotten at once by this process and by the
    host's shared cache; the host's other workers forget it within TOKEN_CACHE_SECONDS."""
    _token_cache.clear()
    if instance is not None:
        with contextlib.suppress(OSError):
            _shared_cache().delete(_SHARED_PREFIX + instance.token_hash)


def forget_user_tokens(sender, instance, **_kwargs) -> None:
    """A user saved (deactivated, rights changed) or deleted: their tokens are checked
    again, here and in the shared cache."""
    _token_cache.clear()
    hashes = ApiToken.objects.filter(user_id=instance.pk).values_list("token_hash", flat=True)
    with contextlib.suppress(OSError, DatabaseError):
        _shared_cache().delete_many([_SHARED_PREFIX + h for h in hashes])


post_save.connect(forget_user_tokens, sender=settings.AUTH_USER_MODEL)
post_delete.connect(forget_user_tokens, sender=settings.AUTH_USER_MODEL)


@receiver(user_logged_in)
def remember_username(sender, request, user, **_kwargs) -> None:
    """The session says who is logged in, for the read-only live view during an outage."""
    if request is not None and hasattr(request, "session"):
        request.session[OUTAGE_USERNAME_KEY] = user.get_username()


def csrf_rejects(request) -> bool:
    """Run Django's own CSRF check (it passes safe methods) for a cookie-session request."""
    check = CsrfViewMiddleware(lambda _request: None)
    check.process_request(request)
    return check.process_view(request, None, (), {}) is not None


# --------------------------------------------------------------------------- login


class LoginSlots:
    """At most `size` password checks at once, in this process. PBKDF2 takes a core for
    ~0.3 s: unbounded, 16 guessers hold every server thread and the API waits behind them."""

    def __init__(self, size: int):
        self.size = size
        self._semaphore = threading.BoundedSemaphore(size)

    def acquire(self, wait: float) -> bool:
        return self._semaphore.acquire(timeout=wait) if wait > 0 else self._semaphore.acquire(False)

    def release(self) -> None:
        self._semaphore.release()


_login_slots: LoginSlots | None = None
_login_slots_lock = threading.Lock()


def login_slots() -> LoginSlots:
    global _login_slots
    with _login_slots_lock:
        size = max(1, settings.OPSCONSOLE_LOGIN_CONCURRENCY)
        if _login_slots is None or _login_slots.size != size:
            _login_slots = LoginSlots(size)
        return _login_slots


class ThrottledLoginView(LoginView):
    """Django's login, with the password check bounded (login_slots) and throttled per
    account and address together by django-axes (its backend refuses a locked-out one)."""

    def post(self, request, *args, **kwargs):
        slots = login_slots()
        if not slots.acquire(settings.OPSCONSOLE_LOGIN_WAIT_SECONDS):
            response = HttpResponse(
                "Too many logins at once: try again in a few seconds.",
                status=503,
                content_type="text/plain; charset=utf-8",
            )
            response["Retry-After"] = "2"
            return response
        try:
            return super().post(request, *args, **kwargs)
        finally:
            slots.release()
