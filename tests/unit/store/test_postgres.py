"""What only the PostgreSQL store does (a real server): its driver, its schema guard,
and wake-ups that cross replicas. The shared contract is in test_contract.py."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable

import asyncpg
import pytest

from feedhook.store import Delivery, Outcome, StoreError, open_store
from feedhook.store import postgres as postgres_store
from feedhook.store.postgres import SCHEMA_VERSION, PostgresStore

from conftest import eventually, ingest_item


def test_without_the_driver_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres_store, "asyncpg", None)
    with pytest.raises(StoreError, match=r"pip install 'feedhook\[postgres\]'"):
        open_store("postgresql://feedhook@127.0.0.1/feedhook")


async def test_a_replica_older_than_the_schema_refuses_to_start(postgres_url: str) -> None:
    async with PostgresStore(postgres_url):
        pass
    db = await asyncpg.connect(postgres_url)
    try:
        await db.execute("INSERT INTO feedhook_schema (version) VALUES ($1)", SCHEMA_VERSION + 1)
    finally:
        await db.close()
    with pytest.raises(StoreError, match="newer than this feedhook understands"):
        await PostgresStore(postgres_url).open()


async def test_migration_takes_finished_deliveries_out_of_line(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Upgraded to lines kept by ordering_key alone: a delivery finished before the
    upgrade does not hold back its subject's next one, an unfinished one still does."""
    original = postgres_store.MIGRATIONS
    before = next(n for n, m in enumerate(original) if "DROP INDEX deliveries_ordered" in m)
    monkeypatch.setattr(postgres_store, "MIGRATIONS", original[:before])
    monkeypatch.setattr(postgres_store, "SCHEMA_VERSION", before)
    async with PostgresStore(postgres_url):
        pass
    db = await asyncpg.connect(postgres_url)
    try:  # as that version wrote them
        for n, state in ((1, "delivered"), (2, "pending"), (3, "pending")):
            await db.execute(
                "INSERT INTO events (id, source, upstream_id, envelope_id, type, body,"
                " ingested_at) VALUES ($1, 'seq', $2, $3, 't', '{}', 1.0)",
                n,
                str(n),
                f"seq:{n}",
            )
            await db.execute(
                "INSERT INTO deliveries (event_id, subscription, state, next_attempt_at,"
                " created_at, updated_at, ordering_key) VALUES ($1, 'a', $2, 1.0, 1.0, 1.0,"
                " 'job/7')",
                n,
                state,
            )
    finally:
        await db.close()
    monkeypatch.setattr(postgres_store, "MIGRATIONS", original)
    monkeypatch.setattr(postgres_store, "SCHEMA_VERSION", len(original))
    async with PostgresStore(postgres_url) as store:
        (second,) = await store.claim({"a": 10}, now=1e12, ordered={"a"})
        assert second.envelope_id == "seq:2"
        assert await store.claim({"a": 10}, now=1e12, ordered={"a"}) == []


async def test_an_ingest_on_one_replica_wakes_the_others(postgres_url: str) -> None:
    """LISTEN/NOTIFY: work written through one store wakes every other store's
    dispatchers at once, and its own once (not again through its own notification)."""
    async with PostgresStore(postgres_url) as one, PostgresStore(postgres_url) as other:
        woken = {"one": 0, "other": 0}
        one.on_work(lambda: woken.__setitem__("one", woken["one"] + 1))
        other.on_work(lambda: woken.__setitem__("other", woken["other"] + 1))
        await one.ingest("seq", [ingest_item(1)], "1")
        await eventually(lambda: woken["other"] == 1, timeout=5, what="the other replica")
        await asyncio.sleep(0.2)
        assert woken == {"one": 1, "other": 1}


async def test_a_claim_whose_answer_was_lost_is_not_kept_forever(postgres_url: str) -> None:
    """A claim committed but never seen by this replica (its answer lost with the
    connection, the call retried) is not renewed with the ones it holds: it expires and
    any replica sends it again."""
    async with PostgresStore(postgres_url, lease=30.0) as store:
        await store.ingest("seq", [ingest_item(1), ingest_item(2)], "2")
        now = time.time()
        (held,) = await store.claim({"a": 1}, now=now)
        db = await asyncpg.connect(postgres_url)
        try:  # the lost answer: claimed in the database under this owner, never returned
            await db.execute(
                "WITH taken AS (DELETE FROM queued_runs RETURNING subscription, events)"
                " INSERT INTO deliveries (event_id, subscription, state, next_attempt_at,"
                " created_at, updated_at, owner, lease_until) SELECT unnest(events),"
                " subscription, 'in_flight', 1.0, 1.0, 1.0, $1, $2 FROM taken",
                store.owner,
                now + 30,
            )
        finally:
            await db.close()
        assert await store.renew(now + 20) == 1  # the one it holds, to now + 50
        assert await store.recover_in_flight(now + 40) == 1  # the lost one: due again
        (again,) = await store.claim({"a": 5}, now=now + 41)
        assert again.id != held.id


async def test_a_deadlock_is_retried_not_fatal(postgres_url: str) -> None:
    """Two transactions wait for each other's rows (here: another session, and the
    store writing outcomes): PostgreSQL aborts one. When it is the store's, the whole
    transaction is tried again rather than stopping the replica."""
    async with PostgresStore(postgres_url, lease=30.0) as store:
        await store.ingest("seq", [ingest_item(1), ingest_item(2)], "2")
        now = time.time()
        first, second = await store.claim({"a": 2}, now=now)
        other = await asyncpg.connect(postgres_url)
        try:
            lock = other.transaction()
            await lock.start()
            await other.execute("SELECT 1 FROM deliveries WHERE id = $1 FOR UPDATE", second.id)
            outcomes = [delivered(first, now), delivered(second, now)]
            completing = asyncio.create_task(store.complete(outcomes))
            await asyncio.sleep(0.2)  # the store holds the first row, waits for the second
            # This session now waits for the first: a cycle, found after deadlock_timeout.
            with contextlib.suppress(asyncpg.DeadlockDetectedError):
                await other.execute("UPDATE deliveries SET attempts = 0 WHERE id = $1", first.id)
            await lock.commit()
            await asyncio.wait_for(completing, 10)
        finally:
            await other.close()
        counts = await store.counts()
        assert counts["a"].delivered == 2


def delivered(delivery: Delivery, at: float) -> Outcome:
    return Outcome(delivery.id, "delivered", delivery.attempts + 1, at, status_code=200)


async def test_an_event_another_writer_stored_first_is_not_queued_twice(
    postgres_url: str,
) -> None:
    """An event that went in elsewhere between the check and the insert (a trigger
    stands in for the race here) is not this batch's: the rest are stored and queued,
    and only they are reported new."""
    async with PostgresStore(postgres_url) as store:
        db = await asyncpg.connect(postgres_url)
        try:
            await db.execute(
                "CREATE FUNCTION skip_two() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                " IF NEW.upstream_id = '2' THEN RETURN NULL; END IF; RETURN NEW; END $$;"
                " CREATE TRIGGER skip_two BEFORE INSERT ON events FOR EACH ROW"
                " EXECUTE FUNCTION skip_two()"
            )
        finally:
            await db.close()
        fresh = await store.ingest("seq", [ingest_item(n) for n in (1, 2, 3)], "3")
        assert [i.upstream_id for i in fresh] == ["1", "3"]
        claimed = await store.claim({"a": 10}, 2e9)
        assert [d.envelope_id for d in claimed] == ["seq:1", "seq:3"]
        all_new = await store.ingest("seq", [ingest_item(n) for n in (4, 5)], "5")
        assert [i.upstream_id for i in all_new] == ["4", "5"]


async def test_a_first_catch_up_finds_stored_events_by_index(postgres_url: str) -> None:
    """Before autovacuum first analyzes `events` (a first catch-up), telling a batch's
    new events from stored ones probes the unique index once per id: walking every
    stored entry of the source for every batch made a catch-up slower as it went."""
    db = await asyncpg.connect(postgres_url)
    try:
        async with PostgresStore(postgres_url) as store:
            await db.execute("ALTER TABLE events SET (autovacuum_enabled = false)")
            for start in range(1, 3001, 100):
                batch = [ingest_item(n) for n in range(start, start + 100)]
                await store.ingest("seq", batch, str(start))

        # Once the closed connections' statistics are in (3,000 index scans at least:
        # the inserts' own checks), the index entries read for the 3,000 events: about
        # one per event when each batch's ids are probed, more with every batch when
        # all of a source's are walked.
        async def flushed() -> bool:
            scans = await db.fetchval(
                "SELECT sum(idx_scan) FROM pg_stat_user_indexes WHERE relname = 'events'"
            )
            return bool(scans >= 3000)

        await eventually(flushed, timeout=10, what="the closed connections' statistics")
        read = await db.fetchval(
            "SELECT sum(idx_tup_read) FROM pg_stat_user_indexes WHERE relname = 'events'"
        ) + await db.fetchval(
            "SELECT seq_tup_read FROM pg_stat_user_tables WHERE relname = 'events'"
        )
        assert read < 9_000, read  # walking every batch's whole source: 43,500
    finally:
        await db.close()


async def test_events_named_by_envelope_id_are_found_by_index(postgres_url: str) -> None:
    """`feedhook replay --id` on a big database reads the events it names, not every
    event: counted in the rows PostgreSQL's statistics say were read, not in time."""
    db = await asyncpg.connect(postgres_url)

    async def rows_read() -> int:
        index = await db.fetchval(
            "SELECT coalesce(sum(idx_tup_read), 0) FROM pg_stat_user_indexes"
            " WHERE relname = 'events'"
        )
        table = await db.fetchval(
            "SELECT seq_tup_read FROM pg_stat_user_tables WHERE relname = 'events'"
        )
        return int(index + table)

    async def scans() -> int:
        return int(
            await db.fetchval(
                "SELECT coalesce(idx_scan, 0) + seq_scan FROM pg_stat_user_tables"
                " WHERE relname = 'events'"
            )
        )

    try:
        async with PostgresStore(postgres_url) as store:
            for start in range(1, 3001, 500):
                batch = [ingest_item(n) for n in range(start, start + 500)]
                await store.ingest("seq", batch, str(start + 499))
        await eventually(
            lambda: _at_least(scans(), 3000), timeout=10, what="the ingest's statistics"
        )
        before, scanned = await rows_read(), await scans()
        async with PostgresStore(postgres_url) as store:
            found = await store.stored_events(0, 10, envelope_ids=["seq:1500", "seq:2999", "no"])
        assert [e.envelope_id for e in found] == ["seq:1500", "seq:2999"]
        await eventually(
            lambda: _at_least(scans(), scanned + 1), timeout=10, what="the lookup's statistics"
        )
        read = await rows_read() - before
        assert read < 300, f"{read} rows read for 3,000 stored events: a scan"
    finally:
        await db.close()


async def _at_least(count: Awaitable[int], n: int) -> bool:
    return await count >= n
