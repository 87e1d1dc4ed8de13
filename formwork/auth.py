"""API keys: ``Authorization: Bearer <key>``, stored as SHA-256 digests, each with scopes."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from .config import ApiKeySettings, Scope
from .errors import Forbidden, Unauthorized

KEY_PREFIX = "fw_"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh key and the digest to configure for it."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, digest(key)


class Keys:
    def __init__(self, keys: dict[str, ApiKeySettings]) -> None:
        self._by_digest = {k.sha256: (name, frozenset(k.scopes)) for name, k in keys.items()}

    @property
    def enabled(self) -> bool:
        return bool(self._by_digest)

    def identify(self, key: str) -> tuple[str, frozenset[Scope]] | None:
        """The name and scopes of a key, or None when it is not one of ours."""
        wanted = digest(key.strip())
        for known, found in self._by_digest.items():
            if hmac.compare_digest(known, wanted):
                return found
        return None

    def scopes_of(self, name: str) -> frozenset[Scope]:
        """The scopes of the key configured under ``name`` (none when it is gone)."""
        for known_name, scopes in self._by_digest.values():
            if known_name == name:
                return scopes
        return frozenset()

    def check(self, authorization: str | None, scope: Scope) -> str | None:
        """The key's name when it may use ``scope``; None when auth is off."""
        if not self.enabled:
            return None
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("send an API key as 'Authorization: Bearer <key>'")
        wanted = digest(token.strip())
        for known, (name, scopes) in self._by_digest.items():
            if hmac.compare_digest(known, wanted):
                if scope not in scopes and "admin" not in scopes:
                    raise Forbidden(f"this key lacks the {scope!r} scope")
                return name
        raise Unauthorized("unknown API key")

    def allows(self, authorization: str | None, scope: Scope) -> bool:
        """Whether the request's key may use ``scope`` (always, when auth is off)."""
        try:
            self.check(authorization, scope)
        except (Unauthorized, Forbidden):
            return False
        return True
