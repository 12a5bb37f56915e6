"""Lanes: each subscription gets its own concurrency budget, so one slow receiver
never holds up another. Due deliveries are claimed as soon as a lane has room; outcomes
are written back in batches by a single writer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from feedhook import clock
from feedhook.config import SubscriptionConfig
from feedhook.delivery.policy import RetryPolicy
from feedhook.delivery.sender import Sender
from feedhook.delivery.signing import Signer
from feedhook.metrics import Metrics
from feedhook.store.base import Delivery, Outcome, Store

log = logging.getLogger("feedhook.delivery")

# The longest the dispatcher sleeps without looking at the store: bounds how soon a
# replay made by another process (feedhook dlq replay) is picked up.
IDLE_POLL = 1.0
WRITE_BATCH = 1000


@dataclass
class Lane:
    name: str
    config: SubscriptionConfig
    signer: Signer
    policy: RetryPolicy
    in_flight: int = 0

    @property
    def room(self) -> int:
        return self.config.max_in_flight - self.in_flight

    @classmethod
    def build(cls, name: str, config: SubscriptionConfig) -> Lane:
        lane = cls(name, config, Signer([]), RetryPolicy(()))
        lane.reconfigure(config)
        return lane

    def reconfigure(self, config: SubscriptionConfig) -> None:
        """A reloaded config: new url, secrets, limits; in-flight attempts keep counting."""
        secrets = [s.get_secret_value() for s in (config.secret, *config.previous_secrets) if s]
        self.config = config
        self.signer = Signer(secrets)
        self.policy = RetryPolicy(config.retry.schedule, config.retry.max_age)


class Dispatcher:
    def __init__(
        self,
        store: Store,
        subscriptions: Mapping[str, SubscriptionConfig],
        sender: Sender,
        grace: float = 8.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.sender = sender
        self.grace = grace
        self.metrics = metrics or Metrics()
        self.lanes: dict[str, Lane] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._sending: set[asyncio.Task[None]] = set()
        self._outcomes: asyncio.Queue[Outcome | None] = asyncio.Queue()
        self.reconfigure(subscriptions)

    def reconfigure(self, subscriptions: Mapping[str, SubscriptionConfig]) -> None:
        """Lanes for the subscriptions now configured. A removed subscription gets no new
        attempts; its in-flight ones finish, its pending rows wait (visible in status)."""
        for name, config in subscriptions.items():
            if name in self.lanes:
                self.lanes[name].reconfigure(config)
            else:
                self.lanes[name] = Lane.build(name, config)
        for name in set(self.lanes) - set(subscriptions):
            del self.lanes[name]
        self._wake.set()

    def wake(self) -> None:
        """New work may be due (called after ingest and after each attempt)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop claiming; in-flight attempts get `grace` seconds to finish."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._write_outcomes(), name="outcome-writer")
            try:
                await self._claim_loop()
                await self._finish_in_flight()
            finally:
                self._outcomes.put_nowait(None)

    async def _claim_loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            now = clock.now()
            for lane in list(self.lanes.values()):
                if lane.room > 0:
                    for delivery in await self.store.claim_due(lane.name, now, lane.room):
                        self._start(lane, delivery)
            if self._stopping:
                break
            # Lanes without room are woken by their own completions, not by the clock.
            next_due = await self.store.next_due_at([n for n, x in self.lanes.items() if x.room])
            timeout = IDLE_POLL if next_due is None else next_due - clock.now()
            # A full lane with due work waits for a completion to wake us, not a spin.
            timeout = min(IDLE_POLL, max(timeout, 0.05))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _start(self, lane: Lane, delivery: Delivery) -> None:
        lane.in_flight += 1
        task = asyncio.create_task(self._deliver(lane, delivery), name=f"deliver:{delivery.id}")
        self._sending.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("delivery task failed: %r", exc, exc_info=exc)

    async def _deliver(self, lane: Lane, delivery: Delivery) -> None:
        try:
            config = lane.config
            result = await self.sender.attempt(
                config.url,
                delivery.envelope_id,
                delivery.body,
                lane.signer,
                config.headers,
                config.timeout,
            )
            now = clock.now()
            attempts = delivery.attempts + 1
            decision = lane.policy.decide(result, attempts, delivery.created_at, now)
            self._outcomes.put_nowait(
                Outcome(
                    delivery_id=delivery.id,
                    kind=decision.kind,
                    attempts=attempts,
                    at=now,
                    next_attempt_at=decision.retry_at,
                    status_code=result.status,
                    reason=decision.reason,
                    response_body=result.body if decision.kind == "dead" else None,
                )
            )
            metrics = self.metrics
            metrics.deliveries.labels(lane.name, decision.kind).inc()
            metrics.attempt_seconds.labels(lane.name).observe(result.duration)
            if decision.kind == "delivered":
                metrics.delivery_latency.labels(lane.name).observe(now - delivery.ingested_at)
            fields = {
                "subscription": lane.name,
                "envelope_id": delivery.envelope_id,
                "attempt": attempts,
                "status_code": result.status,
                "duration_ms": round(result.duration * 1000, 1),
            }
            if decision.kind == "delivered":
                log.debug("delivered %s to %s", delivery.envelope_id, lane.name, extra=fields)
            elif decision.kind == "retry":
                assert decision.retry_at is not None
                log.warning(
                    "delivery of %s to %s failed (attempt %d: %s); retrying in %.1fs",
                    delivery.envelope_id,
                    lane.name,
                    attempts,
                    decision.reason,
                    decision.retry_at - now,
                    extra=fields,
                )
            else:
                log.error(
                    "delivery of %s to %s moved to dead letters: %s",
                    delivery.envelope_id,
                    lane.name,
                    decision.reason,
                    extra=fields,
                )
        finally:
            lane.in_flight -= 1
            self._wake.set()

    async def _finish_in_flight(self) -> None:
        if not self._sending:
            return
        log.info("waiting up to %gs for %d in-flight deliveries", self.grace, len(self._sending))
        _, late = await asyncio.wait(set(self._sending), timeout=self.grace)
        for task in late:
            task.cancel()
        if late:
            # Still marked in flight in the store: the next start sends them again.
            log.warning("%d deliveries did not finish within the grace period", len(late))
            await asyncio.gather(*late, return_exceptions=True)

    async def _write_outcomes(self) -> None:
        done = False
        while not done:
            first = await self._outcomes.get()
            batch: list[Outcome] = []
            if first is None:
                done = True
            else:
                batch.append(first)
            while len(batch) < WRITE_BATCH and not self._outcomes.empty():
                item = self._outcomes.get_nowait()
                if item is None:
                    done = True
                else:
                    batch.append(item)
            if batch:
                await self.store.complete(batch)
