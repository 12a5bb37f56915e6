"""Sparing receivers: rate limits, Retry-After pausing the whole subscription, and the
circuit breaker; the guard alone, and the dispatcher obeying it on the in-memory store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from feedhook.config import SubscriptionConfig
from feedhook.delivery import Dispatcher
from feedhook.delivery.guard import Guard
from feedhook.delivery.policy import AttemptResult
from feedhook.delivery.sender import Sender
from feedhook.delivery.signing import Signer
from feedhook.delivery.transport import AiohttpTransport, new_session
from feedhook.sim import Receiver as SimReceiver
from feedhook.store import MemoryStore

from conftest import eventually, ingest_item


def sub(url: str, **extra: object) -> SubscriptionConfig:
    return SubscriptionConfig.model_validate({"url": url, "types": ["*"], **extra})


class Receiver:
    """A sender that records when each attempt started, answering `answer(url, now)`."""

    def __init__(self, answer: object = None) -> None:
        self.starts: dict[str, list[float]] = {}
        self.delivered: list[str] = []  # envelope ids answered 2xx, in order
        self.answer = answer

    async def attempt(
        self,
        url: str,
        envelope_id: str,
        body: bytes,
        signer: Signer,
        headers: Mapping[str, str],
        timeout: float,
    ) -> AttemptResult:
        now = time.monotonic()
        self.starts.setdefault(url, []).append(now)
        await asyncio.sleep(0.001)
        result = self.answer(url, now) if callable(self.answer) else AttemptResult(200)
        assert isinstance(result, AttemptResult)
        if result.ok:
            self.delivered.append(envelope_id)
        return result


def most_in_any_window(starts: list[float], window: float) -> int:
    return max(sum(1 for t in starts if s <= t < s + window) for s in starts)


def test_the_circuit_opens_probes_and_closes() -> None:
    guard = Guard(sub("https://r/x", circuit_breaker={"failures": 3, "cooldown": "10s"}))
    down = AttemptResult(503)
    assert [guard.answered(down, t) for t in (0.0, 1.0, 2.0)] == [None, None, "opened"]
    assert guard.blocked_until(3.0) == 12.0  # one probe after the cooldown
    assert guard.blocked_until(12.0) is None
    guard.started(12.0)
    assert guard.blocked_until(12.5) is not None  # nothing beside the probe
    assert guard.answered(down, 13.0) is None
    assert guard.blocked_until(13.0) == 33.0  # the cooldown doubled
    guard.started(33.0)
    assert guard.answered(AttemptResult(200), 33.1) == "closed"
    assert guard.blocked_until(33.1) is None and guard.state(33.1).state == "active"


def test_retry_after_pauses_and_a_permanent_failure_is_not_the_receivers() -> None:
    guard = Guard(sub("https://r/x", circuit_breaker={"failures": 2}))
    guard.answered(AttemptResult(429, retry_after=5.0), 100.0)
    assert guard.blocked_until(101.0) == 105.0 and guard.state(101.0).state == "paused"
    guard.answered(AttemptResult(400), 106.0)  # the receiver answered: not a failure of it
    guard.answered(AttemptResult(500), 107.0)
    assert guard.state(107.0).state == "active"


async def test_a_rate_limited_lane_never_exceeds_its_limit_and_spares_the_others() -> None:
    store = MemoryStore()
    await store.ingest("seq", [ingest_item(n, ("slow", "fast")) for n in range(1, 61)], "60")
    sender = Receiver()
    subscriptions = {
        "slow": sub("https://r/slow", rate_limit="20/1s"),
        "fast": sub("https://r/fast"),
    }
    dispatcher = Dispatcher(store, subscriptions, sender, grace=1.0)  # type: ignore[arg-type]
    running = asyncio.create_task(dispatcher.run())
    began = time.monotonic()
    try:
        await eventually(lambda: len(sender.starts.get("https://r/fast", [])) == 60, timeout=5)
        fast_done = time.monotonic() - began
        await eventually(lambda: len(sender.starts.get("https://r/slow", [])) == 60, timeout=10)
    finally:
        dispatcher.stop()
        await asyncio.wait_for(running, 5)
    slow = sender.starts["https://r/slow"]
    # Starts are paced by the budget; a busy loop may run a few late, next to the
    # following window's: the receiver sees at most the limit plus one burst.
    assert most_in_any_window(slow, 1.0) <= 20 + 20
    assert slow[-1] - slow[0] >= 2.0  # 60 at 20 a second
    assert fast_done < 1.0  # the other subscription is not slowed


async def test_retry_after_pauses_the_whole_subscription() -> None:
    """One 429 with Retry-After: 2 stops every delivery to that receiver for 2 s."""
    store = MemoryStore()
    await store.ingest("seq", [ingest_item(n, ("busy",)) for n in range(1, 31)], "30")
    said_no: list[float] = []

    def answer(url: str, now: float) -> AttemptResult:
        if not said_no:
            said_no.append(now)
            return AttemptResult(429, retry_after=2.0)
        return AttemptResult(200)

    sender = Receiver(answer)
    config = {"busy": sub("https://r/busy", max_in_flight=1, retry={"schedule": ["10ms"]})}
    dispatcher = Dispatcher(store, config, sender, grace=1.0)  # type: ignore[arg-type]
    running = asyncio.create_task(dispatcher.run())
    try:

        async def all_delivered() -> bool:
            return (await store.counts())["busy"].delivered == 30

        await eventually(all_delivered, timeout=10, what="every delivery")
    finally:
        dispatcher.stop()
        await asyncio.wait_for(running, 5)
    after = [t for t in sender.starts["https://r/busy"] if t > said_no[0]]
    assert len(after) == 30 and min(after) - said_no[0] >= 1.9


async def test_a_receiver_down_gets_a_few_probes_then_everything_in_order() -> None:
    """Down for 2 s while 300 deliveries wait: a handful of attempts during the outage
    (the ones that opened the circuit, then one probe per cooldown), then everything at
    once, in ingest order, without waiting for the retry schedule's 5-minute step."""
    store = MemoryStore()
    await store.ingest("seq", [ingest_item(n, ("down",)) for n in range(1, 301)], "300")
    back_at = time.monotonic() + 2.0

    def answer(url: str, now: float) -> AttemptResult:
        return AttemptResult(200) if time.monotonic() >= back_at else AttemptResult(503)

    sender = Receiver(answer)
    config = {
        "down": sub(
            "https://r/down",
            max_in_flight=5,
            retry={"schedule": ["300s", "300s"]},
            circuit_breaker={"failures": 5, "cooldown": "250ms"},
        )
    }
    dispatcher = Dispatcher(store, config, sender, grace=1.0)  # type: ignore[arg-type]
    running = asyncio.create_task(dispatcher.run())
    try:

        async def all_delivered() -> bool:
            return (await store.counts())["down"].delivered == 300

        await eventually(all_delivered, timeout=15, what="every delivery after the outage")
    finally:
        dispatcher.stop()
        await asyncio.wait_for(running, 5)
    during = [t for t in sender.starts["https://r/down"] if t < back_at]
    assert len(during) <= 5 + 5 + 2.0 / 0.25 + 2, len(during)  # opened, in flight, probes
    assert sender.delivered == [f"seq:{n}" for n in range(1, 301)]  # in ingest order


async def test_the_cloudevents_handshake_comes_first_and_its_answer_is_obeyed(
    receiver: SimReceiver,
) -> None:
    """`handshake: cloudevents`: an OPTIONS with our origin before the first POST; the
    allowed rate becomes the lane's limit; a receiver that refuses gets no POST, its
    deliveries wait as pending and its state says why."""
    receiver.allow("polite", "feedhook.test", per_minute=3)
    receiver.allow("refusing", None)
    store = MemoryStore()
    await store.ingest("seq", [ingest_item(n, ("polite", "refusing")) for n in range(1, 6)], "5")
    config = {
        name: sub(receiver.url(name), handshake="cloudevents") for name in ("polite", "refusing")
    }
    async with new_session() as session:
        sender = Sender(AiohttpTransport(session), "feedhook/test", origin="feedhook.test")
        dispatcher = Dispatcher(store, config, sender, grace=1.0)
        running = asyncio.create_task(dispatcher.run())
        try:
            await eventually(lambda: len(receiver.ok("polite")) == 3, what="3 within the rate")
            await eventually(
                lambda: dispatcher.states(time.time())["refusing"].state == "paused",
                what="the refusal",
            )
            await asyncio.sleep(0.3)  # what a lane that ignored the answers would have sent
        finally:
            dispatcher.stop()
            await asyncio.wait_for(running, 5)
    assert len(receiver.ok("polite")) == 3
    assert receiver.ok("refusing") == []
    assert sorted(receiver.handshakes) == [
        ("polite", "feedhook.test"),
        ("refusing", "feedhook.test"),
    ]
    state = dispatcher.states(time.time())["refusing"]
    assert "handshake refused" in (state.reason or "") and "feedhook.test" in (state.reason or "")
    counts = await store.counts()
    assert (counts["polite"].pending, counts["refusing"].pending) == (2, 5)
