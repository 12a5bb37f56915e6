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
import sqlite3
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from feedhook import clock
from feedhook.store.base import (
    DeadLetter,
    Delivery,
    IngestItem,
    Outcome,
    SourceState,
    Status,
    SubscriptionCounts,
)

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
)

SCHEMA_VERSION = len(MIGRATIONS)
MIN_SQLITE = (3, 38, 0)
INSERT_CHUNK = 500  # rows per multi-row INSERT: 3,000 parameters, far below SQLite's limit


# How long a statement waits for another connection's write lock before feedhook says so.
LOCK_WAIT = 10.0
# SQLite's own busy handler sleeps 1, 2, 5, 10, ... ms between tries: a lock freed just
# after a try is seen only 5 or 10 ms later. It is kept to its first two tries (3 ms);
# past that the statement is tried again from here, so a lock held by the other
# process (ingest or delivery) is noticed within about a millisecond of its release.
BUSY_TIMEOUT_MS = 3


class StoreError(Exception):
    """The database cannot be used (newer schema, unreadable file, ...)."""


def _busy(exc: sqlite3.OperationalError) -> bool:
    return exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class _Connection:
    """An aiosqlite connection whose statements wait for a locked database, up to
    LOCK_WAIT, in short steps. A statement that found the database locked did nothing,
    so trying it again is safe (inside a transaction this one holds the lock and is never
    locked out)."""

    def __init__(self, db: aiosqlite.Connection, path: str) -> None:
        self.raw = db
        self.path = path

    async def _retry(self, call: Any, *args: Any) -> Any:
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                return await call(*args)
            except sqlite3.OperationalError as exc:
                if not _busy(exc):
                    raise
                if time.monotonic() > deadline:
                    raise StoreError(
                        f"{self.path}: the database stayed locked for {LOCK_WAIT:g}s; is"
                        " another program holding a long transaction on it?"
                    ) from exc

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> aiosqlite.Cursor:
        return await self._retry(self.raw.execute, sql, params)  # type: ignore[no-any-return]

    async def execute_fetchall(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return await self._retry(self.raw.execute_fetchall, sql, params)

    async def executemany(self, sql: str, rows: Any) -> aiosqlite.Cursor:
        return await self._retry(self.raw.executemany, sql, rows)  # type: ignore[no-any-return]

    async def commit(self) -> None:
        await self._retry(self.raw.commit)

    async def rollback(self) -> None:
        await self.raw.rollback()

    async def close(self) -> None:
        await self.raw.close()


class SqliteStore:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._db: _Connection | None = None
        self._lock = asyncio.Lock()
        # Claim tokens: unique among this process's claims, and unlike any earlier
        # process's (whose in-flight rows are recovered to pending at start).
        self._claims = time.time_ns()

    # --- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise StoreError(
                f"SQLite {sqlite3.sqlite_version} is too old: feedhook needs"
                f" {'.'.join(map(str, MIN_SQLITE))} or newer (JSON operators);"
                " use a newer Python build or image"
            )
        try:
            raw = await aiosqlite.connect(self.path, isolation_level=None)
        except Exception as exc:
            raise StoreError(f"{self.path}: cannot open the database: {exc}") from exc
        self._db = db = _Connection(raw, self.path)
        await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        await db.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode survives a process crash; a power cut can drop the last
        # commits, and then cursor and outbox roll back together: nothing is skipped.
        await db.execute("PRAGMA synchronous = NORMAL")
        await db.execute("PRAGMA foreign_keys = ON")
        await self._migrate()

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

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
        self, source: str, items: Sequence[IngestItem], cursor: str
    ) -> list[IngestItem]:
        """Write a page's new events, their deliveries and the cursor in one transaction;
        return the items that were new (the others were already stored)."""
        now = clock.now()
        first_seen: dict[str, IngestItem] = {}
        for item in items:
            first_seen.setdefault(item.upstream_id, item)
        unique = list(first_seen.values())
        async with self._transaction() as db:
            (before,) = await self._one(db, "SELECT coalesce(max(id), 0) FROM events")
            for start in range(0, len(unique), INSERT_CHUNK):
                chunk = unique[start : start + INSERT_CHUNK]
                # Known events are skipped; the new ones get ids above `before`.
                await db.execute(
                    "INSERT INTO events (source, upstream_id, envelope_id, type, body,"
                    " ingested_at) VALUES "
                    + ",".join(["(?, ?, ?, ?, ?, ?)"] * len(chunk))
                    + " ON CONFLICT (source, upstream_id) DO NOTHING",
                    [
                        value
                        for i in chunk
                        for value in (
                            source,
                            i.upstream_id,
                            i.envelope.id,
                            i.envelope.type,
                            i.envelope.body,
                            now,
                        )
                    ],
                )
            event_ids: dict[str, int] = {}
            if unique:
                (inserted,) = await self._one(
                    db,
                    "SELECT json_group_array(json_array(upstream_id, id)) FROM events WHERE id > ?",
                    (before,),
                )
                event_ids = dict(orjson.loads(inserted))
            fresh = [i for i in unique if i.upstream_id in event_ids]
            deliveries = [
                (event_ids[i.upstream_id], name) for i in fresh for name in i.subscriptions
            ]
            if deliveries:
                await db.execute(
                    "INSERT INTO deliveries (event_id, subscription, state, next_attempt_at,"
                    " created_at, updated_at) SELECT value ->> 0, value ->> 1, 'pending', ?1,"
                    " ?1, ?1 FROM json_each(?2) ORDER BY key",
                    (now, _json(deliveries)),
                )
            # A page read is a successful poll: recorded with the cursor, no extra commit.
            await db.execute(
                "INSERT INTO sources (name, cursor, cursor_updated_at, last_poll_at,"
                " last_success_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
                " cursor = excluded.cursor, cursor_updated_at = excluded.cursor_updated_at,"
                " last_poll_at = excluded.last_poll_at,"
                " last_success_at = excluded.last_success_at, last_error = NULL,"
                " last_error_at = NULL",
                (source, cursor, now, now, now),
            )
        return fresh

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

    async def recover_in_flight(self) -> int:
        """Deliveries that were in flight when the last process died become due again."""
        async with self._transaction() as db:
            cursor = await db.execute(
                "UPDATE deliveries SET state = 'pending' WHERE state = 'in_flight'"
            )
            return cursor.rowcount

    async def claim_due(self, subscription: str, now: float, limit: int) -> list[Delivery]:
        """Claim for one subscription (see `claim`)."""
        return await self.claim({subscription: limit}, now)

    async def claim(self, wants: Mapping[str, int], now: float) -> list[Delivery]:
        """Mark due deliveries in flight, up to `wants[subscription]` for each, and return
        them oldest due first.

        The hot path, in two statements and no transaction: one atomic UPDATE claims the
        rows under a fresh token; one SELECT reads them back as a single aggregated row
        (their bodies joined by a record separator, which JSON never leaves unescaped)."""
        wants = {name: n for name, n in wants.items() if n > 0}
        if not wants:
            return []
        self._claims += 1
        token = self._claims
        picks = " UNION ALL ".join(
            [
                "SELECT * FROM (SELECT id FROM deliveries WHERE subscription = ?"
                " AND state = 'pending' AND next_attempt_at <= ?"
                " ORDER BY next_attempt_at, id LIMIT ?)"
            ]
            * len(wants)
        )
        async with self._lock:
            db = self.db
            await db.execute(
                f"UPDATE deliveries SET state = 'in_flight', claim = ? WHERE id IN ({picks})",
                (token, *(v for name, n in wants.items() for v in (name, now, n))),
            )
            meta, bodies = await self._one(
                db,
                "SELECT json_group_array(json_array(d.id, d.subscription, d.attempts,"
                " d.created_at, d.next_attempt_at, e.envelope_id, e.ingested_at)),"
                " CAST(group_concat(e.body, char(30)) AS BLOB)"
                " FROM deliveries d JOIN events e ON e.id = d.event_id"
                " WHERE d.state = 'in_flight' AND d.claim = ?",
                (token,),
            )
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
                created_at=row[3],
                ingested_at=row[6],
            )
            for row, body in sorted(zip(rows, parts, strict=True), key=_due_order)
        ]

    async def release(self, ids: Sequence[int]) -> None:
        """Claimed deliveries that were never sent go back to pending."""
        async with self._lock:
            await self.db.execute(
                "UPDATE deliveries SET state = 'pending' WHERE state = 'in_flight'"
                " AND id IN (SELECT value FROM json_each(?))",
                (_json(list(ids)),),
            )

    async def next_due_at(self, subscriptions: Sequence[str]) -> float | None:
        """The earliest pending attempt among these lanes (one index probe per lane)."""
        earliest: float | None = None
        for name in subscriptions:
            row = await self._one(
                self.db,
                "SELECT min(next_attempt_at) FROM deliveries"
                " WHERE subscription = ? AND state = 'pending'",
                (name,),
            )
            if row is not None and row[0] is not None:
                earliest = row[0] if earliest is None else min(earliest, row[0])
        return earliest

    async def complete(self, outcomes: Sequence[Outcome]) -> None:
        """Record a batch of attempt outcomes: one statement, and the dead letters."""
        rows = [
            (
                o.delivery_id,
                o.kind,
                o.attempts,
                o.at,
                o.next_attempt_at,
                o.status_code,
                None if o.kind == "delivered" else o.reason,
            )
            for o in outcomes
        ]
        dead = [o for o in outcomes if o.kind == "dead"]
        update = (
            "UPDATE deliveries SET state = iif(o.value ->> 1 = 'retry', 'pending', o.value ->> 1),"
            " attempts = o.value ->> 2, updated_at = o.value ->> 3,"
            " next_attempt_at = coalesce(o.value ->> 4, deliveries.next_attempt_at),"
            " last_status = o.value ->> 5, last_error = o.value ->> 6"
            " FROM json_each(?) AS o WHERE deliveries.id = o.value ->> 0"
        )
        params = (_json(rows),)
        if not dead:  # the hot path: one statement is its own transaction
            async with self._lock:
                await self.db.execute(update, params)
            return
        async with self._transaction() as db:
            await db.execute(update, params)
            await db.executemany(
                "INSERT INTO dead_letters (delivery_id, subscription, envelope_id, type,"
                " attempts, status_code, reason, response_body, failed_at)"
                " SELECT d.id, d.subscription, e.envelope_id, e.type, ?, ?, ?, ?, ?"
                " FROM deliveries d JOIN events e ON e.id = d.event_id WHERE d.id = ?",
                [
                    (
                        o.attempts,
                        o.status_code,
                        o.reason or "",
                        o.response_body,
                        o.at,
                        o.delivery_id,
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
        return Status(sources=sources, subscriptions=await self.counts())

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
            clauses.append(f"id IN ({','.join('?' * len(ids))})")
            params.extend(ids)
        if subscription is not None:
            clauses.append("subscription = ?")
            params.append(subscription)
        return (" AND ".join(clauses) or "1"), params

    async def replay_dead(
        self, ids: Sequence[int] | None, subscription: str | None, now: float
    ) -> int:
        """Put dead deliveries back in the outbox with a fresh retry budget."""
        where, params = self._dead_filter(ids, subscription)
        async with self._transaction() as db:
            await db.execute(
                "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?,"
                " created_at = ?, updated_at = ?, last_error = NULL WHERE state = 'dead' AND id IN"
                f" (SELECT delivery_id FROM dead_letters WHERE {where})",
                (now, now, now, *params),
            )
            cursor = await db.execute(f"DELETE FROM dead_letters WHERE {where}", params)
            return cursor.rowcount

    async def replay_events(
        self,
        subscription: str,
        now: float,
        *,
        envelope_ids: Sequence[str] | None = None,
        source: str | None = None,
        type_glob: str | None = None,
        since: float | None = None,
    ) -> int:
        """Queue stored events for a subscription again, on purpose (a new receiver, a
        receiver that lost data). Deliveries in flight are left alone; dead ones leave
        the dead-letter table as they go back into the outbox."""
        clauses: list[str] = []
        params: list[Any] = []
        if envelope_ids:
            clauses.append(f"envelope_id IN ({','.join('?' * len(envelope_ids))})")
            params.extend(envelope_ids)
        if source is not None:
            clauses.append("source = ?")
            params.append(source)
        if type_glob is not None:
            clauses.append("type GLOB ?")  # fnmatch's [!x] is GLOB's [^x]
            params.append(type_glob.replace("[!", "[^"))
        if since is not None:
            clauses.append("ingested_at >= ?")
            params.append(since)
        where = " AND ".join(clauses) or "1"
        async with self._transaction() as db:
            await db.execute(
                "DELETE FROM dead_letters WHERE delivery_id IN (SELECT d.id FROM deliveries d"
                f" JOIN events ON events.id = d.event_id WHERE d.subscription = ? AND {where})",
                (subscription, *params),
            )
            cursor = await db.execute(
                "INSERT INTO deliveries (event_id, subscription, state, next_attempt_at,"
                f" created_at, updated_at) SELECT id, ?, 'pending', ?, ?, ? FROM events"
                f" WHERE {where} ORDER BY id ON CONFLICT (event_id, subscription) DO UPDATE SET"
                " state = 'pending', attempts = 0, next_attempt_at = excluded.next_attempt_at,"
                " created_at = excluded.created_at, updated_at = excluded.updated_at,"
                " last_error = NULL WHERE deliveries.state != 'in_flight'",
                (subscription, now, now, now, *params),
            )
            return cursor.rowcount

    async def purge_dead(self, ids: Sequence[int] | None, subscription: str | None) -> int:
        where, params = self._dead_filter(ids, subscription)
        async with self._transaction() as db:
            cursor = await db.execute(f"DELETE FROM dead_letters WHERE {where}", params)
            return cursor.rowcount


RECORD_SEPARATOR = b"\x1e"


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
