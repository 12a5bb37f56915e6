"""The durable outbox: events, deliveries, dead letters and cursors behind one small interface.

The interface is deliberately narrow so a PostgreSQL implementation (claims with
FOR UPDATE SKIP LOCKED, one poller per source by advisory lock) can follow without
touching the rest of feedhook.
"""

from feedhook.store.base import (
    DeadLetter,
    Delivery,
    IngestItem,
    Outcome,
    PruneResult,
    SourceState,
    Status,
    Storage,
    Store,
    StoredEvent,
    StoreError,
    SubscriptionCounts,
)
from feedhook.store.sqlite import SqliteStore

__all__ = [
    "DeadLetter",
    "Delivery",
    "IngestItem",
    "Outcome",
    "PruneResult",
    "SourceState",
    "SqliteStore",
    "Status",
    "Storage",
    "Store",
    "StoreError",
    "StoredEvent",
    "SubscriptionCounts",
]
