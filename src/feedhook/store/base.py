"""What the rest of feedhook may ask of a store."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from feedhook.envelope import Envelope

# How long a claim stays its owner's without renewal (the worker renews a third of the way).
DEFAULT_LEASE = 30.0


def new_owner() -> str:
    """A claim owner's id: this process, on this host, from this start (never reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{time.time_ns():x}"


class StoreError(Exception):
    """The database cannot be used (newer schema, unreadable file, deleted, ...); the
    message says which database, what is wrong and what to do."""


class SourceLost(StoreError):
    """`ingest` refused: another worker holds the source's lease (this one stalled past
    its lease and was taken over). Nothing was written; the poller waits to take the
    source back and goes on from the stored cursor."""


# Not frozen, like the envelope: one of each is made per event or per delivery.
@dataclass(slots=True)
class IngestItem:
    """One normalized event and the subscriptions it was routed to; `ordered` names
    those of them that take each subject's events one at a time (`ordering: subject`)."""

    upstream_id: str
    envelope: Envelope
    subscriptions: Sequence[str]
    ordered: Collection[str] = ()


@dataclass(slots=True)
class Delivery:
    """A claimed (event, subscription) pair, ready for one attempt."""

    id: int
    subscription: str
    envelope_id: str
    body: bytes
    attempts: int
    created_at: float
    ingested_at: float


@dataclass(slots=True)
class Outcome:
    """What happened to one attempt, and what the policy decided."""

    delivery_id: int
    kind: Literal["delivered", "retry", "dead"]
    attempts: int
    at: float
    next_attempt_at: float | None = None
    status_code: int | None = None
    reason: str | None = None
    response_body: str | None = None
    duration: float | None = None  # seconds the attempt took


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt of a delivery as `trace` tells it: when it ended, the receiver's
    status (None: no answer), how long it took, what came of it and why."""

    at: float
    status: int | None
    duration: float | None
    outcome: Literal["delivered", "retry", "dead"]
    error: str | None = None


@dataclass(frozen=True, slots=True)
class DeliveryTrace:
    """What became of one event for one subscription: its state now, when it is due
    (pending), and every attempt, oldest first."""

    subscription: str
    state: str
    next_attempt_at: float | None
    attempts: list[Attempt]

    @classmethod
    def of(
        cls,
        subscription: str,
        state: str,
        next_attempt_at: float,
        failures: list[Attempt],
        updated_at: float,
        last_status: int | None,
        last_duration: float | None,
    ) -> DeliveryTrace:
        """From a delivery row and its recorded failures: a success is the row itself
        (never recorded apart), and only a pending delivery has a time it is due."""
        attempts = list(failures)
        if state == "delivered":
            attempts.append(Attempt(updated_at, last_status, last_duration, "delivered"))
        due = next_attempt_at if state == "pending" else None
        return cls(subscription, state, due, attempts)


@dataclass(frozen=True, slots=True)
class Trace:
    event: StoredEvent
    ingested_at: float
    deliveries: list[DeliveryTrace]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    delivery_id: int
    subscription: str
    envelope_id: str
    type: str
    attempts: int
    status_code: int | None
    reason: str
    response_body: str | None
    failed_at: float
    body: bytes | None = None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as stored: its row id (ingest order), ids, type and envelope bytes."""

    id: int
    envelope_id: str
    source: str
    type: str
    body: bytes


@dataclass(frozen=True, slots=True)
class SourceState:
    name: str
    cursor: str | None
    cursor_updated_at: float | None
    last_poll_at: float | None
    last_success_at: float | None
    last_error: str | None
    last_error_at: float | None
    poller: str | None = None  # who holds the source's lease now (several replicas)


@dataclass(slots=True)
class SubscriptionCounts:
    """Deliveries waiting (due later or in flight now), delivered and dead, and the dead
    letters waiting in the dead-letter table."""

    pending: int = 0
    delivered: int = 0
    dead: int = 0
    dead_letter: int = 0


@dataclass(slots=True)
class PruneResult:
    """What one pruning pass removed."""

    deliveries: int = 0
    dead_letters: int = 0
    events: int = 0
    subjects: int = 0

    def __bool__(self) -> bool:
        return bool(self.deliveries or self.dead_letters or self.events or self.subjects)


@dataclass(frozen=True, slots=True)
class Storage:
    """How much is stored: events kept, subjects' representations kept, and the
    database's size and reusable free space."""

    events: int
    bytes: int
    free_bytes: int
    subjects: int = 0


@dataclass(frozen=True, slots=True)
class Subject:
    """The last representation read of a resource events are about (its `subject` link),
    kept to tell the next event about it what changed."""

    url: str
    representation: Any  # JSON-able, as put in `data.resource`
    deleted: bool
    fetched_at: float


@dataclass(frozen=True, slots=True)
class SubscriptionState:
    """Where a subscription stands: `active`; `paused` (its receiver asked for a pause
    with Retry-After) or `circuit_open` (its receiver kept failing), both until `until`;
    `disabled` (its receiver answered 410 Gone, or an operator disabled it) until it is
    enabled. With why, and since when."""

    state: Literal["active", "paused", "circuit_open", "disabled"]
    reason: str | None = None
    since: float | None = None
    until: float | None = None

    def at(self, now: float) -> SubscriptionState:
        """The state as of `now`: a pause that ended is `active`."""
        if self.state == "paused" and self.until is not None and self.until <= now:
            return ACTIVE
        return self


ACTIVE = SubscriptionState("active")
DISABLED_BY_OPERATOR = "disabled by an operator"  # the reason `disable` is given by hand


@dataclass(frozen=True)
class Status:
    sources: dict[str, SourceState] = field(default_factory=dict)
    subscriptions: dict[str, SubscriptionCounts] = field(default_factory=dict)
    # The subscriptions not active, as stored (see Store.states).
    states: dict[str, SubscriptionState] = field(default_factory=dict)
    # The replicas alive (several on one database): each one's id, and when it was seen.
    replicas: dict[str, float] = field(default_factory=dict)


class Store(Protocol):
    """What the rest of feedhook may ask of a store. Times are passed in (seconds since
    the epoch) wherever a method's meaning depends on them; the store reads the clock
    itself only to stamp what it writes (`ingested_at`, `updated_at`)."""

    async def open(self) -> None:
        """Open, creating and migrating the schema as needed; StoreError with one line a
        person can act on when the store cannot be used. Nothing is left running after
        a failure."""

    async def close(self) -> None: ...

    async def __aenter__(self) -> Store: ...
    async def __aexit__(self, *exc: object) -> None: ...

    @property
    def locked_since(self) -> float | None:
        """Since when (clock time) a statement has been waiting on the database, if one
        is: readiness shows it, with `waiting_for`."""
        ...

    # Why statements wait, in words: SQLite, another program's lock; PostgreSQL, the
    # server not answering.
    waiting_for: str

    def check_identity(self) -> None:
        """Raise StoreError if the database this store opened is no longer the one at
        its address (deleted or replaced underneath the worker)."""

    # sources
    async def get_cursor(self, source: str) -> str | None: ...
    async def ingest(
        self,
        source: str,
        items: Sequence[IngestItem],
        cursor: str,
        subjects: Sequence[Subject] = (),
    ) -> Sequence[IngestItem]:
        """Write in one transaction: the items' events not stored yet (by `upstream_id`;
        the first of duplicates in `items` wins), each queued for its subscriptions
        (pending from now on; a durable store keeps them as runs that claims turn into
        deliveries, store/fanout.py), the cursor with a successful poll, and
        `subjects` (replacing the representation kept for each url). Each new event
        gets the next number of its source, in `items` order, as the envelope's
        CloudEvents `sequence` (`sequenced`: no gaps, so receivers can tell one is
        missing). Returns the items that were new.
        Idempotent: the same call again writes no event and no delivery. Raises
        SourceLost, writing nothing, while another owner holds an unexpired lease on
        the source."""
        ...

    async def subjects(self, source: str, urls: Collection[str]) -> dict[str, Subject]:
        """The representations kept for those of `urls` that have one."""
        ...

    async def lease_source(self, source: str, now: float) -> bool:
        """One poller per source: whether this owner may poll `source` until
        `now + lease` (granted when free or expired, renewed when already this owner's).
        A poller asks before it starts and again before every poll, and stops when it is
        refused. SQLite grants it always: its holder lock already keeps one `feedhook run`
        per database, and its ingest process is the only poller there."""
        ...

    # Seconds a poller waits, once it joined, before asking for its first source, so
    # that replicas started together see each other first (0 where one worker polls).
    settle: float

    async def join(self, now: float) -> None:
        """This owner is about to poll: count it among the live pollers the sources are
        shared out to (renewed by every `lease_source`). A no-op where one worker polls."""

    def on_work(self, wake: Callable[[], None]) -> None:
        """Have `wake` called whenever work may have arrived for the dispatchers: new
        deliveries written by `ingest` or `enqueue`, dead letters replayed. SQLite calls
        it for what this process writes (the ingest process's writes reach the worker
        through its reports); a shared store tells every worker."""

    async def set_cursor(self, source: str, cursor: str) -> None:
        """Store a source's starting cursor; not counted as a successful poll."""
        ...

    async def record_poll_error(self, source: str, at: float, error: str) -> None: ...

    # deliveries: claims are owned. Each store (a worker's connection) has an `owner` id;
    # a claim records it with a lease, `lease` seconds ahead, that the owner renews.

    owner: str
    lease: float

    async def recover_in_flight(self, now: float) -> int:
        """Claims whose owner is gone become pending again, and their count is returned:
        those whose lease ran out before `now`, and those of owners the store knows to be
        gone (SQLite's holder: every other owner). A live owner's claims are left alone."""
        ...

    async def renew(self, now: float) -> int:
        """Extend this owner's leases, its claims' and its sources', to `now + lease`;
        returns how many claims it holds."""
        ...

    async def claim_due(self, subscription: str, now: float, limit: int) -> list[Delivery]: ...
    async def claim(
        self, wants: Mapping[str, int], now: float, ordered: Collection[str] = ()
    ) -> list[Delivery]:
        """Mark due deliveries in flight under this owner, up to `wants[subscription]`
        for each, oldest due first. For the subscriptions in `ordered`, only each
        subject's oldest unfinished delivery (pending or in flight; its event's subject
        as routed with `IngestItem.ordered`) may be taken: one at a time per subject. A
        disabled subscription's deliveries are never claimed."""
        ...

    async def release(self, ids: Sequence[int]) -> None: ...
    async def next_due_at(self, subscriptions: Sequence[str]) -> float | None: ...
    async def resume(self, subscription: str, now: float) -> int:
        """A receiver is back (its circuit closed): its pending deliveries scheduled
        later than `now` become due at once, in ingest order; returns how many."""
        ...

    async def complete(self, outcomes: Sequence[Outcome]) -> None: ...

    # subscription states: `disabled` is the store's (claims obey it, on every worker);
    # `paused` and `circuit_open` are a worker's own, recorded for status to show.
    async def states(self) -> dict[str, SubscriptionState]:
        """The subscriptions whose stored state is not `active`."""
        ...

    async def record_state(self, subscription: str, state: SubscriptionState) -> None:
        """A worker's view of a receiver (`paused`, `circuit_open`, or `active` to clear
        it). A `disabled` state is never replaced by it."""
        ...

    async def disable(self, subscription: str, reason: str, at: float) -> bool:
        """Disable a subscription: its deliveries stay pending, none is claimed until it
        is enabled. False (nothing changed) when it already was disabled."""
        ...

    async def enable(self, subscription: str, now: float) -> bool:
        """Enable a disabled subscription: its pending deliveries become due at once, in
        ingest order, and workers are woken. False when it was not disabled."""
        ...

    # operations
    async def status(self) -> Status: ...
    async def counts(self) -> dict[str, SubscriptionCounts]: ...
    async def list_dead(
        self, subscription: str | None = None, limit: int = 100, after: int = 0
    ) -> list[DeadLetter]: ...
    async def get_dead(self, dead_id: int) -> DeadLetter | None: ...
    async def replay_dead(
        self, ids: Sequence[int] | None, subscription: str | None, now: float
    ) -> int: ...
    async def purge_dead(self, ids: Sequence[int] | None, subscription: str | None) -> int: ...
    async def prune(
        self, now: float, delivered_for: float, dead_letters_for: float | None
    ) -> PruneResult:
        """Remove finished work older than the retention: delivered deliveries (and dead
        ones whose dead letter is gone) finished more than `delivered_for` seconds ago,
        dead letters older than `dead_letters_for` (None: kept forever) with their
        deliveries, events older than `delivered_for` that no delivery refers to, and
        deleted subjects' representations read more than `delivered_for` ago (a live
        subject's one is kept while it lives). Never a pending or in-flight delivery.
        In short transactions; the lifetime `delivered` count is not lowered."""
        ...

    async def storage(self) -> Storage:
        """Events kept, and the database's size and free space (for status, not scraped)."""
        ...

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
        """A page of stored events in ingest order after row `after`, narrowed by the
        filters given (envelope ids, source, a type glob, ingested since)."""
        ...

    async def trace(self, envelope_id: str) -> Trace | None:
        """An event by its envelope id, and for each subscription it was routed to, every
        attempt: the failed ones as recorded by `complete`, and the delivery itself when
        it succeeded. None when no such event is stored (or it was pruned)."""
        ...

    async def enqueue(self, subscription: str, event_ids: Sequence[int], now: float) -> int:
        """Queue stored events for a subscription again, in one short transaction; new
        pairs created, delivered and dead ones reset (their dead letters removed), ones
        in flight left alone, ids no longer stored passed over. Returns how many were
        queued."""
        ...
