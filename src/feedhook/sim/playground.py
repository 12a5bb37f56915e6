"""The four simulated systems together, a receiver that checks signatures, and the
hooks.yaml that connects them: what `feedhook demo` runs, and what `feedhook sim`
serves on fixed ports for trying a configuration of one's own."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import random
import secrets
import signal
import time
from pathlib import Path
from typing import Any

import yaml

from feedhook.delivery.signing import Signer
from feedhook.sim.bebanjo import SimFeed
from feedhook.sim.faults import Fault, SimUpstream
from feedhook.sim.modulo import SimModulo
from feedhook.sim.receiver import Received, Receiver
from feedhook.sim.teamhub import SimTeamHub

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


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def hooks_config(upstreams: Upstreams, receiver: Receiver, secret: str) -> dict[str, Any]:
    """The configuration that connects the simulated systems to the receiver."""
    return {
        "sources": upstreams.sources(),
        "subscriptions": {
            name: {**spec, "url": receiver.url(name), "secret": secret}
            for name, spec in SUBSCRIPTIONS.items()
        },
    }


def signed_ok(signer: Signer, record: Received) -> bool:
    """Whether a received webhook carries the signature the subscription's secret makes."""
    expected = signer.sign(record.webhook_id, int(record.headers["webhook-timestamp"]), record.body)
    return hmac.compare_digest(expected, record.headers.get("webhook-signature", ""))


# The faults `feedhook sim --faults` injects now and then, one upstream at a time.
SIM_FAULTS = [Fault.ERROR_500, Fault.RATE_LIMITED, Fault.HTML, Fault.TRUNCATED, Fault.SLOW]


async def run_sim(port_base: int, rate: float, faults: bool, output: Path | None) -> int:
    """Serve the four systems and the receiver on port_base .. port_base + 4, publish
    `rate` events a second among them, print each webhook received (signature checked),
    until interrupted. The hooks.yaml goes to `output`, or is printed."""
    upstreams, receiver = Upstreams(), Receiver()
    systems: list[SimUpstream] = [
        upstreams.sequence,
        upstreams.movida,
        upstreams.teamhub,
        upstreams.modulo,
    ]
    for offset, server in enumerate([*(s.server for s in systems), receiver.server]):
        server.port = port_base + offset
    try:
        await upstreams.start()
        await receiver.start()
    except OSError as exc:
        print(
            f"feedhook sim: cannot listen on ports {port_base}-{port_base + 4}: {exc};"
            " choose others with --port-base"
        )
        await upstreams.stop()
        return 1
    secret = new_secret()
    signer = Signer([secret])

    def show(record: Received) -> None:
        envelope = json.loads(record.body)
        good = "signature ok" if signed_ok(signer, record) else "BAD SIGNATURE"
        print(
            f"received {record.webhook_id} ({envelope['type']}) at {record.path}: {good}",
            flush=True,
        )

    receiver.listeners.append(show)
    text = yaml.safe_dump(hooks_config(upstreams, receiver, secret), sort_keys=False)
    if output is not None:
        await asyncio.to_thread(output.write_text, text)
        print(f"feedhook sim: wrote {output}; in another terminal:")
        print(f"  FEEDHOOK_DB=sim.db feedhook run -c {output}")
    else:
        print("# hooks.yaml for these simulated systems:")
        print(text)
    print(
        f"feedhook sim: sequence :{port_base}, movida :{port_base + 1}, teamhub"
        f" :{port_base + 2}, modulo :{port_base + 3}, receiver :{port_base + 4};"
        f" {rate:g} events/s{', with faults' if faults else ''}; Ctrl-C stops",
        flush=True,
    )
    n, pick = 0, random.Random(0)
    next_fault = time.monotonic() + 10
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        while not stop.is_set():
            upstreams.publish(n)
            n += 1
            if faults and time.monotonic() >= next_fault:
                system, fault = pick.choice(systems), pick.choice(SIM_FAULTS)
                system.inject(fault)
                print(f"feedhook sim: the next answer of {system.api_url} is a fault: {fault}")
                next_fault = time.monotonic() + 10
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1 / rate)
    finally:
        await upstreams.stop()
        await receiver.stop()
    print(f"feedhook sim: stopped after {n} events", flush=True)
    return 0
