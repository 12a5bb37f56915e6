"""The HTTP side every feed shares: a request budget, timeouts, size caps, 429 handling.

Everything that goes wrong becomes a FeedError whose message a person can act on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from feedhook.budget import Budget
from feedhook.config import RateLimit, SourceSettings, redact_url
from feedhook.retry_after import parse_retry_after
from feedhook.sources.base import FeedError
from feedhook.sources.subjects import Enricher

log = logging.getLogger("feedhook.source")

MAX_RESPONSE_BYTES = 8 * 1024 * 1024
MAX_RATE_LIMIT_WAIT = 900.0
RATE_LIMIT_RETRIES = 5
EPOCH_THRESHOLD = 1e9  # a "seconds to wait" this large is really a Unix timestamp


class HttpStatusError(FeedError):
    """The upstream answered, but not with a 2xx."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message, cause=f"http_{status}")
        self.status = status


class RequestBudget:
    """A feed's requests wait for its `Budget`, one at a time."""

    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self._budget = Budget(limit)
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                wait = self._budget.wait(time.monotonic())
                if wait <= 0:
                    self._budget.take(time.monotonic())
                    return
                await asyncio.sleep(wait)


@dataclass(frozen=True, slots=True)
class Response:
    url: str
    status: int
    content_type: str
    body: bytes


class FeedClient:
    """Requests to one upstream, within its budget; one per source."""

    def __init__(
        self,
        source: str,
        session: aiohttp.ClientSession,
        rate_limit: RateLimit,
        timeout: float,
        credential_keys: str = "the credentials",
    ) -> None:
        self.source = source
        self.session = session
        self.budget = RequestBudget(rate_limit)
        self.timeout = timeout
        self.credential_keys = credential_keys  # what a person should check on a 401/403

    async def get(
        self,
        url: str,
        params: Mapping[str, str] | None = None,
        accept: str = "*/*",
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """A 2xx response, or FeedError. A 429 is waited out, up to a bound."""
        return await self.request("GET", url, params, {"Accept": accept, **(headers or {})})

    async def request(
        self,
        method: str,
        url: str,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        form: Mapping[str, str] | None = None,
    ) -> Response:
        shown = redact_url(url)
        for _ in range(RATE_LIMIT_RETRIES):
            await self.budget.acquire()
            response = await self._once(method, url, shown, params, headers, form)
            if response.status != 429:
                return self._check(response, shown)
        raise FeedError(
            f"{shown}: still rate limited (HTTP 429) after {RATE_LIMIT_RETRIES} waits; "
            "lower this source's rate_limit or check what else uses the same API user",
            cause="rate_limited",
        )

    async def _once(
        self,
        method: str,
        url: str,
        shown: str,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
        form: Mapping[str, str] | None,
    ) -> Response:
        try:
            async with self.session.request(
                method,
                url,
                params=params,
                headers=headers,
                data=form,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as response:
                declared = response.content_length
                if declared is not None and declared > MAX_RESPONSE_BYTES:
                    raise FeedError(
                        f"{shown}: response of {declared} bytes is larger than the "
                        f"{MAX_RESPONSE_BYTES} byte limit",
                        cause="too_large",
                    )
                body = await _read_capped(response, shown)
                if response.status == 429:
                    await self._wait_rate_limit(response, shown)
                return Response(
                    url=str(response.url),
                    status=response.status,
                    content_type=response.headers.get("Content-Type", ""),
                    body=body,
                )
        except FeedError:
            raise
        except TimeoutError:
            raise FeedError(
                f"{shown}: no complete answer within {self.timeout:g}s", cause="timeout"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise FeedError(
                f"{shown}: cannot connect: {exc.os_error or exc}", cause="connect"
            ) from None
        except aiohttp.ClientPayloadError:
            raise FeedError(
                f"{shown}: the response body was cut off (truncated)", cause="truncated"
            ) from None
        except aiohttp.ClientError as exc:
            raise FeedError(f"{shown}: {type(exc).__name__}: {exc}") from None
        except ValueError as exc:  # e.g. a discovered link that is not a URL
            raise FeedError(f"{shown}: cannot request this URL: {exc}", cause="bad_url") from None

    async def _wait_rate_limit(self, response: aiohttp.ClientResponse, shown: str) -> None:
        reset = response.headers.get("Ratelimit-Reset")
        wait = parse_retry_after(reset, time.time()) if reset else None
        if wait is not None and wait > EPOCH_THRESHOLD:  # some APIs send the reset instant
            wait = max(0.0, wait - time.time())
        if wait is None:
            wait = parse_retry_after(response.headers.get("Retry-After"), time.time())
        wait = min(MAX_RATE_LIMIT_WAIT, 1.0 if wait is None else wait)
        log.warning(
            "%s: %s answered 429 (rate limited); waiting %.1fs before asking again",
            self.source,
            shown,
            wait,
            extra={"source": self.source, "status_code": 429},
        )
        await asyncio.sleep(wait)

    def _check(self, response: Response, shown: str) -> Response:
        status = response.status
        if 200 <= status < 300:
            return response
        excerpt = " ".join(response.body[:300].decode("utf-8", "replace").split())[:160]
        hint = {
            401: f"credentials rejected: check {self.credential_keys} of this source",
            403: f"credentials rejected (no permission for this feed): check"
            f" {self.credential_keys} and the API user's rights",
            404: "check the url / events_url of this source",
        }.get(status, "the upstream is failing; feedhook will keep retrying")
        if status == 400 and b"invalid_client" in response.body:  # OAuth2's word for it
            hint = f"credentials rejected: check {self.credential_keys} of this source"
        if 300 <= status < 400:
            hint = "redirects are not followed; set the final URL in the config"
        raise HttpStatusError(
            status, f"{shown}: HTTP {status} ({hint}){': ' + excerpt if excerpt else ''}"
        )


class HttpFeed:
    """What every HTTP feed holds: a name, its config, one session and one FeedClient.

    Subclasses add their auth (a session middleware, or headers per request)."""

    def __init__(self, name: str, config: SourceSettings) -> None:
        self.name = name
        self.config = config
        self.poll_interval = config.poll_interval
        self.max_backoff = config.max_backoff
        self._session: aiohttp.ClientSession | None = None
        self._client: FeedClient | None = None

    # The config keys that hold this kind's credentials, named in "credentials rejected".
    credential_keys = "the credentials"
    # Fetches the resources events are about, for kinds and sources that enrich.
    enricher: Enricher | None = None

    def middlewares(self) -> tuple[aiohttp.ClientMiddlewareType, ...]:
        return ()

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(middlewares=self.middlewares())
        self._client = FeedClient(
            self.name,
            self._session,
            self.config.rate_limit,
            self.config.timeout,
            self.credential_keys,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def client(self) -> FeedClient:
        if self._client is None:
            raise RuntimeError(f"source {self.name} is not open")
        return self._client


async def _read_capped(response: aiohttp.ClientResponse, shown: str) -> bytes:
    body = bytearray()
    async for chunk in response.content.iter_chunked(65536):
        body += chunk
        if len(body) > MAX_RESPONSE_BYTES:
            raise FeedError(
                f"{shown}: response larger than the {MAX_RESPONSE_BYTES} byte limit",
                cause="too_large",
            )
    return bytes(body)
