"""The one thing a delivery needs from an HTTP client: send one request, get the answer.

Everything a webhook means (headers, signatures, what a status says) is the sender's; a
transport only moves bytes, so another client can be measured or adopted behind this
seam without touching the delivery contract (httpx's `handle_async_request` is the
model). Its contract: redirects are never followed, `timeout` bounds the whole
exchange, at most READ_LIMIT bytes of an answer are read, connections are reused, TLS
is verified; no answer is a TransportError whose message says why in words."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp

# Enough to keep the connection reusable for ordinary replies; the sender keeps 1 KB.
READ_LIMIT = 64 * 1024


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: Mapping[str, str]  # case-insensitive
    body: bytes  # at most READ_LIMIT bytes


class TransportError(Exception):
    """The request got no answer (timeout, refused, reset): the message says which."""


class Transport(Protocol):
    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout: float,
    ) -> Response: ...


def new_session() -> aiohttp.ClientSession:
    """The one pool every delivery goes through; lanes bound concurrency, not the pool."""
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, enable_cleanup_closed=True)
    # Webhooks carry no cookies: a dummy jar skips cookie bookkeeping on every request.
    return aiohttp.ClientSession(
        connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
    )


class AiohttpTransport:
    """The transport over one aiohttp session (keep-alive pool shared by every lane)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout: float,
    ) -> Response:
        limit = self._timeouts.get(timeout)
        if limit is None:
            limit = self._timeouts[timeout] = aiohttp.ClientTimeout(total=timeout)
        try:
            async with self.session.request(
                method, url, data=body, headers=headers, allow_redirects=False, timeout=limit
            ) as response:
                # What has arrived, up to the limit: a longer reply only closes the connection.
                raw = await response.content.read(READ_LIMIT)
                return Response(response.status, response.headers, raw)
        except TimeoutError:
            raise TransportError(f"no response within {timeout:g}s (timeout)") from None
        except aiohttp.ClientConnectorError as exc:
            raise TransportError(f"cannot connect: {exc.os_error or exc}") from None
        except aiohttp.ServerDisconnectedError:
            raise TransportError("the server closed the connection without answering") from None
        except aiohttp.ClientError as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}") from None
