"""The one thing a delivery needs from an HTTP client: send one request, get the answer.

Everything a webhook means (headers, signatures, what a status says) is the sender's; a
transport only moves bytes, so another client can be measured or adopted behind this
seam without touching the delivery contract (httpx's `handle_async_request` is the
model). Its contract: redirects are never followed, `timeout` bounds the whole
exchange, at most READ_LIMIT bytes of an answer are read, connections are reused, TLS
is verified; no answer is a TransportError whose message says why in words.

Deliveries go out through pyreqwest (Rust's reqwest and hyper, on a thread of their
own): measured in one run against aiohttp behind this seam, the same signed deliveries
cost about half the CPU (bench/transport.py, BENCHMARKS.md). aiohttp is the fallback
where pyreqwest is not installed; both pass the same contract tests."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Protocol

import aiohttp

if TYPE_CHECKING:
    from pyreqwest.client import Client
    from pyreqwest.exceptions import PyreqwestError
    from pyreqwest.http import Url

log = logging.getLogger("feedhook.delivery")

# Enough to keep the connection reusable for ordinary replies; the sender keeps 1 KB.
READ_LIMIT = 64 * 1024
MAX_URLS = 1024  # receivers' parsed addresses kept (one per subscription, handshakes)


@dataclass(slots=True)  # not frozen, like the envelope: one is made per delivery
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


@asynccontextmanager
async def open_transport() -> AsyncIterator[Transport]:
    """The transport deliveries go through, open for as long as the block lasts."""
    try:
        client = new_client()
    except ImportError:
        log.info("pyreqwest is not installed: deliveries go out through aiohttp")
        async with new_session() as session:
            yield AiohttpTransport(session)
        return
    async with client:
        yield ReqwestTransport(client)


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


def new_client() -> Client:
    """The one pool every delivery goes through (reqwest: hyper's keep-alive pool, TLS
    verified against the system's trust store, SSL_CERT_FILE honoured). ImportError
    without pyreqwest."""
    # pyreqwest allocates with mimalloc, which by default commits whole arenas up front
    # on Linux: committed on demand instead, the worker holds about 6 MB less (set the
    # variable to override; read once, when pyreqwest is first loaded).
    os.environ.setdefault("MIMALLOC_ARENA_EAGER_COMMIT", "0")
    from pyreqwest.client import ClientBuilder

    return (
        ClientBuilder()
        .follow_redirects(False)
        .gzip(False)
        .brotli(False)
        .zstd(False)
        .deflate(False)
        .pool_idle_timeout(timedelta(seconds=30))
        # Header names go out as the sender spells them (lowercase, as Standard Webhooks
        # does), not title-cased: a receiver that looks them up case-sensitively works.
        .http1_lower_case_headers()
        # HTTP/1.1 as before, also where a receiver's TLS would offer HTTP/2.
        .http1_only()
        .build()
    )


class ReqwestTransport:
    """The transport over pyreqwest (Rust's reqwest and hyper): the request's bytes are
    built, sent and parsed on reqwest's own thread, off the event loop."""

    def __init__(self, client: Client) -> None:
        from pyreqwest import exceptions
        from pyreqwest.http import Url

        self.client = client
        self._errors = exceptions  # imported once here, not on every request
        self._timeouts: dict[float, timedelta] = {}
        # Each receiver's address parsed once, not on every delivery (0.4 us each).
        self._url = Url
        self._urls: dict[str, Url] = {}

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
            limit = self._timeouts[timeout] = timedelta(seconds=timeout)
        target = self._urls.get(url)
        if target is None:
            if len(self._urls) >= MAX_URLS:  # reloads that keep changing addresses
                self._urls.clear()
            target = self._urls[url] = self._url(str(url))
        errors = self._errors
        builder = self.client.request(method, target).headers(headers).timeout(limit)
        if body is not None:
            builder = builder.body_bytes(body)
        try:
            async with builder.streamed_read_buffer_limit(READ_LIMIT).build_streamed() as answer:
                # What has arrived, up to the limit: a longer reply only closes the connection.
                reader, kept, size = answer.body_reader, [], 0
                while size < READ_LIMIT:
                    chunk = await reader.read(READ_LIMIT - size)
                    if chunk is None:
                        break
                    kept.append(bytes(chunk))
                    size += len(chunk)
                return Response(answer.status, answer.headers, b"".join(kept))
        except errors.RequestTimeoutError:
            raise TransportError(f"no response within {timeout:g}s (timeout)") from None
        except errors.ConnectError as exc:
            why = _why(exc)
            if why == "connection closed before message completed":  # hyper's words
                raise TransportError("the server closed the connection without answering") from None
            raise TransportError(f"cannot connect: {why}") from None
        except errors.PyreqwestError as exc:
            raise TransportError(f"{type(exc).__name__}: {_why(exc)}") from None


def _why(exc: PyreqwestError) -> str:
    """The innermost cause ("Connection refused (os error 111)", "invalid peer
    certificate: UnknownIssuer"): the outer ones only repeat the URL, which may carry a
    secret."""
    causes = (getattr(exc, "details", None) or {}).get("causes") or []
    return str(causes[-1]["message"]) if causes else exc.message
