"""Tails one source: cursor from the store, pages into the outbox, backoff on failure."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import backoff

from feedhook import clock
from feedhook.router import Router
from feedhook.sources.base import FeedError, Page, Source
from feedhook.store.base import IngestItem, Store

log = logging.getLogger("feedhook.source")

T = TypeVar("T")


class Poller:
    def __init__(
        self,
        source: Source,
        store: Store,
        router: Callable[[], Router],
        on_ingest: Callable[[], None],
    ) -> None:
        self.source = source
        self.store = store
        self.router = router
        self.on_ingest = on_ingest
        retry = backoff.on_exception(
            backoff.expo,
            FeedError,
            max_value=source.max_backoff,
            jitter=backoff.full_jitter,
            on_backoff=self._failed,
            logger=None,
        )
        self._fetch = retry(self._guarded(source.fetch))
        self._initial_cursor = retry(self._guarded(source.initial_cursor))

    async def run(self) -> None:
        """Poll until cancelled. A failing feed never ends this loop; it backs off."""
        name = self.source.name
        cursor = await self.store.get_cursor(name)
        if cursor is None:
            cursor = await self._initial_cursor()
            # Stored at once: a restart must not move "latest" past unread events.
            await self.store.ingest(name, [], cursor)
            log.info("%s: starting at cursor %s", name, cursor, extra={"source": name})
        while True:
            page: Page = await self._fetch(cursor)
            router = self.router()
            items = [
                IngestItem(upstream_id, envelope, router.match(envelope))
                for upstream_id, envelope in page.events
            ]
            fresh = await self.store.ingest(name, items, page.cursor)
            if fresh:
                self.on_ingest()
                log.debug(
                    "%s: ingested %d events up to %s",
                    name,
                    fresh,
                    page.cursor,
                    extra={"source": name},
                )
            cursor = page.cursor
            if not page.more:
                await asyncio.sleep(self.source.poll_interval)

    def _guarded(self, call: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        """A bug in parsing one odd page must not stop every other source: it is logged
        with its traceback and retried like any feed failure."""

        async def guarded(*args: Any) -> T:
            try:
                return await call(*args)
            except FeedError:
                raise
            except Exception as exc:
                log.exception("%s: unexpected error reading the feed", self.source.name)
                raise FeedError(f"unexpected {type(exc).__name__}: {exc}") from exc

        return guarded

    async def _failed(self, details: Any) -> None:
        exc = details.get("exception")
        message = str(exc) if exc is not None else "unknown error"
        name = self.source.name
        log.warning(
            "%s: %s (failure %d; retrying in %.1fs)",
            name,
            message,
            details["tries"],
            details["wait"],
            extra={"source": name},
        )
        await self.store.record_poll_error(name, clock.now(), message)
