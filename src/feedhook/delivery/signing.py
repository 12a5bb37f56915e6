"""Standard Webhooks signatures of "id.timestamp.body": `v1,<base64 HMAC-SHA256>` with a
`whsec_` secret, `v1a,<base64 ed25519>` with a `whsk_` signing key (receivers verify with
the `whpk_` public key alone). ed25519 comes from `cryptography`, imported only where a
signing key is used: most workers never need its 6 MB."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from typing import TYPE_CHECKING

from feedhook.config.values import ed25519_key_bytes

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def secret_key(secret: str) -> bytes:
    """The HMAC key inside a `whsec_<base64>` secret."""
    return base64.b64decode(secret.removeprefix("whsec_"))


def signing_key(key: str) -> Ed25519PrivateKey:
    """The ed25519 private key inside a `whsk_<base64>` signing key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(ed25519_key_bytes(key))


def new_key_pair() -> tuple[str, str]:
    """A fresh `whsk_` signing key and its `whpk_` public key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        PublicFormat,
    )

    private = Ed25519PrivateKey.generate()
    raw = Encoding.Raw
    seed = private.private_bytes(raw, PrivateFormat.Raw, NoEncryption())
    public = private.public_key().public_bytes(raw, PublicFormat.Raw)
    return (
        "whsk_" + base64.b64encode(seed).decode(),
        "whpk_" + base64.b64encode(public).decode(),
    )


class Signer:
    """Signs with the current secret first, then any previous ones still being rotated
    out, then with the ed25519 signing keys."""

    def __init__(self, secrets: Sequence[str], signing_keys: Sequence[str] = ()) -> None:
        # Keyed once; each message copies the keyed state (cheaper than re-keying).
        self._macs = tuple(hmac.new(secret_key(s), digestmod=hashlib.sha256) for s in secrets)
        self._keys = tuple(signing_key(k) for k in signing_keys)

    def __bool__(self) -> bool:
        return bool(self._macs or self._keys)

    def sign(self, msg_id: str, timestamp: int, body: bytes) -> str:
        prefix = f"{msg_id}.{timestamp}.".encode()
        signatures = []
        for keyed in self._macs:
            mac = keyed.copy()
            mac.update(prefix)
            mac.update(body)
            signatures.append("v1," + binascii.b2a_base64(mac.digest(), newline=False).decode())
        for key in self._keys:
            signature = key.sign(prefix + body)
            signatures.append("v1a," + binascii.b2a_base64(signature, newline=False).decode())
        return " ".join(signatures)
