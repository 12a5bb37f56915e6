"""`feedhook replay`: stored events queued for a subscription again, on purpose.

Only what the subscription would have received goes out: its types, sources and filter
decide, and the command's own filters narrow further. The work goes in pages, each
queued in a short transaction of its own, so a replay of a million events never holds
the database's write lock long enough to hold up ingest or delivery.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson

from feedhook.config import SubscriptionConfig
from feedhook.router import FilterError, compile_route
from feedhook.store.base import Store

PAGE = 1000


@dataclass
class ReplayResult:
    queued: int = 0
    not_wanted: int = 0  # stored, but not what this subscription receives
    missing: list[str] = field(default_factory=list)  # envelope ids asked for, not stored


async def replay(
    store: Store,
    name: str,
    subscription: SubscriptionConfig,
    now: float,
    *,
    envelope_ids: Sequence[str] | None = None,
    source: str | None = None,
    type_glob: str | None = None,
    since: float | None = None,
) -> ReplayResult:
    route = compile_route(name, subscription)
    result = ReplayResult()
    seen: set[str] = set()
    after = 0
    while True:
        page = await store.stored_events(
            after,
            PAGE,
            envelope_ids=envelope_ids,
            source=source,
            type_glob=type_glob,
            since=since,
        )
        if not page:
            break
        wanted = []
        for event in page:
            seen.add(event.envelope_id)
            if not route.wants(event.source, event.type):
                result.not_wanted += 1
                continue
            try:
                accepted = route.accepts(orjson.loads(event.body))
            except FilterError:
                accepted = False  # as at ingest: a filter that fails is no match
            if accepted:
                wanted.append(event.id)
            else:
                result.not_wanted += 1
        result.queued += await store.enqueue(name, wanted, now)
        after = page[-1].id
    if envelope_ids:
        result.missing = [i for i in dict.fromkeys(envelope_ids) if i not in seen]
    return result
