"""API authentication: a logged-in session, or `Authorization: Bearer <token>`.

Pages use Django's LoginRequiredMiddleware (redirect to the login page). API
views answer 401 with a JSON error instead: a script must never be sent a
login form.
"""

from __future__ import annotations

import threading
import time
from functools import wraps

from django.contrib.auth.decorators import login_not_required
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.http import JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.csrf import csrf_exempt

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


def authenticate_token(plain: str):
    """The active user of a bearer token (ApiToken.authenticate), remembered briefly."""
    key = hash_token(plain)
    now = time.monotonic()
    cached = _token_cache.get(key)
    if cached is not None and cached[1] > now:
        return cached[0]
    user = ApiToken.authenticate(plain)
    with _token_cache_lock:
        if len(_token_cache) > 1000:
            _token_cache.clear()
        if user is not None:
            _token_cache[key] = (user, now + TOKEN_CACHE_SECONDS)
        else:
            _token_cache.pop(key, None)
    return user


@receiver(post_save, sender=ApiToken)
@receiver(post_delete, sender=ApiToken)
def forget_tokens(**_kwargs) -> None:
    """A token saved (revoked) or deleted in this process is forgotten at once; other
    processes forget it within TOKEN_CACHE_SECONDS."""
    _token_cache.clear()


def csrf_rejects(request) -> bool:
    """Run Django's own CSRF check (it passes safe methods) for a cookie-session request."""
    check = CsrfViewMiddleware(lambda _request: None)
    check.process_request(request)
    return check.process_view(request, None, (), {}) is not None
