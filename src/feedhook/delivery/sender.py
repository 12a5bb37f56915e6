"""One delivery attempt: a signed POST over a shared keep-alive pool."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from feedhook import clock
from feedhook.delivery.policy import AttemptResult
from feedhook.delivery.signing import Signer
from feedhook.logs import redact
from feedhook.retry_after import parse_retry_after

CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
# Enough to keep the connection reusable for ordinary replies; only 1 KB is kept.
_READ_LIMIT = 64 * 1024
KEPT_BODY = 1024


def new_session() -> aiohttp.ClientSession:
    """The one pool every delivery goes through; lanes bound concurrency, not the pool."""
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, enable_cleanup_closed=True)
    # Webhooks carry no cookies: a dummy jar skips cookie bookkeeping on every request.
    return aiohttp.ClientSession(
        connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
    )


@dataclass(frozen=True, slots=True)
class Permission:
    """A receiver's answer to the CloudEvents webhook validation handshake."""

    allowed: bool
    per_minute: int | None = None  # WebHook-Allowed-Rate (None: no limit given)
    reason: str = ""  # why not allowed, for status


class Sender:
    def __init__(
        self, session: aiohttp.ClientSession, user_agent: str, origin: str | None = None
    ) -> None:
        self.session = session
        self.user_agent = user_agent
        # Who we are to receivers that ask (the handshake's WebHook-Request-Origin).
        self.origin = origin or socket.getfqdn()
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

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
            async with self.session.options(
                url,
                headers=request_headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                await response.content.read(_READ_LIMIT)
                allowed = response.headers.get("WebHook-Allowed-Origin", "").strip()
                rate = response.headers.get("WebHook-Allowed-Rate", "").strip()
                status = response.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return Permission(False, reason=f"the handshake failed: {type(exc).__name__}")
        if not 200 <= status < 300:
            return Permission(False, reason=f"the handshake was answered HTTP {status}")
        if allowed not in ("*", self.origin):
            return Permission(
                False,
                reason=f"the receiver does not allow origin {self.origin}"
                f" (WebHook-Allowed-Origin: {allowed or 'absent'})",
            )
        per_minute = int(rate) if rate.isdigit() and int(rate) > 0 else None
        return Permission(True, per_minute)

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
        limit = self._timeouts.get(timeout)
        if limit is None:
            limit = self._timeouts[timeout] = aiohttp.ClientTimeout(total=timeout)
        started = time.perf_counter()
        try:
            async with self.session.post(
                url, data=body, headers=request_headers, allow_redirects=False, timeout=limit
            ) as response:
                # What has arrived, up to the limit: a longer reply only closes the connection.
                raw = await response.content.read(_READ_LIMIT)
                status = response.status
                if 200 <= status < 300:  # the hot path: nothing else to look at
                    return AttemptResult(status, duration=time.perf_counter() - started)
                headers = response.headers
                return AttemptResult(
                    status=status,
                    retry_after=parse_retry_after(headers.get("Retry-After"), clock.now()),
                    # A receiver may echo the request (its Authorization header) back.
                    body=redact(bytes(raw[:KEPT_BODY]).decode("utf-8", "replace")) or None,
                    duration=time.perf_counter() - started,
                    location=headers.get("Location"),
                )
        except TimeoutError:
            error = f"no response within {timeout:g}s (timeout)"
        except aiohttp.ClientConnectorError as exc:
            error = f"cannot connect: {exc.os_error or exc}"
        except aiohttp.ServerDisconnectedError:
            error = "the server closed the connection without answering"
        except aiohttp.ClientError as exc:
            error = f"{type(exc).__name__}: {exc}"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an attempt must never take the dispatcher down
            error = f"unexpected {type(exc).__name__}: {exc}"
        return AttemptResult(status=None, error=error, duration=time.perf_counter() - started)
