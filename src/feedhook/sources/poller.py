"""The poller of one source: cursor from the store, pages into the outbox, backoff on
failure."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import backoff

from feedhook import clock, logs
from feedhook.envelope import Envelope
from feedhook.health import SourceHealth
from feedhook.ingest import PollObserver, PollReport
from feedhook.router import Router
from feedhook.sources.base import FeedError, Page, Source
from feedhook.sources.progress import CatchUp
from feedhook.sources.subjects import Enriched
from feedhook.store.base import IngestItem, SourceLost, Store

log = logging.getLogger("feedhook.source")

T = TypeVar("T")


# Fetched but not yet written (lost, and read again, on a crash). Pages waiting, and the
# batches they make, are most of the ingest process's memory while it catches up: 4 keep
# both processes within 150 MB on a million-event backlog (8: 157 MB) at 16 thousand
# events/s into the outbox (8: 25 thousand; 20 pages: 78 MB for the ingest alone).
READ_AHEAD_PAGES = 4
# Quiet sources poll together on this many ticks per interval. Not one: sources that all
# poll in one instant also all find a stream that starts everywhere at once in that
# instant, and their first bursts arrive together (latency p99 at 1,000 events/s over two
# sources: 135 ms, against 96-106 ms with each polling in its own half of the interval).
QUIET_TICKS = 2
# An empty poll that moves no cursor writes nothing (a write transaction per quiet poll
# was most of what idling cost); the stored "last poll" of a quiet source is refreshed
# this often.
QUIET_WRITE = 30.0


class Poller:
    def __init__(
        self,
        source: Source,
        store: Store,
        router: Callable[[], Router],
        observer: PollObserver,
        phase: float = 0.0,
    ) -> None:
        self.source = source
        self.store = store
        self.router = router
        self.observer = observer
        self.phase = phase
        self.health = SourceHealth(source.name, source.poll_interval)
        self._written_at: float | None = None  # time.monotonic() of the last write
        self.catch_up = CatchUp(source.name)
        retry = backoff.on_exception(
            backoff.expo,
            FeedError,
            max_value=source.max_backoff,
            jitter=backoff.full_jitter,
            on_backoff=self._failed,
            logger=None,
        )
        self._fetch: Callable[[str], Coroutine[Any, Any, Page]] = retry(self._guarded(source.fetch))
        self._initial_cursor = retry(self._guarded(source.initial_cursor))

    async def run(self) -> None:
        """Poll until cancelled. A failing feed never ends this loop; it backs off. A
        source another worker took over (this one stalled past its lease) is waited
        for and taken back, from the cursor that worker stored."""
        self.observer.started(self.health)
        await self.store.join(clock.now())
        await asyncio.sleep(self.store.settle)
        while True:
            try:
                await self._poll()
            except* SourceLost:
                log.warning(
                    "%s: another worker took this source over; nothing of this batch was"
                    " written, waiting to take it back",
                    self.source.name,
                    extra={"source": self.source.name},
                )

    async def _poll(self) -> None:
        name = self.source.name
        await self._hold_source()
        cursor = await self.store.get_cursor(name)
        if cursor is None:
            cursor = await self._initial_cursor()
            # Stored at once: a restart must not move "latest" past unread events.
            await self.store.set_cursor(name, cursor)
            log.info("%s: starting at cursor %s", name, cursor, extra={"source": name})
        # Reading runs ahead of writing: while one batch is committed, the next pages are
        # already being fetched; whatever has arrived is written in one transaction.
        pages: asyncio.Queue[tuple[Page, float]] = asyncio.Queue(maxsize=READ_AHEAD_PAGES)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._read(cursor, pages), name=f"read:{name}")
            tasks.create_task(self._keep_source(), name=f"lease:{name}")
            while True:
                read = [await pages.get()]
                while not pages.empty() and len(read) < READ_AHEAD_PAGES:
                    read.append(pages.get_nowait())
                batch = [page for page, _ in read]
                events = [event for page in batch for event in page.events]
                enriched = await self._enrich([envelope for _, envelope in events])
                router = self.router()  # after enriching: filters may read what it added
                items = [
                    IngestItem(upstream_id, envelope, router.match(envelope), router.ordered)
                    for (upstream_id, _), envelope in zip(events, enriched.envelopes, strict=True)
                ]
                if items or batch[-1].cursor != cursor or self._write_due():
                    fresh = await self.store.ingest(
                        name, items, batch[-1].cursor, enriched.subjects
                    )
                    cursor, self._written_at = batch[-1].cursor, time.monotonic()
                else:  # an empty poll: nothing to write but the time, kept for later
                    fresh = []
                drained_at = None if batch[-1].more else read[-1][1]
                self._succeeded(batch, fresh, router.take_filter_errors(), drained_at, enriched)

    async def _enrich(self, envelopes: list[Envelope]) -> Enriched:
        enricher = self.source.enricher
        if enricher is None:
            return Enriched(envelopes)
        return await enricher.enrich(envelopes, self.store)

    async def _read(self, cursor: str, pages: asyncio.Queue[tuple[Page, float]]) -> None:
        """Fetch page after page; once the feed is drained, wait for the next poll. (The
        source's lease is kept beside it, by `_keep_source`, not asked for per page.)"""
        cycle, found = time.monotonic(), False  # this poll's start; whether it found events
        while True:
            began = time.monotonic()
            page = await self._fetch(cursor)
            await pages.put((page, began))
            cursor, found = page.cursor, found or bool(page.events)
            if not page.more:
                await asyncio.sleep(self._until_next_poll(cycle, found))
                cycle, found = time.monotonic(), False

    async def _keep_source(self) -> None:
        """Renew the source's lease while polling (a batch may wait minutes for its
        subjects); refused, the source is another worker's now."""
        while True:
            await asyncio.sleep(self.store.lease / 3)
            if not await self.store.lease_source(self.source.name, clock.now()):
                raise SourceLost(f"source {self.source.name} was taken over")

    async def _hold_source(self) -> None:
        """Wait until the store grants this poller the source (one poller per source)."""
        name, waited = self.source.name, False
        while not await self.store.lease_source(name, clock.now()):
            if not waited:
                log.info(
                    "%s: the source is another worker's for now; waiting for it",
                    name,
                    extra={"source": name},
                )
                waited = True
            await asyncio.sleep(min(1.0, self.store.lease / 3))

    def _until_next_poll(self, began: float, found: bool) -> float:
        """Seconds until the next poll of a poll that began at `began` (monotonic).

        A source whose poll found events polls in its own slot, `phase` seconds into the
        interval: sources on one interval are spread across it, so that their bursts of
        work arrive one at a time. A quiet source polls on one of QUIET_TICKS ticks per
        interval (its slot rounded down to one), with the other quiet sources there: the
        process wakes a few times per interval, not once per source, and on a virtual
        machine a wake-up costs more CPU than an empty poll (50 quiet sources: 0.23-0.29
        ms of CPU per poll, 0.95-1.33 ms each in its own slot; BENCHMARKS.md).

        The next poll is the slot's first instant at least half an interval after this
        one began: one interval apart while a source stays quiet or busy, between a half
        and one and a half when it changes."""
        interval, now = self.source.poll_interval, time.monotonic()
        slot = self.phase
        if not found:
            slot -= slot % (interval / QUIET_TICKS)
        earliest = max(now, began + interval / 2)
        return earliest + (slot - earliest) % interval - now

    def _succeeded(
        self,
        batch: Sequence[Page],
        fresh: Sequence[IngestItem],
        filter_errors: Mapping[str, int],
        drained_at: float | None,
        enriched: Enriched,
    ) -> None:
        health, name = self.health, self.source.name
        times = [e.time for page in batch for _, e in page.events if e.time is not None]
        latest = max(times, key=_instant_order, default=None)
        newest = None if latest is None else datetime.fromisoformat(latest).timestamp()
        if health.succeeded(clock.now(), newest, len(fresh)):
            log.info("%s: the feed answers again", name, extra={"source": name})
        self.catch_up.batch(len(fresh), newest, drained_at is None, clock.now())
        report = PollReport(
            pages=len(batch),
            types=Counter(item.envelope.type for item in fresh),
            filter_errors=filter_errors,
            malformed=sum(1 for item in fresh if "malformed" in item.envelope.data),
            drained_at=drained_at,
            subjects=enriched.outcomes,
            enrich_wait=enriched.waited if self.source.enricher is not None else None,
        )
        self.observer.ingested(health, report)
        if fresh:
            log.debug(
                "%s: ingested %d events up to %s",
                name,
                len(fresh),
                batch[-1].cursor,
                extra={"source": name},
            )

    def _guarded(self, call: Callable[..., Awaitable[T]]) -> Callable[..., Coroutine[Any, Any, T]]:
        """A bug in parsing one odd page must not stop every other source: it is logged
        with its traceback and retried like any feed failure."""

        async def guarded(*args: Any) -> T:
            try:
                return await call(*args)
            except FeedError:
                raise
            except Exception as exc:
                log.exception("%s: unexpected error reading the feed", self.source.name)
                raise FeedError(
                    f"unexpected {type(exc).__name__}: {exc}", cause="unexpected"
                ) from exc

        return guarded

    def _write_due(self) -> bool:
        """Whether an empty poll must still be written: the stored last poll is as old as
        QUIET_WRITE_INTERVAL, or a failure is stored that this success clears."""
        return self._written_at is None or time.monotonic() - self._written_at >= QUIET_WRITE

    async def _failed(self, details: Any) -> None:
        exc = details.get("exception")
        # Masked before it is kept anywhere: an upstream may echo our credentials back.
        message = logs.redact(str(exc)) if exc is not None else "unknown error"
        name = self.source.name
        now = clock.now()
        cause = exc.cause if isinstance(exc, FeedError) else "unexpected"
        self.health.failed(now, cause, message)
        self.observer.failed(self.health, cause)
        log.warning(
            "%s: %s (failure %d; retrying in %.1fs)",
            name,
            message,
            details["tries"],
            details["wait"],
            extra={"source": name},
        )
        await self.store.record_poll_error(name, now, message)
        self._written_at = None  # the next success is written, clearing the error


def _instant_order(time: str) -> tuple[str, str]:
    """An envelope's time (rfc3339_utc's "YYYY-MM-DDTHH:MM:SS[.fraction]Z") as a key
    that sorts as the instants do, so that only the newest of a batch is parsed: the
    seconds, then the fraction without its Z ("" before ".25" before ".5")."""
    return time[:19], time[19:-1]
