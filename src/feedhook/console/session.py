"""Signing in to the console: the admin token, once per browser session.

The session cookie holds when it was issued and a random nonce, signed with a key
derived from the token: it survives restarts of feedhook, changing the token signs
everyone out, and it carries nothing secret. Every form carries a value derived from the
same nonce, which a page of another site cannot know (with SameSite=Strict, a second lock
on the door)."""

from __future__ import annotations

import hashlib
import hmac
import secrets

COOKIE = "feedhook_console"
MAX_AGE = 12 * 3600.0  # a forgotten tab is signed out by the next morning


class Sessions:
    def __init__(self, token: str) -> None:
        self._token = token.encode()
        self._key = hmac.new(self._token, b"feedhook console", hashlib.sha256).digest()

    def _mac(self, purpose: str, value: str) -> str:
        message = f"{purpose}:{value}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def token_ok(self, given: str) -> bool:
        try:
            sent = given.encode()
        except UnicodeError:  # lone surrogates from a hostile form: no token of ours
            return False
        return hmac.compare_digest(sent, self._token)

    def issue(self, now: float) -> str:
        """A new session's cookie value."""
        body = f"{int(now)}.{secrets.token_urlsafe(16)}"
        return f"{body}.{self._mac('session', body)}"

    def verify(self, cookie: str | None, now: float) -> str | None:
        """The session's nonce, or None: no cookie, a forged or old one."""
        if not cookie or cookie.count(".") != 2:
            return None
        body, _, mac = cookie.rpartition(".")
        if not hmac.compare_digest(mac.encode(), self._mac("session", body).encode()):
            return None
        issued, _, nonce = body.partition(".")
        if not issued.isdigit() or not 0 <= now - int(issued) <= MAX_AGE:
            return None
        return nonce

    def csrf(self, nonce: str) -> str:
        """The value every form of this session sends back."""
        return self._mac("form", nonce)

    def csrf_ok(self, nonce: str, given: str) -> bool:
        return hmac.compare_digest(given.encode(errors="replace"), self.csrf(nonce).encode())
