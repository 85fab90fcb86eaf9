"""Bearer tokens for scripts. Only a hash is stored; the token is shown once."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime

from django.conf import settings
from django.db import models
from django.utils import timezone

TOKEN_PREFIX = "oc_"  # noqa: S105 - a marker, not a secret


def hash_token(token: str) -> str:
    # Tokens carry 256 bits of randomness, so a fast hash is enough (no salt or KDF needed).
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class ApiTokenQuerySet(models.QuerySet):
    def active(self, now: datetime | None = None):
        """Not revoked, not expired at `now` (default: the clock), of an active user."""
        return self.filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now or timezone.now()),
            revoked_at__isnull=True,
            user__is_active=True,
        )


class ApiToken(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=100, blank=True, default="")
    key_prefix = models.CharField(max_length=16, help_text="First characters, to tell tokens apart")
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(
        null=True, blank=True, help_text="After this the token is refused; empty: never expires"
    )

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        verbose_name = "API token"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.key_prefix}… ({self.user})"

    @classmethod
    def issue(cls, user, name: str = "", expires_at=None) -> tuple[ApiToken, str]:
        """Create a token; return the row and the plain token, which is never stored."""
        plain = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token = cls.objects.create(
            user=user,
            name=name,
            key_prefix=plain[:10],
            token_hash=hash_token(plain),
            expires_at=expires_at,
        )
        return token, plain

    @property
    def expired(self) -> bool:
        return self.expired_at(timezone.now())

    def expired_at(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    @classmethod
    def authenticate(cls, plain: str, now: datetime | None = None):
        """The active user a plain token belongs to at `now` (default: the clock), or None."""
        if not plain.startswith(TOKEN_PREFIX) or len(plain) > 200:
            return None
        now = now or timezone.now()
        token = cls.objects.active(now).select_related("user").filter(token_hash=hash_token(plain))
        row = token.first()
        if row is None:
            return None
        if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:
            cls.objects.filter(pk=row.pk).update(last_used_at=now)
        return row.user

    def revoke(self) -> None:
        self.revoked_at = timezone.now()
        self.save(update_fields=["revoked_at"])
