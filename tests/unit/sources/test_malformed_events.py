"""Hostile feed pages: events that cannot be read in full are delivered as well as they
can be, marked, and never hold up their source; integers stay exact."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from feedhook.sim import Receiver
from feedhook.sim.serve import LoopbackServer

from conftest import eventually, running, subscription

GOOD = b'{"id": 9, "event_type": "job_created", "timestamp": "2012-12-03T09:35:37+00:00"}'
POISON_JSON = (
    b'{"entries": ['
    b'{"id": 1, "event_type": "asset_updated", "timestamp": "2012-12-03T09:35:37+00:00",'
    b' "asset_id": 12345678901234567890123, "changes": "name"},'
    b'{"id": 2, "event_type": "job_updated", "timestamp": "2012-12-03T09:35:37+00:00",'
    b' "note": "caf\xe9 \xff"},'
    b'{"id": 3, "event_type": "job_updated", "timestamp": "0001-01-01T00:00:00+01:00"},'
    b'{"id": 1.9, "event_type": "job_updated", "timestamp": "2012-12-03T09:35:37+00:00"},'
    b'{"id": true, "event_type": "job_updated", "timestamp": "2012-12-03T09:35:37+00:00"},'
    b'{"id": 4, "event_type": "nonsense", "timestamp": "yesterday"},' + GOOD + b"]}"
)


@pytest.fixture
async def hostile() -> AsyncIterator[LoopbackServer]:
    """A Sequence feed whose one page is POISON_JSON, then nothing newer."""
    served: list[str] = []

    async def events(request: web.Request) -> web.Response:
        served.append(request.query.get("newer_than", ""))
        newer_than = int(request.query.get("newer_than", "0"))
        body = POISON_JSON if newer_than < 9 else b'{"entries": []}'
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/api/events", events)
    server = LoopbackServer(app)
    await server.start()
    server.served = served  # type: ignore[attr-defined]
    yield server
    await server.stop()


async def test_poison_events_are_delivered_marked_and_the_source_goes_on(
    tmp_path: Path, hostile: LoopbackServer, receiver: Receiver
) -> None:
    """Invalid UTF-8, a timestamp outside RFC 3339's range, ids that are not whole
    numbers, an unknown type: each event arrives once, marked `data.malformed` with what
    was wrong; the good ones arrive untouched; the cursor moves past them all; an
    integer beyond 64 bits arrives exact."""
    raw = {
        "sources": {
            "seq": {
                "kind": "sequence",
                "url": f"{hostile.url}/api",
                "events_url": f"{hostile.url}/api/events",
                "username": "u",
                "password": "p",
                "start": "earliest",
                "poll_interval": "100ms",
                "max_backoff": "200ms",
            }
        },
        "subscriptions": {"all": subscription(receiver, "all")},
    }
    async with running(raw, tmp_path / "f.db") as worker:
        await eventually(lambda: len(receiver.ok()) == 7, what="all seven events")
        await eventually(
            lambda: hostile.served[-1] == "9",
            what="the cursor past the page",  # type: ignore[attr-defined]
        )
        counts = await worker.store.counts()
        assert counts["all"].delivered == 7
        malformed = worker.metrics.registry.get_sample_value(
            "feedhook_malformed_events_total", {"source": "seq"}
        )
        assert malformed == 5
    by_id = {r.webhook_id: json.loads(r.body) for r in receiver.ok()}
    assert len(by_id) == 7

    big = by_id["seq:1"]
    assert "malformed" not in big["data"]
    assert b"12345678901234567890123" in next(
        r.body for r in receiver.ok() if r.webhook_id == "seq:1"
    )
    assert big["data"]["native"]["asset_id"] == 12345678901234567890123

    utf8 = by_id["seq:2"]["data"]
    assert utf8["malformed"] == ["invalid UTF-8 in the upstream bytes (replaced with U+FFFD)"]
    assert utf8["native"]["note"] == "caf\ufffd \ufffd"

    old = by_id["seq:3"]
    assert "time" not in old and old["type"] == "sequence.job.updated"
    assert "out of range" in old["data"]["malformed"][0]

    unidentified = [e for i, e in by_id.items() if i.startswith("seq:unidentified-")]
    assert len(unidentified) == 2
    reasons = sorted(e["data"]["malformed"][0] for e in unidentified)
    assert reasons == ["id is not a whole number: 1.9", "id is not a whole number: True"]

    nonsense = by_id["seq:4"]
    assert nonsense["type"] == "sequence.unknown.unknown"
    assert len(nonsense["data"]["malformed"]) == 2
    assert "time" not in nonsense

    assert "malformed" not in by_id["seq:9"]["data"]
    assert by_id["seq:9"]["time"] == "2012-12-03T09:35:37Z"


def test_xml_events_keep_their_raw_text_when_malformed() -> None:
    """An XML event with a bad timestamp and bytes that are not UTF-8: marked, with
    `native_raw` the element as received (U+FFFD where the bytes were not UTF-8)."""
    from feedhook.sources.bebanjo import normalize, parse_xml_feed

    body = (
        b'<?xml version="1.0" encoding="UTF-8"?><events type="array"><event>'
        b'<id type="integer">7</id><event-type>title_updated</event-type>'
        b'<timestamp type="datetime">0001-01-01T00:00:00+01:00</timestamp>'
        b"<changes>name \xff</changes></event></events>"
    )
    (raw,) = parse_xml_feed(body, "test")
    envelope = normalize("mov", "movida", "https://m/api", raw)
    assert envelope.id == "mov:7" and envelope.time is None
    assert len(envelope.data["malformed"]) == 2
    assert "<changes>name \ufffd</changes>" in envelope.data["native_raw"]
