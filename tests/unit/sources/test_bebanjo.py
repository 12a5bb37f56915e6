"""The Sequence and Movida client against simulated feeds built from the vendor pages."""

from __future__ import annotations

import asyncio

import pytest

from feedhook.config import parse_config
from feedhook.sim import Fault, SimFeed
from feedhook.sources import BebanjoFeed, FeedError
from feedhook.sources.bebanjo import RawEvent

from conftest import source


async def opened(feed: SimFeed, **overrides: object) -> BebanjoFeed:
    config = parse_config({"sources": {"s": source(feed, **overrides)}}, "t", env={})
    src = BebanjoFeed("s", config.sources["s"])  # type: ignore[arg-type]
    await src.open()
    return src


@pytest.mark.parametrize("fmt", ["json", "xml"])
async def test_pages_through_the_feed_with_digest_auth(sequence_feed: SimFeed, fmt: str) -> None:
    """newer_than paging, 50 a page, the events link discovered from the API root."""
    sequence_feed.add_events(120)
    src = await opened(sequence_feed, format=fmt)
    try:
        page = await src.fetch("0")
        assert len(page.events) == 50 and page.more and page.cursor == "50"
        page = await src.fetch(page.cursor)
        page = await src.fetch(page.cursor)
        assert len(page.events) == 20 and not page.more and page.cursor == "120"
        page = await src.fetch("120")
        assert page.events == [] and page.cursor == "120" and not page.more
    finally:
        await src.close()
    assert sequence_feed.guard.challenges >= 1  # Digest was negotiated, not skipped
    assert sequence_feed.requests[0] == "/api/events?newer_than=0"


async def test_event_types_pushed_down(sequence_feed: SimFeed) -> None:
    """event_types are sent as event_type= so the feed filters, not feedhook."""
    sequence_feed.add_events(30)
    src = await opened(sequence_feed, event_types=["job_created", "task_deleted"])
    try:
        page = await src.fetch("0")
    finally:
        await src.close()
    assert "event_type=job_created,task_deleted" in sequence_feed.requests[-1].replace("%2C", ",")
    assert {env.type for _, env in page.events} == {"sequence.job.created", "sequence.task.deleted"}


async def test_wrong_password_is_a_clear_error(sequence_feed: SimFeed) -> None:
    """401 names the URL and says what to check; the password is never shown."""
    src = await opened(sequence_feed, password="wrong-sentinel")
    try:
        with pytest.raises(FeedError) as info:
            await src.fetch("0")
    finally:
        await src.close()
    assert "HTTP 401" in str(info.value)
    assert "credentials rejected: check username and password" in str(info.value)
    assert "wrong-sentinel" not in str(info.value)


async def test_sequence_latest_finds_newest_id_quickly(sequence_feed: SimFeed) -> None:
    """`start: latest` on Sequence bisects newer_than: a few dozen requests, not a walk."""
    sequence_feed.add_events(20_000, gap=37)  # ids up to ~740,000
    newest = sequence_feed.events[-1].id
    src = await opened(sequence_feed, start="latest")
    try:
        assert await src.initial_cursor() == str(newest)
    finally:
        await src.close()
    assert len(sequence_feed.requests) <= 60, len(sequence_feed.requests)


@pytest.mark.parametrize("count", [0, 1, 49, 50, 51, 1000])
async def test_sequence_latest_edges(sequence_feed: SimFeed, count: int) -> None:
    """Empty feeds, a single short page and exact page multiples all end right."""
    sequence_feed.add_events(count)
    src = await opened(sequence_feed, start="latest")
    try:
        assert await src.initial_cursor() == str(count)
    finally:
        await src.close()


async def test_movida_latest_uses_last_50(movida_feed: SimFeed) -> None:
    """Movida answers its last 50 without newer_than: one request finds the newest id."""
    movida_feed.add_events(500)
    src = await opened(movida_feed, start="latest")
    try:
        assert await src.initial_cursor() == "500"
    finally:
        await src.close()
    assert movida_feed.requests == ["/api/events"]


async def test_start_earliest_and_explicit(sequence_feed: SimFeed) -> None:
    """earliest is the whole history; a number starts after that id."""
    for start, expected in (("earliest", "0"), ("4242", "4242")):
        src = await opened(sequence_feed, start=start)
        try:
            assert await src.initial_cursor() == expected
        finally:
            await src.close()


@pytest.mark.parametrize(
    ("fault", "fmt", "message"),
    [
        (Fault.ERROR_500, "json", "HTTP 500"),
        (Fault.HTML, "json", "answered HTML instead of JSON"),
        (Fault.HTML, "xml", "answered HTML instead of XML"),
        (Fault.TRUNCATED, "json", "JSON is invalid or truncated"),
        (Fault.TRUNCATED, "xml", "XML is invalid or truncated"),
        (Fault.BILLION_LAUGHS, "xml", "refused an XML document with a DTD"),
        (Fault.EXTERNAL_ENTITY, "xml", "refused an XML document with a DTD"),
        (Fault.SLOW, "json", "no complete answer within 0.3s"),
        (Fault.UNAUTHORIZED, "json", "HTTP 401"),
    ],
)
async def test_each_fault_is_a_clear_feed_error(
    sequence_feed: SimFeed, fault: Fault, fmt: str, message: str
) -> None:
    """Every way a feed breaks raises FeedError naming the URL and the cause."""
    sequence_feed.add_events(10)
    sequence_feed.slow_seconds = 1.0
    src = await opened(sequence_feed, format=fmt, timeout="300ms")
    try:
        await src.events_url()
        sequence_feed.inject(fault)
        with pytest.raises(FeedError) as info:
            await src.fetch("0")
        assert message in str(info.value)
        assert sequence_feed.api_url in str(info.value)
        page = await src.fetch("0")  # and the next request works again
        assert len(page.events) == 10
    finally:
        await src.close()


async def test_429_waits_for_ratelimit_reset(sequence_feed: SimFeed) -> None:
    """A 429 is waited out (Ratelimit-Reset), then the same page is read."""
    sequence_feed.add_events(5)
    src = await opened(sequence_feed)
    try:
        sequence_feed.inject(Fault.RATE_LIMITED)
        page = await src.fetch("0")
    finally:
        await src.close()
    assert len(page.events) == 5
    assert sequence_feed.faults_served == [Fault.RATE_LIMITED]


async def test_request_budget_is_respected(sequence_feed: SimFeed) -> None:
    """rate_limit: 5/1s means the sixth request waits for the window."""
    import time

    src = await opened(sequence_feed, rate_limit="5/500ms")
    try:
        started = time.monotonic()
        for _ in range(6):  # includes the discovery request
            await src.fetch("0")
        elapsed = time.monotonic() - started
    finally:
        await src.close()
    assert elapsed >= 0.45


async def test_expired_digest_nonce_is_renegotiated(sequence_feed: SimFeed) -> None:
    """BeBanjo nonces last 5 minutes; an expired one (stale=true) costs one extra round trip."""
    sequence_feed.guard.nonce_lifetime = 0.2
    sequence_feed.add_events(3)
    src = await opened(sequence_feed)
    try:
        await src.fetch("0")
        challenges = sequence_feed.guard.challenges
        await asyncio.sleep(0.3)
        page = await src.fetch("0")
    finally:
        await src.close()
    assert len(page.events) == 3
    assert sequence_feed.guard.challenges == challenges + 1


async def test_feed_ignoring_newer_than_is_an_error_not_a_loop(sequence_feed: SimFeed) -> None:
    """A full page of events we already have means newer_than was ignored: say so."""
    sequence_feed.add_events(60)
    src = await opened(sequence_feed)
    try:
        original = src.read_page

        async def always_the_first_page(newer_than: int | None) -> list[RawEvent]:
            return await original(0)  # as a proxy that drops the query string would

        src.read_page = always_the_first_page  # type: ignore[method-assign]
        with pytest.raises(FeedError, match="the feed ignored newer_than"):
            await src.fetch("50")
    finally:
        await src.close()


async def test_budget_keeps_clear_of_the_upstream_ban() -> None:
    """With the upstream enforcing N per window (and a ban beyond), the matching
    rate_limit reads many pages without a single 429."""
    feed = SimFeed("sequence", rate_limit=(8, 0.5), ban_seconds=30)
    await feed.start()
    try:
        feed.add_events(700)
        src = await opened(feed, rate_limit="8/500ms")
        try:
            cursor = "0"
            for _ in range(14):
                cursor = (await src.fetch(cursor)).cursor
        finally:
            await src.close()
        assert cursor == "700"
        assert feed.faults_served == []
        assert all("newer_than" in r for r in feed.requests)
    finally:
        await feed.stop()


async def test_a_ban_is_waited_out() -> None:
    """Beyond the budget the upstream bans; the client waits for Ratelimit-Reset and goes on."""
    feed = SimFeed("sequence", rate_limit=(3, 10.0), ban_seconds=1)
    await feed.start()
    try:
        feed.add_events(200)
        src = await opened(feed, rate_limit="100/1s")
        try:
            cursor = "0"
            for _ in range(4):
                cursor = (await src.fetch(cursor)).cursor
        finally:
            await src.close()
        assert cursor == "200"
    finally:
        await feed.stop()
