"""The in-memory store: the contract of `base.py` kept in Python objects.

A real implementation, not a mock: the contract suite (tests/test_store_contract.py)
runs the same tests against it and against SQLite, and the dispatcher's and poller's
unit tests run on it. Several `MemoryStore`s over one `MemoryDatabase` behave as several
workers over one database (each its own claim owner). Every method runs without an
await in its critical part, so on one event loop each is atomic, as a transaction is.
Nothing survives the process: it is for tests and for trying things, not for `run`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from feedhook import clock
from feedhook.envelope import sequenced, split_id
from feedhook.store.base import (
    DEFAULT_LEASE,
    Attempt,
    DeadLetter,
    Delivery,
    DeliveryTrace,
    IngestItem,
    Outcome,
    PruneResult,
    SourceLost,
    SourceState,
    Status,
    Storage,
    StoredEvent,
    Subject,
    SubscriptionCounts,
    SubscriptionState,
    Trace,
    new_owner,
)

State = Literal["pending", "in_flight", "delivered", "dead"]


@dataclass
class _Event:
    id: int
    source: str
    upstream_id: str
    envelope_id: str
    type: str
    body: bytes
    ingested_at: float


@dataclass
class _Delivery:
    id: int
    event_id: int
    subscription: str
    state: State
    next_attempt_at: float
    created_at: float
    updated_at: float
    attempts: int = 0
    last_status: int | None = None
    last_error: str | None = None
    owner: str | None = None
    lease_until: float | None = None
    ordering_key: str | None = None  # its event's subject, for an ordered subscription
    last_duration: float | None = None
    failures: list[Attempt] = field(default_factory=list)  # failed attempts, for `trace`


@dataclass
class MemoryDatabase:
    """What several MemoryStores share: the tables, as dictionaries by id."""

    events: dict[int, _Event] = field(default_factory=dict)
    event_keys: dict[tuple[str, str], int] = field(default_factory=dict)
    deliveries: dict[int, _Delivery] = field(default_factory=dict)
    pairs: dict[tuple[int, str], int] = field(default_factory=dict)
    dead_letters: dict[int, DeadLetter] = field(default_factory=dict)
    sources: dict[str, SourceState] = field(default_factory=dict)
    subjects: dict[tuple[str, str], Subject] = field(default_factory=dict)
    states: dict[str, SubscriptionState] = field(default_factory=dict)
    sequences: Counter[str] = field(default_factory=Counter)  # the last number of each source
    # Delivered deliveries that pruning removed: the delivered count is a lifetime total.
    pruned_delivered: Counter[str] = field(default_factory=Counter)
    # One poller per source: who polls it, until when.
    source_leases: dict[str, tuple[str, float]] = field(default_factory=dict)
    # Every worker's wake-up: work written by one reaches all (as LISTEN/NOTIFY would).
    wakes: list[Callable[[], None]] = field(default_factory=list)
    last_id: int = 0

    def next_id(self) -> int:
        self.last_id += 1
        return self.last_id


class MemoryStore:
    """One worker's connection to a MemoryDatabase (a fresh one unless given)."""

    def __init__(
        self,
        database: MemoryDatabase | None = None,
        *,
        holder: bool = False,
        lease: float = DEFAULT_LEASE,
    ) -> None:
        self.database = database if database is not None else MemoryDatabase()
        self.holder = holder  # like SQLite's: every other owner is known to be gone
        self.owner = new_owner()
        self.lease = lease
        self.settle = 0.0  # one worker polls every source: nothing to share out
        self.waiting_for = "never, in memory"
        self.locked_since: float | None = None

    # --- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def __aenter__(self) -> MemoryStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def check_identity(self) -> None:
        pass  # nothing on disk to be replaced

    # --- sources ---------------------------------------------------------------------

    async def get_cursor(self, source: str) -> str | None:
        state = self.database.sources.get(source)
        return None if state is None else state.cursor

    async def lease_source(self, source: str, now: float) -> bool:
        holder = self.database.source_leases.get(source)
        if holder is not None and holder[0] != self.owner and holder[1] >= now:
            return False
        self.database.source_leases[source] = (self.owner, now + self.lease)
        return True

    async def join(self, now: float) -> None:
        """See Store.join: one worker polls every source here."""

    def on_work(self, wake: Callable[[], None]) -> None:
        self.database.wakes.append(wake)

    def _work_arrived(self) -> None:
        for wake in self.database.wakes:
            wake()

    async def set_cursor(self, source: str, cursor: str) -> None:
        self._source(source, cursor=cursor, cursor_updated_at=clock.now())

    async def ingest(
        self,
        source: str,
        items: Sequence[IngestItem],
        cursor: str,
        subjects: Sequence[Subject] = (),
    ) -> list[IngestItem]:
        db, now = self.database, clock.now()
        holder = db.source_leases.get(source)
        if holder is not None and holder[0] != self.owner and holder[1] >= now:
            raise SourceLost(f"source {source} is polled by another worker")
        fresh: dict[str, IngestItem] = {}
        for item in items:  # everything is worked out before anything changes
            if (source, item.upstream_id) not in db.event_keys:
                fresh.setdefault(item.upstream_id, item)
        routed = [(item, list(item.subscriptions)) for item in fresh.values()]
        for item, subscriptions in routed:
            db.sequences[source] += 1
            event = _Event(
                db.next_id(),
                source,
                item.upstream_id,
                item.envelope.id,
                item.envelope.type,
                sequenced(item.envelope.body, db.sequences[source]),
                now,
            )
            db.events[event.id] = event
            db.event_keys[(source, item.upstream_id)] = event.id
            for name in subscriptions:
                key = item.envelope.subject if name in item.ordered else None
                self._add_delivery(event.id, name, now, key)
        self._source(
            source,
            cursor=cursor,
            cursor_updated_at=now,
            last_poll_at=now,
            last_success_at=now,
            last_error=None,
            last_error_at=None,
        )
        for subject in subjects:
            db.subjects[(source, subject.url)] = subject
        if any(subscriptions for _, subscriptions in routed):
            self._work_arrived()
        return list(fresh.values())

    async def subjects(self, source: str, urls: Collection[str]) -> dict[str, Subject]:
        kept = self.database.subjects
        return {url: kept[(source, url)] for url in urls if (source, url) in kept}

    async def record_poll_error(self, source: str, at: float, error: str) -> None:
        self._source(source, last_poll_at=at, last_error=error, last_error_at=at)

    def _source(self, name: str, **changes: object) -> None:
        old = self.database.sources.get(name) or SourceState(
            name, None, None, None, None, None, None
        )
        fields = {k: getattr(old, k) for k in SourceState.__slots__} | changes
        self.database.sources[name] = SourceState(**fields)

    def _add_delivery(
        self, event_id: int, subscription: str, now: float, ordering_key: str | None = None
    ) -> _Delivery:
        delivery = _Delivery(
            self.database.next_id(),
            event_id,
            subscription,
            "pending",
            now,
            now,
            now,
            ordering_key=ordering_key,
        )
        self.database.deliveries[delivery.id] = delivery
        self.database.pairs[(event_id, subscription)] = delivery.id
        return delivery

    # --- deliveries ------------------------------------------------------------------

    async def recover_in_flight(self, now: float) -> int:
        taken = 0
        for d in self.database.deliveries.values():
            if d.state != "in_flight":
                continue
            expired = d.lease_until is None or d.lease_until < now
            if expired or (self.holder and d.owner != self.owner):
                d.state, d.owner = "pending", None
                taken += 1
        return taken

    async def renew(self, now: float) -> int:
        mine = self._mine()
        for d in mine:
            d.lease_until = now + self.lease
        leases = self.database.source_leases
        for source, (owner, _) in list(leases.items()):
            if owner == self.owner:
                leases[source] = (owner, now + self.lease)
        return len(mine)

    def _mine(self) -> list[_Delivery]:
        return [
            d
            for d in self.database.deliveries.values()
            if d.state == "in_flight" and d.owner == self.owner
        ]

    async def claim_due(self, subscription: str, now: float, limit: int) -> list[Delivery]:
        return await self.claim({subscription: limit}, now)

    async def claim(
        self, wants: Mapping[str, int], now: float, ordered: Collection[str] = ()
    ) -> list[Delivery]:
        db = self.database
        due: dict[str, list[_Delivery]] = {}
        heads: set[int] = set()  # each ordered subject's oldest unfinished delivery
        seen: set[tuple[str, str]] = set()
        for d in sorted(db.deliveries.values(), key=lambda d: d.id):
            if d.subscription in ordered and d.ordering_key is not None:
                if d.state not in ("pending", "in_flight"):
                    continue
                if (d.subscription, d.ordering_key) in seen:
                    continue
                seen.add((d.subscription, d.ordering_key))
                heads.add(d.id)
        for d in db.deliveries.values():
            if d.state != "pending" or d.next_attempt_at > now or not wants.get(d.subscription):
                continue
            if self._disabled(d.subscription):
                continue
            if d.subscription in ordered and d.ordering_key is not None and d.id not in heads:
                continue
            due.setdefault(d.subscription, []).append(d)
        claimed: list[_Delivery] = []
        for name, rows in due.items():
            rows.sort(key=lambda d: (d.next_attempt_at, d.id))
            claimed += rows[: max(0, wants[name])]
        claimed.sort(key=lambda d: (d.next_attempt_at, d.id))
        out = []
        for d in claimed:
            d.state, d.owner, d.lease_until = "in_flight", self.owner, now + self.lease
            event = db.events[d.event_id]
            out.append(
                Delivery(
                    d.id,
                    d.subscription,
                    event.envelope_id,
                    event.body,
                    d.attempts,
                    d.created_at,
                    event.ingested_at,
                )
            )
        return out

    async def release(self, ids: Sequence[int]) -> None:
        wanted = set(ids)
        for d in self._mine():
            if d.id in wanted:
                d.state, d.owner = "pending", None

    async def resume(self, subscription: str, now: float) -> int:
        later = [
            d
            for d in self.database.deliveries.values()
            if d.subscription == subscription and d.state == "pending" and d.next_attempt_at > now
        ]
        for d in later:
            d.next_attempt_at = d.created_at
        return len(later)

    async def next_due_at(self, subscriptions: Sequence[str]) -> float | None:
        names = set(subscriptions)
        times = [
            d.next_attempt_at
            for d in self.database.deliveries.values()
            if d.state == "pending" and d.subscription in names
        ]
        return min(times, default=None)

    async def complete(self, outcomes: Sequence[Outcome]) -> None:
        db = self.database
        for o in outcomes:
            d = db.deliveries.get(o.delivery_id)
            if d is None or d.state != "in_flight" or d.owner != self.owner:
                continue  # a lease that ran out: the claim may be another's by now
            d.state = "pending" if o.kind == "retry" else o.kind
            if o.kind != "retry":
                d.ordering_key = None  # finished: out of its subject's line
            d.attempts, d.updated_at = o.attempts, o.at
            if o.next_attempt_at is not None:
                d.next_attempt_at = o.next_attempt_at
            d.last_status = o.status_code
            d.last_error = None if o.kind == "delivered" else o.reason
            d.last_duration = o.duration
            if o.kind != "delivered":
                d.failures.append(Attempt(o.at, o.status_code, o.duration, o.kind, o.reason))
            if o.kind == "dead":
                event = db.events[d.event_id]
                letter = DeadLetter(
                    db.next_id(),
                    d.id,
                    d.subscription,
                    event.envelope_id,
                    event.type,
                    o.attempts,
                    o.status_code,
                    o.reason or "",
                    o.response_body,
                    o.at,
                )
                db.dead_letters[letter.id] = letter

    # --- subscription states ---------------------------------------------------------

    def _disabled(self, subscription: str) -> bool:
        state = self.database.states.get(subscription)
        return state is not None and state.state == "disabled"

    async def states(self) -> dict[str, SubscriptionState]:
        return dict(sorted(self.database.states.items()))

    async def record_state(self, subscription: str, state: SubscriptionState) -> None:
        if self._disabled(subscription):
            return
        if state.state == "active":
            self.database.states.pop(subscription, None)
        else:
            self.database.states[subscription] = state

    async def disable(self, subscription: str, reason: str, at: float) -> bool:
        if self._disabled(subscription):
            return False
        self.database.states[subscription] = SubscriptionState("disabled", reason, at)
        return True

    async def enable(self, subscription: str, now: float) -> bool:
        if not self._disabled(subscription):
            return False
        del self.database.states[subscription]
        await self.resume(subscription, now)
        self._work_arrived()
        return True

    # --- operations ------------------------------------------------------------------

    async def status(self) -> Status:
        return Status(
            sources=dict(sorted(self.database.sources.items())),
            subscriptions=await self.counts(),
            states=await self.states(),
        )

    async def counts(self) -> dict[str, SubscriptionCounts]:
        counts: dict[str, SubscriptionCounts] = {}
        for d in self.database.deliveries.values():
            c = counts.setdefault(d.subscription, SubscriptionCounts())
            if d.state in ("pending", "in_flight"):
                c.pending += 1
            elif d.state == "delivered":
                c.delivered += 1
            else:
                c.dead += 1
        for name, n in self.database.pruned_delivered.items():
            counts.setdefault(name, SubscriptionCounts()).delivered += n
        for letter in self.database.dead_letters.values():
            counts.setdefault(letter.subscription, SubscriptionCounts()).dead_letter += 1
        return counts

    async def list_dead(
        self, subscription: str | None = None, limit: int = 100, after: int = 0
    ) -> list[DeadLetter]:
        letters = [
            x
            for x in sorted(self.database.dead_letters.values(), key=lambda x: x.id)
            if x.id > after and (subscription is None or x.subscription == subscription)
        ]
        return letters[:limit]

    async def get_dead(self, dead_id: int) -> DeadLetter | None:
        letter = self.database.dead_letters.get(dead_id)
        if letter is None:
            return None
        delivery = self.database.deliveries[letter.delivery_id]
        return dataclasses.replace(letter, body=self.database.events[delivery.event_id].body)

    def _dead(self, ids: Sequence[int] | None, subscription: str | None) -> list[DeadLetter]:
        wanted = None if ids is None else set(ids)
        return [
            x
            for x in self.database.dead_letters.values()
            if (wanted is None or x.id in wanted)
            and (subscription is None or x.subscription == subscription)
        ]

    async def replay_dead(
        self, ids: Sequence[int] | None, subscription: str | None, now: float
    ) -> int:
        letters = self._dead(ids, subscription)
        for letter in letters:
            d = self.database.deliveries[letter.delivery_id]
            if d.state == "dead":
                d.state, d.attempts, d.last_error = "pending", 0, None
                d.next_attempt_at = d.created_at = d.updated_at = now
            del self.database.dead_letters[letter.id]
        if letters:
            self._work_arrived()
        return len(letters)

    async def purge_dead(self, ids: Sequence[int] | None, subscription: str | None) -> int:
        letters = self._dead(ids, subscription)
        for letter in letters:
            del self.database.dead_letters[letter.id]
        return len(letters)

    async def stored_events(
        self,
        after: int,
        limit: int,
        *,
        envelope_ids: Sequence[str] | None = None,
        source: str | None = None,
        type_glob: str | None = None,
        since: float | None = None,
    ) -> list[StoredEvent]:
        wanted = set(envelope_ids) if envelope_ids else None
        out = []
        for e in sorted(self.database.events.values(), key=lambda e: e.id):
            if e.id <= after:
                continue
            if wanted is not None and e.envelope_id not in wanted:
                continue
            if source is not None and e.source != source:
                continue
            if type_glob is not None and not fnmatch.fnmatchcase(e.type, type_glob):
                continue
            if since is not None and e.ingested_at < since:
                continue
            out.append(StoredEvent(e.id, e.envelope_id, e.source, e.type, e.body))
            if len(out) == limit:
                break
        return out

    async def trace(self, envelope_id: str) -> Trace | None:
        source, upstream_id = split_id(envelope_id)
        event_id = self.database.event_keys.get((source, upstream_id))
        if event_id is None:
            return None
        e = self.database.events[event_id]
        deliveries = []
        for d in sorted(self.database.deliveries.values(), key=lambda d: d.id):
            if d.event_id != event_id:
                continue
            deliveries.append(
                DeliveryTrace.of(
                    d.subscription,
                    d.state,
                    d.next_attempt_at,
                    d.failures,
                    d.updated_at,
                    d.last_status,
                    d.last_duration,
                )
            )
        event = StoredEvent(e.id, e.envelope_id, e.source, e.type, e.body)
        return Trace(event, e.ingested_at, deliveries)

    async def enqueue(self, subscription: str, event_ids: Sequence[int], now: float) -> int:
        db, queued = self.database, 0
        for event_id in event_ids:
            if event_id not in db.events:
                continue  # deleted by retention since the replay looked it up
            delivery_id = db.pairs.get((event_id, subscription))
            if delivery_id is None:
                self._add_delivery(event_id, subscription, now)
                queued += 1
                continue
            d = db.deliveries[delivery_id]
            for letter in [x for x in db.dead_letters.values() if x.delivery_id == d.id]:
                del db.dead_letters[letter.id]
            if d.state != "in_flight":
                d.state, d.attempts, d.last_error = "pending", 0, None
                d.next_attempt_at = d.created_at = d.updated_at = now
                queued += 1
        if queued:
            self._work_arrived()
        return queued

    async def prune(
        self, now: float, delivered_for: float, dead_letters_for: float | None
    ) -> PruneResult:
        db, result = self.database, PruneResult()
        done_before = now - delivered_for
        if dead_letters_for is not None:
            for letter in list(db.dead_letters.values()):
                if letter.failed_at < now - dead_letters_for:
                    del db.dead_letters[letter.id]
                    d = db.deliveries.get(letter.delivery_id)
                    if d is not None and d.state == "dead":
                        self._drop(d)
                    result.dead_letters += 1
        lettered = {x.delivery_id for x in db.dead_letters.values()}
        for d in list(db.deliveries.values()):
            finished = d.state == "delivered" or (d.state == "dead" and d.id not in lettered)
            if finished and d.updated_at < done_before:
                if d.state == "delivered":
                    db.pruned_delivered[d.subscription] += 1
                self._drop(d)
                result.deliveries += 1
        referred = {d.event_id for d in db.deliveries.values()}
        for e in list(db.events.values()):
            if e.ingested_at < done_before and e.id not in referred:
                del db.events[e.id]
                del db.event_keys[(e.source, e.upstream_id)]
                result.events += 1
        for key, subject in list(db.subjects.items()):
            if subject.deleted and subject.fetched_at < done_before:
                del db.subjects[key]
                result.subjects += 1
        return result

    def _drop(self, d: _Delivery) -> None:
        del self.database.deliveries[d.id]
        del self.database.pairs[(d.event_id, d.subscription)]

    async def storage(self) -> Storage:
        size = sum(len(e.body) for e in self.database.events.values())
        return Storage(
            events=len(self.database.events),
            bytes=size,
            free_bytes=0,
            subjects=len(self.database.subjects),
        )
