"""The durable outbox: events, deliveries, dead letters and cursors behind one small interface.

`base.py` is the contract; `open_store(url)` is the one way to get a store: the URL's
scheme picks the implementation: a file path or `sqlite:///path` is SQLite (one
`feedhook run`), `postgresql://` (or `postgres://`) is PostgreSQL (several replicas).
"""

from feedhook.store.base import (
    ACTIVE,
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
    Store,
    StoredEvent,
    StoreError,
    Subject,
    SubscriptionCounts,
    SubscriptionState,
    Trace,
)
from feedhook.store.memory import MemoryDatabase, MemoryStore
from feedhook.store.sqlite import SqliteStore

SQLITE_SCHEME = "sqlite:///"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def sqlite_path(url: str) -> str | None:
    """The SQLite file a store URL names: a plain path, or `sqlite:///path` (relative;
    `sqlite:////abs/path` for an absolute one, as SQLAlchemy writes them). None when the
    URL names another kind of store."""
    if url.startswith(SQLITE_SCHEME):
        return url[len(SQLITE_SCHEME) :]
    if "://" in url:
        return None
    return url


def open_store(url: str, *, holder: bool = False, lease: float = DEFAULT_LEASE) -> Store:
    """The store a URL names, not yet opened (use `async with`). `holder`: this process
    is the one `feedhook run` the store serves (SQLite: the holder lock, a check of the
    file at open, and the watch on the file's identity)."""
    path = sqlite_path(url)
    if path is not None:
        return SqliteStore(path, exclusive=holder, verify=holder, lease=lease)
    if url.startswith(POSTGRES_SCHEMES):
        from feedhook.store.postgres import PostgresStore  # its driver only when used

        return PostgresStore(url, lease=lease)
    scheme = url.split("://", 1)[0]
    raise StoreError(
        f"FEEDHOOK_DB: unknown kind of store {scheme}://; give a SQLite file path"
        " (or sqlite:///path), or a postgresql:// URL"
    )


__all__ = [
    "ACTIVE",
    "Attempt",
    "DeadLetter",
    "Delivery",
    "DeliveryTrace",
    "IngestItem",
    "MemoryDatabase",
    "MemoryStore",
    "Outcome",
    "PruneResult",
    "SourceLost",
    "SourceState",
    "SqliteStore",
    "Status",
    "Storage",
    "Store",
    "StoreError",
    "StoredEvent",
    "Subject",
    "SubscriptionCounts",
    "SubscriptionState",
    "Trace",
    "open_store",
    "sqlite_path",
]
