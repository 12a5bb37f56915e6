"""The PostgreSQL store: the contract of `base.py` for several `feedhook run` replicas.

Claims take due rows with `FOR UPDATE SKIP LOCKED` (two replicas never claim one row, and
never wait on each other), owned under a lease each replica renews; one poller per source
is a lease on the source's row, renewed while it polls and checked again inside every
ingest transaction, so a replica that lost its source cannot write a page or move the
cursor. Writes that make work notify `feedhook_work` at commit: every replica's
dispatcher wakes at once. The schema is migrated at start under an advisory lock, so
replicas starting together do not race. A lost connection is retried with backoff
while readiness says the database is unreachable.

The driver, asyncpg, comes with the `postgres` extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

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
    SourceLost,
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

try:
    import asyncpg
except ImportError:  # pragma: no cover - the extra is missing
    asyncpg = None

log = logging.getLogger("feedhook.store")

T = TypeVar("T")

CHANNEL = "feedhook_work"
# Any 64-bit number of our own: held while the schema is created or migrated.
MIGRATION_LOCK = 0x66656564686F6F6B  # "feedhook"
# Held while retention deletes events (exclusively) and while a replay queues deliveries
# of stored events (shared): an event is never deleted under a delivery being queued.
EVENTS_LOCK = MIGRATION_LOCK + 1
POOL_SIZE = 10  # connections per store: the dispatcher's claims and outcomes, polls, admin
PRUNE_BATCH = 1000
RETRY_FIRST, RETRY_MAX = 0.2, 10.0
# Which of a batch's upstream ids ($2) a source ($1) has stored: one probe of the unique
# index per id. Asked as `upstream_id = ANY($2)`, the planner walked every stored entry
# of the source for every batch (until autovacuum first analyzed the table, and where
# the source holds few distinct ids for its size): a catch-up slowed as it went.
STORED_ALREADY = (
    "SELECT e.upstream_id FROM unnest($2::text[]) AS u(id) CROSS JOIN LATERAL"
    # LIMIT 1 (there is at most one) keeps the planner from flattening this into a join
    # that walks every entry of the source.
    " (SELECT upstream_id FROM events WHERE source = $1 AND upstream_id = u.id LIMIT 1) AS e"
)

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE events (
        id BIGSERIAL PRIMARY KEY,
        source TEXT NOT NULL,
        upstream_id TEXT NOT NULL,
        envelope_id TEXT NOT NULL,
        type TEXT NOT NULL,
        body BYTEA NOT NULL,
        ingested_at DOUBLE PRECISION NOT NULL,
        UNIQUE (source, upstream_id)
    );
    CREATE INDEX events_by_envelope ON events (envelope_id);
    CREATE TABLE deliveries (
        id BIGSERIAL PRIMARY KEY,
        event_id BIGINT NOT NULL REFERENCES events (id),
        subscription TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        last_status INTEGER,
        last_error TEXT,
        owner TEXT,
        lease_until DOUBLE PRECISION,
        UNIQUE (event_id, subscription)
    );
    CREATE INDEX deliveries_due ON deliveries (subscription, next_attempt_at, id)
        WHERE state = 'pending';
    CREATE INDEX deliveries_claimed ON deliveries (owner) WHERE state = 'in_flight';
    CREATE TABLE dead_letters (
        id BIGSERIAL PRIMARY KEY,
        delivery_id BIGINT NOT NULL,
        subscription TEXT NOT NULL,
        envelope_id TEXT NOT NULL,
        type TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        status_code INTEGER,
        reason TEXT NOT NULL,
        response_body TEXT,
        failed_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX dead_letters_by_delivery ON dead_letters (delivery_id);
    CREATE TABLE sources (
        name TEXT PRIMARY KEY,
        cursor TEXT,
        cursor_updated_at DOUBLE PRECISION,
        last_poll_at DOUBLE PRECISION,
        last_success_at DOUBLE PRECISION,
        last_error TEXT,
        last_error_at DOUBLE PRECISION,
        poller TEXT,
        poller_until DOUBLE PRECISION,
        free_since DOUBLE PRECISION,
        asked_at DOUBLE PRECISION
    );
    CREATE TABLE pollers (
        owner TEXT PRIMARY KEY,
        seen_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE replicas (
        owner TEXT PRIMARY KEY,
        seen_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE subjects (
        source TEXT NOT NULL,
        url TEXT NOT NULL,
        representation TEXT NOT NULL,
        deleted BOOLEAN NOT NULL,
        fetched_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (source, url)
    );
    CREATE TABLE pruned_delivered (
        subscription TEXT PRIMARY KEY,
        n BIGINT NOT NULL
    );
    """,
    # Claims are found by their lease (taking back expired ones), never by owner: an
    # index on owner drew the outcomes' UPDATE into reading every claim the replica
    # holds (its whole reserve) instead of the few rows it writes.
    """
    DROP INDEX deliveries_claimed;
    CREATE INDEX deliveries_leases ON deliveries (lease_until) WHERE state = 'in_flight';
    """,
    # Receivers spared: subscriptions disabled (410 Gone, an operator) and the replicas'
    # notes (paused, circuit open); deliveries in order per subject; each source's
    # numbering of its events (the CloudEvents `sequence`).
    """
    CREATE TABLE subscription_states (
        subscription TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        reason TEXT,
        since DOUBLE PRECISION,
        until DOUBLE PRECISION
    );
    ALTER TABLE deliveries ADD COLUMN ordering_key TEXT;
    CREATE INDEX deliveries_ordered ON deliveries (subscription, ordering_key, id)
        WHERE ordering_key IS NOT NULL AND state IN ('pending', 'in_flight');
    ALTER TABLE sources ADD COLUMN sequence BIGINT NOT NULL DEFAULT 0;
    """,
    # `feedhook trace`: every failed attempt (a success is the delivery row itself, so
    # the hot path writes nothing more), and how long the last attempt took.
    """
    CREATE TABLE attempts (
        delivery_id BIGINT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
        at DOUBLE PRECISION NOT NULL,
        status INTEGER,
        duration DOUBLE PRECISION,
        outcome TEXT NOT NULL,
        error TEXT
    );
    CREATE INDEX attempts_by_delivery ON attempts (delivery_id);
    ALTER TABLE deliveries ADD COLUMN last_duration DOUBLE PRECISION;
    """,
    # A delivery's event is written in the same transaction (ingest) or looked up under
    # EVENTS_LOCK (replay), and retention deletes events under that lock: the foreign key
    # guarded nothing more, and its check locked each new delivery's event row, a write
    # and a WAL record per delivery.
    """
    ALTER TABLE deliveries DROP CONSTRAINT deliveries_event_id_fkey;
    """,
    # A delivery leaves its subject's line when it is finished (its ordering_key goes):
    # an ordered claim's look for an unfinished older one of its subject reads the index
    # alone, as in the SQLite store.
    """
    DROP INDEX deliveries_ordered;
    UPDATE deliveries SET ordering_key = NULL
        WHERE ordering_key IS NOT NULL AND state IN ('delivered', 'dead');
    CREATE INDEX deliveries_in_line ON deliveries (subscription, ordering_key, id)
        WHERE ordering_key IS NOT NULL;
    """,
    # Fan-out as runs (store/fanout.py): per subscription, a row for each stretch of
    # new events routed to it together, turned into deliveries by the claims. Its
    # events' ids as an array: concurrent ingests draw ids from one sequence, so a
    # stretch's are increasing but not always consecutive.
    """
    CREATE TABLE queued_runs (
        id BIGSERIAL PRIMARY KEY,
        subscription TEXT NOT NULL,
        events BIGINT[] NOT NULL,
        queued_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX queued_runs_by_subscription ON queued_runs (subscription, id);
    """,
    # An envelope id is "<source>:<upstream id>": events named by it are found through
    # the unique (source, upstream_id) index, and an index of their own cost every
    # ingest an insert per event.
    """
    DROP INDEX events_by_envelope;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def _retryable(exc: BaseException) -> bool:
    """The database went away (restarting, network lost), not a bad statement."""
    if asyncpg is None:
        return False
    return isinstance(
        exc,
        OSError
        | asyncpg.PostgresConnectionError
        | asyncpg.CannotConnectNowError
        | asyncpg.InterfaceError
        | asyncpg.exceptions.AdminShutdownError
        | asyncpg.exceptions.ConnectionDoesNotExistError,
    )


class PostgresStore:
    """One replica's connections to a PostgreSQL database."""

    def __init__(self, url: str, *, lease: float = DEFAULT_LEASE) -> None:
        if asyncpg is None:
            raise StoreError(
                "FEEDHOOK_DB names a PostgreSQL database, but its driver is not installed:"
                " pip install 'feedhook[postgres]'"
            )
        self.url = url
        self.owner = new_owner()
        self.lease = lease
        # Replicas started together first see each other, then share out the sources
        # (rather than the first taking all and handing most over again).
        self.settle = 1.5
        self.waiting_for = "the server does not answer; retrying"
        self.locked_since: float | None = None  # here: since when the database is unreachable
        self._pool: Any = None
        self._listener: Any = None
        self._wakes: list[Callable[[], None]] = []
        self._held: set[int] = set()  # the claims handed out and not yet finished
        self._answers = asyncio.Event()  # set when the database answers after an outage

    # --- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        where = _shown(self.url)
        try:
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=1,
                max_size=POOL_SIZE,
                command_timeout=60,
                # A commit need not wait for its WAL flush, as SQLite's WAL mode with
                # synchronous=NORMAL does not: a server crash can lose the last moments'
                # commits, which feedhook survives (an ingest goes with its cursor and
                # is read again; a lost outcome is a delivery sent again, at least once).
                # random_page_cost: the queue's pages are in memory, not on a disk to
                # seek; at the default (4) the planner answered an outcome batch by
                # scanning the whole deliveries table rather than probing its key.
                server_settings={"synchronous_commit": "off", "random_page_cost": "1.1"},
                # Pooled connections never change their session (no LISTEN, no SET, the
                # migration lock released where it is taken): no reset query each time
                # one goes back to the pool, a round trip saved per store call.
                reset=_unchanged,
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(
                f"cannot connect to PostgreSQL at {where}: {exc}; check FEEDHOOK_DB and"
                " that the server is up"
            ) from None
        try:
            await self._migrate(where)
            await self._listen()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._pool is not None:
            # A graceful stop hands its sources over at once, not after the lease.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self._pool.execute(
                        "UPDATE sources SET poller = NULL, poller_until = NULL WHERE poller = $1",
                        self.owner,
                    ),
                    5,
                )
        if self._listener is not None:
            conn, self._listener = self._listener, None
            try:
                await conn.close(timeout=5)
            except Exception:  # closing a connection that is already gone
                conn.terminate()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), 10)
            except (TimeoutError, Exception):
                pool.terminate()

    async def __aenter__(self) -> PostgresStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def check_identity(self) -> None:
        pass  # a server, not a file that can be replaced underneath

    async def _migrate(self, where: str) -> None:
        async with self._pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
            try:
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS feedhook_schema (version INTEGER NOT NULL)"
                )
                version = await conn.fetchval("SELECT max(version) FROM feedhook_schema") or 0
                if version > SCHEMA_VERSION:
                    raise StoreError(
                        f"the database at {where} has schema version {version}, newer than"
                        f" this feedhook understands ({SCHEMA_VERSION}); upgrade feedhook"
                        " (another replica runs a newer one)"
                    )
                for number in range(version, SCHEMA_VERSION):
                    async with conn.transaction():
                        await conn.execute(MIGRATIONS[number])
                        await conn.execute(
                            "INSERT INTO feedhook_schema (version) VALUES ($1)", number + 1
                        )
                    log.info("database schema migrated to version %d", number + 1)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)

    async def _listen(self) -> None:
        """A connection of its own that hears every replica's `NOTIFY feedhook_work`."""
        conn = await asyncpg.connect(self.url)
        await conn.add_listener(CHANNEL, self._heard)
        conn.add_termination_listener(lambda _: self._listener_lost())
        self._listener = conn

    def _heard(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        if payload != self.owner:
            self._work_arrived()

    def _listener_lost(self) -> None:
        if self._pool is None:
            return  # closing
        log.warning("lost the database connection that hears other replicas; reconnecting")
        asyncio.get_running_loop().create_task(self._relisten())

    async def _relisten(self) -> None:
        delay = RETRY_FIRST
        while self._pool is not None:
            try:
                await self._listen()
                self._work_arrived()  # whatever was notified meanwhile
                return
            except Exception as exc:
                if not _retryable(exc) and not isinstance(exc, asyncpg.PostgresError):
                    raise
                await asyncio.sleep(delay)
                delay = min(RETRY_MAX, delay * 2)

    def on_work(self, wake: Callable[[], None]) -> None:
        self._wakes.append(wake)

    def _work_arrived(self) -> None:
        for wake in self._wakes:
            wake()

    async def _run(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """`work(connection)` on a pooled connection; retried with backoff while the
        database is unreachable (each call is one transaction or one idempotent read)."""
        delay = RETRY_FIRST
        while True:
            if self._pool is None:
                raise StoreError("the PostgreSQL store is closed")
            try:
                async with self._pool.acquire() as conn:
                    result = await work(conn)
                if self.locked_since is not None:
                    log.info("the database answers again")
                    self.locked_since = None
                    # Every call still backing off tries again now, not after its delay.
                    self._answers.set()
                    self._answers = asyncio.Event()
                return result
            except Exception as exc:
                if asyncpg is not None and isinstance(exc, asyncpg.TransactionRollbackError):
                    # A deadlock or serialization failure: PostgreSQL rolled this
                    # transaction back whole; it is tried again, after a moment's jitter
                    # so that the other side goes first.
                    log.debug("a transaction was rolled back (%s); trying it again", exc)
                    await asyncio.sleep(random.random() * RETRY_FIRST)
                    continue
                if not _retryable(exc):
                    raise
                if self.locked_since is None:
                    self.locked_since = clock.now()
                    log.warning(
                        "the database at %s is unreachable (%s); retrying",
                        _shown(self.url),
                        exc,
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._answers.wait(), delay * (0.5 + random.random() / 2)
                    )
                delay = min(RETRY_MAX, delay * 2)

    # --- sources ---------------------------------------------------------------------

    async def get_cursor(self, source: str) -> str | None:
        return await self._run(
            lambda c: c.fetchval("SELECT cursor FROM sources WHERE name = $1", source)
        )

    async def join(self, now: float) -> None:
        await self._run(lambda c: self._seen(c, now))

    async def _seen(self, conn: Any, now: float) -> None:
        await conn.execute(
            "INSERT INTO pollers (owner, seen_at) VALUES ($1, $2) ON CONFLICT (owner)"
            " DO UPDATE SET seen_at = excluded.seen_at",
            self.owner,
            now,
        )

    async def lease_source(self, source: str, now: float) -> bool:
        """See Store.lease_source. Sources spread over the replicas that poll: each has a
        preferred replica (`_assignment`: rendezvous hashing over the live ones, at most
        a share each), which takes it when it is free; another takes a free source only
        once it stayed free for a lease. A replica holding more than its share (sources
        / live replicas, rounded up) hands over the ones preferring another, so a
        replica that joins gets its part."""

        async def lease(conn: Any) -> bool:
            async with conn.transaction():
                await self._seen(conn, now)
                await conn.execute(
                    "INSERT INTO sources (name, free_since) VALUES ($1, $2)"
                    " ON CONFLICT (name) DO NOTHING",
                    source,
                    now,
                )
                row = await conn.fetchrow(
                    "UPDATE sources SET asked_at = $2 WHERE name = $1"
                    " RETURNING poller, poller_until, free_since",
                    source,
                    now,
                )
                live = [
                    r["owner"]
                    for r in await conn.fetch(
                        "SELECT owner FROM pollers WHERE seen_at >= $1", now - self.lease
                    )
                ]
                wanted = [
                    r["name"]
                    for r in await conn.fetch(
                        "SELECT name FROM sources WHERE asked_at >= $1 OR poller_until >= $2"
                        " ORDER BY name",
                        now - self.lease,
                        now,
                    )
                ]
                mine = await conn.fetchval(
                    "SELECT count(*) FROM sources WHERE poller = $1 AND poller_until >= $2",
                    self.owner,
                    now,
                )
                share = -(-max(1, len(wanted)) // max(1, len(live)))
                preferred = _assignment(wanted, live, share).get(source, self.owner)
                holder, until = row["poller"], row["poller_until"] or 0.0
                if holder not in (None, self.owner) and until >= now:
                    return False
                if holder == self.owner and until >= now:
                    if mine > share and preferred != self.owner:
                        await conn.execute(
                            "UPDATE sources SET poller = NULL, poller_until = NULL,"
                            " free_since = $2 WHERE name = $1",
                            source,
                            now,
                        )
                        log.info("source %s handed over to spread the sources", source)
                        return False
                else:  # free, or its holder's lease ran out
                    free_since = row["free_since"] or (until if holder else now)
                    waited = now - free_since >= self.lease
                    if preferred != self.owner and (mine >= share or not waited):
                        return False
                await conn.execute(
                    "UPDATE sources SET poller = $2, poller_until = $3, free_since = NULL"
                    " WHERE name = $1",
                    source,
                    self.owner,
                    now + self.lease,
                )
                return True

        return await self._run(lease)

    async def set_cursor(self, source: str, cursor: str) -> None:
        await self._run(
            lambda c: c.execute(
                "INSERT INTO sources (name, cursor, cursor_updated_at) VALUES ($1, $2, $3)"
                " ON CONFLICT (name) DO UPDATE SET cursor = excluded.cursor,"
                " cursor_updated_at = excluded.cursor_updated_at",
                source,
                cursor,
                clock.now(),
            )
        )

    async def record_poll_error(self, source: str, at: float, error: str) -> None:
        await self._run(
            lambda c: c.execute(
                "INSERT INTO sources (name, last_poll_at, last_error, last_error_at)"
                " VALUES ($1, $2, $3, $2) ON CONFLICT (name) DO UPDATE SET"
                " last_poll_at = excluded.last_poll_at, last_error = excluded.last_error,"
                " last_error_at = excluded.last_error_at",
                source,
                at,
                error,
            )
        )

    async def ingest(
        self,
        source: str,
        items: Sequence[IngestItem],
        cursor: str,
        subjects: Sequence[Subject] = (),
    ) -> list[IngestItem]:
        """See Store.ingest. Refused (SourceLost) when another replica holds the source."""
        first_seen: dict[str, IngestItem] = {}
        for item in items:
            first_seen.setdefault(item.upstream_id, item)
        unique = list(first_seen.values())

        async def write(conn: Any) -> list[IngestItem]:
            now = clock.now()
            async with conn.transaction():
                holder = await conn.fetchrow(
                    "SELECT poller, poller_until, sequence FROM sources WHERE name = $1 FOR UPDATE",
                    source,
                )
                if (
                    holder is not None
                    and holder["poller"] not in (None, self.owner)
                    and (holder["poller_until"] or 0) >= now
                ):
                    raise SourceLost(f"source {source} is polled by another replica")
                # The new ones are told apart first: each gets the source's next number.
                stored = {
                    r["upstream_id"]
                    for r in await conn.fetch(
                        STORED_ALREADY, source, [i.upstream_id for i in unique]
                    )
                }
                new = [i for i in unique if i.upstream_id not in stored]
                sequence = holder["sequence"] if holder is not None else 0
                bodies = [sequenced(i.envelope.body, sequence + n) for n, i in enumerate(new, 1)]
                sequence += len(new)
                # Numbered by place in `new`; the statement maps places to event ids.
                queued = queue(new, range(1, len(new) + 1))
                runs = queued.runs
                # One statement, one round trip: the events, their runs and ordered
                # deliveries (in ingest order), the cursor, and the wake-up, sent at
                # commit if anything was queued.
                rows = await conn.fetch(
                    "WITH ev AS (INSERT INTO events (source, upstream_id, envelope_id, type,"
                    " body, ingested_at) SELECT $1, u, e, t, b, $6 FROM unnest($2::text[],"
                    " $3::text[], $4::text[], $5::bytea[]) AS x(u, e, t, b)"
                    " ON CONFLICT (source, upstream_id) DO NOTHING RETURNING upstream_id, id),"
                    # Each place's event id, NULL where the event was not written.
                    " ids AS (SELECT array_agg(ev.id ORDER BY x.n) AS a FROM unnest($2::text[])"
                    " WITH ORDINALITY AS x(u, n) LEFT JOIN ev ON ev.upstream_id = x.u),"
                    " paired AS (INSERT INTO deliveries (event_id, subscription, state,"
                    " next_attempt_at, created_at, updated_at, ordering_key) SELECT ids.a[p.at],"
                    " p.s, 'pending', $6, $6, $6, p.k FROM unnest($7::int[], $8::text[],"
                    " $9::text[]) WITH ORDINALITY AS p(at, s, k, n) CROSS JOIN ids"
                    " WHERE ids.a[p.at] IS NOT NULL ORDER BY p.n RETURNING 1),"
                    " ran AS (INSERT INTO queued_runs (subscription, events, queued_at)"
                    " SELECT r.s, r.e, $6 FROM (SELECT r.s, array_remove(ids.a[r.lo:r.hi], NULL)"
                    " AS e, r.n FROM unnest($15::text[], $16::int[], $17::int[]) WITH ORDINALITY"
                    " AS r(s, lo, hi, n) CROSS JOIN ids) AS r WHERE r.e <> '{}' ORDER BY r.n"
                    " RETURNING 1),"
                    " queued AS (SELECT 1 FROM paired UNION ALL SELECT 1 FROM ran),"
                    " moved AS (INSERT INTO sources (name, cursor, cursor_updated_at,"
                    " last_poll_at, last_success_at, sequence) VALUES ($1, $10, $6, $6, $6, $11)"
                    " ON CONFLICT (name) DO UPDATE SET cursor = excluded.cursor,"
                    " cursor_updated_at = excluded.cursor_updated_at,"
                    " last_poll_at = excluded.last_poll_at,"
                    " last_success_at = excluded.last_success_at, last_error = NULL,"
                    " last_error_at = NULL, sequence = excluded.sequence,"
                    # Writing is holding: this poller's lease runs on from here, even if
                    # its renewal is still backing off from an outage.
                    " poller_until = CASE WHEN sources.poller = $12 THEN $13"
                    " ELSE sources.poller_until END),"
                    " woken AS (SELECT pg_notify($14, $12) FROM (SELECT 1 FROM queued LIMIT 1)"
                    " AS any_queued)"
                    " SELECT upstream_id, id, (SELECT count(*) FROM woken) FROM ev",
                    source,
                    [i.upstream_id for i in new],
                    [i.envelope.id for i in new],
                    [i.envelope.type for i in new],
                    bodies,
                    now,
                    [p[0] for p in queued.pairs],
                    [p[1] for p in queued.pairs],
                    [p[2] for p in queued.pairs],
                    cursor,
                    sequence,
                    self.owner,
                    now + self.lease,
                    CHANNEL,
                    [r[0] for r in runs],
                    [r[1] for r in runs],
                    [r[2] for r in runs],
                )
                written = {r["upstream_id"] for r in rows}
                fresh = [i for i in new if i.upstream_id in written]
                if subjects:
                    await conn.executemany(
                        "INSERT INTO subjects (source, url, representation, deleted,"
                        " fetched_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (source, url)"
                        " DO UPDATE SET representation = excluded.representation,"
                        " deleted = excluded.deleted, fetched_at = excluded.fetched_at",
                        [
                            (
                                source,
                                x.url,
                                encode(x.representation).decode(),
                                x.deleted,
                                x.fetched_at,
                            )
                            for x in subjects
                        ],
                    )
            return fresh

        fresh = await self._run(write)
        if any(i.subscriptions for i in fresh):
            self._work_arrived()  # this replica at once; the others through NOTIFY
        return fresh

    async def subjects(self, source: str, urls: Collection[str]) -> dict[str, Subject]:
        rows = await self._run(
            lambda c: c.fetch(
                "SELECT url, representation, deleted, fetched_at FROM subjects"
                " WHERE source = $1 AND url = ANY($2::text[])",
                source,
                list(urls),
            )
        )
        return {
            r["url"]: Subject(
                r["url"], json.loads(r["representation"]), r["deleted"], r["fetched_at"]
            )
            for r in rows
        }

    # --- deliveries ------------------------------------------------------------------

    async def recover_in_flight(self, now: float) -> int:
        """See Store.recover_in_flight: claims whose lease ran out (a replica that died
        or lost the database for longer than a lease); a live replica's are left alone."""
        status = await self._run(
            lambda c: c.execute(
                "UPDATE deliveries SET state = 'pending', owner = NULL, lease_until = NULL"
                " WHERE state = 'in_flight' AND (lease_until IS NULL OR lease_until < $1)",
                now,
            )
        )
        taken = int(status.split()[-1])
        if taken:
            await self._notify()
        return taken

    async def _notify(self) -> None:
        await self._run(self._notify_on)

    async def _notify_on(self, conn: Any) -> None:
        """Tell every other replica that work arrived (at commit, inside a transaction);
        the payload names this one, which wakes its own dispatcher directly."""
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, self.owner)

    async def renew(self, now: float) -> int:
        async def renew(conn: Any) -> int:
            # Only the claims this replica handed out: a claim whose answer was lost with
            # its connection (committed, then retried) is left to expire and be recovered.
            status = await conn.execute(
                "UPDATE deliveries SET lease_until = $2 WHERE state = 'in_flight'"
                " AND owner = $1 AND id = ANY($3::bigint[])",
                self.owner,
                now + self.lease,
                list(self._held),
            )
            await conn.execute(
                "UPDATE sources SET poller_until = $2 WHERE poller = $1",
                self.owner,
                now + self.lease,
            )
            # Renewing is being alive: `status` lists the replicas seen within a lease.
            await conn.execute(
                "INSERT INTO replicas (owner, seen_at) VALUES ($1, $2) ON CONFLICT (owner)"
                " DO UPDATE SET seen_at = excluded.seen_at",
                self.owner,
                now,
            )
            return int(status.split()[-1])

        return await self._run(renew)

    async def claim_due(self, subscription: str, now: float, limit: int) -> list[Delivery]:
        return await self.claim({subscription: limit}, now)

    async def claim(
        self, wants: Mapping[str, int], now: float, ordered: Collection[str] = ()
    ) -> list[Delivery]:
        """Due rows of every subscription that wants work, taken with FOR UPDATE SKIP
        LOCKED (rows another replica is claiming are passed over, never waited for).
        Ordered lanes take a row only when no older row of its subject is unfinished."""
        names = [name for name, n in wants.items() if n > 0]
        if not names:
            return []
        rows = await self._run(
            lambda c: c.fetch(
                "WITH due AS (SELECT d.id FROM unnest($1::text[], $2::int[]) AS w(s, n)"
                " CROSS JOIN LATERAL (SELECT id FROM deliveries x WHERE state = 'pending'"
                " AND subscription = w.s AND next_attempt_at <= $3"
                " AND (ordering_key IS NULL OR NOT (w.s = ANY($6::text[])) OR NOT EXISTS"
                " (SELECT 1 FROM deliveries p WHERE p.subscription = x.subscription"
                " AND p.ordering_key = x.ordering_key AND p.id < x.id))"
                " ORDER BY next_attempt_at, id LIMIT w.n FOR UPDATE SKIP LOCKED) d"
                " WHERE w.s NOT IN (SELECT subscription FROM subscription_states"
                " WHERE state = 'disabled')),"
                " claimed AS (UPDATE deliveries SET state = 'in_flight', owner = $4,"
                " lease_until = $5 FROM due WHERE deliveries.id = due.id RETURNING"
                " deliveries.id, deliveries.subscription, deliveries.event_id,"
                " deliveries.attempts, deliveries.created_at, deliveries.next_attempt_at),"
                # Then each lane's oldest queued runs, as many events as it still wants,
                # straight in flight; runs another replica is taking are passed over.
                " got AS (SELECT subscription, count(*) AS k FROM claimed GROUP BY 1),"
                " room AS (SELECT w.s, w.n - coalesce(got.k, 0) AS n FROM unnest($1::text[],"
                " $2::int[]) AS w(s, n) LEFT JOIN got ON got.subscription = w.s"
                " WHERE w.s NOT IN (SELECT subscription FROM subscription_states"
                " WHERE state = 'disabled')),"
                " picked AS (SELECT q.id, q.events, q.subscription, q.queued_at, room.n"
                " - coalesce(sum(cardinality(q.events)) OVER (PARTITION BY q.subscription"
                " ORDER BY q.id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS k"
                " FROM room CROSS JOIN LATERAL (SELECT id, events, subscription, queued_at"
                " FROM queued_runs WHERE subscription = room.s ORDER BY id LIMIT room.n"
                " FOR UPDATE SKIP LOCKED) q WHERE room.n > 0),"
                " take AS (SELECT id, events, subscription, queued_at,"
                " least(k, cardinality(events)) AS k FROM picked WHERE k > 0),"
                " made AS (INSERT INTO deliveries (event_id, subscription, state,"
                " next_attempt_at, created_at, updated_at, owner, lease_until)"
                " SELECT u.e, t.subscription, 'in_flight', t.queued_at, t.queued_at,"
                " t.queued_at, $4, $5 FROM take t CROSS JOIN LATERAL unnest(t.events[1:t.k])"
                " WITH ORDINALITY AS u(e, i) ORDER BY t.id, u.i"
                # A pair a replay made first is passed over.
                " ON CONFLICT (event_id, subscription) DO NOTHING RETURNING id, subscription,"
                " event_id, attempts, created_at, next_attempt_at),"
                " cut AS (UPDATE queued_runs q SET events = q.events[t.k + 1:] FROM take t"
                " WHERE q.id = t.id AND t.k < cardinality(t.events)),"
                " gone AS (DELETE FROM queued_runs q USING take t"
                " WHERE q.id = t.id AND t.k = cardinality(t.events))"
                " SELECT c.id, c.subscription, e.envelope_id, e.body, c.attempts,"
                " c.created_at, e.ingested_at FROM (SELECT * FROM claimed UNION ALL"
                " SELECT * FROM made) c JOIN events e ON e.id = c.event_id"
                " ORDER BY c.next_attempt_at, c.id",
                names,
                [wants[n] for n in names],
                now,
                self.owner,
                now + self.lease,
                [name for name in names if name in ordered],
            )
        )
        claimed = [Delivery(*r) for r in rows]
        self._held.update(d.id for d in claimed)
        return claimed

    async def release(self, ids: Sequence[int]) -> None:
        self._held.difference_update(ids)
        await self._run(
            lambda c: c.execute(
                "UPDATE deliveries SET state = 'pending', owner = NULL, lease_until = NULL"
                " WHERE id = ANY($1::bigint[]) AND state = 'in_flight' AND owner = $2",
                list(ids),
                self.owner,
            )
        )

    async def resume(self, subscription: str, now: float) -> int:
        status = await self._run(
            lambda c: c.execute(
                "UPDATE deliveries SET next_attempt_at = created_at WHERE subscription = $1"
                " AND state = 'pending' AND next_attempt_at > $2",
                subscription,
                now,
            )
        )
        resumed = int(status.split()[-1])
        if resumed:
            await self._notify()
        return resumed

    async def states(self) -> dict[str, SubscriptionState]:
        rows = await self._run(
            lambda c: c.fetch(
                "SELECT subscription, state, reason, since, until FROM subscription_states"
                " ORDER BY subscription"
            )
        )
        return {r[0]: SubscriptionState(*r[1:]) for r in rows}

    async def record_state(self, subscription: str, state: SubscriptionState) -> None:
        if state.state == "active":
            await self._run(
                lambda c: c.execute(
                    "DELETE FROM subscription_states WHERE subscription = $1"
                    " AND state != 'disabled'",
                    subscription,
                )
            )
            return
        await self._run(
            lambda c: c.execute(
                "INSERT INTO subscription_states VALUES ($1, $2, $3, $4, $5) ON CONFLICT"
                " (subscription) DO UPDATE SET state = excluded.state,"
                " reason = excluded.reason, since = excluded.since, until = excluded.until"
                " WHERE subscription_states.state != 'disabled'",
                subscription,
                state.state,
                state.reason,
                state.since,
                state.until,
            )
        )

    async def disable(self, subscription: str, reason: str, at: float) -> bool:
        status = await self._run(
            lambda c: c.execute(
                "INSERT INTO subscription_states VALUES ($1, 'disabled', $2, $3, NULL)"
                " ON CONFLICT (subscription) DO UPDATE SET state = 'disabled',"
                " reason = excluded.reason, since = excluded.since, until = NULL"
                " WHERE subscription_states.state != 'disabled'",
                subscription,
                reason,
                at,
            )
        )
        return bool(status.split()[-1] != "0")

    async def enable(self, subscription: str, now: float) -> bool:
        async def enable(conn: Any) -> bool:
            async with conn.transaction():
                status = await conn.execute(
                    "DELETE FROM subscription_states WHERE subscription = $1"
                    " AND state = 'disabled'",
                    subscription,
                )
                if status.split()[-1] == "0":
                    return False
                await conn.execute(
                    "UPDATE deliveries SET next_attempt_at = created_at WHERE subscription = $1"
                    " AND state = 'pending' AND next_attempt_at > $2",
                    subscription,
                    now,
                )
                await self._notify_on(conn)
                return True

        enabled: bool = await self._run(enable)
        if enabled:
            self._work_arrived()
        return enabled

    async def next_due_at(self, subscriptions: Sequence[str]) -> float | None:
        value = await self._run(
            lambda c: c.fetchval(
                "SELECT least((SELECT min(next_attempt_at) FROM deliveries"
                " WHERE state = 'pending' AND subscription = ANY($1::text[])),"
                # A lane's queued runs are due since they were queued: its oldest says
                # when (one index probe a lane, however long its queue).
                " (SELECT min(q.at) FROM unnest($1::text[]) AS w(s) CROSS JOIN LATERAL"
                " (SELECT queued_at AS at FROM queued_runs WHERE subscription = w.s"
                " ORDER BY id LIMIT 1) AS q))",
                list(subscriptions),
            )
        )
        return None if value is None else float(value)

    async def complete(self, outcomes: Sequence[Outcome]) -> None:
        """Outcomes of this replica's claims, in one statement (one round trip): a claim
        that is no longer this replica's (its lease ran out) is left to its new owner;
        dead ones get their dead letter in the same statement."""
        if not outcomes:
            return
        self._held.difference_update(o.delivery_id for o in outcomes)
        if all(o.kind == "delivered" for o in outcomes):
            # The usual batch: half the parameters to encode, no attempts or dead letters.
            await self._run(
                lambda c: c.execute(
                    "UPDATE deliveries d SET state = 'delivered', attempts = o.attempts,"
                    " updated_at = o.at, last_duration = o.duration, last_status = o.status,"
                    " last_error = NULL, owner = NULL, lease_until = NULL, ordering_key = NULL"
                    " FROM unnest($1::bigint[], $2::int[], $3::float8[], $4::int[],"
                    " $5::float8[]) AS o(id, attempts, at, status, duration)"
                    " WHERE d.id = o.id AND d.owner = $6",
                    [o.delivery_id for o in outcomes],
                    [o.attempts for o in outcomes],
                    [o.at for o in outcomes],
                    [o.status_code for o in outcomes],
                    [o.duration for o in outcomes],
                    self.owner,
                )
            )
            return
        await self._run(
            lambda c: c.execute(
                "WITH o AS (SELECT * FROM unnest($1::bigint[], $2::text[], $3::int[],"
                " $4::float8[], $5::float8[], $6::int[], $7::text[], $8::text[],"
                " $10::float8[]) WITH ORDINALITY AS o(id, kind, attempts, at, next_at,"
                " status, reason, body, duration, n)),"
                " failed AS (INSERT INTO attempts (delivery_id, at, status, duration,"
                " outcome, error) SELECT id, at, status, duration, kind, reason FROM o"
                " WHERE kind != 'delivered'),"
                " done AS (UPDATE deliveries d SET state = CASE WHEN o.kind = 'retry' THEN"
                " 'pending' ELSE o.kind END, attempts = o.attempts, updated_at = o.at,"
                " last_duration = o.duration,"
                " next_attempt_at = coalesce(o.next_at, d.next_attempt_at),"
                " last_status = o.status, last_error = CASE WHEN o.kind = 'delivered'"
                " THEN NULL ELSE o.reason END, owner = NULL, lease_until = NULL,"
                # Finished: out of its subject's line (a retry keeps its place).
                " ordering_key = CASE WHEN o.kind = 'retry' THEN d.ordering_key END"
                " FROM o WHERE d.id = o.id AND d.owner = $9"
                " RETURNING d.id, d.subscription, d.event_id)"
                " INSERT INTO dead_letters (delivery_id, subscription, envelope_id, type,"
                " attempts, status_code, reason, response_body, failed_at)"
                " SELECT done.id, done.subscription, e.envelope_id, e.type, o.attempts,"
                " o.status, coalesce(o.reason, ''), o.body, o.at FROM done"
                " JOIN o ON o.id = done.id JOIN events e ON e.id = done.event_id"
                " WHERE o.kind = 'dead' ORDER BY o.n",
                [o.delivery_id for o in outcomes],
                [o.kind for o in outcomes],
                [o.attempts for o in outcomes],
                [o.at for o in outcomes],
                [o.next_attempt_at for o in outcomes],
                [o.status_code for o in outcomes],
                [o.reason for o in outcomes],
                [o.response_body for o in outcomes],
                self.owner,
                [o.duration for o in outcomes],
            )
        )

    # --- operations ------------------------------------------------------------------

    async def status(self) -> Status:
        now = clock.now()
        rows = await self._run(
            lambda c: c.fetch(
                "SELECT name, cursor, cursor_updated_at, last_poll_at, last_success_at,"
                " last_error, last_error_at, CASE WHEN poller_until >= $1 THEN poller END"
                " FROM sources ORDER BY name",
                now,
            )
        )
        replicas = await self._run(
            lambda c: c.fetch(
                "SELECT owner, seen_at FROM replicas WHERE seen_at >= $1 ORDER BY owner",
                now - self.lease,
            )
        )
        return Status(
            sources={r["name"]: SourceState(*r) for r in rows},
            subscriptions=await self.counts(),
            states=await self.states(),
            replicas={r["owner"]: r["seen_at"] for r in replicas},
        )

    async def counts(self) -> dict[str, SubscriptionCounts]:
        async def read(conn: Any) -> dict[str, SubscriptionCounts]:
            counts: dict[str, SubscriptionCounts] = {}
            for r in await conn.fetch(
                "SELECT subscription, state, count(*) AS n FROM deliveries"
                " GROUP BY subscription, state"
            ):
                c = counts.setdefault(r["subscription"], SubscriptionCounts())
                if r["state"] in ("pending", "in_flight"):
                    c.pending += r["n"]
                elif r["state"] == "delivered":
                    c.delivered += r["n"]
                else:
                    c.dead += r["n"]
            for r in await conn.fetch(
                "SELECT subscription, sum(cardinality(events)) AS n FROM queued_runs"
                " GROUP BY subscription"
            ):
                counts.setdefault(r["subscription"], SubscriptionCounts()).pending += r["n"]
            for r in await conn.fetch("SELECT subscription, n FROM pruned_delivered"):
                counts.setdefault(r["subscription"], SubscriptionCounts()).delivered += r["n"]
            for r in await conn.fetch(
                "SELECT subscription, count(*) AS n FROM dead_letters GROUP BY subscription"
            ):
                counts.setdefault(r["subscription"], SubscriptionCounts()).dead_letter = r["n"]
            return counts

        return await self._run(read)

    async def list_dead(
        self, subscription: str | None = None, limit: int = 100, after: int = 0
    ) -> list[DeadLetter]:
        rows = await self._run(
            lambda c: c.fetch(
                "SELECT id, delivery_id, subscription, envelope_id, type, attempts,"
                " status_code, reason, response_body, failed_at FROM dead_letters"
                " WHERE id > $1 AND ($2::text IS NULL OR subscription = $2)"
                " ORDER BY id LIMIT $3",
                after,
                subscription,
                limit,
            )
        )
        return [DeadLetter(*r) for r in rows]

    async def get_dead(self, dead_id: int) -> DeadLetter | None:
        row = await self._run(
            lambda c: c.fetchrow(
                "SELECT x.id, x.delivery_id, x.subscription, x.envelope_id, x.type,"
                " x.attempts, x.status_code, x.reason, x.response_body, x.failed_at, e.body"
                " FROM dead_letters x JOIN deliveries d ON d.id = x.delivery_id"
                " JOIN events e ON e.id = d.event_id WHERE x.id = $1",
                dead_id,
            )
        )
        return None if row is None else DeadLetter(*row)

    _DEAD = (
        "($1::bigint[] IS NULL OR id = ANY($1::bigint[]))"
        " AND ($2::text IS NULL OR subscription = $2)"
    )

    async def replay_dead(
        self, ids: Sequence[int] | None, subscription: str | None, now: float
    ) -> int:
        async def replay(conn: Any) -> int:
            async with conn.transaction():
                letters = await conn.fetch(
                    f"DELETE FROM dead_letters WHERE {self._DEAD} RETURNING delivery_id",
                    None if ids is None else list(ids),
                    subscription,
                )
                if letters:
                    await conn.execute(
                        "UPDATE deliveries SET state = 'pending', attempts = 0,"
                        " last_error = NULL, next_attempt_at = $2, created_at = $2,"
                        " updated_at = $2 WHERE id = ANY($1::bigint[]) AND state = 'dead'",
                        [r["delivery_id"] for r in letters],
                        now,
                    )
                    await self._notify_on(conn)
                return len(letters)

        replayed = await self._run(replay)
        if replayed:
            self._work_arrived()
        return replayed

    async def purge_dead(self, ids: Sequence[int] | None, subscription: str | None) -> int:
        status = await self._run(
            lambda c: c.execute(
                f"DELETE FROM dead_letters WHERE {self._DEAD}",
                None if ids is None else list(ids),
                subscription,
            )
        )
        return int(status.split()[-1])

    async def prune(
        self, now: float, delivered_for: float, dead_letters_for: float | None
    ) -> PruneResult:
        """See Store.prune: PRUNE_BATCH rows per transaction; any replica may run it."""
        result = PruneResult()
        done_before = now - delivered_for

        async def dead_letters(conn: Any) -> int:
            async with conn.transaction():
                gone = await conn.fetch(
                    "DELETE FROM dead_letters WHERE id IN (SELECT id FROM dead_letters"
                    " WHERE failed_at < $1 ORDER BY id LIMIT $2) RETURNING delivery_id",
                    now - (dead_letters_for or 0.0),
                    PRUNE_BATCH,
                )
                await conn.execute(
                    "DELETE FROM deliveries WHERE state = 'dead' AND id = ANY($1::bigint[])",
                    [r["delivery_id"] for r in gone],
                )
                return len(gone)

        async def deliveries(conn: Any) -> int:
            async with conn.transaction():
                gone = await conn.fetch(
                    "DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries d"
                    " WHERE state IN ('delivered', 'dead') AND updated_at < $1 AND"
                    " (state = 'delivered' OR NOT EXISTS (SELECT 1 FROM dead_letters x"
                    " WHERE x.delivery_id = d.id)) LIMIT $2 FOR UPDATE SKIP LOCKED)"
                    " RETURNING subscription, state",
                    done_before,
                    PRUNE_BATCH,
                )
                # The delivered count is a lifetime total: what pruning removes is kept.
                delivered = Counter(r["subscription"] for r in gone if r["state"] == "delivered")
                if delivered:
                    await conn.execute(
                        "INSERT INTO pruned_delivered (subscription, n) SELECT * FROM"
                        " unnest($1::text[], $2::bigint[]) ON CONFLICT (subscription) DO"
                        " UPDATE SET n = pruned_delivered.n + excluded.n",
                        list(delivered),
                        list(delivered.values()),
                    )
                return len(gone)

        def deleting(sql: str) -> Callable[[Any], Awaitable[int]]:
            async def run(conn: Any) -> int:
                return int((await conn.execute(sql, done_before, PRUNE_BATCH)).split()[-1])

            return run

        # Events still queued for a subscription stay: those between the first and last
        # of each run. Runs only shrink, and a new one queues events far younger than
        # the retention: what is queued now covers all the passes below may meet.
        queued = Stretches(
            await self._run(
                lambda c: c.fetch("SELECT events[1], events[cardinality(events)] FROM queued_runs")
            )
        ).merged()

        async def events(conn: Any) -> int:
            async with conn.transaction():
                # No replay is queuing deliveries of the events this finds unreferenced.
                await conn.execute("SELECT pg_advisory_xact_lock($1)", EVENTS_LOCK)
                status = await conn.execute(
                    "DELETE FROM events WHERE id IN (SELECT id FROM events e"
                    " WHERE ingested_at < $1 AND NOT EXISTS (SELECT 1 FROM deliveries d"
                    " WHERE d.event_id = e.id) AND NOT EXISTS (SELECT 1 FROM"
                    " unnest($3::bigint[], $4::bigint[]) AS q(first, last)"
                    " WHERE e.id BETWEEN q.first AND q.last) LIMIT $2)",
                    done_before,
                    PRUNE_BATCH,
                    [first for first, _ in queued],
                    [last for _, last in queued],
                )
                return int(status.split()[-1])

        subjects = deleting(
            "DELETE FROM subjects WHERE (source, url) IN (SELECT source, url FROM subjects"
            " WHERE deleted AND fetched_at < $1 LIMIT $2)"
        )
        steps: list[tuple[str, Callable[[Any], Awaitable[int]]]] = [
            ("deliveries", deliveries),
            ("events", events),
            ("subjects", subjects),
        ]
        if dead_letters_for is not None:
            steps.insert(0, ("dead_letters", dead_letters))
        await self._run(
            lambda c: c.execute(
                "WITH a AS (DELETE FROM pollers WHERE seen_at < $1)"
                " DELETE FROM replicas WHERE seen_at < $1",
                now - 86_400.0,  # replicas gone for a day: their rows are history
            )
        )
        for field_name, step in steps:
            while True:
                n = await self._run(step)
                setattr(result, field_name, getattr(result, field_name) + n)
                if n < PRUNE_BATCH:
                    break
        return result

    async def storage(self) -> Storage:
        row = await self._run(
            lambda c: c.fetchrow(
                "SELECT (SELECT count(*) FROM events) AS events,"
                " (SELECT count(*) FROM subjects) AS subjects,"
                " pg_database_size(current_database()) AS bytes"
            )
        )
        # PostgreSQL reuses freed space itself (autovacuum); none is reported as free.
        return Storage(
            events=row["events"], bytes=row["bytes"], free_bytes=0, subjects=row["subjects"]
        )

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
        query, params = _stored_events_query(after, limit, envelope_ids, source, type_glob, since)
        rows = await self._run(lambda c: c.fetch(query, *params))
        return [StoredEvent(*r) for r in rows]

    async def trace(self, envelope_id: str) -> Trace | None:
        source, upstream_id = split_id(envelope_id)

        async def read(conn: Any) -> Trace | None:
            e = await conn.fetchrow(
                "SELECT id, envelope_id, source, type, body, ingested_at FROM events"
                " WHERE source = $1 AND upstream_id = $2",
                source,
                upstream_id,
            )
            if e is None:
                return None
            deliveries = await conn.fetch(
                "SELECT id, subscription, state, next_attempt_at, updated_at, last_status,"
                " last_duration FROM deliveries WHERE event_id = $1 ORDER BY id",
                e["id"],
            )
            failures = await conn.fetch(
                "SELECT delivery_id, at, status, duration, outcome, error FROM attempts"
                " WHERE delivery_id = ANY($1::bigint[]) ORDER BY at",
                [d["id"] for d in deliveries],
            )
            traced = [
                DeliveryTrace.of(
                    d["subscription"],
                    d["state"],
                    d["next_attempt_at"],
                    [Attempt(*f[1:]) for f in failures if f[0] == d["id"]],
                    d["updated_at"],
                    d["last_status"],
                    d["last_duration"],
                )
                for d in deliveries
            ]
            # Still queued for these: pending, never tried.
            traced += [
                DeliveryTrace(r["subscription"], "pending", r["queued_at"], [])
                for r in await conn.fetch(
                    "SELECT subscription, queued_at FROM queued_runs WHERE $1 = ANY(events)"
                    " ORDER BY id",
                    e["id"],
                )
            ]
            event = StoredEvent(e["id"], e["envelope_id"], e["source"], e["type"], e["body"])
            return Trace(event, e["ingested_at"], traced)

        traced: Trace | None = await self._run(read)
        return traced

    async def enqueue(self, subscription: str, event_ids: Sequence[int], now: float) -> int:
        if not event_ids:
            return 0

        async def enqueue(conn: Any) -> int:
            async with conn.transaction():
                # Retention deletes no event while this queues deliveries of them; one it
                # deleted before is not found below, and not queued.
                await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", EVENTS_LOCK)
                await conn.execute(
                    "DELETE FROM dead_letters WHERE delivery_id IN (SELECT id FROM deliveries"
                    " WHERE subscription = $1 AND event_id = ANY($2::bigint[])"
                    " AND state != 'in_flight')",
                    subscription,
                    list(event_ids),
                )
                # Still queued for the subscription (never tried): left where they are,
                # and counted as queued again, as a pending delivery reset would be.
                waiting = await conn.fetchval(
                    "SELECT count(*) FROM (SELECT DISTINCT x.e FROM queued_runs r,"
                    " unnest(r.events) AS x(e) WHERE r.subscription = $1"
                    " AND r.events[1] <= $3 AND r.events[cardinality(r.events)] >= $2"
                    " AND x.e = ANY($4::bigint[])) AS q",
                    subscription,
                    min(event_ids),
                    max(event_ids),
                    list(event_ids),
                )
                status = await conn.execute(
                    "INSERT INTO deliveries (event_id, subscription, state, next_attempt_at,"
                    " created_at, updated_at) SELECT id, $1, 'pending', $3, $3, $3 FROM"
                    " events WHERE id = ANY($2::bigint[]) AND id NOT IN (SELECT x.e FROM"
                    " queued_runs r, unnest(r.events) AS x(e) WHERE r.subscription = $1"
                    " AND r.events[1] <= $5 AND r.events[cardinality(r.events)] >= $4)"
                    " ORDER BY id ON CONFLICT (event_id, subscription) DO"
                    " UPDATE SET state = 'pending', attempts = 0, next_attempt_at = $3,"
                    " created_at = $3, updated_at = $3, last_error = NULL"
                    " WHERE deliveries.state != 'in_flight'",
                    subscription,
                    list(event_ids),
                    now,
                    min(event_ids),
                    max(event_ids),
                )
                queued = int(status.split()[-1]) + int(waiting)
                if queued:
                    await self._notify_on(conn)
                return queued

        queued = await self._run(enqueue)
        if queued:
            self._work_arrived()
        return queued


async def _unchanged(connection: Any) -> None:
    """The pool's reset: nothing to undo."""


def _assignment(sources: list[str], owners: list[str], share: int) -> dict[str, str]:
    """Which live replica each wanted source prefers: rendezvous hashing (each source's
    highest-ranked replica) with at most `share` sources a replica, so every replica
    that asks works out the same balanced answer."""
    load: Counter[str] = Counter()
    chosen: dict[str, str] = {}
    for source in sources:
        ranked = sorted(owners, key=lambda owner: _rank(source, owner), reverse=True)
        owner = next((o for o in ranked if load[o] < share), ranked[0])
        chosen[source] = owner
        load[owner] += 1
    return chosen


def _rank(source: str, owner: str) -> bytes:
    return hashlib.sha256(f"{source}\0{owner}".encode()).digest()


def _stored_events_query(
    after: int,
    limit: int,
    envelope_ids: Sequence[str] | None,
    source: str | None,
    type_glob: str | None,
    since: float | None,
) -> tuple[str, list[Any]]:
    """Store.stored_events' statement: only the filters given, so that each gets the
    plan it needs (envelope ids through the (source, upstream_id) index)."""
    clauses, params = ["id > $1"], [after]

    def param(value: Any) -> str:
        params.append(value)
        return f"${len(params)}"

    if envelope_ids:
        named = [split_id(i) for i in envelope_ids]
        sources, upstream_ids = param([s for s, _ in named]), param([u for _, u in named])
        clauses.append(
            f"(source, upstream_id) IN (SELECT * FROM unnest({sources}::text[],"
            f" {upstream_ids}::text[]))"
        )
    if source is not None:
        clauses.append(f"source = {param(source)}")
    if type_glob is not None:
        clauses.append(f"type ~ {param(_glob_regex(type_glob))}")
    if since is not None:
        clauses.append(f"ingested_at >= {param(since)}::float8")
    return (
        "SELECT id, envelope_id, source, type, body FROM events"
        f" WHERE {' AND '.join(clauses)} ORDER BY id LIMIT {param(limit)}",
        params,
    )


def _glob_regex(glob: str) -> str:
    """An fnmatch glob as a PostgreSQL regular expression (anchored, case-sensitive)."""
    out, i = [], 0
    while i < len(glob):
        char = glob[i]
        end = glob.find("]", i + 2) if char == "[" else -1
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif end > 0:  # a bracket expression, [!...] negated
            inner = glob[i + 1 : end]
            out.append("[" + ("^" + inner[1:] if inner.startswith("!") else inner) + "]")
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return "^" + "".join(out) + "$"


def _shown(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
