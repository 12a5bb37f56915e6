"""The SQLite store beyond the contract: schema and migrations, counts kept by triggers,
locks between processes, the holder lock, the file's identity."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from feedhook.store import Outcome, SqliteStore, StoreError
from feedhook.store.sqlite import SCHEMA_VERSION

from conftest import ingest_item


@pytest.fixture
async def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    async with SqliteStore(tmp_path / "t.db") as s:
        yield s


async def test_schema_version_and_newer_database(tmp_path: Path) -> None:
    """The schema is versioned; a database from a newer feedhook is refused clearly."""
    path = tmp_path / "v.db"
    async with SqliteStore(path):
        pass
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer than this feedhook understands"):
        async with SqliteStore(path):
            pass


def truth(path: Path) -> dict[tuple[str, str], int]:
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT subscription, iif(state = 'in_flight', 'pending', state), count(*)"
            " FROM deliveries GROUP BY 1, 2"
            " UNION ALL SELECT subscription, 'dead_letter', count(*) FROM dead_letters GROUP BY 1"
            " UNION ALL SELECT subscription, 'pending', sum(last_event - first_event + 1)"
            " FROM queued_runs GROUP BY 1"
        ).fetchall()
    counts: dict[tuple[str, str], int] = {}
    for s, st, n in rows:
        counts[s, st] = counts.get((s, st), 0) + n
    return counts


def counted(counts: dict) -> dict[tuple[str, str], int]:  # type: ignore[type-arg]
    states = ("pending", "delivered", "dead", "dead_letter")
    return {
        (name, state): getattr(c, state)
        for name, c in counts.items()
        for state in states
        if getattr(c, state)
    }


async def test_trigger_counts_match_the_rows(tmp_path: Path) -> None:
    """The per-subscription counts kept by triggers equal a full count at every step."""
    path = tmp_path / "c.db"
    async with SqliteStore(path) as store:
        await store.ingest("seq", [ingest_item(n, ("a", "b")) for n in range(1, 21)], "20")
        assert counted(await store.counts()) == truth(path)
        claimed = await store.claim_due("a", 1e12, 15)
        assert counted(await store.counts()) == truth(path)
        await store.complete(
            [Outcome(d.id, "delivered", 1, at=1.0) for d in claimed[:5]]
            + [Outcome(d.id, "dead", 1, at=1.0, reason="x") for d in claimed[5:10]]
            + [Outcome(d.id, "retry", 1, at=1.0, next_attempt_at=0) for d in claimed[10:]]
        )
        assert counted(await store.counts()) == truth(path)
        letters = await store.list_dead()
        await store.replay_dead([letters[0].id], None, 2.0)
        await store.purge_dead([letters[1].id], None)
        await store.enqueue("c", [e.id for e in await store.stored_events(0, 100)], 3.0)
        (nine,) = await store.stored_events(0, 100, envelope_ids=["seq:9"])
        await store.enqueue("a", [nine.id], 3.0)
        assert counted(await store.counts()) == truth(path)
        assert (await store.counts())["a"].dead_letter == 2


async def test_events_named_by_envelope_id_are_found_by_index(store: SqliteStore) -> None:
    """`feedhook replay --id` on a big database reads the events it names, not every
    event: counted in SQLite's own virtual-machine steps, not in time."""
    for first in range(1, 3001, 500):
        items = [ingest_item(n, ()) for n in range(first, first + 500)]
        await store.ingest("seq", items, str(first + 499))
    steps = 0

    def step() -> int:
        nonlocal steps
        steps += 1
        return 0  # go on

    await store.db.raw.set_progress_handler(step, 100)
    found = await store.stored_events(0, 10, envelope_ids=["seq:1500", "seq:2999", "nope"])
    await store.db.raw.set_progress_handler(None, 100)
    assert [e.envelope_id for e in found] == ["seq:1500", "seq:2999"]
    assert steps * 100 < 3000, f"{steps * 100} steps for 3,000 stored events: a scan"


async def test_new_events_are_numbered_as_stored_across_chunks(store: SqliteStore) -> None:
    """Each new event's delivery points at its own row, however many statements the
    batch takes (500 rows each) and whatever was stored before."""
    await store.ingest("seq", [ingest_item(n) for n in range(1, 4)], "3")
    await store.ingest("seq", [ingest_item(n) for n in range(2, 1203)], "1202")
    claimed = await store.claim({"a": 2000}, 2e9)
    assert [d.envelope_id for d in claimed] == [f"seq:{n}" for n in range(1, 1203)]
    assert all(f'"n":{d.envelope_id[4:]}}}' in d.body.decode() for d in claimed)


async def test_a_batch_not_stored_whole_is_rolled_back(store: SqliteStore) -> None:
    """Should SQLite ever store fewer of a batch's new events than it was given, the
    batch fails whole and says so: no event is stored without its deliveries."""
    await store.db.execute(
        "CREATE TRIGGER skip_one BEFORE INSERT ON events WHEN NEW.upstream_id = '2'"
        " BEGIN SELECT RAISE(IGNORE); END"
    )
    with pytest.raises(StoreError, match=r"seq: SQLite stored 2 of 3 new events.*rolled back"):
        await store.ingest("seq", [ingest_item(n) for n in range(1, 4)], "3")
    assert (await store.status()).subscriptions == {}
    assert await store.get_cursor("seq") is None


async def test_migration_backfills_counts(tmp_path: Path) -> None:
    """A database from schema version 1 gains the counts of the rows it already has."""
    from feedhook.store import sqlite as module

    path = tmp_path / "old.db"
    original = module.MIGRATIONS
    module.MIGRATIONS = original[:1]
    module.SCHEMA_VERSION = 1
    try:
        async with SqliteStore(path) as store:
            # Written as that version's code did: five events, one dead, one in flight.
            for n in range(1, 6):
                await store.db.execute(
                    "INSERT INTO events VALUES (?, 'seq', ?, ?, 't', '{}', 1.0)",
                    (n, str(n), f"seq:{n}"),
                )
                await store.db.execute(
                    "INSERT INTO deliveries (event_id, subscription, state, next_attempt_at,"
                    " created_at, updated_at) VALUES (?, 'a', 'pending', 1.0, 1.0, 1.0)",
                    (n,),
                )
            await store.db.execute("UPDATE deliveries SET state = 'dead' WHERE id = 1")
            await store.db.execute("UPDATE deliveries SET state = 'in_flight' WHERE id = 2")
            await store.db.execute(
                "INSERT INTO dead_letters (delivery_id, subscription, envelope_id, type,"
                " attempts, reason, failed_at) VALUES (1, 'a', 'seq:1', 't', 1, 'x', 1.0)"
            )
    finally:
        module.MIGRATIONS = original
        module.SCHEMA_VERSION = len(original)
    async with SqliteStore(path) as store:
        counts = (await store.counts())["a"]
    assert (counts.pending, counts.dead, counts.dead_letter) == (4, 1, 1)


async def test_migration_takes_finished_deliveries_out_of_line(tmp_path: Path) -> None:
    """Upgraded to lines kept by ordering_key alone: a delivery finished before the
    upgrade does not hold back its subject's next one, an unfinished one still does."""
    from feedhook.store import sqlite as module

    path = tmp_path / "old.db"
    original = module.MIGRATIONS
    module.MIGRATIONS = original[:-2]
    module.SCHEMA_VERSION = len(original) - 2
    try:
        async with SqliteStore(path) as store:
            for n, state, attempts in ((1, "delivered", 1), (2, "pending", 0), (3, "pending", 0)):
                await store.db.execute(
                    "INSERT INTO events VALUES (?, 'seq', ?, ?, 't', '{}', 1.0)",
                    (n, str(n), f"seq:{n}"),
                )
                await store.db.execute(
                    "INSERT INTO deliveries (event_id, subscription, state, attempts,"
                    " next_attempt_at, created_at, updated_at, ordering_key) VALUES (?, 'a',"
                    " ?, ?, 1.0, 1.0, 1.0, 'job/7')",
                    (n, state, attempts),
                )
    finally:
        module.MIGRATIONS = original
        module.SCHEMA_VERSION = len(original)
    async with SqliteStore(path) as store:
        (second,) = await store.claim({"a": 10}, now=1e12, ordered={"a"})
        assert second.envelope_id == "seq:2"
        assert await store.claim({"a": 10}, now=1e12, ordered={"a"}) == []


async def test_a_task_cancelled_while_ingesting_leaves_no_transaction_open(
    tmp_path: Path,
) -> None:
    """A poller cancelled while its ingest is queued on the database thread: the ingest
    lands whole or not at all (events, deliveries and cursor together), and later
    single-statement writes (outcomes) are committed, not swallowed by a transaction
    nobody commits."""
    path = tmp_path / "t.db"
    async with SqliteStore(path) as store:
        await store.ingest("seq", [ingest_item(1)], "1")
        (claimed,) = await store.claim_due("a", 1e12, 10)
        task = asyncio.create_task(store.ingest("seq", [ingest_item(2)], "2"))
        await asyncio.sleep(0)  # the ingest is now on its way to the database thread
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await store.complete([Outcome(claimed.id, "delivered", 1, at=2.0, status_code=200)])
    async with SqliteStore(path) as store:
        counts = (await store.counts())["a"]
        cursor = await store.get_cursor("seq")
        assert counts.delivered == 1
        assert (cursor, counts.pending) in {("1", 0), ("2", 1)}


async def test_a_write_waits_for_another_process_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ingest and delivery write from two processes: a write that finds the database
    locked waits for the lock and then lands; a lock held past LOCK_WAIT is waited out
    too (never an exit), shown by `locked_since` and a warning, and the write lands."""
    path = tmp_path / "t.db"
    async with SqliteStore(path) as store:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        writing = asyncio.ensure_future(store.ingest("seq", [ingest_item(1)], "1"))
        await asyncio.sleep(0.2)
        assert not writing.done()  # waiting for the lock, not failed
        other.execute("COMMIT")
        assert len(await asyncio.wait_for(writing, 5)) == 1

        monkeypatch.setattr("feedhook.store.sqlite.LOCK_WAIT", 0.2)
        other.execute("BEGIN IMMEDIATE")
        writing = asyncio.ensure_future(store.ingest("seq", [ingest_item(2)], "2"))
        await asyncio.sleep(0.6)
        assert not writing.done() and store.locked_since is not None
        other.execute("ROLLBACK")
        other.close()
        assert [i.upstream_id for i in await asyncio.wait_for(writing, 5)] == ["2"]
        assert store.locked_since is None


async def test_a_holder_keeps_a_second_holder_out(tmp_path: Path) -> None:
    """`exclusive` opens take the database's holder lock; a second one is refused with
    the holder named, and the lock is free again once the first closes."""
    path = tmp_path / "t.db"
    async with SqliteStore(path, exclusive=True):
        with pytest.raises(StoreError, match=r"is in use by another feedhook run \(pid \d+"):
            await SqliteStore(path, exclusive=True).open()
        async with SqliteStore(path) as reader:  # read-only commands still work
            assert await reader.get_cursor("seq") is None
    async with SqliteStore(path, exclusive=True):
        pass


async def test_a_deleted_database_is_noticed(tmp_path: Path) -> None:
    """check_identity: fine while the file is the one opened; an error once it is gone."""
    path = tmp_path / "t.db"
    async with SqliteStore(path, exclusive=True) as store:
        store.check_identity()
        path.unlink()
        with pytest.raises(StoreError, match="was deleted while feedhook was running"):
            store.check_identity()
