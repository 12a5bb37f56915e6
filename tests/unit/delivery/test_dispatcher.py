"""The dispatcher on the in-memory store, with a sender that answers as told: lanes,
retries, dead letters and a graceful stop, without a network or a database file."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping

from feedhook.config import SubscriptionConfig
from feedhook.delivery import Dispatcher
from feedhook.delivery.policy import AttemptResult
from feedhook.delivery.signing import Signer
from feedhook.store import IngestItem, MemoryStore

from conftest import eventually, ingest_item


class ScriptedSender:
    """One attempt per call, answered from a per-URL script (then 200)."""

    def __init__(self, scripts: Mapping[str, list[int]]) -> None:
        self.scripts = {url: list(statuses) for url, statuses in scripts.items()}
        self.attempts: Counter[tuple[str, str]] = Counter()

    async def attempt(
        self,
        url: str,
        envelope_id: str,
        body: bytes,
        signer: Signer,
        headers: Mapping[str, str],
        timeout: float,
    ) -> AttemptResult:
        self.attempts[(url, envelope_id)] += 1
        await asyncio.sleep(0)
        script = self.scripts.get(url) or []
        return AttemptResult(script.pop(0) if script else 200)


def sub(url: str, **extra: object) -> SubscriptionConfig:
    return SubscriptionConfig.model_validate(
        {"url": url, "types": ["*"], "retry": {"schedule": ["10ms", "10ms"]}, **extra}
    )


def items(count: int, subscriptions: tuple[str, ...]) -> list[IngestItem]:
    return [ingest_item(n, subscriptions) for n in range(1, count + 1)]


async def test_every_lane_delivers_retries_and_dead_letters() -> None:
    """A healthy lane delivers all; a flaky one retries on its schedule and delivers; a
    rejecting one dead-letters at once; each outcome lands in the store."""
    store = MemoryStore()
    await store.ingest("seq", items(20, ("ok", "flaky", "strict")), "20")
    sender = ScriptedSender({"https://r/flaky": [503] * 10, "https://r/strict": [400] * 20})
    subscriptions = {name: sub(f"https://r/{name}") for name in ("ok", "flaky", "strict")}
    dispatcher = Dispatcher(store, subscriptions, sender, grace=1.0)  # type: ignore[arg-type]
    running = asyncio.create_task(dispatcher.run())

    async def settled() -> bool:
        counts = await store.counts()
        return (counts["ok"].delivered, counts["flaky"].delivered, counts["strict"].dead) == (
            20,
            20,
            20,
        )

    await eventually(settled, timeout=10, what="every lane settled")
    dispatcher.stop()
    await asyncio.wait_for(running, 5)
    assert sum(n for (url, _), n in sender.attempts.items() if url.endswith("/flaky")) == 30
    assert {n for (url, _), n in sender.attempts.items() if url.endswith("/ok")} == {1}
    assert len(await store.list_dead("strict")) == 20


async def test_max_in_flight_bounds_each_lane() -> None:
    """No more than `max_in_flight` attempts of one subscription run at once."""
    store = MemoryStore()
    await store.ingest("seq", items(40, ("slow",)), "40")
    peak = 0
    running_now = 0

    class SlowSender(ScriptedSender):
        async def attempt(self, *args: object, **kw: object) -> AttemptResult:
            nonlocal peak, running_now
            running_now += 1
            peak = max(peak, running_now)
            await asyncio.sleep(0.01)
            running_now -= 1
            return AttemptResult(200)

    dispatcher = Dispatcher(  # type: ignore[arg-type]
        store, {"slow": sub("https://r/slow", max_in_flight=3)}, SlowSender({}), grace=1.0
    )
    running = asyncio.create_task(dispatcher.run())

    async def done() -> bool:
        return (await store.counts())["slow"].delivered == 40

    await eventually(done, timeout=10, what="all delivered")
    dispatcher.stop()
    await asyncio.wait_for(running, 5)
    assert peak == 3
