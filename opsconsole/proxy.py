"""Who a request came from when the console sits behind reverse proxies.

Behind nginx or Caddy every request arrives from the proxy's address, so login
throttling keyed on REMOTE_ADDR would lock everyone out after one person's typos.
With OPSCONSOLE_TRUSTED_PROXIES=N, the address is the one the outermost trusted
proxy saw: each proxy appends the address it received from to X-Forwarded-For,
so the N-th entry from the right. Entries further left came from the client and
are never believed.
"""

from __future__ import annotations

import ipaddress

from django.conf import settings


def client_address(request) -> str | None:
    remote = request.META.get("REMOTE_ADDR")
    hops = settings.OPSCONSOLE_TRUSTED_PROXIES
    if hops <= 0:
        return remote
    forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    forwarded = [part for part in forwarded if part]
    if len(forwarded) < hops:  # did not come through the proxies
        return remote
    candidate = forwarded[-hops]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return remote
