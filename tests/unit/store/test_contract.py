"""The store contract: every implementation passes the same tests (SQLite and the
in-memory twin). Implementation-specific behaviour (migrations, locks, triggers, the
holder lock) is tested beside each implementation."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from feedhook import clock
from feedhook.store import (
    ACTIVE,
    MemoryDatabase,
    MemoryStore,
    Outcome,
    SourceLost,
    SqliteStore,
    Store,
    Subject,
    SubscriptionState,
)
from feedhook.store.postgres import PostgresStore

from conftest import ingest_item


class Stores:
    """Opens stores of one kind over one database: several workers sharing it."""

    def __init__(self, kind: str, tmp_path: Path, postgres_url: str | None = None) -> None:
        self.kind = kind
        self.path = tmp_path / "contract.db"
        self.memory = MemoryDatabase()
        self.postgres_url = postgres_url
        self.opened: list[Store] = []

    async def open(self, **options: float) -> Store:
        store: Store
        if self.kind == "sqlite":
            store = SqliteStore(self.path, **options)  # type: ignore[arg-type]
        elif self.kind == "postgres":
            assert self.postgres_url is not None
            store = PostgresStore(self.postgres_url, **options)
        else:
            store = MemoryStore(self.memory, **options)  # type: ignore[arg-type]
        await store.open()
        self.opened.append(store)
        return store

    async def close(self) -> None:
        for store in self.opened:
            await store.close()


@pytest.fixture(params=["sqlite", "memory", "postgres"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    url = None
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
    opened = Stores(request.param, tmp_path, url)
    yield opened
    await opened.close()


@pytest.fixture
async def store(stores: Stores) -> Store:
    return await stores.open()


async def test_ingest_is_idempotent_per_upstream_id(store: Store) -> None:
    """Re-reading a page never creates a second event or a second delivery."""
    assert len(await store.ingest("seq", [ingest_item(1, ("a", "b")), ingest_item(2)], "2")) == 2
    fresh = await store.ingest("seq", [ingest_item(2), ingest_item(3)], "3")
    assert [i.upstream_id for i in fresh] == ["3"]
    assert await store.get_cursor("seq") == "3"
    status = await store.status()
    assert status.subscriptions["a"].pending == 3
    assert status.subscriptions["b"].pending == 1


async def test_ingest_is_one_transaction(store: Store) -> None:
    """A failure mid-page leaves neither the events nor the cursor behind."""
    await store.ingest("seq", [ingest_item(1)], "1")
    with pytest.raises(KeyError):
        # an item whose subscription list blows up while the rows are written
        class Boom(tuple):  # type: ignore[type-arg]
            def __iter__(self):  # type: ignore[no-untyped-def]
                raise KeyError("boom")

        await store.ingest("seq", [ingest_item(2, Boom(("a",)))], "2")
    assert await store.get_cursor("seq") == "1"
    assert (await store.status()).subscriptions["a"].pending == 1
    assert len(await store.ingest("seq", [ingest_item(2)], "2")) == 1  # the connection still works


async def test_claim_complete_and_recover(store: Store) -> None:
    """Claimed rows are in flight; outcomes are applied in one batch; a restart re-queues."""
    await store.ingest("seq", [ingest_item(n) for n in range(1, 6)], "5")
    claimed = await store.claim_due("a", now=1e12, limit=3)
    assert [d.envelope_id for d in claimed] == ["seq:1", "seq:2", "seq:3"]
    assert len(await store.claim_due("a", now=1e12, limit=10)) == 2
    assert await store.claim_due("a", now=1e12, limit=10) == []
    await store.complete(
        [
            Outcome(claimed[0].id, "delivered", 1, at=1.0, status_code=200),
            Outcome(
                claimed[1].id,
                "retry",
                1,
                at=1.0,
                next_attempt_at=2e12,
                status_code=500,
                reason="HTTP 500",
            ),
            Outcome(
                claimed[2].id,
                "dead",
                1,
                at=1.0,
                status_code=400,
                reason="permanent failure",
                response_body="bad request",
            ),
        ]
    )
    counts = (await store.status()).subscriptions["a"]
    assert (counts.delivered, counts.dead, counts.pending) == (1, 1, 3)
    assert await store.recover_in_flight(now=1e12) == 0  # ours, leased: left alone
    assert await store.recover_in_flight(now=1e13) == 2  # the lease ran out
    assert await store.next_due_at(["a"]) is not None
    assert await store.next_due_at(["nobody"]) is None
    dead = await store.list_dead()
    assert [(d.envelope_id, d.status_code, d.reason, d.response_body) for d in dead] == [
        ("seq:3", 400, "permanent failure", "bad request")
    ]


async def test_dead_letter_replay_and_purge(store: Store) -> None:
    """Replay puts the delivery back with a fresh budget; purge forgets it."""
    await store.ingest("seq", [ingest_item(1), ingest_item(2), ingest_item(3, ("b",))], "3")
    deliveries = await store.claim_due("a", 1e12, 10) + await store.claim_due("b", 1e12, 10)
    await store.complete([Outcome(d.id, "dead", 3, at=1.0, reason="x") for d in deliveries])
    letters = await store.list_dead()
    assert len(letters) == 3
    shown = await store.get_dead(letters[0].id)
    assert shown is not None and shown.body is not None and b'"seq:1"' in shown.body
    assert await store.replay_dead([letters[0].id], None, now=5.0) == 1
    assert await store.replay_dead(None, "b", now=5.0) == 1
    again = await store.claim_due("a", 1e12, 10)
    assert [(d.envelope_id, d.attempts) for d in again] == [("seq:1", 0)]
    assert await store.purge_dead(None, None) == 1
    assert await store.list_dead() == []


async def test_dead_letters_page(store: Store) -> None:
    """list_dead pages by id and filters by subscription."""
    await store.ingest("seq", [ingest_item(n, ("a", "b")) for n in range(1, 5)], "4")
    claimed = await store.claim_due("a", 1e12, 10) + await store.claim_due("b", 1e12, 10)
    await store.complete([Outcome(d.id, "dead", 1, at=1.0, reason="x") for d in claimed])
    first = await store.list_dead(limit=3)
    rest = await store.list_dead(after=first[-1].id)
    assert len(first) == 3 and len(rest) == 5
    assert {d.subscription for d in await store.list_dead("b")} == {"b"}


async def test_concurrent_transactions_do_not_interleave(store: Store) -> None:
    """Ingest and completions from different tasks share one connection safely."""
    await store.ingest("seq", [ingest_item(n) for n in range(1, 201)], "200")

    async def ingest_more() -> None:
        for page in range(10):
            base = 1000 + page * 50
            await store.ingest("seq", [ingest_item(base + n) for n in range(50)], str(base + 49))

    async def deliver() -> None:
        for _ in range(20):
            claimed = await store.claim_due("a", 1e12, 10)
            await store.complete([Outcome(d.id, "delivered", 1, at=1.0) for d in claimed])

    await asyncio.gather(ingest_more(), deliver())
    counts = (await store.status()).subscriptions["a"]
    assert counts.delivered + counts.pending == 700


async def test_replay_events_on_purpose(store: Store) -> None:
    """Stored events are queued again for a subscription: new pairs are created, delivered
    and dead ones reset (dead letters cleared), in-flight ones left alone."""
    items = [ingest_item(n) for n in range(1, 5)]
    object.__setattr__(items[3].envelope, "type", "sequence.task.created")
    await store.ingest("seq", items, "4")
    claimed = await store.claim_due("a", 1e12, 10)
    await store.complete(
        [
            Outcome(claimed[0].id, "delivered", 1, at=1.0),
            Outcome(claimed[1].id, "dead", 1, at=1.0, reason="x"),
        ]
    )  # claimed[2] and [3] stay in flight
    jobs = await store.stored_events(0, 100, type_glob="sequence.job.*")
    assert [e.envelope_id for e in jobs] == ["seq:1", "seq:2", "seq:3"]
    assert await store.enqueue("b", [e.id for e in jobs], 5.0) == 3
    everything = [e.id for e in await store.stored_events(0, 100, source="seq")]
    assert await store.enqueue("a", everything, 5.0) == 2  # not the in-flight two
    assert await store.list_dead() == []
    counts = (await store.status()).subscriptions
    assert (counts["a"].pending, counts["b"].pending) == (4, 3)
    (last,) = await store.stored_events(0, 100, envelope_ids=["seq:4"])
    assert await store.enqueue("b", [last.id], 5.0) == 1
    assert await store.stored_events(0, 100, since=1e12) == []
    assert [e.envelope_id for e in await store.stored_events(jobs[1].id, 1)] == ["seq:3"]


async def test_replay_skips_events_no_longer_stored(store: Store) -> None:
    """An event retention deleted between a replay's lookup and its queueing is passed
    over: the others are queued, nothing points at a missing event."""
    await store.ingest("seq", [ingest_item(1)], "1")
    (event,) = await store.stored_events(0, 10)
    assert await store.enqueue("b", [event.id, event.id + 1000], 5.0) == 1
    claimed = await store.claim_due("b", 1e12, 10)
    assert [d.envelope_id for d in claimed] == ["seq:1"]


async def test_one_claim_serves_many_subscriptions(store: Store) -> None:
    """A claim for several lanes takes at most each lane's share, oldest first, and every
    body travels with its own delivery."""
    await store.ingest("seq", [ingest_item(n, ("a", "b", "c")) for n in range(1, 11)], "10")
    claimed = await store.claim({"a": 3, "b": 20, "c": 0}, now=1e12)
    by_lane: dict[str, list[str]] = {}
    for d in claimed:
        by_lane.setdefault(d.subscription, []).append(d.envelope_id)
        assert f'"id":"{d.envelope_id}"'.encode() in d.body
    assert by_lane == {
        "a": ["seq:1", "seq:2", "seq:3"],
        "b": [f"seq:{n}" for n in range(1, 11)],
    }
    assert [d.subscription for d in await store.claim({"a": 100, "b": 1}, 1e12)] == ["a"] * 7
    assert await store.claim({"a": 5, "c": 0}, now=1e12) == []


async def test_one_claim_serves_a_thousand_subscriptions(store: Store) -> None:
    """1,000 lanes of different appetites in one claim: each gets its own earliest due
    deliveries, exactly as many as it asked for (SQLite's 500-term limit never applies)."""
    names = [f"s{i:04d}" for i in range(1000)]
    for start in range(0, 30, 10):
        await store.ingest(
            "seq", [ingest_item(n, tuple(names)) for n in range(start, start + 10)], "x"
        )
    wants = {name: 1 + i % 17 for i, name in enumerate(names)}
    claimed = await store.claim(wants, now=1e12)
    by_lane: dict[str, list[str]] = {}
    for delivery in claimed:
        by_lane.setdefault(delivery.subscription, []).append(delivery.envelope_id)
    assert {name: len(ids) for name, ids in by_lane.items()} == wants
    assert by_lane["s0016"] == [f"seq:{n}" for n in range(17)]  # oldest first
    assert await store.next_due_at(names) is not None
    assert await store.next_due_at(["nobody"]) is None


async def test_prune_removes_finished_work_only(store: Store) -> None:
    """Past the retention: delivered deliveries go, then events nothing refers to; dead
    letters go after their own retention, with their deliveries. Pending and in-flight
    deliveries, their events and younger rows stay; the delivered count is a lifetime
    total that pruning does not lower."""
    base = time.time()  # rows are written at the real time: the test's clock runs ahead
    await store.ingest("seq", [ingest_item(n, ("a", "b")) for n in range(1, 7)], "6")
    claimed = await store.claim({"a": 10, "b": 10}, now=1e12)
    a = sorted((d for d in claimed if d.subscription == "a"), key=lambda d: d.id)
    b = sorted((d for d in claimed if d.subscription == "b"), key=lambda d: d.id)
    await store.complete(
        [Outcome(d.id, "delivered", 1, at=base + 100) for d in a]  # all of a's: delivered long ago
        + [Outcome(d.id, "delivered", 1, at=base + 100) for d in b[:2]]
        + [Outcome(b[2].id, "dead", 1, at=base + 100, reason="x")]  # a dead letter, long ago
        + [Outcome(b[3].id, "dead", 1, at=base + 5000, reason="x")]  # a recent dead letter
        + [Outcome(b[4].id, "delivered", 1, at=base + 5000)]  # delivered recently
    )  # b[5] stays in flight
    before = await store.counts()
    assert (before["a"].delivered, before["b"].delivered) == (6, 3)

    keep_dead = await store.prune(now=base + 6000, delivered_for=1000.0, dead_letters_for=None)
    assert (keep_dead.deliveries, keep_dead.dead_letters) == (8, 0)
    assert keep_dead.events == 2  # seq:1 and seq:2: delivered to both, nothing left
    assert len(await store.list_dead()) == 2

    removed = await store.prune(now=base + 6000, delivered_for=1000.0, dead_letters_for=1000.0)
    assert (removed.deliveries, removed.dead_letters, removed.events) == (0, 1, 1)
    assert [d.envelope_id for d in await store.list_dead()] == ["seq:4"]
    left = {e.envelope_id for e in await store.stored_events(0, 100)}
    assert left == {"seq:4", "seq:5", "seq:6"}  # a dead letter, a recent delivery, in flight
    after = await store.counts()
    assert (after["a"].delivered, after["b"].delivered, after["b"].pending) == (6, 3, 1)
    assert (await store.storage()).events == 3
    # Nothing more to do: a second pass removes nothing.
    assert not await store.prune(now=base + 6000, delivered_for=1000.0, dead_letters_for=1000.0)


async def test_a_worker_leaves_another_workers_live_claims_alone(stores: Stores) -> None:
    """Claims are owned: a second worker's recovery and claims never touch the first's
    while its lease runs; once the lease runs out they are taken back, and the first
    worker's late outcome for them is ignored (the claim is no longer its)."""
    first, second = await stores.open(lease=30.0), await stores.open(lease=30.0)
    t = time.time() + 1  # after the rows' ingest: they are due
    await first.ingest("seq", [ingest_item(n) for n in range(1, 6)], "5")
    mine = await first.claim({"a": 3}, now=t + 0)
    assert await second.recover_in_flight(now=t + 10) == 0
    theirs = await second.claim({"a": 10}, now=t + 10)
    assert [d.envelope_id for d in theirs] == ["seq:4", "seq:5"]
    assert await first.renew(now=t + 20) == 3  # leases now run to t + 50
    assert await second.recover_in_flight(now=t + 40) == 0
    assert await second.renew(now=t + 40) == 2  # its own two, to t + 70
    assert await second.recover_in_flight(now=t + 51) == 3  # first stopped renewing
    await first.complete([Outcome(d.id, "delivered", 1, at=t + 52) for d in mine])
    assert (await second.counts())["a"].delivered == 0  # the late outcome did not land
    again = await second.claim({"a": 10}, now=t + 53)
    assert [d.envelope_id for d in again] == ["seq:1", "seq:2", "seq:3"]
    await second.complete([Outcome(d.id, "delivered", 1, at=t + 54) for d in again + theirs])
    assert (await first.counts())["a"].delivered == 5


async def test_release_and_outcomes_apply_to_ones_own_claims(stores: Stores) -> None:
    """A worker cannot release or complete a delivery another worker holds."""
    first, second = await stores.open(), await stores.open()
    t = time.time() + 1
    await first.ingest("seq", [ingest_item(1)], "1")
    (held,) = await first.claim({"a": 1}, now=t + 0)
    await second.release([held.id])
    await second.complete([Outcome(held.id, "dead", 1, at=t + 1, reason="x")])
    assert await second.list_dead() == []
    assert await second.claim({"a": 1}, now=t + 2) == []  # still the first's
    await first.release([held.id])
    assert [d.id for d in await second.claim({"a": 1}, now=t + 3)] == [held.id]


async def test_work_arriving_wakes_the_dispatchers(stores: Stores) -> None:
    """Ingested deliveries, queued replays and replayed dead letters call `on_work`."""
    store = await stores.open()
    woken: list[str] = []
    store.on_work(lambda: woken.append("x"))
    await store.ingest("seq", [ingest_item(1, ())], "1")  # an event nobody receives: no work
    assert woken == []
    await store.ingest("seq", [ingest_item(2)], "2")
    assert len(woken) == 1
    (delivery,) = await store.claim({"a": 1}, now=time.time() + 1)
    await store.complete([Outcome(delivery.id, "dead", 1, at=time.time(), reason="x")])
    await store.replay_dead(None, None, now=time.time())
    assert len(woken) == 2
    (first, *_) = await store.stored_events(0, 10)
    await store.enqueue("b", [first.id], now=time.time())
    assert len(woken) == 3


async def test_a_poller_may_keep_its_own_source(stores: Stores) -> None:
    """A source lease is granted to a poller and renewed for it as often as it asks."""
    store = await stores.open(lease=30.0)
    now = time.time()
    assert await store.lease_source("seq", now)
    assert await store.lease_source("seq", now + 20)
    assert await store.lease_source("other", now)


async def test_one_poller_per_source_on_a_shared_store(stores: Stores) -> None:
    """Where several workers share a store, the second is refused a source while the
    first's lease runs, and takes it over once it ran out; while the first holds it, the
    second's ingest is refused (SourceLost) and writes nothing: no page, no cursor."""
    if stores.kind == "sqlite":
        pytest.skip("SQLite has one holder: its leases are always granted")
    first, second = await stores.open(lease=30.0), await stores.open(lease=30.0)
    assert await first.lease_source("seq", 1000.0)
    assert not await second.lease_source("seq", 1010.0)
    assert await first.lease_source("seq", 1020.0)  # renewed: to 1050
    assert not await second.lease_source("seq", 1049.0)
    assert await second.lease_source("seq", 1051.0)
    assert not await first.lease_source("seq", 1052.0)

    now = time.time()
    assert await first.lease_source("live", now)
    await first.ingest("live", [ingest_item(1)], "1")
    with pytest.raises(SourceLost):
        await second.ingest("live", [ingest_item(2)], "2")
    assert await second.get_cursor("live") == "1"
    assert [e.envelope_id for e in await second.stored_events(0, 10)] == ["seq:1"]
    await first.renew(now + 25)  # keeps its source as it keeps its claims
    assert not await second.lease_source("live", now + 40)


async def test_subjects_are_written_with_their_page_and_pruned_once_deleted(
    store: Store,
) -> None:
    """A subject's representation is written in the ingest transaction (replacing the
    one kept), read back per source, and a deleted one goes with the retention while a
    live one stays however old."""
    job, gone = "https://x/api/work_areas/1/jobs/1", "https://x/api/work_areas/1/jobs/2"
    first = [Subject(job, {"status": "pending", "n": 2**70}, False, 100.0)]
    await store.ingest("seq", [ingest_item(1)], "1", first)
    assert await store.subjects("seq", [job, gone]) == {job: first[0]}
    assert await store.subjects("other", [job]) == {}
    later = [
        Subject(job, {"status": "done"}, False, 200.0),
        Subject(gone, {"status": "pending"}, True, 200.0),
    ]
    await store.ingest("seq", [ingest_item(2)], "2", later)
    assert await store.subjects("seq", [job, gone]) == {job: later[0], gone: later[1]}
    assert (await store.storage()).subjects == 2
    result = await store.prune(now=1500.0, delivered_for=1000.0, dead_letters_for=None)
    assert result.subjects == 1
    assert await store.subjects("seq", [job, gone]) == {job: later[0]}


async def test_each_new_event_gets_the_next_number_of_its_source(store: Store) -> None:
    """The CloudEvents `sequence`: per source, consecutive over batches, duplicates
    skipped without a gap, strings that sort as the numbers do."""
    await store.ingest("seq", [ingest_item(1), ingest_item(2)], "2")
    await store.ingest("seq", [ingest_item(2), ingest_item(3)], "3")
    claimed = await store.claim({"a": 10}, now=time.time())
    sequences = [json.loads(d.body)["sequence"] for d in claimed]
    assert sequences == sorted(sequences)
    assert [int(x) for x in sequences] == [1, 2, 3]
    assert len(set(map(len, sequences))) == 1


async def test_an_ordered_subscription_takes_one_delivery_per_subject_at_a_time(
    store: Store,
) -> None:
    """`ordering: subject`: only each subject's oldest unfinished delivery is claimed; a
    retry scheduled later holds back its own subject only; a dead one lets the next go;
    an unordered subscription of the same events takes them all."""
    items = [
        ingest_item(n, ("a", "b"), subject=f"job/{n % 2}", ordered=("a",)) for n in range(1, 7)
    ]
    await store.ingest("seq", items, "6")
    now = time.time()
    first = await store.claim({"a": 10}, now, ordered={"a"})
    assert sorted(json.loads(d.body)["data"]["n"] for d in first) == [1, 2]
    assert await store.claim({"a": 10}, now, ordered={"a"}) == []  # both subjects busy
    assert len(await store.claim({"b": 10}, now, ordered={"a"})) == 6
    one, two = sorted(first, key=lambda d: d.id)
    await store.complete(
        [
            Outcome(one.id, "retry", 1, now, next_attempt_at=now + 60),  # job/1 waits
            Outcome(two.id, "dead", 1, now, reason="gone"),  # job/0 goes on
        ]
    )
    (next_one,) = await store.claim({"a": 10}, now + 1, ordered={"a"})
    assert json.loads(next_one.body)["data"]["n"] == 4
    retried = await store.claim({"a": 10}, now + 61, ordered={"a"})
    assert [json.loads(d.body)["data"]["n"] for d in retried] == [1]


async def test_a_clock_stepped_back_keeps_a_subject_in_line(store: Store) -> None:
    """The clock steps back (NTP) between two events about one subject: the older still
    goes first, the younger only after it."""
    now = time.time()
    try:
        clock.set_clock(lambda: now)
        await store.ingest("seq", [ingest_item(1, ("a",), "job/1", ("a",))], "1")
        clock.set_clock(lambda: now - 100)
        await store.ingest("seq", [ingest_item(2, ("a",), "job/1", ("a",))], "2")
    finally:
        clock.set_clock(None)
    sent = []
    for _ in range(2):
        (first,) = await store.claim({"a": 1}, now + 1, ordered={"a"})
        await store.complete([Outcome(first.id, "delivered", 1, now + 1)])
        sent.append(json.loads(first.body)["data"]["n"])
    assert sent == [1, 2]


async def test_a_delivery_queued_again_is_not_held_in_line(store: Store) -> None:
    """A finished delivery leaves its subject's line: replayed, it goes out beside the
    subject's later ones instead of holding them back (README: events queued again by
    `feedhook replay` are not held in order)."""
    items = [ingest_item(n, ("a",), subject="job/1", ordered=("a",)) for n in (1, 2)]
    await store.ingest("seq", items, "2")
    now = time.time()
    (first,) = await store.claim({"a": 10}, now, ordered={"a"})
    await store.complete([Outcome(first.id, "delivered", 1, now)])
    (event, _) = await store.stored_events(0, 10)
    assert await store.enqueue("a", [event.id], now) == 1
    both = await store.claim({"a": 10}, now, ordered={"a"})
    assert sorted(json.loads(d.body)["data"]["n"] for d in both) == [1, 2]


async def test_a_disabled_subscription_is_never_claimed_until_enabled(stores: Stores) -> None:
    """Disabled: nothing of it is claimed by any worker, the rest flows; the state is
    stored with why and since when; a worker's paused/circuit notes never replace it;
    enabled, its deliveries (a retry scheduled later included) are due at once."""
    one, other = await stores.open(), await stores.open()
    await one.ingest("seq", [ingest_item(n, ("a", "b")) for n in (1, 2, 3)], "3")
    now = time.time()
    (first,) = await one.claim({"a": 1}, now)
    await one.complete([Outcome(first.id, "retry", 1, now, next_attempt_at=now + 3600)])
    assert await one.disable("a", "HTTP 410 Gone", now)
    assert not await other.disable("a", "again", now + 1)
    await other.record_state("a", SubscriptionState("circuit_open", "x", now, now + 30))
    state = (await other.states())["a"]
    assert (state.state, state.reason, state.since) == ("disabled", "HTTP 410 Gone", now)
    assert (await other.status()).states["a"].state == "disabled"
    assert await other.claim({"a": 10, "b": 10}, now) != []
    assert await one.claim({"a": 10}, now) == []
    assert await other.enable("a", now + 2)
    assert not await other.enable("a", now + 3)
    assert "a" not in await one.states()
    again = await one.claim({"a": 10}, now + 2)
    assert len(again) == 3 and first.id in {d.id for d in again}


async def test_a_workers_receiver_notes_are_stored_and_cleared(store: Store) -> None:
    now = time.time()
    paused = SubscriptionState("paused", "HTTP 429 with Retry-After", now, now + 5)
    await store.record_state("a", paused)
    assert (await store.states())["a"] == paused
    assert paused.at(now + 6).state == "active"
    await store.record_state("a", ACTIVE)
    assert await store.states() == {}


async def test_a_retry_put_back_at_its_creation_keeps_its_place(store: Store) -> None:
    """A failed delivery scheduled at its own `created_at` (the circuit breaker keeping it
    in line) is claimed before later ones: the time read back from a claim is exact."""
    clock.set_clock(lambda: 1795536123.4567891)  # 17 digits: kept only if nothing rounds
    try:
        await store.ingest("seq", [ingest_item(1), ingest_item(2)], "2")
    finally:
        clock.set_clock(None)
    now = time.time()
    (first,) = await store.claim({"a": 1}, now)
    await store.complete([Outcome(first.id, "retry", 0, now, next_attempt_at=first.created_at)])
    (again,) = await store.claim({"a": 1}, now)
    assert again.id == first.id and again.created_at == 1795536123.4567891


async def test_a_trace_tells_every_attempt_for_every_subscription(store: Store) -> None:
    """`trace`: the event, and per subscription its state and attempts, oldest first:
    failed ones as recorded, the successful one from the delivery; unknown ids are None."""
    await store.ingest("seq", [ingest_item(1, ("a", "b"))], "1")
    now = time.time()
    first = {d.subscription: d for d in await store.claim({"a": 1, "b": 1}, now)}
    await store.complete(
        [
            Outcome(first["a"].id, "retry", 1, now + 1, now + 1, 503, "HTTP 503", duration=0.5),
            Outcome(first["b"].id, "dead", 1, now + 1, None, 400, "HTTP 400", duration=0.2),
        ]
    )
    (again,) = await store.claim({"a": 1}, now + 2)
    await store.complete(
        [Outcome(again.id, "delivered", 2, now + 3, status_code=200, duration=0.1)]
    )
    trace = await store.trace("seq:1")
    assert trace is not None and trace.event.envelope_id == "seq:1"
    by = {d.subscription: d for d in trace.deliveries}
    assert [(x.outcome, x.status, x.at) for x in by["a"].attempts] == [
        ("retry", 503, now + 1),
        ("delivered", 200, now + 3),
    ]
    assert by["a"].state == "delivered" and by["a"].attempts[0].error == "HTTP 503"
    assert by["a"].attempts[1].duration == 0.1
    assert [(x.outcome, x.status) for x in by["b"].attempts] == [("dead", 400)]
    assert by["b"].state == "dead"
    assert await store.trace("seq:404") is None
    assert await store.trace("nonsense") is None


async def test_one_claim_takes_what_it_wants_however_small_the_runs(store: Store) -> None:
    """Events ingested one page of one at a time (a queued run each) are claimed as
    many as wanted in one claim, oldest first, and the rest by the next."""
    for n in range(1, 201):
        await store.ingest("seq", [ingest_item(n, ("a", "b"))], str(n))
    first = await store.claim({"a": 150, "b": 3}, 2e9)
    by: dict[str, list[str]] = {"a": [], "b": []}
    for delivery in first:
        by[delivery.subscription].append(delivery.envelope_id)
    assert by == {"a": [f"seq:{n}" for n in range(1, 151)], "b": ["seq:1", "seq:2", "seq:3"]}
    rest = await store.claim({"a": 500}, 2e9)
    assert [d.envelope_id for d in rest] == [f"seq:{n}" for n in range(151, 201)]


async def test_a_batch_of_outcomes_is_recorded_whole_whatever_its_size(store: Store) -> None:
    """Outcomes of every size of batch land on their own deliveries: successes (the
    hot path, written by size class) beside failures, past the largest class."""
    await store.ingest("seq", [ingest_item(n) for n in range(1, 1101)], "1100")
    now = time.time()
    claimed = await store.claim({"a": 1100}, now)
    assert len(claimed) == 1100
    first, rest = claimed[:17], claimed[17:]
    await store.complete(
        [Outcome(d.id, "delivered", 1, now + 1, status_code=200, duration=0.5) for d in first]
    )
    outcomes = [
        Outcome(d.id, "delivered", 1, now + 2, status_code=201, duration=n / 1000)
        for n, d in enumerate(rest[:-10])
    ]
    outcomes += [
        Outcome(d.id, "retry", 1, now + 2, now + 60, 503, "HTTP 503") for d in rest[-10:-5]
    ]
    outcomes += [Outcome(d.id, "dead", 1, now + 2, None, 400, "HTTP 400") for d in rest[-5:]]
    await store.complete(outcomes)
    counts = (await store.status()).subscriptions["a"]
    assert (counts.delivered, counts.pending, counts.dead, counts.dead_letter) == (1090, 5, 5, 5)
    for delivery, at, status, duration in (
        (first[16], now + 1, 200, 0.5),
        (rest[0], now + 2, 201, 0.0),
        (rest[1072], now + 2, 201, 1.072),
    ):
        trace = await store.trace(delivery.envelope_id)
        assert trace is not None
        (one,) = trace.deliveries
        assert one.state == "delivered"
        assert [(x.outcome, x.at, x.status, x.duration) for x in one.attempts] == [
            ("delivered", at, status, duration)
        ]
    retried = await store.trace(rest[-6].envelope_id)
    assert retried is not None and retried.deliveries[0].state == "pending"
    assert [d.envelope_id for d in await store.list_dead()] == [d.envelope_id for d in rest[-5:]]


async def test_every_pair_is_claimed_once_in_order_however_events_are_routed(
    store: Store,
) -> None:
    """Events routed to different sets of subscriptions, a page ingested twice, claims of
    every size, a replay of an event not yet claimed: each subscription gets each of its
    events exactly once, in ingest order, and the counts follow."""
    wanted = {
        "a": list(range(1, 46)),
        "b": [n for n in range(1, 46) if n % 3 == 0],
        "c": [n for n in range(1, 46) if n <= 10 or n > 20],
    }

    def routed(n: int) -> tuple[str, ...]:
        return tuple(name for name, ns in wanted.items() if n in ns)

    for first, last in ((1, 20), (15, 35), (36, 45)):
        await store.ingest("seq", [ingest_item(n, routed(n)) for n in range(first, last + 1)], "x")
    counts = await store.counts()
    assert {name: counts[name].pending for name in wanted} == {"a": 45, "b": 15, "c": 35}
    (thirty,) = await store.stored_events(0, 1, envelope_ids=["seq:30"])
    got: dict[str, list[int]] = {name: [] for name in wanted}
    sizes = iter([1, 7, 2, 5, 3, 64] * 10)
    for _ in range(40):
        claimed = await store.claim({name: next(sizes) for name in wanted}, now=1e12)
        if not claimed:
            break
        for d in claimed:
            got[d.subscription].append(json.loads(d.body)["data"]["n"])
        await store.complete([Outcome(d.id, "delivered", 1, at=1.0) for d in claimed])
        if len(got["c"]) == 5:
            assert await store.enqueue("c", [thirty.id], 2.0) == 1  # not claimed yet
    assert got == wanted
    counts = await store.counts()
    assert {name: (counts[name].pending, counts[name].delivered) for name in wanted} == {
        "a": (0, 45),
        "b": (0, 15),
        "c": (0, 35),
    }
    assert await store.next_due_at(list(wanted)) is None


async def test_work_not_yet_claimed_is_due_traced_and_kept(store: Store) -> None:
    """Ingested and not yet claimed: due at once, traced as pending with no attempt, and
    its event kept by retention however old it is."""
    now = time.time()
    clock.set_clock(lambda: now - 10_000)
    try:
        await store.ingest("seq", [ingest_item(n, ("a", "b")) for n in (1, 2)], "2")
    finally:
        clock.set_clock(None)
    assert (await store.next_due_at(["b"]) or now) <= now - 10_000 + 1
    claimed = await store.claim({"a": 10}, now)
    await store.complete([Outcome(d.id, "delivered", 1, at=now - 5000) for d in claimed])
    trace = await store.trace("seq:2")
    assert trace is not None
    by = {d.subscription: d for d in trace.deliveries}
    assert (by["a"].state, [x.outcome for x in by["a"].attempts]) == ("delivered", ["delivered"])
    assert (by["b"].state, by["b"].attempts) == ("pending", [])
    assert by["b"].next_attempt_at is not None and by["b"].next_attempt_at <= now
    pruned = await store.prune(now=now, delivered_for=1000.0, dead_letters_for=None)
    assert (pruned.deliveries, pruned.events) == (2, 0)  # a's went; b still wants the events
    assert [d.envelope_id for d in await store.claim({"b": 10}, now)] == ["seq:1", "seq:2"]


async def test_a_lane_that_waits_keeps_only_its_own_events(store: Store) -> None:
    """A disabled subscription's queue holds its own events back from retention, not the
    events around them that others finished with."""
    now = time.time()
    clock.set_clock(lambda: now - 10_000)
    try:
        shapes = {n: ("a", "b") if n % 2 else ("a",) for n in range(1, 7)}
        await store.ingest("seq", [ingest_item(n, shapes[n]) for n in shapes], "6")
    finally:
        clock.set_clock(None)
    await store.disable("b", "by hand", now)
    claimed = await store.claim({"a": 10, "b": 10}, now)
    assert {d.subscription for d in claimed} == {"a"}
    await store.complete([Outcome(d.id, "delivered", 1, at=now - 5000) for d in claimed])
    pruned = await store.prune(now=now, delivered_for=1000.0, dead_letters_for=None)
    assert (pruned.deliveries, pruned.events) == (6, 3)
    left = [e.envelope_id for e in await store.stored_events(0, 100)]
    assert left == ["seq:1", "seq:3", "seq:5"]
    await store.enable("b", now)
    assert [d.envelope_id for d in await store.claim({"b": 10}, now)] == left
