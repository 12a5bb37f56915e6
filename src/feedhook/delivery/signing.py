"""Standard Webhooks signatures: v1,<base64 HMAC-SHA256 of "id.timestamp.body">."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence


def secret_key(secret: str) -> bytes:
    """The HMAC key inside a `whsec_<base64>` secret."""
    return base64.b64decode(secret.removeprefix("whsec_"))


class Signer:
    """Signs with the current secret first, then any previous ones still being rotated out."""

    def __init__(self, secrets: Sequence[str]) -> None:
        self._keys = tuple(secret_key(s) for s in secrets)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def sign(self, msg_id: str, timestamp: int, body: bytes) -> str:
        payload = f"{msg_id}.{timestamp}.".encode() + body
        return " ".join(
            "v1," + base64.b64encode(hmac.new(key, payload, hashlib.sha256).digest()).decode()
            for key in self._keys
        )
