"""Login throttling (django-axes): per account and per address; and password checks
bounded so guessing cannot take every server thread (issue 11, item 4)."""

from __future__ import annotations

import time

import pytest
from django.contrib.auth import get_user_model

from opsconsole.auth import login_slots

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"


@pytest.fixture
def ops():
    return get_user_model().objects.create_user("ops", password=PASSWORD)


def login(client, username: str, password: str, address: str = "127.0.0.1"):
    return client.post("/login/", {"username": username, "password": password}, REMOTE_ADDR=address)


def test_no_login_throttling_wrong_passwords_lock_the_account_from_that_address(
    client, ops, settings
):
    """Before: unlimited guesses. After the limit, even the right password is refused from
    that address until the cool-off ends; from another address the account still logs in
    (issue 21: a lock is per account and address, see test_hardening_web)."""
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert login(client, "ops", "guess", "10.0.0.1").status_code == 200
    assert login(client, "ops", "guess", "10.0.0.1").status_code == 429  # the limit-th
    refused = login(client, "ops", PASSWORD, "10.0.0.1")
    assert refused.status_code == 429
    assert b"Too many failed logins" in refused.content
    assert "_auth_user_id" not in client.session
    assert login(client, "ops", PASSWORD, "10.0.1.1").status_code == 302


def test_a_right_password_resets_the_count(client, ops, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        login(client, "ops", "guess")
    assert login(client, "ops", PASSWORD).status_code == 302
    client.logout()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        login(client, "ops", "guess")
    assert login(client, "ops", PASSWORD).status_code == 302


def test_login_work_is_bounded_so_it_cannot_starve_the_api(client, ops, settings):
    """While every password-check slot is busy, another login is answered 503 at once
    (it does not wait for a thread's worth of PBKDF2), and the API keeps answering."""
    settings.OPSCONSOLE_LOGIN_CONCURRENCY = 1
    settings.OPSCONSOLE_LOGIN_WAIT_SECONDS = 0.1
    slots = login_slots()
    assert slots.acquire(0)  # a login in progress elsewhere
    try:
        started = time.monotonic()
        busy = login(client, "ops", PASSWORD)
        assert busy.status_code == 503 and busy["Retry-After"]
        assert time.monotonic() - started < 2
        assert client.get("/api/sessions").status_code == 401  # answered, not queued
    finally:
        slots.release()
    assert login(client, "ops", PASSWORD).status_code == 302


def test_behind_a_trusted_proxy_one_person_s_typos_lock_out_only_their_address(
    client, ops, settings
):
    """Behind nginx every request comes from 127.0.0.1: throttling by that address would
    lock every operator out. With OPSCONSOLE_TRUSTED_PROXIES=1 the proxy's
    X-Forwarded-For says who it was; what a client puts there itself is not believed."""

    def via_proxy(username: str, password: str, forwarded_for: str):
        return client.post(
            "/login/",
            {"username": username, "password": password},
            REMOTE_ADDR="127.0.0.1",
            HTTP_X_FORWARDED_FOR=forwarded_for,
        )

    settings.OPSCONSOLE_TRUSTED_PROXIES = 1
    for attempt in range(settings.AXES_FAILURE_LIMIT):
        # The attacker's own X-Forwarded-For entry changes every time; the proxy's does not.
        via_proxy("ops", "guess", f"10.9.9.{attempt}, 203.0.113.7")
    assert via_proxy("ops", PASSWORD, "203.0.113.7").status_code == 429
    assert via_proxy("ops", PASSWORD, "198.51.100.20").status_code == 302


def test_without_trusted_proxies_x_forwarded_for_is_ignored(client, ops, settings):
    settings.OPSCONSOLE_TRUSTED_PROXIES = 0
    for attempt in range(settings.AXES_FAILURE_LIMIT):
        client.post(
            "/login/",
            {"username": "ops", "password": "guess"},
            REMOTE_ADDR="10.0.0.9",
            HTTP_X_FORWARDED_FOR=f"10.1.1.{attempt}",
        )
    assert login(client, "ops", PASSWORD, "10.0.0.9").status_code == 429
