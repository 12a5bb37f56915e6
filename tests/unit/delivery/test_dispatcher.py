"""The dispatcher on the in-memory store, with a sender that answers as told: lanes,
retries, dead letters and a graceful stop, without a network or a database file."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import pytest

from feedhook.config import SubscriptionConfig
from feedhook.config.models import RetryConfig
from feedhook.delivery import Dispatcher
from feedhook.delivery.policy import AttemptResult
from feedhook.delivery.signing import Signer
from feedhook.store import IngestItem, MemoryStore, SqliteStore

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


async def test_idle_is_not_said_while_a_claim_is_on_its_way_back() -> None:
    """A claim committed in the store but not yet back in the dispatcher: the work is
    neither due in the store nor in the dispatcher's hands, and `idle()` must not take
    that for the end of the work (`Worker.until_idle` returned with deliveries unsent)."""
    store = MemoryStore()
    claimed, release = asyncio.Event(), asyncio.Event()
    real_claim = store.claim

    async def claim_then_wait(*args: object, **kwargs: object) -> object:
        got = await real_claim(*args, **kwargs)  # type: ignore[arg-type]
        if got:
            claimed.set()
            await release.wait()
        return got

    store.claim = claim_then_wait  # type: ignore[method-assign,assignment]
    dispatcher = Dispatcher(store, {"a": sub("https://r/a")}, ScriptedSender({}), grace=1.0)  # type: ignore[arg-type]
    running = asyncio.create_task(dispatcher.run())
    await store.ingest("seq", items(1, ("a",)), "1")
    dispatcher.wake()
    await asyncio.wait_for(claimed.wait(), 5)
    assert not await dispatcher.idle()
    release.set()
    await eventually(dispatcher.idle, timeout=5, what="idle once delivered")
    assert (await store.counts())["a"].delivered == 1
    dispatcher.stop()
    await asyncio.wait_for(running, 5)


async def test_idle_is_not_said_before_the_outcomes_are_written() -> None:
    """Answered, its outcome not yet in the store: the delivery is still in flight there,
    and `idle()` waits for the write rather than call the work done."""
    store = MemoryStore()
    writing, release = asyncio.Event(), asyncio.Event()
    real_complete = store.complete

    async def complete_slowly(outcomes: object) -> None:
        writing.set()
        await release.wait()
        await real_complete(outcomes)  # type: ignore[arg-type]

    store.complete = complete_slowly  # type: ignore[method-assign]
    dispatcher = Dispatcher(store, {"a": sub("https://r/a")}, ScriptedSender({}), grace=1.0)  # type: ignore[arg-type]
    running = asyncio.create_task(dispatcher.run())
    await store.ingest("seq", items(1, ("a",)), "1")
    dispatcher.wake()
    await asyncio.wait_for(writing.wait(), 5)
    assert not await dispatcher.idle()
    release.set()
    await eventually(dispatcher.idle, timeout=5, what="idle once written")
    assert (await store.counts())["a"].delivered == 1
    dispatcher.stop()
    await asyncio.wait_for(running, 5)


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


async def test_a_busy_lane_sends_one_after_another_in_the_tasks_it_has() -> None:
    """A finished attempt starts the lane's next claimed delivery in the same task: a
    busy lane runs about as many tasks as it has room, not one per delivery."""
    store = MemoryStore()
    await store.ingest("seq", items(300, ("busy",)), "300")
    tasks: set[asyncio.Task[object] | None] = set()

    class Watching(ScriptedSender):
        async def attempt(self, *args: object, **kw: object) -> AttemptResult:
            tasks.add(asyncio.current_task())
            await asyncio.sleep(0.001)
            return AttemptResult(200)

    dispatcher = Dispatcher(  # type: ignore[arg-type]
        store, {"busy": sub("https://r/busy", max_in_flight=4)}, Watching({}), grace=1.0
    )
    running = asyncio.create_task(dispatcher.run())

    async def done() -> bool:
        return (await store.counts())["busy"].delivered == 300

    await eventually(done, timeout=10, what="all delivered")
    dispatcher.stop()
    await asyncio.wait_for(running, 5)
    assert 4 <= len(tasks) <= 40


class FlakySender(ScriptedSender):
    """Fails a share of attempts at random (seeded), 1 ms each; keeps the order of the
    successful receipts."""

    def __init__(self, failing: float, seed: int) -> None:
        super().__init__({})
        self.random = random.Random(seed)
        self.failing = failing
        self.delivered: list[int] = []

    async def attempt(  # type: ignore[override]
        self, url: str, envelope_id: str, body: bytes, *args: object
    ) -> AttemptResult:
        await asyncio.sleep(0.001)
        if self.random.random() < self.failing:
            return AttemptResult(503)
        self.delivered.append(json.loads(body)["data"]["n"])
        return AttemptResult(200)


async def drain_flaky(tmp_path: Path, ordering: str) -> tuple[list[int], float]:
    """40 subjects x 25 events (interleaved) to one receiver failing 30% of attempts:
    the order of first successful receipts, and how long it took."""
    async with SqliteStore(tmp_path / f"{ordering}.db") as store:
        events = [
            ingest_item(
                n, ("r",), subject=f"job/{n % 40}", ordered=("r",) if ordering != "none" else ()
            )
            for n in range(1, 1001)
        ]
        await store.ingest("seq", events, "1000")
        sender = FlakySender(0.3, seed=7)
        config = sub("https://r/r", ordering=ordering, max_in_flight=10)
        config = config.model_copy(update={"retry": RetryConfig(schedule=(0.01,) * 30)})
        dispatcher = Dispatcher(store, {"r": config}, sender, grace=1.0)  # type: ignore[arg-type]
        started = time.monotonic()
        running = asyncio.create_task(dispatcher.run())

        async def done() -> bool:
            return (await store.counts())["r"].delivered == 1000

        await eventually(done, timeout=60, what="all delivered")
        took = time.monotonic() - started
        dispatcher.stop()
        await asyncio.wait_for(running, 5)
    return sender.delivered, took


async def test_ordering_by_subject_keeps_each_subjects_order_despite_failures(
    tmp_path: Path,
) -> None:
    """`ordering: subject`: with 30% of attempts failing at random, each subject's events
    are first received in upstream order, in about the time the unordered run takes;
    unordered, failures put some out of order."""
    ordered, ordered_took = await drain_flaky(tmp_path, "subject")
    unordered, unordered_took = await drain_flaky(tmp_path, "none")
    for received in (ordered, unordered):
        assert sorted(received) == list(range(1, 1001))  # each once
    per_subject = {s: [n for n in ordered if n % 40 == s] for s in range(40)}
    assert all(ns == sorted(ns) for ns in per_subject.values())
    assert any(
        [n for n in unordered if n % 40 == s] != sorted(n for n in unordered if n % 40 == s)
        for s in range(40)
    )
    assert ordered_took < 2 * unordered_took + 1.0, (ordered_took, unordered_took)


async def test_a_busy_subscription_gets_a_summary_line(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Instead of silence, one line a summary interval per subscription that worked."""
    monkeypatch.setattr("feedhook.delivery.dispatcher.SUMMARY_INTERVAL", 0.2)
    caplog.set_level(logging.INFO, "feedhook.delivery")
    store = MemoryStore()
    await store.ingest("seq", items(5, ("ok",)), "5")
    sender = ScriptedSender({"https://r/ok": [503]})
    subscriptions = {"ok": sub("https://r/ok"), "idle": sub("https://r/idle")}
    dispatcher = Dispatcher(store, subscriptions, sender, grace=1.0)  # type: ignore[arg-type]
    running = asyncio.create_task(dispatcher.run())

    def summed() -> list[int]:
        lines = [m for m in caplog.messages if m.startswith("ok: in the last")]
        counts = [[int(w) for w in m.split("s ", 1)[1].split() if w.isdigit()] for m in lines]
        return [sum(c[i] for c in counts) for i in range(3)]

    try:
        await eventually(lambda: summed() == [5, 1, 0], what="the summaries")
    finally:
        dispatcher.stop()
        await asyncio.wait_for(running, 5)
    assert not any(m.startswith("idle:") for m in caplog.messages)
