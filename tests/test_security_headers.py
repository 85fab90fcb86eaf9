"""Content-Security-Policy with no inline script or style in our pages, private caching of
authenticated answers, API token expiry, a private SQLite file (issue 11, item 8)."""

from __future__ import annotations

import re
import stat
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from opsconsole.models import ApiToken
from sessions_app.models import Session, Status
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.django_db

PAGES = ["/", "/live/", "/live/rows/", "/history/", "/costs/", "/jobs/"]
INLINE = [
    re.compile(rb"<script(?![^>]*\bsrc=)[^>]*>"),  # a script element without src
    re.compile(rb"\son[a-z]+\s*=", re.IGNORECASE),  # onclick=, onload=...
    re.compile(rb"\sstyle\s*=", re.IGNORECASE),  # style attributes
    re.compile(rb"<style[\s>]", re.IGNORECASE),
    re.compile(rb"javascript:", re.IGNORECASE),
]


@pytest.fixture
def staff(client):
    user = get_user_model().objects.create_user("ops", is_staff=True, is_superuser=True)
    client.force_login(user)
    return user


@pytest.fixture
def recorded_run():
    return Session.objects.create(
        session_id=uuid.uuid4(),
        script_tag="nightly",
        status=Status.SUCCEEDED,
        started_at=timezone.now() - timedelta(hours=1),
        ended_at=timezone.now(),
        cost_usd="0.5",
    )


def test_pages_send_a_csp_that_forbids_inline_script_and_style(client, console_state, staff):
    response = client.get("/")
    policy = response["Content-Security-Policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";") if part.strip())
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["default-src"] == "'self'"
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert directives["frame-ancestors"] == "'none'"


def test_our_pages_have_nothing_inline_the_csp_would_block(
    client, console_state, staff, recorded_run
):
    """Before: the process tree and the cost chart's legend used style attributes."""
    pages = [*PAGES, f"/sessions/{recorded_run.session_id}/", "/login/"]
    for url in pages:
        response = client.get(url)
        assert response.status_code == 200, url
        for pattern in INLINE:
            found = pattern.search(response.content)
            assert found is None, (url, found and found.group(0))


def test_authenticated_answers_are_private_and_not_stored(client, console_state, staff):
    for url in [*PAGES, "/api/sessions", "/api/claude-active"]:
        cache_control = client.get(url)["Cache-Control"]
        assert "private" in cache_control and "no-store" in cache_control, url


def test_bearer_answers_are_private_and_not_stored(client, console_state):
    user = get_user_model().objects.create_user("script")
    token = ApiToken.issue(user)[1]
    response = client.get("/api/sessions", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200
    assert "private" in response["Cache-Control"] and "no-store" in response["Cache-Control"]


def test_expired_api_token_is_refused(client, console_state):
    user = get_user_model().objects.create_user("script")
    _, fresh = ApiToken.issue(user, expires_at=timezone.now() + timedelta(days=1))
    stale_row, stale = ApiToken.issue(user, expires_at=timezone.now() - timedelta(seconds=1))
    _, forever = ApiToken.issue(user)

    assert client.get("/api/sessions", HTTP_AUTHORIZATION=f"Bearer {fresh}").status_code == 200
    assert client.get("/api/sessions", HTTP_AUTHORIZATION=f"Bearer {forever}").status_code == 200
    refused = client.get("/api/sessions", HTTP_AUTHORIZATION=f"Bearer {stale}")
    assert refused.status_code == 401
    assert stale_row.expired


def test_token_expiry_is_shown_and_editable_in_the_admin(client, console_state, staff):
    row, _ = ApiToken.issue(staff, name="ci", expires_at=timezone.now() + timedelta(days=3))
    listing = client.get("/admin/opsconsole/apitoken/")
    assert listing.status_code == 200 and b"Expires at" in listing.content
    form = client.get(f"/admin/opsconsole/apitoken/{row.pk}/change/")
    assert b'name="expires_at_0"' in form.content


def test_create_api_token_with_an_expiry(console_state, capsys):
    from django.core.management import call_command

    get_user_model().objects.create_user("script")
    call_command("create_api_token", "script", "--expires-in-days", "2")
    row = ApiToken.objects.get()
    assert timedelta(days=1.9) < row.expires_at - timezone.now() < timedelta(days=2.1)


def test_sqlite_database_is_created_0600(tmp_path):
    """Before: the database (users, token hashes, every run) was created with the umask's
    mode, typically 0644: readable by every user of the host."""
    home = tmp_path / "home"
    env = {
        "PATH": "/usr/bin:/bin",
        "OPSCONSOLE_HOME": str(home),
        "DJANGO_SETTINGS_MODULE": "opsconsole.settings",
        "PYTHONPATH": str(REPO_ROOT),
    }
    subprocess.run(
        ["sh", "-c", f"umask 022 && exec {sys.executable} -m opsconsole.cli migrate"],
        env=env,
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    database = home / "opsconsole.sqlite3"
    files = [database, *(Path(f"{database}{s}") for s in ("-wal", "-shm"))]
    for path in files:
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert database.exists()
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    # While a console has it open in WAL mode, its -wal and -shm get the same mode.
    import sqlite3

    connection = sqlite3.connect(database)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("CREATE TABLE IF NOT EXISTS probe (x)")
        connection.execute("INSERT INTO probe VALUES (1)")
        connection.commit()
        for suffix in ("-wal", "-shm"):
            companion = Path(f"{database}{suffix}")
            assert stat.S_IMODE(companion.stat().st_mode) == 0o600, companion
    finally:
        connection.close()


def test_a_token_expires_at_its_time_on_the_clock_it_is_handed(console_state):
    user = get_user_model().objects.create_user("script")
    t0 = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)
    row, plain = ApiToken.issue(user, expires_at=t0 + timedelta(hours=1))
    assert ApiToken.authenticate(plain, now=t0 + timedelta(minutes=59)) == user
    assert not row.expired_at(t0 + timedelta(minutes=59))
    assert ApiToken.authenticate(plain, now=t0 + timedelta(hours=1)) is None
    assert row.expired_at(t0 + timedelta(hours=1))


# --------------------------------------------------------------------------- the poll's path

SECURITY_HEADERS = (
    "Content-Security-Policy",
    "X-Content-Type-Options",
    "Referrer-Policy",
    "Cross-Origin-Opener-Policy",
    "X-Frame-Options",
    "Cache-Control",
)


def test_a_bearer_poll_carries_every_header_the_full_chain_gives(client, console_state, staff):
    """The bearer poll of /api/claude-active skips the middleware with nothing to do for
    it: its answer still has each security header, as the full chain (a logged-in
    session) gives it for the same endpoint, and nothing that opens it to another origin."""
    token = ApiToken.issue(staff)[1]
    full = client.get("/api/claude-active")
    client.logout()
    poll = client.get("/api/claude-active", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert full.status_code == poll.status_code == 200
    for name in SECURITY_HEADERS:
        assert poll.has_header(name), name
        assert poll[name] == full[name], name
    assert int(poll["Content-Length"]) == len(poll.content)
    assert not [h for h in poll.headers if h.lower().startswith("access-control-")]
    assert "Set-Cookie" not in poll.headers and "sessionid" not in poll.cookies


def test_a_bearer_poll_still_checks_the_host_and_the_token(client, console_state):
    token = ApiToken.issue(get_user_model().objects.create_user("script"))[1]
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    assert client.get("/api/claude-active", HTTP_HOST="evil.example", **auth).status_code == 400
    refused = client.get("/api/claude-active", HTTP_AUTHORIZATION="Bearer oc_not-a-token")
    assert refused.status_code == 401
    assert refused.has_header("Content-Security-Policy") and refused["X-Frame-Options"] == "DENY"


def test_the_poll_path_skips_only_middleware_with_nothing_to_do_for_it(settings):
    from opsconsole.middleware import BearerPollMiddleware

    chain = BearerPollMiddleware(lambda request: None).chain
    assert chain == [
        "django.middleware.security.SecurityMiddleware",
        "django.middleware.common.CommonMiddleware",
        "opsconsole.middleware.PrivateCacheMiddleware",
        "csp.middleware.CSPMiddleware",
        "django.middleware.clickjacking.XFrameOptionsMiddleware",
    ]
    # A middleware added to the settings later runs on the poll path unless named there.
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "tests.test_security_headers.Marker"]
    assert (
        BearerPollMiddleware(lambda request: None).chain[-1] == "tests.test_security_headers.Marker"
    )


class Marker:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)


def test_a_token_checked_by_one_worker_is_believed_by_the_others_until_revoked(console_state):
    """The check is kept in the host's shared file cache (another worker's memory is empty
    here after clearing this one's): no database query, until the token is revoked or
    its user deactivated, which forget it there at once."""
    from django.core.cache import caches
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from opsconsole import auth

    user = get_user_model().objects.create_user("script", password="a-password-long-enough")
    row, token = ApiToken.issue(user)
    assert auth.authenticate_token(token) == user
    auth._token_cache.clear()  # another worker: nothing in its memory
    with CaptureQueriesContext(connection) as queries:
        assert auth.authenticate_token(token).pk == user.pk
    assert len(queries) == 0
    kept = caches["sessions"].get(auth._SHARED_PREFIX + row.token_hash)
    assert user.password not in repr(kept)  # never the password hash in a file

    row.revoke()
    auth._token_cache.clear()
    assert auth.authenticate_token(token) is None

    _, second = ApiToken.issue(user)
    assert auth.authenticate_token(second) is not None
    user.is_active = False
    user.save()
    auth._token_cache.clear()
    assert auth.authenticate_token(second) is None
