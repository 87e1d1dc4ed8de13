"""Dashboard sessions: a signed, expiring, HttpOnly, SameSite=Strict cookie, and CSRF tokens.

Signing in with an API key sets the cookie; it names the key (never holds it) and carries the
session's CSRF token, which every state-changing request must echo. Scopes are looked up on
each request, so a key removed from the configuration ends its sessions. With no keys
configured, each browser gets an anonymous session with every scope (the loopback rule keeps
other hosts out) so that its forms carry a CSRF token all the same.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field

from itsdangerous import BadSignature, URLSafeTimedSerializer

from formwork.auth import Keys
from formwork.config import Scope, UiSettings

COOKIE = "fw_session"
COOKIE_PATH = "/"  # the dashboard and its /docs, /redoc; the API reads keys, never cookies
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf"
ANONYMOUS = "local"
EVERY_SCOPE: frozenset[Scope] = frozenset({"run", "read", "admin"})


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who looks at the dashboard, and what they may do."""

    name: str
    scopes: frozenset[Scope]
    csrf: str
    signed_in: bool = True
    cookie: str | None = field(default=None, compare=False)  # set when freshly issued

    def can(self, scope: Scope) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    def csrf_ok(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf, token or "")


class Sessions:
    def __init__(self, settings: UiSettings, keys: Keys) -> None:
        secret = settings.session_secret
        key = secret.get_secret_value() if secret else secrets.token_urlsafe(32)
        self._signer = URLSafeTimedSerializer(key, salt="formwork-ui-session")
        self._keys = keys
        self.ttl_s = settings.session_ttl_s

    @property
    def auth_enabled(self) -> bool:
        return self._keys.enabled

    def sign_in(self, key: str) -> Viewer | None:
        """A new session for a known key; None for any other string."""
        found = self._keys.identify(key)
        if found is None:
            return None
        return self._issue(found[0], found[1])

    def viewer(self, cookie: str | None) -> Viewer | None:
        """The session a cookie proves; an anonymous one when auth is off."""
        payload = self._load(cookie)
        if not self._keys.enabled:
            if payload is not None and payload.get("k") == ANONYMOUS:
                return Viewer(ANONYMOUS, EVERY_SCOPE, payload["c"], signed_in=False)
            return self._issue(ANONYMOUS, EVERY_SCOPE, signed_in=False)
        if payload is None:
            return None
        scopes = self._keys.scopes_of(payload["k"])
        return Viewer(payload["k"], scopes, payload["c"]) if scopes else None

    def _issue(self, name: str, scopes: frozenset[Scope], *, signed_in: bool = True) -> Viewer:
        csrf = secrets.token_urlsafe(24)
        cookie = self._signer.dumps({"k": name, "c": csrf})
        return Viewer(name, scopes, csrf, signed_in=signed_in, cookie=cookie)

    def _load(self, cookie: str | None) -> dict[str, str] | None:
        if not cookie:
            return None
        try:
            payload = self._signer.loads(cookie, max_age=self.ttl_s)
        except BadSignature:  # also SignatureExpired
            return None
        if not isinstance(payload, dict) or not {"k", "c"} <= payload.keys():
            return None
        return {"k": str(payload["k"]), "c": str(payload["c"])}
