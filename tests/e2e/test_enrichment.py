"""Subjects through the real CLI: a kill -9 while a batch waits for its subjects."""

from __future__ import annotations

import json
import signal
import sqlite3
from collections import Counter

from feedhook.sim import Receiver, SimFeed

from conftest import Cli, eventually, source, subscription


async def test_kill_9_during_enrichment_loses_nothing_and_enriches_everything(
    cli: Cli, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """600 events about 25 subjects of each kind, each slow to answer; kill -9 while batches
    wait for theirs, restart: every (event, subscription) pair arrives, enriched, once
    (duplicates only for deliveries in flight at the kill); no event stored twice."""
    sequence_feed.add_events(600, subjects=25)
    sequence_feed.subject_delay = 0.02
    raw = {
        "sources": {"seq": source(sequence_feed, enrich={"types": ["*"]})},
        "subscriptions": {
            "all": subscription(receiver, "all", max_in_flight=20),
            "jobs": subscription(receiver, "jobs", types=["sequence.job.*"]),
        },
    }
    cli.write_config(raw)
    expected = {(f"seq:{e.id}", "all") for e in sequence_feed.events}
    expected |= {
        (f"seq:{e.id}", "jobs") for e in sequence_feed.events if e.event_type.startswith("job_")
    }

    proc = await cli.start("run")
    await eventually(lambda: len(receiver.ok()) >= 100, timeout=30, what="100 deliveries")
    asked = len(sequence_feed.subject_requests)
    proc.kill()  # SIGKILL, while later batches wait for their subjects
    await proc.wait()
    assert len(receiver.ok()) < len(expected)
    with sqlite3.connect(cli.db) as db:
        in_flight = set(
            db.execute(
                "SELECT e.envelope_id, d.subscription FROM deliveries d JOIN events e"
                " ON e.id = d.event_id WHERE d.state = 'in_flight'"
            ).fetchall()
        )

    proc = await cli.start("run")
    got = lambda: Counter((r.webhook_id, r.path) for r in receiver.ok())  # noqa: E731
    await eventually(lambda: set(got()) >= expected, timeout=60, what="every pair")
    await cli.until_idle()
    proc.send_signal(signal.SIGTERM)
    await proc.wait()
    counts = got()
    assert set(counts) == expected
    assert {pair for pair, n in counts.items() if n > 1} <= in_flight
    for record in receiver.ok():
        data = json.loads(record.body)["data"]
        assert data["resource"] is not None, data.get("resource_error")
    with sqlite3.connect(cli.db) as db:
        (stored,) = db.execute("SELECT count(*) FROM events").fetchone()
        (subjects,) = db.execute("SELECT count(*) FROM subjects").fetchone()
    assert stored == 600 and subjects > 0
    assert len(sequence_feed.subject_requests) > asked
