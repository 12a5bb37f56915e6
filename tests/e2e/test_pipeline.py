"""The whole bridge in one process: simulated feeds -> worker -> receiver."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from standardwebhooks import Webhook

from feedhook.sim import Receiver, SimFeed
from feedhook.sim.bebanjo import SimEvent
from feedhook.store import SqliteStore

from conftest import SECRET, eventually, running, source, subscription


def pairs(rx: Receiver, name: str | None = None) -> Counter[tuple[str, str]]:
    return Counter((r.webhook_id, r.path) for r in rx.ok(name))


async def test_every_matching_pair_is_delivered_signed_and_parseable(
    tmp_path: Path, sequence_feed: SimFeed, movida_feed: SimFeed, receiver: Receiver
) -> None:
    """JSON and XML Sequence plus Movida, two globs and a JMESPath filter: exactly the
    matching (event, subscription) pairs arrive, each signed and a valid CloudEvent."""
    sequence_xml = SimFeed("sequence")
    await sequence_xml.start()
    try:
        sequence_feed.add_events(130)
        sequence_xml.add_events(70)
        movida_feed.add_events(90)
        raw = {
            "sources": {
                "seq-json": source(sequence_feed),
                "seq-xml": source(sequence_xml, format="xml"),
                "movida": source(movida_feed),
            },
            "subscriptions": {
                "jobs-and-titles": subscription(
                    receiver, "jobs-and-titles", types=["sequence.job.*", "movida.title.*"]
                ),
                "status": subscription(
                    receiver,
                    "status",
                    types=["*.*.updated"],
                    filter="contains(data.changes, 'status')",
                ),
            },
        }
        expected: set[tuple[str, str]] = set()

        def want(name: str, events: list[SimEvent]) -> None:
            for e in events:
                resource = e.event_type.rpartition("_")[0]
                if resource == ("title" if name == "movida" else "job"):
                    expected.add((f"{name}:{e.id}", "jobs-and-titles"))
                if e.event_type.endswith("_updated") and "status" in (e.changes or "").split(","):
                    expected.add((f"{name}:{e.id}", "status"))

        want("seq-json", sequence_feed.events)
        want("seq-xml", sequence_xml.events)
        want("movida", movida_feed.events)
        assert len({p for p in expected if p[1] == "status"}) > 5

        async with running(raw, tmp_path / "f.db") as worker:
            await eventually(lambda: set(pairs(receiver)) >= expected, what="all deliveries")
            # events arriving while running are picked up too
            late = sequence_xml.add_events(10, types=["job_created"])
            expected |= {(f"seq-xml:{e.id}", "jobs-and-titles") for e in late}
            await eventually(lambda: set(pairs(receiver)) >= expected, what="late events")
            await worker.until_idle()  # nothing more to come: no sleeping on it
        got = pairs(receiver)
        assert set(got) == expected
        assert max(got.values()) == 1  # nothing twice
        webhook = Webhook(SECRET)
        for record in receiver.received:
            assert webhook.verify(record.body, record.headers) is not None
            event = from_http_event(HTTPMessage(headers=record.headers, body=record.body))
            assert event.get_id() == record.webhook_id
            assert event.get_specversion() == "1.0"
            assert record.headers["Content-Type"].startswith("application/cloudevents+json")
            assert record.headers["User-Agent"].startswith("feedhook/")
    finally:
        await sequence_xml.stop()


async def test_500_then_200_is_retried(
    tmp_path: Path, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """A failing receiver gets the event again on the schedule; it is delivered once ok."""
    sequence_feed.add_events(1)
    receiver.plan("flaky", [500, 503])
    raw = {
        "sources": {"seq": source(sequence_feed)},
        "subscriptions": {"flaky": subscription(receiver, "flaky", max_in_flight=1)},
    }
    async with running(raw, tmp_path / "f.db"):
        await eventually(lambda: len(receiver.ok("flaky")) == 1, what="the delivery")
    assert [r.status for r in receiver.received] == [500, 503, 200]
    assert [r.webhook_id for r in receiver.received] == ["seq:1"] * 3
    async with SqliteStore(tmp_path / "f.db") as store:
        counts = (await store.status()).subscriptions["flaky"]
        assert (counts.delivered, counts.dead, counts.pending) == (1, 0, 0)


async def test_400_goes_to_dead_letters_with_reason(
    tmp_path: Path, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """A permanent failure is dead at once, with status, reason and the response body."""
    sequence_feed.add_events(1)
    receiver.answer("strict", 400)
    receiver.answer("moved", 301, headers={"Location": "https://new.example/hook"})
    raw = {
        "sources": {"seq": source(sequence_feed)},
        "subscriptions": {
            "strict": subscription(receiver, "strict"),
            "moved": subscription(receiver, "moved"),
        },
    }
    db = tmp_path / "f.db"
    async with running(raw, db) as worker:

        async def both_dead() -> bool:
            return len(await worker.store.list_dead()) == 2

        await eventually(both_dead, what="two dead letters")
        letters = {d.subscription: d for d in await worker.store.list_dead()}
    assert letters["strict"].status_code == 400
    assert letters["strict"].reason == "permanent failure: HTTP 400"
    assert letters["strict"].response_body == "receiver says no (400)"
    assert "redirect to https://new.example/hook not followed" in letters["moved"].reason
    assert len(receiver.received) == 2  # one attempt each, no redirect followed


async def test_a_hanging_subscriber_does_not_delay_another(
    tmp_path: Path, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """Lanes: a receiver that never answers in time holds up nobody else."""
    sequence_feed.add_events(40)
    receiver.answer("stuck", 200, delay=30)
    raw = {
        "sources": {"seq": source(sequence_feed)},
        "subscriptions": {
            "stuck": subscription(receiver, "stuck", timeout="20s", max_in_flight=2),
            "fine": subscription(receiver, "fine"),
        },
    }
    started = time.monotonic()
    async with running(raw, tmp_path / "f.db", grace=0.1):
        await eventually(lambda: len(receiver.ok("fine")) == 40, timeout=5, what="fine lane")
    assert time.monotonic() - started < 5


async def test_timeout_is_retried(
    tmp_path: Path, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """A receiver slower than the subscription timeout is cut off and retried."""
    sequence_feed.add_events(1)
    receiver.answer("slow", 200, delay=0.5)
    raw = {
        "sources": {"seq": source(sequence_feed)},
        "subscriptions": {"slow": subscription(receiver, "slow", timeout="200ms")},
    }
    async with running(raw, tmp_path / "f.db") as worker:
        await eventually(lambda: len(receiver.received) >= 2, what="a second attempt")
        receiver.answer("slow", 200)
        await eventually(
            lambda: any(r.status == 200 and r.at for r in receiver.received[2:]), what="success"
        )
        status = await worker.store.status()
    assert status.subscriptions["slow"].dead == 0


async def test_envelope_bytes_match_what_was_stored(
    tmp_path: Path, movida_feed: SimFeed, receiver: Receiver
) -> None:
    """The body a receiver gets is the stored envelope, byte for byte."""
    movida_feed.add_events(2)
    raw = {
        "sources": {"mov": source(movida_feed)},
        "subscriptions": {"all": subscription(receiver, "all")},
    }
    async with running(raw, tmp_path / "f.db"):
        await eventually(lambda: len(receiver.ok()) == 2, what="deliveries")
    body = json.loads(receiver.received[0].body)
    assert body["id"] == "mov:1" and body["feedhooksource"] == "mov"
    assert body["source"] == movida_feed.api_url
    assert body["type"].startswith("movida.")


async def test_until_idle_returns_once_the_work_in_sight_is_done(
    tmp_path: Path, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """`Worker.until_idle()` (burst mode for tests and embedders) returns after every
    source was read to its end and every due delivery went out: no sleeping to prove
    that nothing more arrives. Work added later is seen by the next call."""
    sequence_feed.add_events(30)
    raw = {
        "sources": {"seq": source(sequence_feed)},
        "subscriptions": {"all": subscription(receiver, "all")},
    }
    async with running(raw, tmp_path / "f.db") as worker:
        await worker.until_idle(timeout=15)
        assert len(receiver.ok()) == 30
        sequence_feed.add_events(5)
        await worker.until_idle(timeout=15)
        assert len(receiver.ok()) == 35
