"""The retry decision and the signature, checked against the Standard Webhooks library."""

from __future__ import annotations

import base64
import random
import time

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from feedhook.delivery.policy import AttemptResult, RetryPolicy
from feedhook.delivery.signing import Signer
from feedhook.retry_after import parse_retry_after

from conftest import SECRET

POLICY = RetryPolicy(schedule=(5.0, 300.0, 1800.0))


@pytest.mark.parametrize("status", [200, 201, 204, 299])
def test_2xx_is_delivered(status: int) -> None:
    """Any 2xx counts as delivered."""
    assert POLICY.decide(AttemptResult(status), 1, 0, 0).kind == "delivered"


@pytest.mark.parametrize("status", [None, 408, 425, 429, 500, 502, 503])
def test_retryable_follow_the_schedule_with_jitter(status: int | None) -> None:
    """Connection errors, 408, 425, 429 and 5xx wait schedule[n] ±20%."""
    result = AttemptResult(status, error="boom" if status is None else None)
    rand = random.Random(7)
    for attempts, base in ((1, 5.0), (2, 300.0), (3, 1800.0)):
        decision = POLICY.decide(result, attempts, created_at=0, now=1000, rand=rand)
        assert decision.kind == "retry"
        assert decision.retry_at is not None
        assert 0.8 * base <= decision.retry_at - 1000 <= 1.2 * base


def test_exhausted_schedule_goes_dead() -> None:
    """After the last scheduled retry the delivery is dead, with the last cause."""
    decision = POLICY.decide(AttemptResult(503), 4, 0, 0)
    assert decision.kind == "dead" and "gave up after 4 attempts; last: HTTP 503" in (
        decision.reason or ""
    )


@pytest.mark.parametrize("status", [301, 302, 400, 401, 404, 410, 422])
def test_other_statuses_are_permanent(status: int) -> None:
    """Redirects and other 4xx go to the dead letters at once."""
    decision = POLICY.decide(AttemptResult(status, location="https://new"), 1, 0, 0)
    assert decision.kind == "dead"
    assert f"HTTP {status}" in (decision.reason or "")
    if status < 400:
        assert "not followed" in (decision.reason or "")


def test_retry_after_is_honoured_and_max_age_bounds() -> None:
    """A longer Retry-After wins over the schedule; max_age stops the effort."""
    decision = POLICY.decide(AttemptResult(429, retry_after=60), 1, 0, 0)
    assert decision.retry_at is not None and decision.retry_at >= 60
    bounded = RetryPolicy(schedule=(5.0, 300.0), max_age=100)
    assert bounded.decide(AttemptResult(500), 2, created_at=0, now=10).kind == "dead"


def test_parse_retry_after() -> None:
    """Seconds or an HTTP date."""
    assert parse_retry_after("120", 0) == 120
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:40 GMT", 0) == 100
    assert parse_retry_after("garbage", 0) is None


def test_signature_verifies_with_standardwebhooks() -> None:
    """Our v1 signature is what the reference library expects."""
    body = b'{"id":"s:1"}'
    now = int(time.time())
    signature = Signer([SECRET]).sign("s:1", now, body)
    headers = {"webhook-id": "s:1", "webhook-timestamp": str(now), "webhook-signature": signature}
    assert Webhook(SECRET).verify(body, headers) == {"id": "s:1"}


def test_rotation_signs_with_both_secrets() -> None:
    """While a previous secret is configured, receivers holding either one verify."""
    old = "whsec_" + "b2xkLXNlY3JldC1vbGQtc2VjcmV0LTI0Ynl0ZXM="
    now = int(time.time())
    signature = Signer([SECRET, old]).sign("s:1", now, b"{}")
    assert len(signature.split(" ")) == 2
    headers = {"webhook-id": "s:1", "webhook-timestamp": str(now), "webhook-signature": signature}
    for secret in (SECRET, old):
        Webhook(secret).verify(b"{}", headers)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "c29tZW9uZS1lbHNlcy1zZWNyZXQtMjRieXRlcw==").verify(b"{}", headers)


def test_v1a_signatures_verify_with_the_public_key_alone(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`feedhook keys generate` prints a pair; a subscription's signing_key signs v1a
    beside v1; the receiver verifies with the whpk_ key alone, as the spec says: ed25519
    over "id.timestamp.body", base64 (verified with `cryptography` directly)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from feedhook.cli import main

    assert main(["keys", "generate"]) == 0
    lines = capsys.readouterr().out.splitlines()
    signing = lines[0].rsplit(" ", 1)[1]
    public = lines[1].rsplit(" ", 1)[1]
    assert signing.startswith("whsk_") and public.startswith("whpk_")
    hmac_secret = "whsec_" + base64.b64encode(b"x" * 24).decode()
    header = Signer([hmac_secret], [signing]).sign("seq:1", 1700000000, b'{"a":1}')
    v1, v1a = header.split(" ")
    assert v1.startswith("v1,") and v1a.startswith("v1a,")
    verifier = Ed25519PublicKey.from_public_bytes(base64.b64decode(public.removeprefix("whpk_")))
    verifier.verify(base64.b64decode(v1a.removeprefix("v1a,")), b'seq:1.1700000000.{"a":1}')
    only = Signer([], [signing]).sign("seq:1", 1700000000, b"{}")
    assert only.startswith("v1a,") and " " not in only


def test_a_signing_key_that_is_not_one_is_a_config_error() -> None:
    from feedhook.config import ConfigError, parse_config

    raw = {"url": "https://r/x", "types": ["*"], "signing_key": "whsk_c2hvcnQ="}
    with pytest.raises(ConfigError, match="ed25519 key is 32"):
        parse_config({"sources": {}, "subscriptions": {"x": raw}}, "t", env={})
