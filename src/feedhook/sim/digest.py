"""Server side of HTTP Digest auth (RFC 7616, MD5, qop=auth), as BeBanjo's API does it."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time

from aiohttp import web

NONCE_LIFETIME = 300.0  # BeBanjo: a nonce stays valid 5 minutes
_PARAM = re.compile(r'(\w+)=(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


class DigestGuard:
    def __init__(
        self, realm: str, username: str, password: str, nonce_lifetime: float = NONCE_LIFETIME
    ) -> None:
        self.realm = realm
        self.nonce_lifetime = nonce_lifetime
        self.username = username
        self.password = password
        self.opaque = secrets.token_hex(8)
        self._nonces: dict[str, float] = {}
        self.challenges = 0

    def challenge(self, stale: bool = False) -> web.Response:
        self.challenges += 1
        nonce = secrets.token_hex(16)
        self._nonces[nonce] = time.monotonic()
        header = (
            f'Digest realm="{self.realm}", qop="auth", algorithm=MD5, '
            f'nonce="{nonce}", opaque="{self.opaque}"' + (", stale=true" if stale else "")
        )
        return web.Response(
            status=401, text="HTTP Digest: Access denied.\n", headers={"WWW-Authenticate": header}
        )

    def check(self, request: web.Request) -> web.Response | None:
        """None when the request is authorized, else the 401 to send."""
        header = request.headers.get("Authorization", "")
        if not header.startswith("Digest "):
            return self.challenge()
        params = {
            m.group(1): m.group(2) if m.group(2) is not None else m.group(3)
            for m in _PARAM.finditer(header[7:])
        }
        nonce = params.get("nonce", "")
        issued = self._nonces.get(nonce)
        if issued is None:
            return self.challenge()
        if time.monotonic() - issued > self.nonce_lifetime:
            del self._nonces[nonce]
            return self.challenge(stale=True)
        if params.get("username") != self.username or params.get("uri") != request.path_qs:
            return self.challenge()
        ha1 = _md5(f"{self.username}:{self.realm}:{self.password}")
        ha2 = _md5(f"{request.method}:{params.get('uri')}")
        expected = _md5(
            f"{ha1}:{nonce}:{params.get('nc', '')}:{params.get('cnonce', '')}:"
            f"{params.get('qop', '')}:{ha2}"
        )
        if not hmac.compare_digest(expected, params.get("response", "")):
            return self.challenge()
        return None
