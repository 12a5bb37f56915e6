"""Retention through the real CLI: finished work is pruned inside `feedhook run` and by
`feedhook prune`, nothing is delivered twice, the file stops growing, and pruning never
holds the write lock for long."""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter

import pytest

from feedhook.sim import Receiver, SimFeed
from feedhook.store import SqliteStore

from conftest import Cli, LockProbe, eventually, source, subscription


@pytest.mark.slow
async def test_three_waves_with_short_retention_stop_the_file_growing(
    cli: Cli, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """Three waves of 3,000 events through two subscriptions, retention 1 s: every pair
    is delivered once, what was delivered is pruned, lifetime totals keep counting, and
    the database file stops growing: freed pages are reused, so after the third wave it
    is the size it was after the second, and within 10% of after the first (the peak of
    live rows varies a little from wave to wave with the timing of pruning)."""
    cli.write_config(
        {
            "sources": {"seq": source(sequence_feed)},
            "subscriptions": {
                "a": subscription(receiver, "a", max_in_flight=50),
                "b": subscription(receiver, "b", max_in_flight=50),
            },
            "retention": {"delivered": "1s", "dead_letters": "1s", "interval": "300ms"},
        }
    )
    sizes = []
    for wave in range(1, 4):
        sequence_feed.add_events(3000)
        proc = await cli.start("run")
        try:
            await eventually(
                lambda w=wave: len(receiver.ok()) >= 6000 * w, timeout=60, what=f"wave {wave}"
            )

            async def pruned() -> bool:
                code, out, _ = await cli.run("status", "--json")
                return code == 0 and json.loads(out)["storage"]["events"] == 0

            await eventually(pruned, timeout=20, what="the wave pruned")
        finally:
            proc.terminate()
            await proc.communicate()
        sizes.append(cli.db.stat().st_size)  # the WAL is folded in when the last one closes
    pairs = Counter((r.webhook_id, r.path) for r in receiver.ok())
    assert len(pairs) == 18_000 and max(pairs.values()) == 1
    status = json.loads((await cli.run("status", "--json"))[1])
    assert status["subscriptions"]["a"]["delivered"] == 9000  # lifetime, not lowered
    assert sizes[2] <= sizes[1] * 1.02 and sizes[2] <= sizes[0] * 1.10, sizes


@pytest.mark.slow
async def test_pruning_a_large_backlog_keeps_the_lock_short(cli: Cli) -> None:
    """`feedhook prune` over 300,000 delivered deliveries and their events: a writer
    beside it (as ingest and delivery are) never waits more than a fraction of a second,
    and the command reports what it removed."""
    async with SqliteStore(cli.db):
        pass  # the schema
    old = time.time() - 30 * 86400
    with sqlite3.connect(cli.db) as db:
        body = b'{"specversion":"1.0","type":"sequence.job.created","data":{}}'
        db.executemany(
            "INSERT INTO events (id, source, upstream_id, envelope_id, type, body, ingested_at)"
            " VALUES (?, 'seq', ?, ?, 'sequence.job.created', ?, ?)",
            ((n, str(n), f"seq:{n}", body, old) for n in range(1, 300_001)),
        )
        db.executemany(
            "INSERT INTO deliveries (event_id, subscription, state, attempts, next_attempt_at,"
            " created_at, updated_at) VALUES (?, 'all', 'delivered', 1, ?, ?, ?)",
            ((n, old, old, old) for n in range(1, 300_001)),
        )
    cli.write_config({"sources": {}})
    started = time.monotonic()
    with LockProbe(cli.db) as probe:
        code, out, err = await cli.run("prune", timeout=300)
    took = time.monotonic() - started
    assert code == 0, err
    assert "pruned 300,000 delivered deliveries, 0 dead letters, 300,000 events" in out
    assert len(probe.waits) > 50 and max(probe.waits) < 0.5, (max(probe.waits), took)
    waits = sorted(probe.waits)
    print(
        f"\nprune of 300,000: {took:.1f}s; the writer beside it waited"
        f" {waits[len(waits) // 2] * 1000:.1f} ms (median), {waits[-1] * 1000:.0f} ms at most"
    )
