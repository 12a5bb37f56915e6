"""`feedhook demo`: simulated Sequence and Movida feeds, a receiver, and the real bridge."""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import os
import secrets
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from feedhook.app import Worker, stop_on_signals
from feedhook.config import parse_config
from feedhook.delivery.signing import Signer
from feedhook.sim import Receiver, SimFeed
from feedhook.sim.receiver import Received
from feedhook.store import SqliteStore

SUBSCRIPTIONS: dict[str, dict[str, Any]] = {
    "jobs": {"types": ["sequence.job.*"]},
    "titles": {"types": ["movida.title.*", "movida.title_metadata.*"]},
    "status-changes": {
        "types": ["sequence.*.updated"],
        "filter": "contains(data.changes, 'status')",
    },
}


async def run_demo(events: int, duration: float) -> int:
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    signer = Signer([secret])
    sequence, movida, receiver = SimFeed("sequence"), SimFeed("movida"), Receiver()
    for server in (sequence, movida, receiver):
        await server.start()
    created: dict[str, float] = {}
    latencies: dict[str, list[float]] = defaultdict(list)
    verified: dict[str, int] = defaultdict(int)
    started = time.time()

    def show(record: Received) -> None:
        envelope = json.loads(record.body)
        latency = record.at - created.get(record.webhook_id, record.at)
        latencies[record.path].append(latency)
        expected = signer.sign(
            record.webhook_id, int(record.headers["webhook-timestamp"]), record.body
        )
        good = hmac.compare_digest(expected, record.headers.get("webhook-signature", ""))
        verified[record.path] += good
        print(
            f"  {record.at - started:6.2f}s  {envelope['type']:<30} -> {record.path:<15}"
            f" {latency * 1000:7.1f} ms  {'signed ok' if good else 'BAD SIGNATURE'}",
            flush=True,
        )

    receiver.listeners.append(show)
    raw = {
        "sources": {
            "sequence-demo": {
                "kind": "sequence",
                "url": sequence.api_url,
                "username": "robot_user",
                "password": "secret",
                "poll_interval": "200ms",
                "start": "earliest",
                "rate_limit": "1000/1s",
            },
            "movida-demo": {
                "kind": "movida",
                "url": movida.api_url,
                "username": "robot_user",
                "password": "secret",
                "poll_interval": "200ms",
                "start": "earliest",
                "rate_limit": "1000/1s",
            },
        },
        "subscriptions": {
            name: {**spec, "url": receiver.url(name), "secret": secret}
            for name, spec in SUBSCRIPTIONS.items()
        },
    }
    config = parse_config(raw, "demo")
    print(f"feedhook demo: {events} events over {duration:g}s")
    print(f"  sequence feed  {sequence.api_url}  (JSON, Digest auth)")
    print(f"  movida feed    {movida.api_url}  (XML, Digest auth)")
    print(f"  receiver       {receiver.server.url}/<subscription>")
    for name, spec in SUBSCRIPTIONS.items():
        detail = f" where {spec['filter']}" if "filter" in spec else ""
        print(f"  subscription   {name}: {', '.join(spec['types'])}{detail}")
    print()

    with tempfile.TemporaryDirectory(prefix="feedhook-demo-") as tmp:
        async with SqliteStore(Path(tmp) / "demo.db") as store:
            worker = Worker(config, store, grace=2.0)
            run = asyncio.create_task(worker.run(), name="worker")

            async def generate() -> None:
                for n in range(events):
                    feed, name = (
                        (sequence, "sequence-demo") if n % 2 == 0 else (movida, "movida-demo")
                    )
                    (event,) = feed.add_events(1)
                    created[f"{name}:{event.id}"] = event.timestamp.timestamp()
                    await asyncio.sleep(duration / events)

            with stop_on_signals(worker):
                await generate()
                settled = await _settle(store, sequence, movida, deadline=time.time() + 15)
                worker.stop()
                await run
            status = await store.status()
    for server in (sequence, movida, receiver):
        await server.stop()

    print("\nsummary")
    print(f"  {'subscription':<16} {'delivered':>9} {'signed ok':>9} {'p50 ms':>8} {'max ms':>8}")
    for name in SUBSCRIPTIONS:
        counts = status.subscriptions.get(name)
        lat = latencies.get(name) or [0.0]
        print(
            f"  {name:<16} {counts.delivered if counts else 0:>9} {verified[name]:>9}"
            f" {statistics.median(lat) * 1000:>8.1f} {max(lat) * 1000:>8.1f}"
        )
    print(f"  {len(sequence.events)} Sequence and {len(movida.events)} Movida events generated;")
    print(f"  {len(receiver.received)} webhooks received, all queues drained: {settled}")
    if os.environ.get("FEEDHOOK_DEMO_KEEP"):
        print(f"  (database was {tmp})")
    return 0 if settled else 1


async def _settle(store: SqliteStore, *feeds: SimFeed, deadline: float) -> bool:
    """Wait until every generated event is ingested and every delivery settled."""
    names = {"sequence": "sequence-demo", "movida": "movida-demo"}
    while time.time() < deadline:
        status = await store.status()
        caught_up = all(
            (
                (state := status.sources.get(names[f.system])) is not None
                and f.events
                and state.cursor == str(f.events[-1].id)
            )
            or not f.events
            for f in feeds
        )
        pending = sum(c.pending + c.in_flight for c in status.subscriptions.values())
        if caught_up and pending == 0:
            return True
        await asyncio.sleep(0.1)
    return False
