"""The embedded store: SQLite in WAL mode through aiosqlite.

One connection per process, one asyncio lock: every transaction of the process runs
alone, so its statements never interleave inside another's transaction. Explicit
BEGIN/COMMIT; any failure or cancellation rolls back. Under `feedhook run` two processes
write (the ingest process its pages, the main one claims and outcomes); SQLite lets one
write at a time, and a statement that finds the lock taken waits for it (_Connection).

The hot paths (ingest, claim, complete) are written so that each statement takes one or
two steps however many rows it touches: rows go in as one JSON parameter (json_each) and
come back as one aggregated row. The sqlite3 module releases the GIL around every step
and must win it back from the busy event loop after each one, so a statement that steps
once per row (executemany, RETURNING) costs a GIL hand-off per row: tens of microseconds
each while deliveries are in flight, milliseconds per batch.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import socket
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from feedhook import clock
from feedhook.envelope import encode, sequenced, split_id
from feedhook.store.base import (
    DEFAULT_LEASE,
    Attempt,
    DeadLetter,
    Delivery,
    DeliveryTrace,
    IngestItem,
    Outcome,
    PruneResult,
    SourceState,
    Status,
    Storage,
    StoredEvent,
    StoreError,
    Subject,
    SubscriptionCounts,
    SubscriptionState,
    Trace,
    new_owner,
)
from feedhook.store.fanout import Stretches, queue

log = logging.getLogger("feedhook.store")

# Each entry moves the schema one version up; never edit one that has shipped.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        source TEXT NOT NULL,
        upstream_id TEXT NOT NULL,
        envelope_id TEXT NOT NULL,
        type TEXT NOT NULL,
        body BLOB NOT NULL,
        ingested_at REAL NOT NULL,
        UNIQUE (source, upstream_id)
    );
    CREATE TABLE deliveries (
        id INTEGER PRIMARY KEY,
        event_id INTEGER NOT NULL REFERENCES events (id),
        subscription TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'in_flight', 'delivered', 'dead')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        last_status INTEGER,
        last_error TEXT,
        UNIQUE (event_id, subscription)
    );
    CREATE INDEX deliveries_due ON deliveries (subscription, next_attempt_at)
        WHERE state = 'pending';
    CREATE INDEX deliveries_in_flight ON deliveries (state) WHERE state = 'in_flight';
    CREATE TABLE dead_letters (
        id INTEGER PRIMARY KEY,
        delivery_id INTEGER NOT NULL REFERENCES deliveries (id),
        subscription TEXT NOT NULL,
        envelope_id TEXT NOT NULL,
        type TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        status_code INTEGER,
        reason TEXT NOT NULL,
        response_body TEXT,
        failed_at REAL NOT NULL
    );
    CREATE INDEX dead_letters_by_subscription ON dead_letters (subscription, id);
    CREATE TABLE sources (
        name TEXT PRIMARY KEY,
        cursor TEXT,
        cursor_updated_at REAL,
        last_poll_at REAL,
        last_success_at REAL,
        last_error TEXT,
        last_error_at REAL
    );
    """,
    # Per-subscription counts kept by triggers, so status and metrics never scan. A claim
    # (pending -> in_flight) or a retry (in_flight -> pending) changes no count: both are
    # "waiting" to the people who read them, and the hot path stays free of trigger work.
    """
    CREATE TABLE delivery_counts (
        subscription TEXT NOT NULL,
        state TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (subscription, state)
    ) WITHOUT ROWID;
    INSERT INTO delivery_counts (subscription, state, n)
        SELECT subscription, iif(state = 'in_flight', 'pending', state), count(*)
        FROM deliveries GROUP BY 1, 2;
    INSERT INTO delivery_counts (subscription, state, n)
        SELECT subscription, 'dead_letter', count(*) FROM dead_letters GROUP BY subscription;
    CREATE TRIGGER deliveries_counted_insert AFTER INSERT ON deliveries BEGIN
        INSERT INTO delivery_counts (subscription, state, n)
            VALUES (NEW.subscription, iif(NEW.state = 'in_flight', 'pending', NEW.state), 1)
            ON CONFLICT (subscription, state) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER deliveries_counted_update AFTER UPDATE OF state ON deliveries
        WHEN iif(OLD.state = 'in_flight', 'pending', OLD.state)
            != iif(NEW.state = 'in_flight', 'pending', NEW.state) BEGIN
        UPDATE delivery_counts SET n = n - 1 WHERE subscription = OLD.subscription
            AND state = iif(OLD.state = 'in_flight', 'pending', OLD.state);
        INSERT INTO delivery_counts (subscription, state, n)
            VALUES (NEW.subscription, iif(NEW.state = 'in_flight', 'pending', NEW.state), 1)
            ON CONFLICT (subscription, state) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER deliveries_counted_delete AFTER DELETE ON deliveries BEGIN
        UPDATE delivery_counts SET n = n - 1 WHERE subscription = OLD.subscription
            AND state = iif(OLD.state = 'in_flight', 'pending', OLD.state);
    END;
    CREATE TRIGGER dead_letters_counted_insert AFTER INSERT ON dead_letters BEGIN
        INSERT INTO delivery_counts (subscription, state, n)
            VALUES (NEW.subscription, 'dead_letter', 1)
            ON CONFLICT (subscription, state) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER dead_letters_counted_delete AFTER DELETE ON dead_letters BEGIN
        UPDATE delivery_counts SET n = n - 1
            WHERE subscription = OLD.subscription AND state = 'dead_letter';
    END;
    """,
    # Claims are marked with a token, so that one statement can claim (atomically, with
    # no transaction around it) and one more can read back exactly what it claimed.
    """
    ALTER TABLE deliveries ADD COLUMN claim INTEGER;
    DROP INDEX deliveries_in_flight;
    CREATE INDEX deliveries_claimed ON deliveries (claim) WHERE state = 'in_flight';
    """,
    # Retention: pruning removes delivered rows without lowering the delivered count (a
    # lifetime total), and finds a delivery's dead letter by index.
    """
    CREATE INDEX dead_letters_by_delivery ON dead_letters (delivery_id);
    DROP TRIGGER deliveries_counted_delete;
    CREATE TRIGGER deliveries_counted_delete AFTER DELETE ON deliveries
        WHEN OLD.state != 'delivered' BEGIN
        UPDATE delivery_counts SET n = n - 1 WHERE subscription = OLD.subscription
            AND state = iif(OLD.state = 'in_flight', 'pending', OLD.state);
    END;
    """,
    # Owned claims: who holds an in-flight delivery, and until when (a lease it renews).
    """
    ALTER TABLE deliveries ADD COLUMN owner TEXT;
    ALTER TABLE deliveries ADD COLUMN lease_until REAL;
    """,
    # Subjects: the last representation read of each resource events are about.
    """
    CREATE TABLE subjects (
        source TEXT NOT NULL,
        url TEXT NOT NULL,
        representation BLOB NOT NULL,
        deleted INTEGER NOT NULL,
        fetched_at REAL NOT NULL,
        PRIMARY KEY (source, url)
    ) WITHOUT ROWID;
    CREATE INDEX subjects_deleted ON subjects (fetched_at) WHERE deleted;
    """,
    # Receivers spared: subscriptions disabled (410 Gone, an operator) and the workers'
    # notes (paused, circuit open); deliveries in order per subject; each source's
    # numbering of its events (the CloudEvents `sequence`).
    """
    CREATE TABLE subscription_states (
        subscription TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        reason TEXT,
        since REAL,
        until REAL
    ) WITHOUT ROWID;
    ALTER TABLE deliveries ADD COLUMN ordering_key TEXT;
    CREATE INDEX deliveries_ordered ON deliveries (subscription, ordering_key, id)
        WHERE ordering_key IS NOT NULL AND state IN ('pending', 'in_flight');
    ALTER TABLE sources ADD COLUMN sequence INTEGER NOT NULL DEFAULT 0;
    """,
    # `feedhook trace`: every failed attempt (a success is the delivery row itself, so
    # the hot path writes nothing more), and how long the last attempt took.
    """
    CREATE TABLE attempts (
        delivery_id INTEGER NOT NULL,
        at REAL NOT NULL,
        status INTEGER,
        duration REAL,
        outcome TEXT NOT NULL,
        error TEXT
    );
    CREATE INDEX attempts_by_delivery ON attempts (delivery_id);
    ALTER TABLE deliveries ADD COLUMN last_duration REAL;
    CREATE TRIGGER attempts_pruned AFTER DELETE ON deliveries BEGIN
        DELETE FROM attempts WHERE delivery_id = OLD.id;
    END;
    """,
    # Lines by subject indexed only where a delivery holds its line out of due order:
    # claimed (in flight), or tried before (a retry may be scheduled later). One merely
    # waiting its turn is due in ingest order and met first by the claim's own scan. An
    # ingest no longer writes this index at all; keeping it up was all an ordered lane
    # cost beyond an unordered one (BENCHMARKS.md). A finished delivery leaves its line
    # (its ordering_key goes).
    """
    DROP INDEX deliveries_ordered;
    UPDATE deliveries SET ordering_key = NULL
        WHERE ordering_key IS NOT NULL AND state IN ('delivered', 'dead');
    CREATE INDEX deliveries_holding_lines ON deliveries (subscription, ordering_key, id)
        WHERE ordering_key IS NOT NULL AND (state = 'in_flight' OR attempts > 0);
    """,
    # Fan-out as runs (store/fanout.py): per subscription, a row for each stretch of
    # consecutive new events routed to it (every event id from first to last), turned
    # into deliveries by the claims. Runs count as pending.
    """
    CREATE TABLE queued_runs (
        id INTEGER PRIMARY KEY,
        subscription TEXT NOT NULL,
        first_event INTEGER NOT NULL,
        last_event INTEGER NOT NULL,
        queued_at REAL NOT NULL
    );
    CREATE INDEX queued_runs_by_subscription ON queued_runs (subscription, first_event);
    CREATE TRIGGER queued_runs_counted_insert AFTER INSERT ON queued_runs BEGIN
        INSERT INTO delivery_counts (subscription, state, n)
            VALUES (NEW.subscription, 'pending', NEW.last_event - NEW.first_event + 1)
            ON CONFLICT (subscription, state) DO UPDATE SET n = n + excluded.n;
    END;
    CREATE TRIGGER queued_runs_counted_update AFTER UPDATE OF first_event ON queued_runs BEGIN
        UPDATE delivery_counts SET n = n - (NEW.first_event - OLD.first_event)
            WHERE subscription = NEW.subscription AND state = 'pending';
    END;
    CREATE TRIGGER queued_runs_counted_delete AFTER DELETE ON queued_runs BEGIN
        UPDATE delivery_counts SET n = n - (OLD.last_event - OLD.first_event + 1)
            WHERE subscription = OLD.subscription AND state = 'pending';
    END;
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)
MIN_SQLITE = (3, 38, 0)
RUNS_AT_ONCE = 8  # a lane's queued runs read at first by a claim (then 4 times more)
INSERT_CHUNK = 500  # rows per multi-row INSERT: 3,000 parameters, far below SQLite's limit
# Rows per transaction in bulk operator commands (replay, dead-letter replay and purge):
# a few milliseconds of write lock each, so deliveries and ingest never wait long.
BULK_BATCH = 1000
# Rows per transaction when pruning, which runs beside live work every few minutes:
# smaller, so the writer beside it waits at most tens of milliseconds (measured in
# tests/test_retention.py: 54-79 ms at 250, 129-179 ms at 1,000).
PRUNE_BATCH = 250


# SQLite's own busy handler sleeps 1, 2, 5, 10, ... ms between tries: a lock freed just
# after a try is seen only 5 or 10 ms later. It is kept to its first two tries (3 ms);
# past that the statement is tried again from here, so a lock held by the other
# process (ingest or delivery) is noticed within about a millisecond of its release.
BUSY_TIMEOUT_MS = 3
# A lock held longer than this is someone else's long transaction (a backup tool, a
# person in the sqlite3 shell): feedhook says so, shows it in readiness, and keeps
# waiting, with tries spaced out up to LOCK_BACKOFF_MAX. It never gives up: the data
# is intact and the lock will be released.
LOCK_WAIT = 10.0
LOCK_BACKOFF_MAX = 0.25


def _ingest_transaction(
    db: sqlite3.Connection,
    source: str,
    unique: list[IngestItem],
    cursor: str,
    subjects: list[tuple[Any, ...]],
    now: float,
) -> tuple[list[IngestItem], bool]:
    """Store.ingest's transaction, run on the database thread: the events not stored
    yet (each numbered in its source), their deliveries, the cursor and the subjects'
    representations. Returns the new events and whether any delivery was added."""
    db.execute("BEGIN IMMEDIATE")
    try:
        (known, sequence) = db.execute(
            "SELECT (SELECT json_group_array(upstream_id) FROM events WHERE source = ?1"
            " AND upstream_id IN (SELECT value FROM json_each(?2))),"
            " coalesce((SELECT sequence FROM sources WHERE name = ?1), 0)",
            (source, _json([i.upstream_id for i in unique])),
        ).fetchone()
        stored = set(orjson.loads(known))
        new = [i for i in unique if i.upstream_id not in stored]
        event_ids: list[int] = []
        for start in range(0, len(new), INSERT_CHUNK):
            chunk = new[start : start + INSERT_CHUNK]
            # No ON CONFLICT: under the write lock, none of these can be stored already
            # (a bug that broke that fails the batch, to be read again, never half-stores
            # it). The rows are numbered one after another, each the largest rowid so far
            # plus one (until rowid 2^63-1, which no feed reaches): no RETURNING, which
            # cost 1.2 us per event.
            inserted = db.execute(
                "INSERT INTO events (source, upstream_id, envelope_id, type, body,"
                " ingested_at) VALUES " + ",".join(["(?, ?, ?, ?, ?, ?)"] * len(chunk)),
                [
                    value
                    for n, i in enumerate(chunk, sequence + start + 1)
                    for value in (
                        source,
                        i.upstream_id,
                        i.envelope.id,
                        i.envelope.type,
                        sequenced(i.envelope.body, n),
                        now,
                    )
                ],
            )
            last = inserted.lastrowid
            if last is None or inserted.rowcount != len(chunk):
                raise StoreError(
                    f"{source}: SQLite stored {inserted.rowcount} of {len(chunk)} new events;"
                    " the batch was rolled back, to be read again from the stored cursor."
                    " This is a bug in feedhook: please report it"
                )
            event_ids += range(last - len(chunk) + 1, last + 1)
        queued = queue(new, event_ids)
        if queued:
            # Never queued before the last, even if the clock stepped back: an ordered
            # lane relies on its waiting deliveries being due in ingest order.
            (latest,) = db.execute(
                "SELECT max(coalesce((SELECT queued_at FROM queued_runs ORDER BY id DESC"
                " LIMIT 1), 0), coalesce((SELECT created_at FROM deliveries ORDER BY id DESC"
                " LIMIT 1), 0))"
            ).fetchone()
            at = max(now, latest)
            if queued.runs:
                db.execute(
                    "INSERT INTO queued_runs (subscription, first_event, last_event,"
                    " queued_at) SELECT value ->> 0, value ->> 1, value ->> 2, ?1"
                    " FROM json_each(?2) ORDER BY key",
                    (at, _json(queued.runs)),
                )
            if queued.pairs:
                db.execute(
                    "INSERT INTO deliveries (event_id, subscription, state, next_attempt_at,"
                    " created_at, updated_at, ordering_key) SELECT value ->> 0, value ->> 1,"
                    " 'pending', ?1, ?1, ?1, value ->> 2 FROM json_each(?2) ORDER BY key",
                    (at, _json(queued.pairs)),
                )
        # A page read is a successful poll: recorded with the cursor, no extra commit.
        db.execute(
            "INSERT INTO sources (name, cursor, cursor_updated_at, last_poll_at,"
            " last_success_at, sequence) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO"
            " UPDATE SET cursor = excluded.cursor,"
            " cursor_updated_at = excluded.cursor_updated_at,"
            " last_poll_at = excluded.last_poll_at,"
            " last_success_at = excluded.last_success_at, last_error = NULL,"
            " last_error_at = NULL, sequence = excluded.sequence",
            (source, cursor, now, now, now, sequence + len(new)),
        )
        if subjects:
            db.executemany(
                "INSERT INTO subjects (source, url, representation, deleted, fetched_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (source, url) DO UPDATE SET"
                " representation = excluded.representation, deleted = excluded.deleted,"
                " fetched_at = excluded.fetched_at",
                subjects,
            )
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return new, bool(queued)


def _claim_transaction(
    db: sqlite3.Connection,
    wants: Mapping[str, int],
    picks: str,
    params: list[Any],
    claimed: tuple[int, str, float],
) -> tuple[str, bytes | None]:
    """Store.claim's transaction, run on the database thread. Deliveries already made
    come first (retries, recovered claims and ordered lanes' waiting ones are older than
    anything still queued): `picks` selects the due ones, marked in flight under the
    claim token. Then each lane's oldest queued runs become deliveries straight in
    flight under the token, as many as the lane still wants. Returns what the token
    claimed, read back as one aggregated row."""
    token, owner, lease_until = claimed
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(
            "UPDATE deliveries SET state = 'in_flight', claim = ?, owner = ?,"
            f" lease_until = ? WHERE id IN ({picks})",
            [token, owner, lease_until, *params],
        )
        room = dict(wants)
        if db.execute("SELECT changes()").fetchone()[0]:
            for name, n in db.execute(
                "SELECT subscription, count(*) FROM deliveries WHERE claim = ?"
                " AND state = 'in_flight' GROUP BY subscription",
                (token,),
            ):
                room[name] -= n
        # A lane's oldest runs, a few at a time: a run is usually a whole page of events
        # or more, and reading as many runs as the lane wants events cost the database
        # about 1.3 us per run read.
        lanes, limit = {name: n for name, n in room.items() if n > 0}, RUNS_AT_ONCE
        while lanes:
            runs = db.execute(
                "SELECT r.id, r.subscription, r.first_event, r.last_event, r.queued_at"
                f" FROM json_each(?1) AS w JOIN queued_runs r ON {_NOT_DISABLED} AND r.id IN"
                " (SELECT id FROM queued_runs WHERE subscription = w.key ORDER BY first_event"
                " LIMIT ?2) ORDER BY r.id",
                (_json(lanes), limit),
            ).fetchall()
            _make_deliveries(db, runs, room, claimed)
            read = Counter(run[1] for run in runs)
            lanes = {name: n for name, n in lanes.items() if room[name] > 0 and read[name] == limit}
            limit *= 4
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    row: tuple[str, bytes | None] = db.execute(
        # Times as 17 digits: JSON numbers keep 15, and a retry put back at its
        # `created_at` must sort exactly where it was.
        "SELECT json_group_array(json_array(d.id, d.subscription, d.attempts,"
        " printf('%!.17g', d.created_at), d.next_attempt_at, e.envelope_id,"
        " e.ingested_at)), CAST(group_concat(e.body, char(30)) AS BLOB)"
        " FROM deliveries d JOIN events e ON e.id = d.event_id"
        " WHERE d.state = 'in_flight' AND d.claim = ?",
        (token,),
    ).fetchone()
    return row


def _make_deliveries(
    db: sqlite3.Connection,
    runs: list[Any],
    room: dict[str, int],
    claimed: tuple[int, str, float],
) -> None:
    """Turn up to `room[lane]` of each lane's queued events, oldest first, into
    deliveries in flight under the claim, and take them out of their runs. A pair
    already made (a replay reached it first) is passed over."""
    taken: list[list[Any]] = []
    cut: list[list[int]] = []
    gone: list[int] = []
    for run_id, name, first, last, queued_at in runs:
        n = room[name]
        if n <= 0:
            continue
        upto = min(last, first + n - 1)
        room[name] = n - (upto - first + 1)
        taken.append([name, first, upto, queued_at])
        if upto == last:
            gone.append(run_id)
        else:
            cut.append([run_id, upto + 1])
    if not taken:
        return
    db.execute(
        "INSERT INTO deliveries (event_id, subscription, state, next_attempt_at, created_at,"
        " updated_at, claim, owner, lease_until)"
        " SELECT e.id, t.value ->> 0, 'in_flight', t.value ->> 3, t.value ->> 3,"
        " t.value ->> 3, ?2, ?3, ?4 FROM json_each(?1) AS t JOIN events e"
        " ON e.id BETWEEN t.value ->> 1 AND t.value ->> 2 WHERE true ORDER BY t.key, e.id"
        " ON CONFLICT (event_id, subscription) DO NOTHING",
        (_json(taken), *claimed),
    )
    if gone:
        db.execute(
            "DELETE FROM queued_runs WHERE id IN (SELECT value FROM json_each(?))",
            (_json(gone),),
        )
    if cut:
        db.execute(
            "UPDATE queued_runs SET first_event = c.value ->> 1 FROM json_each(?) AS c"
            " WHERE queued_runs.id = c.value ->> 0",
            (_json(cut),),
        )


def _busy(exc: sqlite3.OperationalError) -> bool:
    return exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class _Connection:
    """An aiosqlite connection whose statements wait for a locked database in short
    steps, as long as it takes. A statement that found the database locked did nothing,
    so trying it again is safe (inside a transaction this one holds the lock and is never
    locked out)."""

    def __init__(self, db: aiosqlite.Connection, path: str) -> None:
        self.raw = db
        self.path = path
        # Since when a statement of this process has been waiting for another's lock.
        self.locked_since: float | None = None

    async def _retry(self, call: Any, *args: Any) -> Any:
        started = time.monotonic()
        pause, warned = 0.0, False
        try:
            while True:
                try:
                    return await call(*args)
                except sqlite3.OperationalError as exc:
                    if not _busy(exc):
                        raise
                waited = time.monotonic() - started
                if waited > LOCK_WAIT:
                    if not warned:
                        log.warning(
                            "%s: the database has been locked by another program for %.0fs"
                            " (a long transaction: a backup, a sqlite3 shell?); waiting for it",
                            self.path,
                            waited,
                        )
                        warned = True
                    if self.locked_since is None:
                        self.locked_since = clock.now() - waited
                    pause = min(LOCK_BACKOFF_MAX, max(pause * 2, 0.01))
                    await asyncio.sleep(pause)
        finally:
            if warned:
                self.locked_since = None
                log.warning(
                    "%s: the database lock was released after %.0fs",
                    self.path,
                    time.monotonic() - started,
                )

    async def execute(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> aiosqlite.Cursor:
        return await self._retry(self.raw.execute, sql, params)  # type: ignore[no-any-return]

    async def execute_fetchall(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return await self._retry(self.raw.execute_fetchall, sql, params)

    async def executemany(self, sql: str, rows: Any) -> aiosqlite.Cursor:
        return await self._retry(self.raw.executemany, sql, rows)  # type: ignore[no-any-return]

    async def commit(self) -> None:
        await self._retry(self.raw.commit)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(connection, *args)` on the database thread, in one trip: for a
        transaction whose statements must follow each other without waiting for the
        event loop. aiosqlite runs each of its own calls this way (`_execute`); a
        `fn` that found the database locked must have done nothing (it rolls back)."""
        raw = self.raw
        return await self._retry(raw._execute, lambda: fn(raw._conn, *args))

    async def rollback(self) -> None:
        await self.raw.rollback()

    async def close(self) -> None:
        await self.raw.close()


class SqliteStore:
    """The SQLite store. `exclusive=True` (what `feedhook run` opens) makes this process
    the database's one holder: a lock file beside it (`<db>.lock`, flock: released by
    the kernel when the process dies, kill -9 included) keeps a second `feedhook run`
    out, and `check_identity()` notices the file being deleted or replaced. Read-only
    commands and the ingest process open it without."""

    def __init__(
        self,
        path: str | Path,
        *,
        exclusive: bool = False,
        verify: bool = False,
        lease: float = DEFAULT_LEASE,
    ) -> None:
        self.path = str(path)
        self.exclusive = exclusive
        self.owner = new_owner()
        self.lease = lease
        self.settle = 0.0  # one worker polls every source: nothing to share out
        self.waiting_for = "locked by another program"
        self.verify = verify  # quick_check the file at open (feedhook run)
        self._db: _Connection | None = None
        self._lock = asyncio.Lock()
        self._holder: int | None = None  # the lock file's descriptor while we hold it
        self._wakes: list[Callable[[], None]] = []
        self._identity: tuple[int, int] | None = None
        # Claim tokens: unique among this process's claims, and unlike any earlier
        # process's (whose in-flight rows are recovered to pending at start).
        self._claims = time.time_ns()

    # --- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        """Open (creating and migrating as needed), or raise StoreError with one line that
        says which file, what is wrong and what to do. Nothing is left running on failure."""
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise StoreError(
                f"SQLite {sqlite3.sqlite_version} is too old: feedhook needs"
                f" {'.'.join(map(str, MIN_SQLITE))} or newer (JSON operators);"
                " use a newer Python build or image"
            )
        memory = self.path == ":memory:" or self.path.startswith("file::memory:")
        if not memory:
            _check_place(self.path)
        if self.exclusive and not memory:
            self._hold()
        try:
            try:
                raw = await aiosqlite.connect(self.path, isolation_level=None)
            except sqlite3.Error as exc:
                raise StoreError(_explain(self.path, exc)) from None
            self._db = db = _Connection(raw, self.path)
            try:
                await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                await db.execute("PRAGMA journal_mode = WAL")
                # NORMAL in WAL mode survives a process crash; a power cut can drop the
                # last commits, and then cursor and outbox roll back together.
                await db.execute("PRAGMA synchronous = NORMAL")
                await db.execute("PRAGMA foreign_keys = ON")
                # A 1 MB page cache, not SQLite's 2 MB: the hot statements read the newest
                # pages of a few indexes, and the operating system caches the file anyway:
                # about 1 MB less for both processes on the 1M backlog (BENCHMARKS.md).
                await db.execute("PRAGMA cache_size = -1000")
                if self.verify:
                    await self._quick_check()
                await self._migrate()
            except BaseException as exc:
                self._db = None
                await raw.close()
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(_explain(self.path, exc)) from None
                raise
            if not memory:
                self._identity = _identity(self.path)
        except BaseException:
            self._release()
            raise

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None
        self._release()

    @property
    def locked_since(self) -> float | None:
        """Since when this process has been waiting for another program's lock, if it is."""
        return None if self._db is None else self._db.locked_since

    def check_identity(self) -> None:
        """Raise StoreError if the database file was deleted or replaced since it was
        opened: writes would go to a file nobody will ever open again."""
        if self._identity is None:
            return
        try:
            now = _identity(self.path)
        except FileNotFoundError:
            raise StoreError(
                f"{self.path}: the database file was deleted while feedhook was running;"
                " stopping rather than writing into a file nobody will see. Restore it"
                " from a backup or start again (cursors restart from each source's `start`)"
            ) from None
        if now != self._identity:
            raise StoreError(
                f"{self.path}: the database file was replaced by another file while"
                " feedhook was running; stopping rather than writing into the old one."
                " Start feedhook again to use the new file"
            )

    def _hold(self) -> None:
        """Take the database's holder lock, or raise StoreError naming who has it."""
        lock_path = f"{self.path}.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(_explain_os(lock_path, exc)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(
                f"{self.path} is in use by another feedhook run ({holder}); a SQLite"
                " database has one holder at a time: stop that one first, or give this one"
                " its own FEEDHOOK_DB (several replicas need PostgreSQL)"
            ) from None
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        os.ftruncate(fd, 0)
        os.pwrite(
            fd, f"pid {os.getpid()} on host {socket.gethostname()}, since {started}\n".encode(), 0
        )
        self._holder = fd

    def _release(self) -> None:
        if self._holder is not None:
            os.ftruncate(self._holder, 0)
            os.close(self._holder)  # closing the descriptor releases the flock
            self._holder = None

    async def _quick_check(self) -> None:
        rows = await self.db.execute_fetchall("PRAGMA quick_check(5)")
        problems = [" ".join(str(row[0]).split()) for row in rows if row[0] != "ok"]
        if problems:
            raise StoreError(
                f"{self.path}: the database is corrupt ({'; '.join(problems)[:300]}); restore"
                " it from a backup, or move it away to start afresh (every source then"
                " starts again from its `start` setting)"
            )

    async def __aenter__(self) -> SqliteStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def db(self) -> _Connection:
        if self._db is None:
            raise StoreError("the store is not open")
        return self._db

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[_Connection]:
        async with self._lock:
            db = self.db
            try:
                # Inside the try: a task cancelled while BEGIN is queued must still roll
                # back, or the statements that follow would join a transaction that is
                # never committed. The database thread runs calls in order, so a queued
                # BEGIN, COMMIT or ROLLBACK completes before anything asked after it.
                await db.execute("BEGIN IMMEDIATE")
                yield db
            except BaseException:
                await db.rollback()
                raise
            await db.commit()

    async def _migrate(self) -> None:
        async with self._transaction() as db:
            (version,) = await self._one(db, "PRAGMA user_version")
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: the database has schema version {version}, newer than "
                    f"this feedhook understands ({SCHEMA_VERSION}); upgrade feedhook"
                )
            for number in range(version, SCHEMA_VERSION):
                for statement in _statements(MIGRATIONS[number]):
                    await db.execute(statement)
            await db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @staticmethod
    async def _one(db: _Connection, sql: str, params: Sequence[Any] = ()) -> Any:
        """The first row, or None: one trip to the database thread."""
        rows = await db.execute_fetchall(sql, params)
        return next(iter(rows), None)

    # --- sources ---------------------------------------------------------------------

    async def get_cursor(self, source: str) -> str | None:
        row = await self._one(self.db, "SELECT cursor FROM sources WHERE name = ?", (source,))
        return None if row is None else row[0]

    async def ingest(
        self,
        source: str,
        items: Sequence[IngestItem],
        cursor: str,
        subjects: Sequence[Subject] = (),
    ) -> list[IngestItem]:
        """See Store.ingest: the whole transaction is one call on the database thread,
        so the write lock is held for the statements alone, never across turns of the
        event loop (which in the ingest process parses the next pages meanwhile: holding
        the lock through those turns kept the worker's claims waiting)."""
        now = clock.now()
        first_seen: dict[str, IngestItem] = {}
        for item in items:
            first_seen.setdefault(item.upstream_id, item)
        unique = list(first_seen.values())
        stored_subjects = [
            (source, x.url, encode(x.representation), x.deleted, x.fetched_at) for x in subjects
        ]
        fresh: list[IngestItem]
        async with self._lock:
            fresh, delivered_to = await self.db.run(
                _ingest_transaction, source, unique, cursor, stored_subjects, now
            )
        if delivered_to:
            self._work_arrived()
        return fresh

    async def subjects(self, source: str, urls: Collection[str]) -> dict[str, Subject]:
        """See Store.subjects. A read: no lock is taken."""
        if not urls:
            return {}
        rows = await self.db.execute_fetchall(
            "SELECT url, representation, deleted, fetched_at FROM subjects WHERE source = ?"
            " AND url IN (SELECT value FROM json_each(?))",
            (source, _json(list(urls))),
        )
        return {
            url: Subject(url, json.loads(body), bool(deleted), fetched_at)
            for url, body, deleted, fetched_at in rows
        }

    async def lease_source(self, source: str, now: float) -> bool:
        """See Store.lease_source: always granted (one holder, one ingest process)."""
        return True

    async def join(self, now: float) -> None:
        """See Store.join: one worker polls every source here."""

    def on_work(self, wake: Callable[[], None]) -> None:
        self._wakes.append(wake)

    def _work_arrived(self) -> None:
        for wake in self._wakes:
            wake()

    async def set_cursor(self, source: str, cursor: str) -> None:
        """Store a source's first cursor (from its `start` setting): not a successful
        poll, so last_success_at stays as it was."""
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO sources (name, cursor, cursor_updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET cursor = excluded.cursor,"
                " cursor_updated_at = excluded.cursor_updated_at",
                (source, cursor, clock.now()),
            )

    async def record_poll_error(self, source: str, at: float, error: str) -> None:
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO sources (name, last_poll_at, last_error, last_error_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
                " last_poll_at = excluded.last_poll_at, last_error = excluded.last_error,"
                " last_error_at = excluded.last_error_at",
                (source, at, error, at),
            )

    # --- deliveries ------------------------------------------------------------------

    async def recover_in_flight(self, now: float) -> int:
        """See Store.recover_in_flight. The holder (`exclusive`) also takes back every
        other owner's claims: its lock proves their process gone."""
        async with self._transaction() as db:
            cursor = await db.execute(
                "UPDATE deliveries SET state = 'pending', owner = NULL WHERE state = 'in_flight'"
                " AND (lease_until IS NULL OR lease_until < ? OR (? AND owner IS NOT ?))",
                (now, self.exclusive, self.owner),
            )
            return cursor.rowcount

    async def renew(self, now: float) -> int:
        """See Store.renew."""
        async with self._lock:
            cursor = await self.db.execute(
                "UPDATE deliveries SET lease_until = ? WHERE state = 'in_flight' AND owner = ?",
                (now + self.lease, self.owner),
            )
            return cursor.rowcount

    async def claim_due(self, subscription: str, now: float, limit: int) -> list[Delivery]:
        """Claim for one subscription (see `claim`)."""
        return await self.claim({subscription: limit}, now)

    async def claim(
        self, wants: Mapping[str, int], now: float, ordered: Collection[str] = ()
    ) -> list[Delivery]:
        """Mark due deliveries in flight, up to `wants[subscription]` for each, and return
        them oldest due first.

        The hot path: one transaction on the database thread claims the rows under a
        fresh token (_claim_transaction); one SELECT reads them back as a single
        aggregated row (their bodies joined by a record separator, which JSON never
        leaves unescaped)."""
        wants = {name: n for name, n in wants.items() if n > 0}
        if not wants:
            return []
        self._claims += 1
        token = self._claims
        # One term per size class (lanes wanting 33-64 rows share LIMIT 64, then each
        # keeps its first n by rank): a dozen terms at most however many subscriptions
        # there are, and no lane reads more than twice what it wants.
        classes: dict[tuple[int, bool], dict[str, int]] = {}
        for name, n in wants.items():
            classes.setdefault((1 << (n - 1).bit_length(), name in ordered), {})[name] = n
        picks = " UNION ALL ".join(
            _ORDERED_CLAIM_TERM if in_order else _CLAIM_TERM for _, in_order in classes
        )
        params: list[Any] = []
        for (cap, _), lanes in classes.items():
            params += [_json(lanes), now, cap]
        claimed = (token, self.owner, now + self.lease)
        async with self._lock:
            meta, bodies = await self.db.run(_claim_transaction, wants, picks, params, claimed)
        rows = orjson.loads(meta)
        if not rows:
            return []
        parts = bodies.split(RECORD_SEPARATOR)
        if len(parts) != len(rows):
            raise StoreError(
                f"{self.path}: a stored envelope holds a raw record separator (0x1e);"
                " envelopes are JSON and never should"
            )
        return [
            Delivery(
                id=row[0],
                subscription=row[1],
                envelope_id=row[5],
                body=body,
                attempts=row[2],
                created_at=float(row[3]),
                ingested_at=row[6],
            )
            for row, body in sorted(zip(rows, parts, strict=True), key=_due_order)
        ]

    async def release(self, ids: Sequence[int]) -> None:
        """Claimed deliveries that were never sent go back to pending."""
        async with self._lock:
            await self.db.execute(
                "UPDATE deliveries SET state = 'pending', owner = NULL WHERE state = 'in_flight'"
                " AND owner = ? AND id IN (SELECT value FROM json_each(?))",
                (self.owner, _json(list(ids))),
            )

    async def resume(self, subscription: str, now: float) -> int:
        """See Store.resume: one short statement."""
        async with self._lock:
            cursor = await self.db.execute(
                "UPDATE deliveries SET next_attempt_at = created_at WHERE subscription = ?"
                " AND state = 'pending' AND next_attempt_at > ?",
                (subscription, now),
            )
        return int(cursor.rowcount)

    async def states(self) -> dict[str, SubscriptionState]:
        """See Store.states. A read: no lock is taken."""
        rows = await self.db.execute_fetchall(
            "SELECT subscription, state, reason, since, until FROM subscription_states"
            " ORDER BY subscription"
        )
        return {name: SubscriptionState(*rest) for name, *rest in rows}

    async def record_state(self, subscription: str, state: SubscriptionState) -> None:
        """See Store.record_state."""
        async with self._lock:
            if state.state == "active":
                await self.db.execute(
                    "DELETE FROM subscription_states WHERE subscription = ?"
                    " AND state != 'disabled'",
                    (subscription,),
                )
            else:
                await self.db.execute(
                    "INSERT INTO subscription_states VALUES (?, ?, ?, ?, ?) ON CONFLICT"
                    " (subscription) DO UPDATE SET state = excluded.state,"
                    " reason = excluded.reason, since = excluded.since, until = excluded.until"
                    " WHERE subscription_states.state != 'disabled'",
                    (subscription, state.state, state.reason, state.since, state.until),
                )

    async def disable(self, subscription: str, reason: str, at: float) -> bool:
        """See Store.disable."""
        async with self._lock:
            cursor = await self.db.execute(
                "INSERT INTO subscription_states VALUES (?, 'disabled', ?, ?, NULL) ON CONFLICT"
                " (subscription) DO UPDATE SET state = 'disabled', reason = excluded.reason,"
                " since = excluded.since, until = NULL"
                " WHERE subscription_states.state != 'disabled'",
                (subscription, reason, at),
            )
        return bool(cursor.rowcount)

    async def enable(self, subscription: str, now: float) -> bool:
        """See Store.enable: one transaction."""
        async with self._transaction() as db:
            cursor = await db.execute(
                "DELETE FROM subscription_states WHERE subscription = ? AND state = 'disabled'",
                (subscription,),
            )
            if not cursor.rowcount:
                return False
            await db.execute(
                "UPDATE deliveries SET next_attempt_at = created_at WHERE subscription = ?"
                " AND state = 'pending' AND next_attempt_at > ?",
                (subscription, now),
            )
        self._work_arrived()
        return True

    async def next_due_at(self, subscriptions: Sequence[str]) -> float | None:
        """The earliest pending attempt among these lanes: one statement, one index probe
        per lane."""
        if not subscriptions:
            return None
        row = await self._one(
            self.db,
            # A lane's queued runs are due since they were queued.
            "SELECT nullif(min(min(coalesce((SELECT min(next_attempt_at) FROM deliveries"
            " WHERE subscription = w.value AND state = 'pending'), 1e300), coalesce((SELECT"
            " queued_at FROM queued_runs WHERE subscription = w.value ORDER BY first_event"
            " LIMIT 1), 1e300))), 1e300) FROM json_each(?) AS w",
            (_json(list(subscriptions)),),
        )
        return None if row is None else row[0]

    async def complete(self, outcomes: Sequence[Outcome]) -> None:
        """Record a batch of attempt outcomes. The hot path, a batch all delivered, is
        one statement; failures add theirs, the attempts and the dead letters."""
        if not outcomes:
            return
        delivered = [o for o in outcomes if o.kind == "delivered"]
        failed = [o for o in outcomes if o.kind != "delivered"]
        if not failed and len(delivered) <= _DELIVERED_CHUNK:  # its own transaction
            async with self._lock:
                await self.db.execute(*self._delivered(delivered))
            return
        async with self._transaction() as db:
            for start in range(0, len(delivered), _DELIVERED_CHUNK):
                await db.execute(*self._delivered(delivered[start : start + _DELIVERED_CHUNK]))
            if failed:
                await self._failed(db, failed)

    def _delivered(self, outcomes: Sequence[Outcome]) -> tuple[str, list[Any]]:
        """The statement that records successes, and its parameters: their rows as a
        VALUES list, padded with empty rows to a size class so that a few prepared
        statements serve every batch. Fields read from a JSON parameter (json_each) cost
        the database about 2.5 us more per row: each `->>` parses its row again."""
        size = max(16, 1 << (len(outcomes) - 1).bit_length())
        params: list[Any] = []
        for o in outcomes:
            params += (o.delivery_id, o.attempts, o.at, o.status_code, o.duration)
        params += [None] * (5 * (size - len(outcomes)))
        params.append(self.owner)
        return _DELIVERED[size], params

    async def _failed(self, db: _Connection, outcomes: Sequence[Outcome]) -> None:
        """Retries and dead ends, in the caller's transaction: the rows, every attempt
        (a success is its row alone) and the dead letters."""
        rows = [
            (
                o.delivery_id,
                o.kind,
                o.attempts,
                o.at,
                o.next_attempt_at,
                o.status_code,
                o.reason,
                o.duration,
            )
            for o in outcomes
        ]
        await db.execute(
            "UPDATE deliveries SET state = iif(o.value ->> 1 = 'retry', 'pending', o.value ->> 1),"
            " attempts = o.value ->> 2, updated_at = o.value ->> 3,"
            " next_attempt_at = coalesce(o.value ->> 4, deliveries.next_attempt_at),"
            " last_status = o.value ->> 5, last_error = o.value ->> 6,"
            " last_duration = o.value ->> 7,"
            # Dead: out of its subject's line (a retry keeps its place).
            " ordering_key = iif(o.value ->> 1 = 'retry', deliveries.ordering_key, NULL)"
            " FROM json_each(?) AS o WHERE deliveries.id = o.value ->> 0"
            # Only claims still ours: one whose lease ran out may be another's by now.
            " AND deliveries.state = 'in_flight' AND deliveries.owner = ?",
            (_json(rows), self.owner),
        )
        await db.execute(
            "INSERT INTO attempts (delivery_id, at, status, duration, outcome, error)"
            " SELECT o.value ->> 0, o.value ->> 3, o.value ->> 5, o.value ->> 7,"
            " o.value ->> 1, o.value ->> 6 FROM json_each(?) AS o",
            (_json(rows),),
        )
        dead = [o for o in outcomes if o.kind == "dead"]
        if not dead:
            return
        await db.executemany(
            "INSERT INTO dead_letters (delivery_id, subscription, envelope_id, type,"
            " attempts, status_code, reason, response_body, failed_at)"
            " SELECT d.id, d.subscription, e.envelope_id, e.type, ?, ?, ?, ?, ?"
            " FROM deliveries d JOIN events e ON e.id = d.event_id WHERE d.id = ?"
            " AND d.state = 'dead' AND d.owner = ? AND NOT EXISTS"
            " (SELECT 1 FROM dead_letters x WHERE x.delivery_id = d.id)",
            [
                (
                    o.attempts,
                    o.status_code,
                    o.reason or "",
                    o.response_body,
                    o.at,
                    o.delivery_id,
                    self.owner,
                )
                for o in dead
            ],
        )

    # --- operations ------------------------------------------------------------------

    async def status(self) -> Status:
        sources = {
            row[0]: SourceState(*row)
            for row in await self.db.execute_fetchall(
                "SELECT name, cursor, cursor_updated_at, last_poll_at, last_success_at,"
                " last_error, last_error_at FROM sources ORDER BY name"
            )
        }
        return Status(
            sources=sources, subscriptions=await self.counts(), states=await self.states()
        )

    async def counts(self) -> dict[str, SubscriptionCounts]:
        """Deliveries by state and dead letters, per subscription: a read of a tiny table."""
        counts: dict[str, SubscriptionCounts] = {}
        for name, state, n in await self.db.execute_fetchall(
            "SELECT subscription, state, n FROM delivery_counts"
        ):
            setattr(counts.setdefault(name, SubscriptionCounts()), state, n)
        return counts

    _DEAD_COLUMNS = (
        "id, delivery_id, subscription, envelope_id, type, attempts, status_code, reason,"
        " response_body, failed_at"
    )

    async def list_dead(
        self, subscription: str | None = None, limit: int = 100, after: int = 0
    ) -> list[DeadLetter]:
        where = "id > ?"
        params: list[Any] = [after]
        if subscription is not None:
            where += " AND subscription = ?"
            params.append(subscription)
        rows = await self.db.execute_fetchall(
            f"SELECT {self._DEAD_COLUMNS} FROM dead_letters WHERE {where} ORDER BY id LIMIT ?",
            (*params, limit),
        )
        return [DeadLetter(*row) for row in rows]

    async def get_dead(self, dead_id: int) -> DeadLetter | None:
        columns = ", ".join(f"x.{c.strip()}" for c in self._DEAD_COLUMNS.split(","))
        row = await self._one(
            self.db,
            f"SELECT {columns}, e.body FROM dead_letters x"
            " JOIN deliveries d ON d.id = x.delivery_id JOIN events e ON e.id = d.event_id"
            " WHERE x.id = ?",
            (dead_id,),
        )
        return None if row is None else DeadLetter(*row)

    def _dead_filter(
        self, ids: Sequence[int] | None, subscription: str | None
    ) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if ids is not None:
            clauses.append("id IN (SELECT value FROM json_each(?))")
            params.append(_json(list(ids)))
        if subscription is not None:
            clauses.append("subscription = ?")
            params.append(subscription)
        return (" AND ".join(clauses) or "1"), params

    async def _dead_in_batches(
        self, ids: Sequence[int] | None, subscription: str | None, action: str
    ) -> int:
        """Run `action` (SQL over `batch`, a JSON list of dead-letter ids) on the matching
        dead letters, BULK_BATCH per transaction: the write lock is never held for long,
        however many there are, and ingest and delivery go on in between."""
        where, params = self._dead_filter(ids, subscription)
        done, after = 0, 0
        while True:
            rows = await self.db.execute_fetchall(
                f"SELECT id FROM dead_letters WHERE id > ? AND {where} ORDER BY id LIMIT ?",
                (after, *params, BULK_BATCH),
            )
            if not rows:
                return done
            batch = _json([row[0] for row in rows])
            async with self._transaction() as db:
                for statement in action.split(";"):
                    cursor = await db.execute(statement, {"batch": batch, "now": clock.now()})
                done += cursor.rowcount
            after = rows[-1][0]

    async def replay_dead(
        self, ids: Sequence[int] | None, subscription: str | None, now: float
    ) -> int:
        """Put dead deliveries back in the outbox with a fresh retry budget, in short
        transactions; returns how many dead letters left the table."""
        replayed = await self._dead_in_batches(
            ids,
            subscription,
            "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = :now,"
            " created_at = :now, updated_at = :now, last_error = NULL WHERE state = 'dead'"
            " AND id IN (SELECT delivery_id FROM dead_letters WHERE id IN"
            " (SELECT value FROM json_each(:batch)));"
            "DELETE FROM dead_letters WHERE id IN (SELECT value FROM json_each(:batch))",
        )
        if replayed:
            self._work_arrived()
        return replayed

    async def purge_dead(self, ids: Sequence[int] | None, subscription: str | None) -> int:
        """Forget dead letters for good, in short transactions."""
        return await self._dead_in_batches(
            ids,
            subscription,
            "DELETE FROM dead_letters WHERE id IN (SELECT value FROM json_each(:batch))",
        )

    async def prune(
        self, now: float, delivered_for: float, dead_letters_for: float | None
    ) -> PruneResult:
        """See Store.prune. Each step walks its table in id order (ids grow with time)
        and stops at the first row too young to go: reads outside any transaction,
        deletes PRUNE_BATCH rows per transaction, each re-checked inside it."""
        result = PruneResult()
        done_before = now - delivered_for
        if dead_letters_for is not None:
            dead_before = now - dead_letters_for
            async for rows in self._walk(
                "SELECT id, delivery_id, failed_at FROM dead_letters",
                "id",
                stop=lambda r: r[2] >= dead_before,
            ):
                old = [r for r in rows if r[2] < dead_before]
                async with self._transaction() as db:
                    await db.execute(
                        "DELETE FROM dead_letters WHERE id IN (SELECT value FROM json_each(?))",
                        (_json([r[0] for r in old]),),
                    )
                    await db.execute(
                        "DELETE FROM deliveries WHERE state = 'dead'"
                        " AND id IN (SELECT value FROM json_each(?))",
                        (_json([r[1] for r in old]),),
                    )
                result.dead_letters += len(old)
        async for rows in self._walk(
            "SELECT d.id, d.state, d.updated_at, d.created_at,"
            " EXISTS (SELECT 1 FROM dead_letters x WHERE x.delivery_id = d.id) FROM deliveries d",
            "d.id",
            stop=lambda r: r[3] >= done_before,
        ):
            old = [
                r[0]
                for r in rows
                if r[2] < done_before and (r[1] == "delivered" or (r[1] == "dead" and not r[4]))
            ]
            if not old:
                continue
            async with self._transaction() as db:
                cursor = await db.execute(
                    "DELETE FROM deliveries WHERE id IN (SELECT value FROM json_each(?))"
                    " AND (state = 'delivered' OR (state = 'dead' AND NOT EXISTS"
                    " (SELECT 1 FROM dead_letters x WHERE x.delivery_id = deliveries.id)))",
                    (_json(old),),
                )
                result.deliveries += cursor.rowcount
        # Events still queued for a subscription stay. Runs only shrink, and a new one
        # queues new events: what is queued now covers all this pass may meet.
        queued = Stretches(
            await self.db.execute_fetchall("SELECT first_event, last_event FROM queued_runs")
        )
        async for rows in self._walk(
            "SELECT e.id, e.ingested_at,"
            " EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id) FROM events e",
            "e.id",
            stop=lambda r: r[1] >= done_before,
        ):
            old = [r[0] for r in rows if r[1] < done_before and not r[2] and r[0] not in queued]
            if not old:
                continue
            async with self._transaction() as db:
                cursor = await db.execute(
                    "DELETE FROM events WHERE id IN (SELECT value FROM json_each(?))"
                    " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id)",
                    (_json(old),),
                )
                result.events += cursor.rowcount
        while True:  # deleted subjects' last representations, a batch at a time
            async with self._transaction() as db:
                cursor = await db.execute(
                    "DELETE FROM subjects WHERE (source, url) IN (SELECT source, url"
                    " FROM subjects WHERE deleted AND fetched_at < ? LIMIT ?)",
                    (done_before, PRUNE_BATCH),
                )
            result.subjects += cursor.rowcount
            if cursor.rowcount < PRUNE_BATCH:
                return result

    async def _walk(
        self, select: str, table_id: str, stop: Callable[[Any], bool]
    ) -> AsyncIterator[list[Any]]:
        """Pages of PRUNE_BATCH rows of `select` (whose first column is `table_id`) in id
        order, until a row for which `stop` holds."""
        after = 0
        while True:
            rows = list(
                await self.db.execute_fetchall(
                    f"{select} WHERE {table_id} > ? ORDER BY {table_id} LIMIT ?",
                    (after, PRUNE_BATCH),
                )
            )
            if not rows:
                return
            cut = next((i for i, row in enumerate(rows) if stop(row)), None)
            page = rows if cut is None else rows[:cut]
            if page:
                yield page
            if cut is not None:
                return
            after = rows[-1][0]

    async def storage(self) -> Storage:
        (events,) = await self._one(self.db, "SELECT count(*) FROM events")
        (pages,) = await self._one(self.db, "PRAGMA page_count")
        (free,) = await self._one(self.db, "PRAGMA freelist_count")
        (size,) = await self._one(self.db, "PRAGMA page_size")
        (subjects,) = await self._one(self.db, "SELECT count(*) FROM subjects")
        return Storage(events=events, bytes=pages * size, free_bytes=free * size, subjects=subjects)

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
        """A page of stored events in ingest order, after the row `after`, narrowed by
        the filters given. A read: no lock is taken."""
        clauses: list[str] = ["id > ?"]
        params: list[Any] = [after]
        if envelope_ids:
            # An envelope id is "<source>:<upstream id>": found through the unique
            # (source, upstream_id) index, not by reading every event's envelope_id.
            clauses.append(
                "id IN (SELECT e.id FROM json_each(?) AS n JOIN events AS e"
                " ON e.source = n.value ->> 0 AND e.upstream_id = n.value ->> 1)"
            )
            params.append(_json([split_id(i) for i in envelope_ids]))
        if source is not None:
            clauses.append("source = ?")
            params.append(source)
        if type_glob is not None:
            clauses.append("type GLOB ?")  # fnmatch's [!x] is GLOB's [^x]
            params.append(type_glob.replace("[!", "[^"))
        if since is not None:
            clauses.append("ingested_at >= ?")
            params.append(since)
        rows = await self.db.execute_fetchall(
            "SELECT id, envelope_id, source, type, body FROM events"
            f" WHERE {' AND '.join(clauses)} ORDER BY id LIMIT ?",
            (*params, limit),
        )
        return [StoredEvent(*row) for row in rows]

    async def trace(self, envelope_id: str) -> Trace | None:
        """See Store.trace. Reads: no lock is taken."""
        source, upstream_id = split_id(envelope_id)
        rows = await self.db.execute_fetchall(
            "SELECT id, envelope_id, source, type, body, ingested_at FROM events"
            " WHERE source = ? AND upstream_id = ?",
            (source, upstream_id),
        )
        if not rows:
            return None
        (event_id, *stored, ingested_at) = rows[0]
        deliveries = await self.db.execute_fetchall(
            "SELECT id, subscription, state, next_attempt_at, updated_at, last_status,"
            " last_duration FROM deliveries WHERE event_id = ? ORDER BY id",
            (event_id,),
        )
        failures = await self.db.execute_fetchall(
            "SELECT delivery_id, at, status, duration, outcome, error FROM attempts"
            " WHERE delivery_id IN (SELECT id FROM deliveries WHERE event_id = ?)"
            " ORDER BY at",
            (event_id,),
        )
        traced = [
            DeliveryTrace.of(
                subscription,
                state,
                due,
                [Attempt(*row[1:]) for row in failures if row[0] == d_id],
                updated_at,
                status,
                duration,
            )
            for d_id, subscription, state, due, updated_at, status, duration in deliveries
        ]
        # Still queued for these: pending, never tried.
        traced += [
            DeliveryTrace(subscription, "pending", queued_at, [])
            for subscription, queued_at in await self.db.execute_fetchall(
                "SELECT subscription, queued_at FROM queued_runs"
                " WHERE first_event <= ?1 AND last_event >= ?1 ORDER BY id",
                (event_id,),
            )
        ]
        return Trace(StoredEvent(event_id, *stored), ingested_at, traced)

    async def enqueue(self, subscription: str, event_ids: Sequence[int], now: float) -> int:
        """Queue these stored events for a subscription again, on purpose (a new
        receiver, a receiver that lost data), in one short transaction: new pairs are
        created, delivered and dead ones reset (their dead letters leave the table),
        deliveries in flight are left alone. Returns how many were queued."""
        if not event_ids:
            return 0
        batch = _json(list(event_ids))
        async with self._transaction() as db:
            # Still queued for the subscription (never tried): left where they are, and
            # counted as queued again, as a pending delivery reset would be.
            (waiting,) = await self._one(
                db,
                "SELECT count(*) FROM json_each(?2) WHERE coalesce((SELECT last_event"
                " FROM queued_runs r WHERE r.subscription = ?1 AND r.first_event <= value"
                " ORDER BY r.first_event DESC LIMIT 1), 0) >= value",
                (subscription, batch),
            )
            await db.execute(
                "DELETE FROM dead_letters WHERE subscription = ? AND delivery_id IN"
                " (SELECT id FROM deliveries WHERE subscription = ? AND event_id IN"
                " (SELECT value FROM json_each(?)))",
                (subscription, subscription, batch),
            )
            cursor = await db.execute(
                "INSERT INTO deliveries (event_id, subscription, state, next_attempt_at,"
                " created_at, updated_at) SELECT value, ?1, 'pending', ?2, ?2, ?2"
                " FROM json_each(?3)"
                # An event retention deleted since the replay looked it up is passed over.
                " WHERE value IN (SELECT id FROM events) AND coalesce((SELECT last_event"
                " FROM queued_runs r WHERE r.subscription = ?1 AND r.first_event <= value"
                " ORDER BY r.first_event DESC LIMIT 1), 0) < value ORDER BY key"
                " ON CONFLICT (event_id, subscription) DO UPDATE SET"
                " state = 'pending', attempts = 0, next_attempt_at = excluded.next_attempt_at,"
                " created_at = excluded.created_at, updated_at = excluded.updated_at,"
                " last_error = NULL WHERE deliveries.state != 'in_flight'",
                (subscription, now, batch),
            )
            queued = cursor.rowcount + int(waiting)
        if queued:
            self._work_arrived()
        return queued


RECORD_SEPARATOR = b"\x1e"

# Successes, recorded (SqliteStore._delivered): the rows of a size class as VALUES (id,
# attempts, at, status, duration); the padding rows' NULL id matches nothing. Finished,
# a delivery leaves its subject's line (its ordering_key goes). Only claims still ours
# are written: one whose lease ran out may be another's by now.
_DELIVERED_CHUNK = 1024
_DELIVERED = {
    size: "UPDATE deliveries SET state = 'delivered', attempts = o.column2,"
    " updated_at = o.column3, last_status = o.column4, last_error = NULL,"
    " last_duration = o.column5, ordering_key = NULL FROM (VALUES "
    + ",".join(["(?, ?, ?, ?, ?)"] * size)
    + ") AS o WHERE deliveries.id = o.column1 AND deliveries.state = 'in_flight'"
    " AND deliveries.owner = ?"
    for size in (1 << n for n in range(4, _DELIVERED_CHUNK.bit_length()))
}

# The due deliveries of the lanes of one size class: `?` lanes as {name: wanted}, `?` now,
# `?` the class's cap. Each lane's earliest `cap` come from its index, then its first
# `wanted` by rank.
# A disabled subscription's lanes are passed over (its deliveries wait, pending).
_NOT_DISABLED = (
    "w.key NOT IN (SELECT subscription FROM subscription_states WHERE state = 'disabled')"
)
_CLAIM_TERM = (
    "SELECT id FROM (SELECT d.id, w.value AS wanted, row_number() OVER (PARTITION BY w.key"
    " ORDER BY d.next_attempt_at, d.id) AS rank FROM json_each(?) AS w JOIN deliveries d"
    f" ON {_NOT_DISABLED} AND d.id IN (SELECT id FROM deliveries WHERE subscription = w.key"
    " AND state = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?))"
    " WHERE rank <= wanted"
)
# In order per subject: a due row is taken only when no older row of its subject is
# unfinished. An older one holding the line out of due order (claimed, or tried before
# and perhaps scheduled later) is found in deliveries_holding_lines; one waiting its
# turn is due before this one (ingest order) and met first by the same scan, where only
# each subject's first is kept (`place`).
_ORDERED_CLAIM_TERM = (
    "SELECT id FROM (SELECT d.id, w.value AS wanted, d.ordering_key AS line,"
    " row_number() OVER (PARTITION BY w.key ORDER BY d.next_attempt_at, d.id) AS rank,"
    " row_number() OVER (PARTITION BY w.key, d.ordering_key ORDER BY d.id) AS place"
    " FROM json_each(?) AS w JOIN deliveries d"
    f" ON {_NOT_DISABLED} AND d.id IN (SELECT id FROM deliveries x WHERE subscription = w.key"
    " AND state = 'pending' AND next_attempt_at <= ? AND (ordering_key IS NULL OR NOT EXISTS"
    " (SELECT 1 FROM deliveries p WHERE p.subscription = x.subscription"
    " AND p.ordering_key = x.ordering_key AND p.id < x.id"
    " AND (p.state = 'in_flight' OR p.attempts > 0)))"
    " ORDER BY next_attempt_at, id LIMIT ?)) WHERE rank <= wanted AND (line IS NULL OR place = 1)"
)


def _identity(path: str) -> tuple[int, int]:
    info = os.stat(path)
    return (info.st_dev, info.st_ino)


def _whoami() -> str:
    return f"uid {os.getuid()}"


def _fix_permissions(path: str) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    return (
        f"feedhook runs as {_whoami()}: make the file and its directory writable to it,"
        f" e.g. `chown -R {os.getuid()} {folder}` (in Docker: on the volume mounted there)"
    )


def _check_place(path: str) -> None:
    """What can be told before SQLite tries: a missing or unwritable directory, a file
    that cannot be written. SQLite's own errors for these say only "unable to open"."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        what = "is not a directory" if os.path.exists(folder) else "does not exist"
        raise StoreError(
            f"{path}: the directory {folder} {what}; create it (mkdir -p {folder}) or set"
            " FEEDHOOK_DB to a path in an existing directory"
        )
    if os.path.isdir(path):
        raise StoreError(f"{path} is a directory; set FEEDHOOK_DB to a file path inside it")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StoreError(
            f"{path}: cannot write to the directory {folder} (SQLite keeps its journal"
            f" files beside the database); {_fix_permissions(path)}"
        )
    if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
        raise StoreError(f"{path}: the file is not readable and writable; {_fix_permissions(path)}")


def _explain(path: str, exc: sqlite3.Error) -> str:
    """SQLite's error as one line a person can act on."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code == sqlite3.SQLITE_NOTADB:
        return (
            f"{path}: not a SQLite database (is FEEDHOOK_DB pointing at the right file?);"
            " point it at feedhook's database, or at a new path to start afresh"
        )
    if code == sqlite3.SQLITE_CORRUPT:
        return (
            f"{path}: the database is corrupt ({exc}); restore it from a backup, or move it"
            " away to start afresh (every source then starts again from its `start` setting)"
        )
    if code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM, sqlite3.SQLITE_CANTOPEN):
        return f"{path}: cannot open the database for writing ({exc}); {_fix_permissions(path)}"
    if code == sqlite3.SQLITE_FULL:
        return f"{path}: the disk is full; free space on it, then start feedhook again"
    return f"{path}: cannot use the database: {exc}"


def _explain_os(path: str, exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return f"{path}: permission denied; {_fix_permissions(path)}"
    return f"{path}: {exc.strerror or exc}"


def _json(value: Any) -> str:
    """A statement's rows as one JSON parameter (read back with json_each)."""
    return orjson.dumps(value).decode()


def _due_order(pair: tuple[list[Any], bytes]) -> tuple[float, int]:
    row = pair[0]
    return (row[4], row[0])


def _statements(script: str) -> list[str]:
    """Split a migration into statements; trigger bodies keep their inner semicolons."""
    statements, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    if pending.strip():
        statements.append(pending.strip())
    return statements
