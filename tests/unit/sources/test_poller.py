"""The poller on the in-memory store, over a source that serves pages as told: cursor
from the store, pages written with their routes, read-ahead, failures backed off."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from feedhook.envelope import Envelope, make_envelope
from feedhook.sources.base import FeedError, Page
from feedhook.sources.poller import Poller
from feedhook.store import MemoryDatabase, MemoryStore

from conftest import Reports, eventually, router


class ListSource:
    """A feed of `total` events served `size` a page; cursor = the last id read. Fails
    with a FeedError for the first `failures` fetches."""

    name = "seq"
    poll_interval = 0.05
    max_backoff = 0.05
    enricher = None

    def __init__(self, total: int, size: int = 10, failures: int = 0) -> None:
        self.total, self.size, self.failures = total, size, failures
        self.fetches: list[str] = []

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def initial_cursor(self) -> str:
        return "0"

    async def fetch(self, cursor: str) -> Page:
        self.fetches.append(cursor)
        if self.failures:
            self.failures -= 1
            raise FeedError("the simulated feed says no", cause="http_503")
        start = int(cursor)
        ids = range(start + 1, min(start + self.size, self.total) + 1)
        events = [
            (
                str(n),
                make_envelope(
                    source_name="seq",
                    upstream_id=str(n),
                    source="https://x/api",
                    type="sequence.job.created" if n % 2 else "sequence.asset.created",
                    time=datetime.now(UTC),
                    data={},
                ),
            )
            for n in ids
        ]
        last = ids[-1] if ids else start
        return Page(events=events, cursor=str(last), more=last < self.total)


async def test_a_backlog_is_written_page_by_page_with_its_routes() -> None:
    """95 events, 10 a page: all written once, routed per subscription, the cursor at
    the last id; a failing first fetch is retried and counted, not fatal."""
    store = MemoryStore()
    source = ListSource(95, failures=1)
    reports = Reports()
    routes = router({"jobs": ["sequence.job.*"], "all": ["*"]})
    poller = Poller(source, store, lambda: routes, reports)  # type: ignore[arg-type]
    task = asyncio.create_task(poller.run())
    try:

        async def caught_up() -> bool:
            return await store.get_cursor("seq") == "95"

        await eventually(caught_up, timeout=5, what="the backlog")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    counts = await store.counts()
    assert (counts["all"].pending, counts["jobs"].pending) == (95, 48)
    assert reports.failures == ["http_503"]
    assert sum(sum(r.types.values()) for r in reports.written) == 95
    assert poller.health.last_success_at is not None and poller.health.cause is None
    assert (await store.storage()).events == 95


async def test_a_stored_cursor_is_where_polling_resumes() -> None:
    """A restart reads from the stored cursor, not from the source's start."""
    store = MemoryStore()
    await store.set_cursor("seq", "50")
    source = ListSource(60)
    poller = Poller(source, store, lambda: router({}), Reports())  # type: ignore[arg-type]
    task = asyncio.create_task(poller.run())
    try:

        async def caught_up() -> bool:
            return await store.get_cursor("seq") == "60"

        await eventually(caught_up, timeout=5, what="the rest")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert source.fetches[0] == "50"
    (first, *_) = await store.stored_events(0, 100)
    assert first.envelope_id == "seq:51"


async def test_two_pollers_of_one_source_take_turns() -> None:
    """Two workers sharing a store both start a poller for the same source: only one
    reads the feed; when it stops, the other takes over from the stored cursor."""
    database = MemoryDatabase()
    first_store = MemoryStore(database, lease=0.3)
    second_store = MemoryStore(database, lease=0.3)
    first_source, second_source = ListSource(30), ListSource(60)
    first = asyncio.create_task(
        Poller(first_source, first_store, lambda: router({}), Reports()).run()  # type: ignore[arg-type]
    )

    async def cursor_at(value: str) -> bool:
        return await first_store.get_cursor("seq") == value

    await eventually(lambda: cursor_at("30"), timeout=5, what="the first poller")
    second = asyncio.create_task(
        Poller(second_source, second_store, lambda: router({}), Reports()).run()  # type: ignore[arg-type]
    )
    try:
        await asyncio.sleep(0.5)
        assert second_source.fetches == []  # refused while the first holds the source
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        await eventually(lambda: cursor_at("60"), timeout=5, what="the second taking over")
        assert second_source.fetches[0] == "30"  # from the stored cursor
    finally:
        second.cancel()
        await asyncio.gather(second, return_exceptions=True)


async def test_an_empty_poll_writes_nothing_until_the_quiet_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A quiet feed: each poll is reported, but only the first is written, then one per
    QUIET_WRITE; a failure is stored and the next success is written, clearing it."""
    store = MemoryStore()
    writes: list[str] = []
    ingest = store.ingest

    async def counting(source: str, items: object, cursor: str, *rest: object) -> object:
        writes.append(cursor)
        return await ingest(source, items, cursor, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "ingest", counting)
    source = ListSource(3, size=10)
    reports = Reports()
    poller = Poller(source, store, lambda: router({"all": ["*"]}), reports)  # type: ignore[arg-type]
    task = asyncio.create_task(poller.run())
    try:
        await eventually(lambda: len(reports.written) >= 8, timeout=5, what="eight polls")
        assert writes == ["3"]  # the three events; the quiet polls after it, nothing
        monkeypatch.setattr("feedhook.sources.poller.QUIET_WRITE", 0.0)
        await eventually(lambda: len(writes) >= 2, timeout=5, what="the quiet write")
        monkeypatch.setattr("feedhook.sources.poller.QUIET_WRITE", 3600.0)
        written = len(writes)
        source.failures = 1
        await eventually(lambda: reports.failures != [], timeout=5, what="the failure")
        await eventually(lambda: len(writes) > written, timeout=5, what="the clearing write")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert (await store.status()).sources["seq"].last_error is None


class TimedSource(ListSource):
    """One page of three events at the given instants, then nothing new."""

    def __init__(self, times: list[datetime]) -> None:
        super().__init__(len(times), size=len(times))
        self.times = times

    async def fetch(self, cursor: str) -> Page:
        page = await super().fetch(cursor)
        events = [
            (upstream_id, make_envelope(**{**_fields(e), "time": time}))
            for (upstream_id, e), time in zip(page.events, self.times, strict=False)
        ]
        return Page(events=events, cursor=page.cursor, more=page.more)


def _fields(envelope: Envelope) -> dict[str, Any]:
    return {
        "source_name": envelope.feedhooksource,
        "upstream_id": envelope.upstream_id,
        "source": envelope.source,
        "type": envelope.type,
        "data": envelope.data,
    }


async def test_the_newest_event_time_is_the_latest_instant_not_the_greatest_text() -> None:
    """Times keep the upstream's fractions: "...:05.5Z" is later than "...:05Z", though
    it sorts before it as text. The newest is found by instant."""
    times = [
        datetime(2026, 5, 1, 10, 0, 4, 750000, tzinfo=UTC),
        datetime(2026, 5, 1, 12, 0, 5, 500000, tzinfo=timezone(timedelta(hours=2))),
        datetime(2026, 5, 1, 10, 0, 5, tzinfo=UTC),
    ]
    store = MemoryStore()
    poller = Poller(TimedSource(times), store, lambda: router({"all": ["*"]}), Reports())  # type: ignore[arg-type]
    task = asyncio.create_task(poller.run())
    try:

        async def caught_up() -> bool:
            return poller.health.newest_event_at is not None

        await eventually(caught_up, timeout=5, what="the page")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert poller.health.newest_event_at == times[1].timestamp()
