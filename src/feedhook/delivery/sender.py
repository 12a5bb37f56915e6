"""One delivery attempt: a signed POST, and the CloudEvents handshake, over a transport."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass

from feedhook import clock
from feedhook.delivery.policy import AttemptResult
from feedhook.delivery.signing import Signer
from feedhook.delivery.transport import Transport, TransportError
from feedhook.logs import redact
from feedhook.retry_after import parse_retry_after

CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
KEPT_BODY = 1024  # of a failed attempt's answer, kept with the dead letter


@dataclass(frozen=True, slots=True)
class Permission:
    """A receiver's answer to the CloudEvents webhook validation handshake."""

    allowed: bool
    per_minute: int | None = None  # WebHook-Allowed-Rate (None: no limit given)
    reason: str = ""  # why not allowed, for status


class Sender:
    def __init__(self, transport: Transport, user_agent: str, origin: str | None = None) -> None:
        self.transport = transport
        self.user_agent = user_agent
        # Who we are to receivers that ask (the handshake's WebHook-Request-Origin).
        self.origin = origin or socket.getfqdn()

    async def attempt(
        self,
        url: str,
        envelope_id: str,
        body: bytes,
        signer: Signer,
        headers: Mapping[str, str],
        timeout: float,
    ) -> AttemptResult:
        """POST once. Never raises for network trouble: it becomes the result's error."""
        timestamp = int(clock.now())
        request_headers = {
            "content-type": CONTENT_TYPE,
            "webhook-id": envelope_id,
            "webhook-timestamp": str(timestamp),
            "user-agent": self.user_agent,
        }
        if signer:
            request_headers["webhook-signature"] = signer.sign(envelope_id, timestamp, body)
        request_headers.update(headers)
        started = time.perf_counter()
        try:
            response = await self.transport.request("POST", url, request_headers, body, timeout)
        except TransportError as exc:
            error = str(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an attempt must never take the dispatcher down
            error = f"unexpected {type(exc).__name__}: {exc}"
        else:
            status = response.status
            if 200 <= status < 300:  # the hot path: nothing else to look at
                return AttemptResult(status, duration=time.perf_counter() - started)
            answer = response.headers
            return AttemptResult(
                status=status,
                retry_after=parse_retry_after(answer.get("Retry-After"), clock.now()),
                # A receiver may echo the request (its Authorization header) back.
                body=redact(response.body[:KEPT_BODY].decode("utf-8", "replace")) or None,
                duration=time.perf_counter() - started,
                location=answer.get("Location"),
            )
        return AttemptResult(status=None, error=error, duration=time.perf_counter() - started)

    async def ask(self, url: str, headers: Mapping[str, str], timeout: float) -> Permission:
        """The CloudEvents HTTP webhook validation handshake (abuse protection): OPTIONS
        with WebHook-Request-Origin; allowed when the receiver answers 2xx with a
        WebHook-Allowed-Origin naming our origin (or *). Never raises."""
        request_headers = {
            "WebHook-Request-Origin": self.origin,
            "user-agent": self.user_agent,
            **headers,
        }
        try:
            response = await self.transport.request("OPTIONS", url, request_headers, None, timeout)
        except TransportError as exc:
            return Permission(False, reason=f"the handshake got no answer: {exc}")
        allowed = response.headers.get("WebHook-Allowed-Origin", "").strip()
        rate = response.headers.get("WebHook-Allowed-Rate", "").strip()
        if not 200 <= response.status < 300:
            return Permission(False, reason=f"the handshake was answered HTTP {response.status}")
        if allowed not in ("*", self.origin):
            return Permission(
                False,
                reason=f"the receiver does not allow origin {self.origin}"
                f" (WebHook-Allowed-Origin: {allowed or 'absent'})",
            )
        per_minute = int(rate) if rate.isdigit() and int(rate) > 0 else None
        return Permission(True, per_minute)
