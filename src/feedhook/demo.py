"""`feedhook demo`: simulated Sequence, Movida, TeamHub and Modulo upstreams, a receiver,
and the real bridge between them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

from feedhook.app import Worker, signal_handlers
from feedhook.config import parse_config
from feedhook.delivery.signing import Signer
from feedhook.sim import Receiver
from feedhook.sim.playground import (
    SUBSCRIPTIONS,
    Upstreams,
    hooks_config,
    new_secret,
    signed_ok,
)
from feedhook.sim.receiver import Received
from feedhook.store import Store, open_store


async def run_demo(events: int, duration: float, keep: Path | None = None) -> int:
    """The demo; with `keep`, its database (and the config it ran with) stay in that
    folder, to be looked at with `status`, `dlq` and `trace` afterwards."""
    secret = new_secret()
    signer = Signer([secret])
    upstreams, receiver = Upstreams(), Receiver()
    await upstreams.start()
    await receiver.start()
    latencies: dict[str, list[float]] = defaultdict(list)
    verified: dict[str, int] = defaultdict(int)
    started = time.time()

    def show(record: Received) -> None:
        envelope = json.loads(record.body)
        good = signed_ok(signer, record)
        if record.status >= 300:  # the receiver said no, as the demo asked it to
            what = "retried on the schedule" if record.status >= 500 else "a dead letter"
            outcome = f"HTTP {record.status}: {what}"
        else:
            latency = record.at - upstreams.created.get(record.webhook_id, record.at)
            latencies[record.path].append(latency)
            verified[record.path] += good
            outcome = f"{latency * 1000:7.1f} ms"
        print(
            f"  {record.at - started:6.2f}s  {envelope['type']:<38} -> {record.path:<14}"
            f" {outcome}  {'signed ok' if good else 'BAD SIGNATURE'}",
            flush=True,
        )

    receiver.listeners.append(show)
    # Two receivers misbehave once, to show what feedhook does about it: `jobs` answers
    # 503 (retried a second later), `titles` rejects with 422 (a dead letter, replayed).
    receiver.plan("jobs", [503])
    receiver.plan("titles", [422])
    raw = hooks_config(upstreams, receiver, secret)
    raw["subscriptions"]["jobs"]["retry"] = {"schedule": ["1s", "5s"]}
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

    with contextlib.ExitStack() as stack:
        if keep is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="feedhook-demo-")))
        else:
            folder = keep
            await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
            await asyncio.to_thread(
                (folder / "hooks.yaml").write_text, yaml.safe_dump(raw, sort_keys=False)
            )
        async with open_store(str(folder / "demo.db")) as store:
            worker = Worker(config, store, grace=2.0)
            run = asyncio.create_task(worker.run(), name="worker")
            with signal_handlers(worker):
                for n in range(events):
                    upstreams.publish(n)
                    await asyncio.sleep(duration / events)
                await _replay_the_dead_letter(worker, receiver)
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
    if keep is not None:
        print(f"\nkept in {keep}: look around with")
        print(f"  FEEDHOOK_DB={keep / 'demo.db'} feedhook status -c {keep / 'hooks.yaml'}")
        print(f"  FEEDHOOK_DB={keep / 'demo.db'} feedhook trace sequence-demo:1")
    return 0 if settled else 1


async def _replay_the_dead_letter(worker: Worker, receiver: Receiver) -> None:
    """Once `titles` has rejected its first event: show the dead letter and replay it,
    as an operator would after fixing the receiver (`feedhook dlq replay`)."""
    if not any(r.path == "titles" for r in receiver.received):
        return  # too few events for a title this time
    deadline = time.time() + 5
    while not (letters := await worker.dead_letters("titles", 1, 0)):
        if time.time() > deadline:
            return
        await asyncio.sleep(0.05)
    letter = letters[0]
    print(
        f"  dead letter #{letter.id}: {letter.envelope_id} -> titles ({letter.reason});"
        " replaying it, as `feedhook dlq replay` would",
        flush=True,
    )
    await worker.replay_dead([letter.id], None)


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
