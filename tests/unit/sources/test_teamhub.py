"""Helix TeamHub: newest-first offset paging, the high-water cursor, live events."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from feedhook import clock
from feedhook.config import parse_config
from feedhook.sim import Fault, SimTeamHub
from feedhook.sources import FeedError, TeamHubFeed
from feedhook.sources.base import Page
from feedhook.sources.teamhub import normalize

from conftest import FIXTURES, poll, teamhub_source

API = "https://helixteamhub.cloud/api"


async def opened(sim: SimTeamHub, **overrides: Any) -> TeamHubFeed:
    config = parse_config({"sources": {"th": teamhub_source(sim, **overrides)}}, "t", env={})
    feed = TeamHubFeed("th", config.sources["th"])  # type: ignore[arg-type]
    await feed.open()
    return feed


def test_seed_examples_become_envelopes() -> None:
    """The page's example events: type from target and operation, subject from objects."""
    document = json.loads((FIXTURES / "teamhub-events.json").read_text())
    push = normalize("th", API, document["results"][0], document["results"][0]["id"]).to_dict()
    assert push["id"] == "th:50883cfe1229c02952000036"
    assert push["type"] == "teamhub.push.created"
    assert push["subject"] == "luotsi/devrel"
    assert push["time"] == "2012-10-24T19:09:50Z"
    assert push["source"] == API
    data = push["data"]
    assert data["subject"] == "assimov" and data["progress"] == 100
    assert data["objects"]["last_commit"] == "393fe81b0f6c39f3006f748f5b16cdddcbe01c80"
    assert data["native"] == document["results"][0]
    one = json.loads((FIXTURES / "teamhub-event.json").read_text())
    repo = normalize("th", API, one, one["id"]).to_dict()
    assert repo["type"] == "teamhub.repository.created" and repo["subject"] == "luotsi/devrel"
    project_user = dict(one, target="project_user", objects={"project": {"id": "luotsi"}})
    assert normalize("th", API, project_user, "x").subject == "luotsi"


async def test_header_auth_and_paging_oldest_first(teamhub: SimTeamHub) -> None:
    """All events arrive oldest first across pages; keys go in the Authorization header."""
    teamhub.add_events(250)
    feed = await opened(teamhub, page_size=100)
    try:
        page = await poll(feed, await feed.initial_cursor())
        assert [uid for uid, _ in page.events] == [e["id"] for e in teamhub.events]
        again = await poll(feed, page.cursor)
        assert again.events == []
    finally:
        await feed.close()
    assert teamhub.requests[0].startswith("/api/events?limit=100&offset=0")


async def test_new_arrivals_while_paging_are_neither_missed_nor_doubled(
    teamhub: SimTeamHub,
) -> None:
    """Events arriving between page requests shift offsets: each one still arrives once."""
    teamhub.add_events(230)
    feed = await opened(teamhub, page_size=50)
    arrived: list[int] = []

    def arrive(offset: int) -> None:
        if len(arrived) < 6:  # seven new events land after each of the first six pages
            arrived.append(offset)
            teamhub.add_events(7)

    teamhub.after_page = arrive
    try:
        cursor = await feed.initial_cursor()
        delivered: list[str] = []
        for _ in range(4):
            page = await poll(feed, cursor)
            delivered += [uid for uid, _ in page.events]
            cursor = page.cursor
        teamhub.after_page = None
        page = await poll(feed, cursor)
        delivered += [uid for uid, _ in page.events]
    finally:
        await feed.close()
    assert len(teamhub.events) == 230 + 42 and 50 in arrived  # some landed mid-scan
    assert sorted(delivered) == sorted(e["id"] for e in teamhub.events)
    assert len(delivered) == len(set(delivered))


async def test_a_catch_up_reads_one_page_per_fetch_in_order(teamhub: SimTeamHub) -> None:
    """Catching up holds one page at a time: each fetch is one list request with at most a
    page of events, and the walk hands them over oldest first, none missed or doubled,
    while new events keep arriving and shifting every offset."""
    teamhub.add_events(5)
    feed = await opened(teamhub, page_size=50)
    try:
        cursor = (await poll(feed, await feed.initial_cursor())).cursor
        teamhub.add_events(1000)  # a stop's worth of history
        teamhub.after_page = lambda offset: teamhub.add_events(3) if offset else None
        teamhub.requests.clear()
        pages: list[Page] = []
        caught_up = await poll(feed, cursor, pages)
        requests = len(teamhub.requests)
        teamhub.after_page = None
        rest = await poll(feed, caught_up.cursor)
    finally:
        await feed.close()
    assert requests == len(pages)  # one list request per fetch
    assert max(len(page.events) for page in pages) <= 50
    delivered = [uid for uid, _ in caught_up.events + rest.events]
    assert delivered == [e["id"] for e in teamhub.events[5:]]  # in order, once each


async def test_same_second_events_are_told_apart(teamhub: SimTeamHub) -> None:
    """Timestamps have one-second resolution: the cursor keeps the ids at its instant."""
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    teamhub.add_events(3, at=moment)
    feed = await opened(teamhub)
    try:
        page = await poll(feed, await feed.initial_cursor())
        assert len(page.events) == 3
        teamhub.add_events(2, at=moment)  # same second, later
        page = await poll(feed, page.cursor)
        assert len(page.events) == 2
    finally:
        await feed.close()


async def test_start_latest_skips_history(teamhub: SimTeamHub) -> None:
    """`start: latest` begins after the newest event."""
    teamhub.add_events(40, at=datetime.now(UTC) - timedelta(minutes=5))
    feed = await opened(teamhub, start="latest")
    try:
        cursor = await feed.initial_cursor()
        assert (await poll(feed, cursor)).events == []
        new = teamhub.add_events(2)
        page = await poll(feed, cursor)
    finally:
        await feed.close()
    assert [uid for uid, _ in page.events] == [e["id"] for e in new]


async def test_filters_are_sent(teamhub: SimTeamHub) -> None:
    """project, operation and target become query filters."""
    teamhub.add_events(3, target="build", operation="failed")
    teamhub.add_events(3, target="push")
    feed = await opened(teamhub, project="luotsi", target="build", operation="failed")
    try:
        page = await poll(feed, await feed.initial_cursor())
    finally:
        await feed.close()
    assert {env.type for _, env in page.events} == {"teamhub.build.failed"}
    assert "project=luotsi" in teamhub.requests[0] and "target=build" in teamhub.requests[0]


async def test_live_build_on_complete(teamhub: SimTeamHub) -> None:
    """A build at 40% is held (across a cursor round trip) and emitted once, at 100%."""
    (build,) = teamhub.add_events(1, target="build", operation="created", progress=40)
    feed = await opened(teamhub)
    try:
        page = await poll(feed, await feed.initial_cursor())
        assert page.events == []
        assert build["id"] in json.loads(page.cursor)["held"]
        page = await poll(feed, page.cursor)
        assert page.events == []
        teamhub.update_progress(build["id"], 100, operation="completed")
        page = await poll(feed, page.cursor)
        assert [(uid, env.type) for uid, env in page.events] == [
            (build["id"], "teamhub.build.completed")
        ]
        assert json.loads(page.cursor)["held"] == {}
        assert (await poll(feed, page.cursor)).events == []
    finally:
        await feed.close()


async def test_live_build_each_update(teamhub: SimTeamHub) -> None:
    """each_update emits every observed progress, ids suffixed with the progress."""
    (build,) = teamhub.add_events(1, target="build", progress=40)
    feed = await opened(teamhub, live_events="each_update")
    try:
        page = await poll(feed, await feed.initial_cursor())
        ids = [uid for uid, _ in page.events]
        page = await poll(feed, page.cursor)  # no change, nothing new
        ids += [uid for uid, _ in page.events]
        teamhub.update_progress(build["id"], 70)
        page = await poll(feed, page.cursor)
        ids += [uid for uid, _ in page.events]
        teamhub.update_progress(build["id"], 100, operation="completed")
        page = await poll(feed, page.cursor)
        ids += [uid for uid, _ in page.events]
    finally:
        await feed.close()
    assert ids == [f"{build['id']}:40", f"{build['id']}:70", f"{build['id']}:100"]


async def test_live_timeout_emits_with_live_flag(teamhub: SimTeamHub) -> None:
    """A build that never completes is emitted after live_timeout, marked live."""
    (build,) = teamhub.add_events(1, target="build", progress=10)
    feed = await opened(teamhub, live_timeout="1h")
    try:
        page = await poll(feed, await feed.initial_cursor())
        assert page.events == []
        clock.set_clock(lambda: datetime.now(UTC).timestamp() + 3601)
        page = await poll(feed, page.cursor)
    finally:
        clock.set_clock(None)
        await feed.close()
    (envelope,) = [env for _, env in page.events]
    assert envelope.id == f"th:{build['id']}" and envelope.data["live"] is True
    assert envelope.data["progress"] == 10


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (Fault.ERROR_500, "HTTP 500"),
        (Fault.HTML, "answered HTML instead of JSON"),
        (Fault.TRUNCATED, "JSON is invalid or truncated"),
        (Fault.BILLION_LAUGHS, "JSON is invalid or truncated"),
        (Fault.UNAUTHORIZED, "HTTP 401"),
    ],
)
async def test_faults_are_clear_and_keys_stay_secret(
    teamhub: SimTeamHub, fault: Fault, message: str
) -> None:
    """Each fault is a FeedError naming the URL; the keys never appear."""
    teamhub.company_key = "company-sentinel"
    teamhub.account_key = "account-sentinel"
    teamhub.add_events(3)
    feed = await opened(teamhub)
    try:
        teamhub.inject(fault)
        with pytest.raises(FeedError) as info:
            await poll(feed, await feed.initial_cursor())
        assert message in str(info.value) and teamhub.api_url in str(info.value)
        assert "sentinel" not in str(info.value)
        assert len((await poll(feed, await feed.initial_cursor())).events) == 3
    finally:
        await feed.close()


@pytest.mark.parametrize("order", ["arrival", "timestamp"])
async def test_a_late_event_inside_the_overlap_is_delivered_once(
    teamhub: SimTeamHub, caplog: pytest.LogCaptureFixture, order: str
) -> None:
    """An event that appears late with an earlier timestamp than the newest seen (a
    back-dated build), whether the list puts it at the top (by arrival) or in its place
    (by timestamp): inside the overlap window it is delivered, once; older than the
    window and at the top, it is logged as arriving too late."""
    teamhub.order = order
    now = datetime.now(UTC)
    teamhub.add_events(5, at=now)
    feed = await opened(teamhub, overlap="5m")
    try:
        first = await poll(feed, await feed.initial_cursor())
        assert len(first.events) == 5
        (late,) = teamhub.add_events(1, at=now - timedelta(minutes=2))
        second = await poll(feed, first.cursor)
        assert [u for u, _ in second.events] == [late["id"]]
        third = await poll(feed, second.cursor)
        assert third.events == []
        with caplog.at_level("WARNING", logger="feedhook.source"):
            (ancient,) = teamhub.add_events(1, at=now - timedelta(hours=1))
            fourth = await poll(feed, third.cursor)
        assert fourth.events == []
        logged = any(
            "arrived too late to be seen" in r.getMessage() and ancient["id"] in r.getMessage()
            for r in caplog.records
        )
        assert logged == (order == "arrival")  # in its place by timestamp, it looks old
        teamhub.add_events(2, at=now + timedelta(seconds=1))
        fifth = await poll(feed, fourth.cursor)
        assert len(fifth.events) == 2
    finally:
        await feed.close()


async def test_a_cursor_from_before_the_overlap_still_reads(teamhub: SimTeamHub) -> None:
    """A cursor stored by an older feedhook (ids at the newest instant only) is read
    as that window: nothing is delivered twice."""
    (event,) = teamhub.add_events(1)
    old = json.dumps({"newest": event["timestamp"], "ids": [event["id"]], "held": {}})
    feed = await opened(teamhub)
    try:
        assert (await poll(feed, old)).events == []
    finally:
        await feed.close()


def test_malformed_events_are_delivered_marked() -> None:
    """No timestamp, a numeric id with a fraction, no target: read as far as possible,
    the rest null, `data.malformed` says what, and ids stay stable for deduplication."""
    document = json.loads((FIXTURES / "teamhub-events.json").read_text())
    event = {**document["results"][0], "id": 1.9, "timestamp": "0001-01-01T00:00:00+01:00"}
    del event["target"]
    envelope = normalize("th", API, event, "stand-in")
    assert envelope.time is None and envelope.type == "teamhub.unknown.created"
    assert len(envelope.data["malformed"]) == 3
    assert envelope.data["native"] == event
