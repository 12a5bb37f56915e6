"""Lanes: each subscription gets its own concurrency budget, so one slow receiver
never holds up another. Due deliveries are claimed as soon as a lane has room; outcomes
are written back in batches by a single writer."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from feedhook import clock
from feedhook.config import SubscriptionConfig
from feedhook.delivery.activity import Activity, Summary
from feedhook.delivery.guard import Guard
from feedhook.delivery.policy import AttemptResult, Decision, RetryPolicy
from feedhook.delivery.sender import Sender
from feedhook.delivery.signing import Signer
from feedhook.logs import Throttle, redact_url
from feedhook.metrics import LaneMeters, Metrics
from feedhook.store.base import ACTIVE, Delivery, Outcome, Store, SubscriptionState

# Retried failures are summed up per (subscription, cause) once a minute at WARNING;
# each attempt is a DEBUG line.
FAILURE_LOG_INTERVAL = 60.0

log = logging.getLogger("feedhook.delivery")

# The longest the dispatcher sleeps without looking at the store: bounds how soon a
# replay made by another process (feedhook dlq replay) is picked up.
IDLE_POLL = 1.0
WRITE_BATCH = 1000
# While more answers are on their way, the outcome writer waits this long for them to
# join the batch: a statement costs the database about as much for one row as for fifty
# (PostgreSQL: 0.19 ms for 14 rows, 0.48 ms for 64), and nothing waits on the write but
# an ordered lane's next delivery of the same subject.
WRITE_LINGER = 0.002
WRITE_ENOUGH = 64
MIN_RESERVE = 64
START_BATCH = 16
GONE = 410  # the receiver asks for no more deliveries: the subscription is disabled
HANDSHAKE_RETRY = 60.0  # a receiver that refused the handshake is asked again after this
SUMMARY_INTERVAL = 60.0  # one delivery summary line per busy subscription this often


@dataclass
class Lane:
    name: str
    config: SubscriptionConfig
    signer: Signer
    policy: RetryPolicy
    in_flight: int = 0
    # Claimed but not yet sent: keeps the lane busy while the store is in a long write.
    ready: deque[Delivery] = field(default_factory=deque)
    # Whether the store may hold due work for this lane; cleared when a claim comes back
    # short, set again by ingest, replays and the retry clock.
    maybe_due: bool = True
    meters: LaneMeters = field(default_factory=LaneMeters)
    guard: Guard | None = None
    # Its circuit opened or closed: bring its failed deliveries back into line.
    resume_pending: bool = False
    # Disabled (410 Gone, an operator): nothing is claimed or started until enabled.
    disabled: SubscriptionState | None = None
    # What this worker last recorded in the store of its receiver (paused, circuit open).
    recorded: SubscriptionState = ACTIVE
    # The CloudEvents handshake (`handshake: cloudevents`): ask, asking, or granted.
    permission: str = "granted"
    # Outcomes since the last summary line, by kind.
    tally: Counter[str] = field(default_factory=Counter)
    # The last hour, minute by minute (the console's rates and chart).
    activity: Activity = field(default_factory=Activity)

    @property
    def cap(self) -> int:
        return self.config.max_in_flight

    @property
    def room(self) -> int:
        return self.cap - self.in_flight

    @property
    def reserve(self) -> int:
        """Claimed deliveries kept waiting beyond the lane's room, so that the next claim
        (a few trips to the database thread, each as long as a busy turn of the event
        loop) is back before the lane runs dry."""
        return max(4 * self.cap, MIN_RESERVE)

    @property
    def wanted(self) -> int:
        """How many more to claim: enough to fill the lane and the whole reserve."""
        return self.reserve + max(self.room, 0) - len(self.ready)

    @property
    def low(self) -> bool:
        """Half the reserve is gone: time to claim more."""
        return len(self.ready) < self.reserve // 2

    @classmethod
    def build(cls, name: str, config: SubscriptionConfig) -> Lane:
        lane = cls(name, config, Signer([]), RetryPolicy(()))
        lane.reconfigure(config)
        lane.permission = "ask" if config.handshake == "cloudevents" else "granted"
        return lane

    def reconfigure(self, config: SubscriptionConfig) -> None:
        """A reloaded config: new url, secrets, limits; in-flight attempts keep counting."""
        if config.handshake == "none":
            self.permission = "granted"
        elif (config.url, config.handshake) != (self.config.url, self.config.handshake):
            self.permission = "ask"  # another receiver, or newly asked for: ask it first
        secrets = [s.get_secret_value() for s in (config.secret, *config.previous_secrets) if s]
        self.config = config
        keys = [config.signing_key.get_secret_value()] if config.signing_key else []
        self.signer = Signer(secrets, keys)
        self.policy = RetryPolicy(config.retry.schedule, config.retry.max_age)
        if self.guard is None:
            self.guard = Guard(config)
        else:
            self.guard.reconfigure(config)

    @property
    def ordered(self) -> bool:
        return self.config.ordering == "subject"

    def may_start(self, now: float) -> bool:
        assert self.guard is not None
        return self.room > 0 and self.disabled is None and self.guard.blocked_until(now) is None


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
        # The earliest retry this process scheduled (or found at start); None: none known.
        self._next_retry: float | None = None
        self._released: list[int] = []  # claimed, never sent: back to pending
        self._claiming = 0  # claims on their way back from the store
        self._writing = False  # a batch of outcomes on its way to the store
        self._log_gate = Throttle(FAILURE_LOG_INTERVAL)
        self.reconfigure(subscriptions)

    def reconfigure(self, subscriptions: Mapping[str, SubscriptionConfig]) -> None:
        """Lanes for the subscriptions now configured. A removed subscription gets no new
        attempts; its in-flight ones finish, its pending rows wait (visible in status)."""
        for name, config in subscriptions.items():
            if name in self.lanes:
                self.lanes[name].reconfigure(config)
            else:
                lane = self.lanes[name] = Lane.build(name, config)
                lane.meters = self.metrics.deliveries.lane(name)
        for name in set(self.lanes) - set(subscriptions):
            removed = self.lanes.pop(name)
            self._released.extend(d.id for d in removed.ready)
            removed.ready.clear()  # nothing left to start, even mid-way through a start
        self.wake()

    def wake(self) -> None:
        """New work may be due in any lane (after ingest, a replay, a reload)."""
        for lane in self.lanes.values():
            lane.maybe_due = True
        self._wake.set()

    def _sending_lanes(self) -> list[str]:
        """The lanes whose deliveries may go out (a disabled one's wait, however due)."""
        return [name for name, lane in self.lanes.items() if lane.disabled is None]

    def _busy(self) -> bool:
        """Work in this dispatcher's hands: being claimed, claimed and waiting, in flight,
        or answered with the outcome not yet written."""
        return bool(
            self._claiming
            or self._sending
            or self._writing
            or not self._outcomes.empty()
            or any(lane.ready or lane.in_flight for lane in self.lanes.values())
        )

    async def idle(self) -> bool:
        """Nothing in flight, nothing claimed waiting, nothing due now in the store."""
        if self._busy():
            return False
        due = await self.store.next_due_at(self._sending_lanes())
        # Asked again: a claim that ran meanwhile took the due work out of the store
        # before handing it to this dispatcher.
        return not self._busy() and (due is None or due > clock.now())

    def stop(self) -> None:
        """Stop claiming; in-flight attempts get `grace` seconds to finish."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._write_outcomes(), name="outcome-writer")
            try:
                for name in self.lanes:  # notes of a run before this one are stale
                    await self.store.record_state(name, ACTIVE)
                await self._read_states()
                self._next_retry = await self.store.next_due_at(self._sending_lanes())
                await self._claim_loop()
                await self._finish_in_flight()
            finally:
                self._outcomes.put_nowait(None)

    async def _claim_loop(self) -> None:
        states_read = summarized = time.monotonic()
        while not self._stopping:
            self._wake.clear()
            if time.monotonic() - states_read >= IDLE_POLL:
                # Disabled or enabled elsewhere (the CLI, another replica's 410).
                await self._read_states()
                states_read = time.monotonic()
            if time.monotonic() - summarized >= SUMMARY_INTERVAL:
                self._summarize(time.monotonic() - summarized)
                summarized = time.monotonic()
            now = clock.now()
            if self._next_retry is not None and now >= self._next_retry:
                self._next_retry = None
                self.wake()
            if self._released:
                released, self._released = self._released, []
                await self.store.release(released)
            wants: dict[str, int] = {}
            for lane in self.lanes.values():
                if lane.disabled is not None:
                    continue
                if lane.permission != "granted":
                    self._ask_first(lane, now)
                    continue
                idle = not (lane.in_flight or lane.ready)
                if lane.guard is not None and lane.guard.open_since is not None:
                    # Circuit open: only the probe, the oldest due, once it is time.
                    if lane.maybe_due and idle and lane.guard.blocked_until(now) is None:
                        wants[lane.name] = 1
                    continue
                if lane.maybe_due and (idle or lane.low) and (wanted := lane.wanted) > 0:
                    wants[lane.name] = wanted
            if wants:
                await self._claim(wants, now)
            await self._start_ready()
            if self._stopping:
                break
            if self._next_retry is None and not any(x.maybe_due for x in self.lanes.values()):
                # All drained: find the next scheduled retry once, then sleep until it.
                self._next_retry = await self.store.next_due_at(self._sending_lanes())
            timeout = IDLE_POLL
            if self._next_retry is not None:
                timeout = min(IDLE_POLL, max(self._next_retry - clock.now(), 0.001))
            now = clock.now()
            for lane in self.lanes.values():  # a guard that holds a lane back lets go
                guard = lane.guard
                if guard is None:
                    continue
                if lane.ready or guard.open_since is not None or lane.permission == "ask":
                    until = guard.blocked_until(now)
                    if until is not None:
                        timeout = min(timeout, max(until - now, 0.001))
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                if self._next_retry is None or clock.now() < self._next_retry:
                    self.wake()  # the periodic look: replays made by other processes

    async def _claim(self, wants: dict[str, int], now: float) -> None:
        """One claim for every lane that wants work: one trip, however many lanes."""
        for name in wants:
            # Cleared first: a wake() while the claim runs (new events) sets it again.
            self.lanes[name].maybe_due = False
        ordered = {name for name in wants if self.lanes[name].ordered}
        self._claiming += 1
        try:
            claimed = await self.store.claim(wants, now, ordered)
        finally:
            self._claiming -= 1
        got: Counter[str] = Counter()
        for delivery in claimed:
            lane = self.lanes.get(delivery.subscription)
            if lane is None:  # removed by a reload while the claim ran
                self._released.append(delivery.id)
                continue
            lane.ready.append(delivery)
            got[delivery.subscription] += 1
        for name, wanted in wants.items():
            if got[name] >= wanted and name in self.lanes:
                self.lanes[name].maybe_due = True  # a full claim: there may be more

    async def _start_ready(self) -> None:
        """Fill every lane's room, START_BATCH at a time with a loop turn between: a
        request's first steps all run before its bytes leave, so sixty started in one turn
        would hold back the first send, the next claim and the pollers' reports."""
        started = 0
        for lane in list(self.lanes.values()):
            while lane.ready and not self._stopping and lane.may_start(clock.now()):
                self._start(lane, lane.ready.popleft())
                started += 1
                if started % START_BATCH == 0:
                    await asyncio.sleep(0)

    def _start(self, lane: Lane, delivery: Delivery) -> None:
        self._begin(lane)
        task = asyncio.create_task(self._send(lane, delivery), name=f"deliver:{lane.name}")
        self._sending.add(task)
        task.add_done_callback(self._sent)

    @staticmethod
    def _begin(lane: Lane) -> None:
        assert lane.guard is not None
        lane.guard.started(clock.now())
        lane.in_flight += 1

    async def _send(self, lane: Lane, delivery: Delivery) -> None:
        """Deliver, then the lane's next claimed one in the same task at once, for as
        long as the lane may start one: a task of its own for every delivery cost the
        event loop about 1.7 us each (made, named, its end called back)."""
        while True:
            await self._deliver(lane, delivery)
            if not lane.ready or self._stopping or not lane.may_start(clock.now()):
                return
            delivery = lane.ready.popleft()
            self._begin(lane)

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
            assert lane.guard is not None
            change = lane.guard.answered(result, now)
            retry_at = decision.retry_at
            if result.status == GONE:
                # The receiver says the subscription is gone (Standard Webhooks): it is
                # disabled, and this delivery waits with the rest, attempt not counted.
                decision = Decision("retry", delivery.created_at, "HTTP 410 Gone")
                attempts, retry_at = delivery.attempts, delivery.created_at
                change = "gone"
            elif result.retryable and lane.guard.open_since is not None:
                # The receiver is down, not this delivery: the attempt (a probe, or one
                # in flight as the circuit opened) is not counted against it, and it
                # keeps its place in line instead of waiting out a long step.
                decision = Decision("retry", delivery.created_at, decision.reason)
                attempts, retry_at = delivery.attempts, delivery.created_at
            self._outcomes.put_nowait(
                Outcome(
                    delivery_id=delivery.id,
                    kind=decision.kind,
                    attempts=attempts,
                    at=now,
                    next_attempt_at=retry_at,
                    status_code=result.status,
                    reason=decision.reason,
                    response_body=result.body if decision.kind == "dead" else None,
                    duration=result.duration,
                )
            )
            meters = lane.meters
            meters.outcomes[decision.kind] += 1
            lane.tally[decision.kind] += 1
            meters.attempt.observe(result.duration)
            if decision.kind == "delivered":
                meters.latency.observe(now - delivery.ingested_at)
                lane.activity.delivered(now, now - delivery.ingested_at)
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("delivered %s to %s", delivery.envelope_id, lane.name)
            else:
                lane.activity.failed(now)
                if change != "gone":  # a disabled subscription says so once, below
                    self._failed(lane, delivery, result, decision, attempts, now)
            if change == "gone":
                receiver = redact_url(str(lane.config.url), query=True)
                await self._disable(lane, f"HTTP 410 Gone from {receiver}")
            elif change is not None:
                await self._circuit(lane, change, now)
            if change is not None or result.retry_after is not None:
                await self._record(lane, now)
        finally:
            lane.in_flight -= 1
            if lane.low or lane.ready:
                self._wake.set()  # refill before the lane runs dry; or wait out its guard

    async def _circuit(self, lane: Lane, change: str, now: float) -> None:
        """The receiver's circuit opened or closed. Either way its failed deliveries are
        brought back into line (`resume`, once their outcomes are written), so that
        everything goes out in ingest order when it answers again, not on the long
        steps of the retry schedule."""
        assert lane.guard is not None
        lane.resume_pending = True
        if change == "opened":
            log.warning(
                "deliveries to %s failed %d times in a row; the circuit is open: one probe"
                " every %gs until one succeeds (no attempts are used meanwhile)",
                lane.name,
                lane.guard.failures,
                lane.guard.cooldown,
                extra={"subscription": lane.name},
            )
            # Claimed ones go back, so the next claim takes the oldest first.
            held = [d.id for d in lane.ready]
            lane.ready.clear()
            if held:
                await self.store.release(held)
        else:
            log.info(
                "%s answers again; the circuit is closed",
                lane.name,
                extra={"subscription": lane.name},
            )
        lane.maybe_due = True
        self._wake.set()

    def states(self, now: float) -> dict[str, SubscriptionState]:
        """Each subscription's state now: active, paused, circuit_open or disabled."""
        return {
            name: lane.disabled or (lane.guard.state(now) if lane.guard else ACTIVE)
            for name, lane in self.lanes.items()
        }

    def activity(self, now: float) -> dict[str, Summary]:
        """Each subscription's last hour, as this worker delivered it."""
        return {name: lane.activity.summary(now) for name, lane in self.lanes.items()}

    def _summarize(self, seconds: float) -> None:
        """One line per subscription that did something since the last summary."""
        for lane in self.lanes.values():
            if not lane.tally:
                continue
            tally, lane.tally = lane.tally, Counter()
            log.info(
                "%s: in the last %.0fs %d delivered, %d to retry, %d dead-lettered",
                lane.name,
                seconds,
                tally["delivered"],
                tally["retry"],
                tally["dead"],
                extra={"subscription": lane.name},
            )

    # --- the CloudEvents handshake -----------------------------------------------------

    def _ask_first(self, lane: Lane, now: float) -> None:
        """Before the first delivery to a receiver that wants to be asked: the handshake,
        once its lane has work and is not waiting out a refusal."""
        assert lane.guard is not None
        if lane.permission == "ask" and lane.maybe_due and lane.guard.blocked_until(now) is None:
            lane.permission = "asking"
            task = asyncio.create_task(self._ask(lane), name=f"handshake:{lane.name}")
            self._sending.add(task)
            task.add_done_callback(self._sent)

    async def _ask(self, lane: Lane) -> None:
        config = lane.config
        permission = await self.sender.ask(str(config.url), config.headers, config.timeout)
        now = clock.now()
        assert lane.guard is not None
        if permission.allowed:
            lane.guard.allow(permission.per_minute)
            lane.permission, lane.maybe_due = "granted", True
            rate = f", at most {permission.per_minute}/min" if permission.per_minute else ""
            log.info(
                "%s: the receiver allows deliveries (CloudEvents handshake%s)",
                lane.name,
                rate,
                extra={"subscription": lane.name},
            )
        else:
            reason = f"CloudEvents handshake refused: {permission.reason}"
            lane.guard.pause(now + HANDSHAKE_RETRY, reason, now)
            lane.permission = "ask"
            log.warning(
                "%s: %s; deliveries wait (pending), asked again in %gs",
                lane.name,
                reason,
                HANDSHAKE_RETRY,
                extra={"subscription": lane.name},
            )
        await self._record(lane, now)
        self._wake.set()

    # --- disabled subscriptions --------------------------------------------------------

    async def disable(self, name: str, reason: str) -> bool:
        """An operator disables a subscription (maintenance): False if it already was."""
        return await self._disable(self.lanes[name], reason)

    async def enable(self, name: str) -> bool:
        """Enable a disabled subscription: its backlog goes out in order. False if it
        was not disabled."""
        lane = self.lanes[name]
        enabled = await self.store.enable(name, clock.now())
        if lane.disabled is not None:
            lane.disabled = None
            log.info("%s is enabled", name, extra={"subscription": name})
        lane.maybe_due = True
        self._next_retry = None
        self._wake.set()
        return enabled

    async def _disable(self, lane: Lane, reason: str) -> bool:
        now = clock.now()
        disabled = await self.store.disable(lane.name, reason, now)
        if lane.disabled is None:
            lane.disabled = SubscriptionState("disabled", reason, now)
            log.warning(
                "%s is disabled: %s; its deliveries wait (pending) until"
                " `feedhook subscriptions enable %s`",
                lane.name,
                reason,
                lane.name,
                extra={"subscription": lane.name},
            )
            held = [d.id for d in lane.ready]
            lane.ready.clear()
            if held:
                await self.store.release(held)
        return disabled

    async def _read_states(self) -> None:
        """Take the stored disabled states (set by the CLI, the API, another replica)."""
        stored = await self.store.states()
        for name, lane in self.lanes.items():
            state = stored.get(name)
            if state is not None and state.state == "disabled":
                if lane.disabled is None:
                    lane.disabled = state
                    held = [d.id for d in lane.ready]
                    lane.ready.clear()
                    if held:
                        await self.store.release(held)
            elif lane.disabled is not None:  # enabled elsewhere
                lane.disabled, lane.maybe_due = None, True
                self._next_retry = None

    async def _record(self, lane: Lane, now: float) -> None:
        """Keep the store's note of this receiver (for `feedhook status`) up to date."""
        assert lane.guard is not None
        state = lane.guard.state(now)
        if state != lane.recorded:
            lane.recorded = state
            await self.store.record_state(lane.name, state)

    def _failed(
        self,
        lane: Lane,
        delivery: Delivery,
        result: AttemptResult,
        decision: Decision,
        attempts: int,
        now: float,
    ) -> None:
        fields = {
            "subscription": lane.name,
            "envelope_id": delivery.envelope_id,
            "attempt": attempts,
            "status_code": result.status,
            "duration_ms": round(result.duration * 1000, 1),
        }
        if decision.kind == "retry":
            assert decision.retry_at is not None
            if self._next_retry is None or decision.retry_at < self._next_retry:
                self._next_retry = decision.retry_at
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "delivery of %s to %s failed (attempt %d: %s); retrying in %.1fs",
                    delivery.envelope_id,
                    lane.name,
                    attempts,
                    decision.reason,
                    decision.retry_at - now,
                    extra=fields,
                )
            # A receiver that is down fails every delivery: one line per cause a minute.
            cause = result.status if result.status is not None else (result.error or "")[:40]
            held = self._log_gate.allow((lane.name, cause), now)
            if held is not None:
                more = f" ({held} more failures like it since the last line)" if held else ""
                log.warning(
                    "deliveries to %s are failing: %s%s; retrying on the schedule",
                    lane.name,
                    decision.reason,
                    more,
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

    async def _finish_in_flight(self) -> None:
        unsent = [d.id for lane in self.lanes.values() for d in lane.ready] + self._released
        if unsent:
            await self.store.release(unsent)
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

    def _answers_due(self) -> bool:
        """Deliveries still waiting for their receiver's answer."""
        return any(lane.in_flight for lane in self.lanes.values())

    async def _write_outcomes(self) -> None:
        done = False
        while not done:
            first = await self._outcomes.get()
            batch: list[Outcome] = []
            if first is None:
                done = True
            else:
                batch.append(first)
                self._writing = True
            if not done and self._outcomes.qsize() < WRITE_ENOUGH and self._answers_due():
                await asyncio.sleep(WRITE_LINGER)
            while len(batch) < WRITE_BATCH and not self._outcomes.empty():
                item = self._outcomes.get_nowait()
                if item is None:
                    done = True
                else:
                    batch.append(item)
            if batch:
                try:
                    await self.store.complete(batch)
                finally:
                    self._writing = False
                # An ordered lane's next delivery of a subject is claimable only now.
                for lane in self.lanes.values():
                    if lane.ordered and not lane.maybe_due:
                        lane.maybe_due = True
                        self._wake.set()
            if self._outcomes.empty():  # every outcome so far written: resume after them
                for lane in list(self.lanes.values()):
                    if lane.resume_pending:
                        lane.resume_pending = False
                        await self.store.resume(lane.name, clock.now())
                        lane.maybe_due = True
                        self._wake.set()
