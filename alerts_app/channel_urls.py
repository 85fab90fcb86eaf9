"""A channel's Apprise URL: the plugin it names, its redacted forms for pages and logs,
and scrubbing the URL's secrets out of a receiver's error text. Below the models,
which store Apprise's redacted form."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import unquote, urlsplit

import apprise


def instantiate(url: str):
    """The Apprise plugin for a URL, or None when Apprise does not understand it."""
    try:
        return apprise.Apprise.instantiate(url.strip())
    except Exception:  # a malformed URL must not take the loop down
        return None


def redact_url(url: str) -> str:
    """The URL as Apprise prints it with its privacy mode (tokens and passwords hidden)."""
    plugin = instantiate(url)
    if plugin is None:
        scheme = url.split("://", 1)[0] if "://" in url else "?"
        return f"{scheme}://… (not a URL Apprise understands)"
    try:
        return plugin.url(privacy=True)
    except Exception:
        return f"{url.split('://', 1)[0]}://…"


# A DNS name (labels of letters, digits and hyphens, at least one dot) or "localhost".
HOSTNAME = re.compile(r"^(localhost|[a-z0-9-]+(\.[a-z0-9-]+)+)$", re.IGNORECASE)


def shown_url(redacted: str, *, superuser: bool) -> str:
    """What a person may see of a channel's URL, from its stored redacted form.

    Apprise's privacy mode hides passwords and tokens but not a json:// path or an
    ntfy topic, which are secrets too: only a superuser sees that form. Everyone else,
    and every audit row, gets the scheme and the host (and port) alone.
    """
    if superuser:
        return redacted
    parts = urlsplit(redacted)
    try:
        host, port = parts.hostname or "", parts.port
    except ValueError:
        host, port = "", None
    if not _is_network_host(host):  # ntfy://topic, slack://Token/…: the "host" is a secret
        return f"{parts.scheme or '?'}://…"
    shown = f"[{host}]" if ":" in host else host
    if port:
        shown = f"{shown}:{port}"
    tail = "/…" if parts.path.strip("/") or parts.query or "@" in parts.netloc else ""
    return f"{parts.scheme}://{shown}{tail}"


def _is_network_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(HOSTNAME.match(host))


def scrub(text: str, url: str) -> str:
    """Take every secret-looking piece of the URL out of a message before it is kept.

    A network host and its port stay (they say where it failed); user names, passwords,
    path segments (webhook tokens), query values of six characters or more go, and so
    does a "host" that is no network host (an ntfy topic, a Slack token), as
    `shown_url` treats it.
    """
    parts = urlsplit(url.strip())
    # As written: urlsplit lower-cases .hostname, and a topic keeps its case in messages.
    host = parts.netloc.rpartition("@")[2].partition(":")[0]
    try:
        keep = {str(parts.port or "")}
    except ValueError:
        keep = set()
    pieces = {url.strip(), parts.username or "", parts.password or ""}
    if _is_network_host(parts.hostname or ""):
        keep.add(parts.hostname or "")
    else:
        pieces.add(host)
    pieces.update(unquote(p) for p in re.split(r"[/@]+", parts.path))
    pieces.update(unquote(p) for p in parts.path.split("/"))
    for field in re.split(r"[&;]", parts.query):
        pieces.add(unquote(field.partition("=")[2]))
    if "@" in parts.netloc:  # user:password@ when Apprise's own syntax confuses urlsplit
        pieces.update(re.split(r"[:@]", parts.netloc.rpartition("@")[0]))
    for piece in sorted(pieces - keep, key=len, reverse=True):
        if len(piece) >= 6:
            text = text.replace(piece, "…")
    return text
