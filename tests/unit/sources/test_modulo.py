"""Modulo Risk Manager: OData date filter in the learned zone, streamed pages, per-code
cursors with an overlap window, OAuth2 tokens, malformed updates."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from feedhook.config import ConfigError, parse_config
from feedhook.sim import Fault, SimModulo
from feedhook.sources import FeedError, ModuloFeed
from feedhook.sources.modulo import ACTIONS, normalize, parse_date

from conftest import FIXTURES, modulo_source, poll

WS = "https://grc.example.com/WorkflowWS"


async def opened(sim: SimModulo, codes: list[str], **overrides: Any) -> ModuloFeed:
    raw = {"sources": {"risk": modulo_source(sim, codes, **overrides)}}
    config = parse_config(raw, "t", env={})
    feed = ModuloFeed("risk", config.sources["risk"])  # type: ignore[arg-type]
    await feed.open()
    return feed


async def drain(feed: ModuloFeed, cursor: str) -> tuple[list[str], str]:
    """One full round over every event code."""
    page = await poll(feed, cursor)
    return [uid for uid, _ in page.events], page.cursor


def test_seed_example_becomes_envelopes() -> None:
    """The page's example updates (one value quoted: the page prints it bare)."""
    updates = json.loads((FIXTURES / "modulo-updates.json").read_text())
    first = normalize("risk", WS, "EVTC201105000052", updates[0]).to_dict()
    assert first["id"] == "risk:21b688eb-587e-4fc3-a43e-3661f707fd9f"
    assert first["type"] == "modulo.event.property_updated"
    assert first["subject"] == "EVTC201105000052"
    assert first["time"] == "2011-09-26T16:06:22.737Z"
    data = first["data"]
    assert (data["property"], data["old_value"], data["new_value"]) == (
        "StartDate",
        None,
        "9/26/2011 12:00 AM",
    )
    assert data["updated_by"] == "administrator" and data["update_type"] == 0
    assert data["native"] == updates[0]
    second = normalize("risk", WS, "EVTC201105000052", updates[1]).to_dict()
    assert second["type"] == "modulo.event.progress_updated"
    assert second["data"]["comment"] == "Comment" and second["data"]["new_value"] == "55"
    child = normalize("risk", WS, "EVTC1", {**updates[0], "Action": 6, "ChildEventCode": "EVTC2"})
    assert child.type == "modulo.event.child_event_created" and child.subject == "EVTC2"


def test_all_43_actions_have_snake_case_names() -> None:
    """Every Action code of the page maps to a distinct snake_case name."""
    assert sorted(ACTIONS) == list(range(43))
    assert len(set(ACTIONS.values())) == 43
    assert all(name == name.lower() and " " not in name for name in ACTIONS.values())
    assert ACTIONS[0] == "event_created" and ACTIONS[1] == "event_closed"
    assert ACTIONS[5] == "progress_updated" and ACTIONS[13] == "property_updated"


@pytest.mark.parametrize(
    ("text", "millis", "offset"),
    [
        ("/Date(1317053182737-0300)/", 1317053182737, "-0300"),
        ("/Date(1317053182737+0530)/", 1317053182737, "+0530"),
        ("/Date(1317053182737)/", 1317053182737, "+0000"),
        ("/Date(-1000)/", -1000, "+0000"),
    ],
)
def test_dates_parse_exactly(text: str, millis: int, offset: str) -> None:
    """Milliseconds are UTC; the offset is kept for the server's zone."""
    assert parse_date(text) == (millis, offset)


def test_auth_config_is_one_or_the_other() -> None:
    """A static token, or the three OAuth2 keys: never both, never neither."""
    base = {"kind": "modulo", "url": WS, "event_codes": ["E1"]}
    with pytest.raises(ConfigError, match="needs auth"):
        parse_config({"sources": {"m": base}}, "t", env={})
    with pytest.raises(ConfigError, match="either token"):
        parse_config({"sources": {"m": {**base, "token": "t", "client_id": "c"}}}, "t", env={})
    with pytest.raises(ConfigError, match="missing client_secret"):
        parse_config({"sources": {"m": {**base, "token_url": WS, "client_id": "c"}}}, "t", env={})


async def test_pages_and_per_code_cursors(modulo: SimModulo) -> None:
    """Every update of every code arrives once; a second round finds nothing new."""
    modulo.add_updates("E1", 2500, at_millis=1_600_000_000_000)
    modulo.add_updates("E2", 3)
    feed = await opened(modulo, ["E1", "E2"])
    try:
        ids, cursor = await drain(feed, await feed.initial_cursor())
        again, _ = await drain(feed, cursor)
    finally:
        await feed.close()
    assert sorted(ids) == sorted(u["Id"] for code in ("E1", "E2") for u in modulo.updates[code])
    assert again == []
    assert any("page=3" in r for r in modulo.requests)  # 2,500 at 1,000 a page
    assert modulo.tokens_issued == 1  # reused, not fetched per request


async def test_overlap_covers_an_unknown_server_zone(modulo: SimModulo) -> None:
    """The server reads datetime literals in its own zone (here UTC-3): the overlap makes
    sure an update just after the cursor is not filtered away."""
    now = int(time.time() * 1000)
    modulo.add_updates("E1", 1, at_millis=now - 60_000)
    feed = await opened(modulo, ["E1"], overlap="1s")
    try:
        ids, cursor = await drain(feed, await feed.initial_cursor())
        assert len(ids) == 1
        modulo.add_updates("E1", 1, at_millis=now - 30_000)  # 30 s after the cursor
        got, cursor = await drain(feed, cursor)
    finally:
        await feed.close()
    # The literal is written in the server's zone (learned from the dates), so even a
    # small overlap does not skip it.
    assert len(got) == 1
    assert "datetime'" in modulo.requests[-1]


async def test_an_unknown_zone_is_covered_until_learned() -> None:
    """If the server's zone is unknown (no update seen yet, `start: latest`), the scan
    starts 14 hours earlier, which covers any zone on Earth."""
    sim = SimModulo(server_offset="-1100")
    await sim.start()
    try:
        feed = await opened(sim, ["E1"], start="latest")
        try:
            cursor = await feed.initial_cursor()
            assert (await drain(feed, cursor))[0] == []
            sim.add_updates("E1", 2)
            ids, _ = await drain(feed, cursor)
        finally:
            await feed.close()
    finally:
        await sim.stop()
    assert len(ids) == 2


async def test_start_latest_ignores_history(modulo: SimModulo) -> None:
    """`start: latest` delivers only updates made after the start."""
    modulo.add_updates("E1", 5, at_millis=int(time.time() * 1000) - 3_600_000)
    feed = await opened(modulo, ["E1"], start="latest")
    try:
        cursor = await feed.initial_cursor()
        ids, cursor = await drain(feed, cursor)
        assert ids == []
        (new,) = modulo.add_updates("E1", 1)
        ids, _ = await drain(feed, cursor)
    finally:
        await feed.close()
    assert ids == [new["Id"]]


async def test_child_events(modulo: SimModulo) -> None:
    """include_child_events asks for them; the child's code becomes the subject."""
    modulo.add_child("E1", "E1-CHILD")
    modulo.add_updates("E1-CHILD", 2, action=12)
    feed = await opened(modulo, ["E1"], include_child_events=True)
    try:
        page = await feed.fetch(await feed.initial_cursor())
    finally:
        await feed.close()
    assert "show_child_events=True" in modulo.requests[-1]
    assert {env.subject for _, env in page.events} == {"E1-CHILD"}
    assert {env.type for _, env in page.events} == {"modulo.event.child_event_progress_updated"}


async def test_expired_token_is_renewed_without_losing_an_update(modulo: SimModulo) -> None:
    """A 401 from an expired token fetches a new one and repeats the same request."""
    modulo.add_updates("E1", 3)
    feed = await opened(modulo, ["E1"])
    try:
        ids, cursor = await drain(feed, await feed.initial_cursor())
        modulo.expire_tokens()
        modulo.add_updates("E1", 2)
        more, _ = await drain(feed, cursor)
    finally:
        await feed.close()
    assert len(ids) == 3 and len(more) == 2
    assert modulo.tokens_issued == 2


async def test_static_token(modulo: SimModulo) -> None:
    """A static bearer token works; a rejected one says so, without printing it."""
    modulo.static_token = "static-sentinel"
    modulo.add_updates("E1", 1)
    raw = modulo_source(modulo, ["E1"])
    for key in ("token_url", "client_id", "client_secret"):
        del raw[key]
    for token, ok in (("static-sentinel", True), ("wrong-sentinel", False)):
        config = parse_config({"sources": {"r": {**raw, "token": token}}}, "t", env={})
        feed = ModuloFeed("r", config.sources["r"])  # type: ignore[arg-type]
        await feed.open()
        try:
            if ok:
                assert len((await feed.fetch(await feed.initial_cursor())).events) == 1
            else:
                with pytest.raises(FeedError) as info:
                    await feed.fetch(await feed.initial_cursor())
                assert "HTTP 401" in str(info.value) and "sentinel" not in str(info.value)
        finally:
            await feed.close()


async def test_bad_client_secret_is_a_clear_error(modulo: SimModulo) -> None:
    """The token endpoint refusing the client is reported; the secret is not printed."""
    feed = await opened(modulo, ["E1"], client_secret="bad-sentinel")
    try:
        with pytest.raises(FeedError) as info:
            await feed.fetch(await feed.initial_cursor())
    finally:
        await feed.close()
    assert "HTTP 400" in str(info.value) and modulo.token_url in str(info.value)
    assert "bad-sentinel" not in str(info.value)


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (Fault.ERROR_500, "HTTP 500"),
        (Fault.HTML, "answered HTML instead of JSON"),
        (Fault.TRUNCATED, "JSON is invalid or truncated"),
        (Fault.RATE_LIMITED, None),
    ],
)
async def test_faults(modulo: SimModulo, fault: Fault, message: str | None) -> None:
    """Faults are clear errors (a 429 is waited out); the next read loses nothing."""
    modulo.add_updates("E1", 4)
    feed = await opened(modulo, ["E1"])
    try:
        cursor = await feed.initial_cursor()
        modulo.inject(fault)
        if message is not None:
            with pytest.raises(FeedError, match=message):
                await feed.fetch(cursor)
        ids, _ = await drain(feed, cursor)
    finally:
        await feed.close()
    assert len(ids) == 4


async def test_a_drained_feed_costs_one_request_per_code_per_poll(modulo: SimModulo) -> None:
    """Once caught up, each poll is one request per event code (the overlap window's
    updates come back in it and are dropped by id), not a re-read of a day's pages."""
    start = int(time.time() * 1000) - 3_600_000
    for i in range(1500):  # an hour of updates, one every 2.4 s
        modulo.add_updates("E1", 1, at_millis=start + i * 2400)
    modulo.add_updates("E2", 10)
    feed = await opened(modulo, ["E1", "E2"])
    try:
        ids, cursor = await drain(feed, await feed.initial_cursor())
        assert len(ids) == 1510
        before = len(modulo.requests)
        for _ in range(10):
            got, cursor = await drain(feed, cursor)
            assert got == []
        assert len(modulo.requests) - before == 20  # 10 polls x 2 codes
    finally:
        await feed.close()


async def test_pages_stream_one_at_a_time(modulo: SimModulo) -> None:
    """A backlog is read a page per fetch (memory bounded by the poller's read-ahead),
    the scan's place kept in the cursor: a restart mid-scan resumes at the next page."""
    modulo.add_updates("E1", 2500, at_millis=1_600_000_000_000)
    feed = await opened(modulo, ["E1"])
    try:
        first = await feed.fetch(await feed.initial_cursor())
        assert len(first.events) == 1000 and first.more
        second = await feed.fetch(first.cursor)
        assert len(second.events) == 1000 and second.more
    finally:
        await feed.close()
    restarted = await opened(modulo, ["E1"])  # a new process, from the stored cursor
    try:
        rest, _ = await drain(restarted, second.cursor)
    finally:
        await restarted.close()
    seen = [u for u, _ in first.events] + [u for u, _ in second.events] + rest
    assert sorted(seen) == sorted(u["Id"] for u in modulo.updates["E1"])


async def test_the_literal_is_written_in_the_learned_zone() -> None:
    """After one date has been seen, the filter names the window's start exactly in the
    server's zone (here UTC+0530), not 14 hours wide."""
    sim = SimModulo(server_offset="+0530")
    await sim.start()
    try:
        sim.add_updates("E1", 1, at_millis=1_700_000_000_000)  # 2023-11-14T22:13:20Z
        feed = await opened(sim, ["E1"], overlap="5m")
        try:
            _, cursor = await drain(feed, await feed.initial_cursor())
            await drain(feed, cursor)
        finally:
            await feed.close()
    finally:
        await sim.stop()
    # 22:13:20Z - 5 minutes = 22:08:20Z = 03:38:20 the next day at +05:30
    assert "datetime%272023-11-15T03:38:20%27" in sim.requests[-1].replace("'", "%27")


async def test_an_update_saved_late_with_an_earlier_date_is_delivered_once(
    modulo: SimModulo,
) -> None:
    """An update that appears after newer ones, dated inside the overlap window, is
    delivered; one dated before the window is not (and nothing is delivered twice)."""
    now = int(time.time() * 1000)
    modulo.add_updates("E1", 3, at_millis=now)
    feed = await opened(modulo, ["E1"], overlap="5m")
    try:
        ids, cursor = await drain(feed, await feed.initial_cursor())
        assert len(ids) == 3
        (late,) = modulo.add_updates("E1", 1, at_millis=now - 120_000)
        got, cursor = await drain(feed, cursor)
        assert got == [late["Id"]]
        again, _ = await drain(feed, cursor)
        assert again == []
    finally:
        await feed.close()


async def test_updates_with_impossible_dates_are_delivered_marked(modulo: SimModulo) -> None:
    """`/Date(…+9999)/` (no such zone) and a date before year 1 never stop the feed:
    delivered, marked `data.malformed`, and the updates after them arrive too."""
    now = int(time.time() * 1000)
    (bad_zone,) = modulo.add_updates("E1", 1, at_millis=now, Date=f"/Date({now}+9999)/")
    (too_old,) = modulo.add_updates("E1", 1, at_millis=now, Date="/Date(-62135596800001+1400)/")
    (good,) = modulo.add_updates("E1", 1, at_millis=now + 1)
    feed = await opened(modulo, ["E1"])
    try:
        page = await feed.fetch(await feed.initial_cursor())
    finally:
        await feed.close()
    by_id = {u: e for u, e in page.events}
    assert set(by_id) == {bad_zone["Id"], too_old["Id"], good["Id"]}
    assert by_id[bad_zone["Id"]].data["malformed"] == ["Date has an impossible zone offset +9999"]
    assert by_id[bad_zone["Id"]].time is not None  # the instant is known, in UTC
    assert "out of range" in by_id[too_old["Id"]].data["malformed"][0]
    assert by_id[too_old["Id"]].time is None
    assert "malformed" not in by_id[good["Id"]].data
