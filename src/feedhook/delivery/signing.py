"""Standard Webhooks signatures: v1,<base64 HMAC-SHA256 of "id.timestamp.body">."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence


def secret_key(secret: str) -> bytes:
    """The HMAC key inside a `whsec_<base64>` secret."""
    return base64.b64decode(secret.removeprefix("whsec_"))


class Signer:
    """Signs with the current secret first, then any previous ones still being rotated out."""

    def __init__(self, secrets: Sequence[str]) -> None:
        # Keyed once; each message copies the keyed state (cheaper than re-keying).
        self._macs = tuple(hmac.new(secret_key(s), digestmod=hashlib.sha256) for s in secrets)

    def __bool__(self) -> bool:
        return bool(self._macs)

    def sign(self, msg_id: str, timestamp: int, body: bytes) -> str:
        prefix = f"{msg_id}.{timestamp}.".encode()
        signatures = []
        for keyed in self._macs:
            mac = keyed.copy()
            mac.update(prefix)
            mac.update(body)
            signatures.append("v1," + binascii.b2a_base64(mac.digest(), newline=False).decode())
        return " ".join(signatures)
