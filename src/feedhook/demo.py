"""`feedhook demo`: simulated Sequence, Movida, TeamHub and Modulo upstreams, a receiver,
and the real bridge between them."""

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

from feedhook.app import Worker, signal_handlers
from feedhook.config import parse_config
from feedhook.delivery.signing import Signer
from feedhook.sim import Receiver, SimFeed, SimModulo, SimTeamHub
from feedhook.sim.receiver import Received
from feedhook.store import Store, open_store

SUBSCRIPTIONS: dict[str, dict[str, Any]] = {
    "everything": {"types": ["*"]},
    "jobs": {"types": ["sequence.job.*"]},
    "titles": {"types": ["movida.title.*", "movida.title_metadata.*"]},
    "status-changes": {
        "types": ["sequence.*.updated"],
        # data.diff: what feedhook saw change in the subject, status included (which
        # Sequence's `changes` never lists for a job); absent the first time.
        "filter": "contains(keys(data.diff || `{}`), 'status')",
    },
    "builds": {"types": ["teamhub.build.*"]},
    "risk-progress": {"types": ["modulo.event.*"], "filter": "data.property == 'Progress'"},
}
FAST = {"poll_interval": "200ms", "start": "earliest", "rate_limit": "1000/1s"}
MODULO_CODE = "EVTC201105000052"
TEAMHUB_KINDS = [("push", "created"), ("build", "completed"), ("repository", "created")]
MODULO_ACTIONS = [0, 13, 5, 1]


class Upstreams:
    """The four simulated systems and the ids of what they have published."""

    def __init__(self) -> None:
        self.sequence = SimFeed("sequence")
        self.movida = SimFeed("movida")
        self.teamhub = SimTeamHub()
        self.modulo = SimModulo()
        self.created: dict[str, float] = {}  # envelope id -> when it was published

    async def start(self) -> None:
        for sim in (self.sequence, self.movida, self.teamhub, self.modulo):
            await sim.start()

    async def stop(self) -> None:
        for sim in (self.sequence, self.movida, self.teamhub, self.modulo):
            await sim.stop()

    def sources(self) -> dict[str, dict[str, Any]]:
        digest = {"username": "robot_user", "password": "secret"}
        return {
            "sequence-demo": {
                "kind": "sequence",
                "url": self.sequence.api_url,
                "enrich": {"types": ["*"]},  # fetch each event's subject, say what changed
                **digest,
                **FAST,
            },
            "movida-demo": {"kind": "movida", "url": self.movida.api_url, **digest, **FAST},
            "teamhub-demo": {
                "kind": "teamhub",
                "url": self.teamhub.api_url,
                "company_key": self.teamhub.company_key,
                "account_key": self.teamhub.account_key,
                **FAST,
            },
            "modulo-demo": {
                "kind": "modulo",
                "url": self.modulo.ws_url,
                "event_codes": [MODULO_CODE],
                "token_url": self.modulo.token_url,
                "client_id": self.modulo.client_id,
                "client_secret": self.modulo.client_secret,
                **FAST,
            },
        }

    def publish(self, n: int) -> None:
        """The n-th event of the demo, taking turns among the four systems."""
        now = time.time()
        turn = n % 4
        if turn == 0:
            (event,) = self.sequence.add_events(1, subjects=2)  # subjects seen again
            self.created[f"sequence-demo:{event.id}"] = now
        elif turn == 1:
            (event,) = self.movida.add_events(1)
            self.created[f"movida-demo:{event.id}"] = now
        elif turn == 2:
            target, operation = TEAMHUB_KINDS[(n // 4) % len(TEAMHUB_KINDS)]
            (item,) = self.teamhub.add_events(1, target=target, operation=operation)
            self.created[f"teamhub-demo:{item['id']}"] = now
        else:
            action = MODULO_ACTIONS[(n // 4) % len(MODULO_ACTIONS)]
            (update,) = self.modulo.add_updates(MODULO_CODE, 1, action=action)
            self.created[f"modulo-demo:{update['Id']}"] = now


async def run_demo(events: int, duration: float) -> int:
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    signer = Signer([secret])
    upstreams, receiver = Upstreams(), Receiver()
    await upstreams.start()
    await receiver.start()
    latencies: dict[str, list[float]] = defaultdict(list)
    verified: dict[str, int] = defaultdict(int)
    started = time.time()

    def show(record: Received) -> None:
        envelope = json.loads(record.body)
        latency = record.at - upstreams.created.get(record.webhook_id, record.at)
        latencies[record.path].append(latency)
        expected = signer.sign(
            record.webhook_id, int(record.headers["webhook-timestamp"]), record.body
        )
        good = hmac.compare_digest(expected, record.headers.get("webhook-signature", ""))
        verified[record.path] += good
        print(
            f"  {record.at - started:6.2f}s  {envelope['type']:<38} -> {record.path:<14}"
            f" {latency * 1000:7.1f} ms  {'signed ok' if good else 'BAD SIGNATURE'}",
            flush=True,
        )

    receiver.listeners.append(show)
    raw = {
        "sources": upstreams.sources(),
        "subscriptions": {
            name: {**spec, "url": receiver.url(name), "secret": secret}
            for name, spec in SUBSCRIPTIONS.items()
        },
    }
    config = parse_config(raw, "demo")
    print(f"feedhook demo: {events} events over {duration:g}s from four simulated systems")
    print(f"  sequence  {upstreams.sequence.api_url}  (JSON, Digest auth)")
    print(f"  movida    {upstreams.movida.api_url}  (XML, Digest auth)")
    print(f"  teamhub   {upstreams.teamhub.api_url}  (newest first, header auth)")
    print(f"  modulo    {upstreams.modulo.ws_url}  (OData dates, OAuth2)")
    print(f"  receiver  {receiver.server.url}/<subscription>")
    for name, spec in SUBSCRIPTIONS.items():
        detail = f" where {spec['filter']}" if "filter" in spec else ""
        print(f"  subscription {name}: {', '.join(spec['types'])}{detail}")
    print()

    with tempfile.TemporaryDirectory(prefix="feedhook-demo-") as tmp:
        async with open_store(str(Path(tmp) / "demo.db")) as store:
            worker = Worker(config, store, grace=2.0)
            run = asyncio.create_task(worker.run(), name="worker")
            with signal_handlers(worker):
                for n in range(events):
                    upstreams.publish(n)
                    await asyncio.sleep(duration / events)
                settled = await _settle(store, receiver, set(upstreams.created), time.time() + 15)
                worker.stop()
                await run
            status = await store.status()
    await upstreams.stop()
    await receiver.stop()

    print("\nsummary")
    print(f"  {'subscription':<15} {'delivered':>9} {'signed ok':>9} {'p50 ms':>8} {'max ms':>8}")
    for name in SUBSCRIPTIONS:
        counts = status.subscriptions.get(name)
        lat = latencies.get(name) or [0.0]
        print(
            f"  {name:<15} {counts.delivered if counts else 0:>9} {verified[name]:>9}"
            f" {statistics.median(lat) * 1000:>8.1f} {max(lat) * 1000:>8.1f}"
        )
    print(
        f"  {len(upstreams.created)} events published, {len(receiver.received)} webhooks received"
    )
    print(f"  every event delivered and every queue drained: {settled}")
    _show_a_diff(receiver)
    if os.environ.get("FEEDHOOK_DEMO_KEEP"):
        print(f"  (database was {tmp})")
    return 0 if settled else 1


def _show_a_diff(receiver: Receiver) -> None:
    """One enriched event whose subject feedhook saw change: what it says changed."""
    for record in receiver.ok("status-changes") + receiver.ok("everything"):
        envelope = json.loads(record.body)
        if envelope["data"].get("diff"):
            print(f"\none diff: {envelope['id']} ({envelope['type']}) about {envelope['subject']}")
            for name, change in envelope["data"]["diff"].items():
                print(f"  {name}: {change['old']!r} -> {change['new']!r}")
            return


async def _settle(store: Store, receiver: Receiver, published: set[str], deadline: float) -> bool:
    """Wait until every published event reached `everything` and no delivery is pending."""
    while time.time() < deadline:
        received = {r.webhook_id for r in receiver.ok("everything")}
        status = await store.status()
        pending = sum(c.pending for c in status.subscriptions.values())
        if published <= received and pending == 0:
            return True
        await asyncio.sleep(0.1)
    return False
