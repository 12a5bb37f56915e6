"""The harness's separate processes: a simulated feed and a fast receiver.

    python bench/servers.py feed --system sequence --events 100000 [--subjects 334]
    python bench/servers.py feed --system movida --rate 100 --seconds 30  # after POST /_start
    python bench/servers.py modulo --updates 100000 --codes 2
    python bench/servers.py receiver [--record-ids]

Each prints `READY <port>` once listening, then serves until killed. GET /_stats answers
what the harness measures from outside.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime

from aiohttp import web

from feedhook.sim import SimFeed, SimModulo


async def feed(args: argparse.Namespace) -> None:
    sim = SimFeed(args.system, track_served=args.rate > 0)
    if args.events:
        sim.add_events(
            args.events, at=datetime(2026, 1, 1, tzinfo=UTC), subjects=args.subjects or None
        )
    app = sim.server.app

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "events": len(sim.events),
                "last_id": sim.events[-1].id if sim.events else 0,
                "requests": len(sim.requests),
                "subject_requests": len(sim.subject_requests),
                "served_at": {str(k): v for k, v in sim.served_at.items()},
                "created_at": {str(e.id): e.timestamp.timestamp() for e in sim.events}
                if args.rate
                else {},
            }
        )

    go = asyncio.Event()

    async def start_stream(request: web.Request) -> web.Response:
        go.set()
        return web.Response()

    app.router.add_get("/_stats", stats)
    app.router.add_post("/_start", start_stream)
    await sim.start()
    print(f"READY {sim.server.port}", flush=True)
    if args.rate > 0:
        # A steady stream once POST /_start says so: one event every 1/rate seconds, on
        # a fixed schedule.
        await go.wait()
        start = time.monotonic()
        total = int(args.rate * args.seconds)
        for n in range(total):
            delay = start + n / args.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            sim.add_events(1)
    await asyncio.Event().wait()


async def modulo(args: argparse.Namespace) -> None:
    """A Modulo backlog after a long outage: `updates` updates over `codes` event codes,
    one a second (dated in the past, in the server's zone UTC-3), behind a static token."""
    sim = SimModulo(static_token="bench-token")
    start = int(time.time() * 1000) - args.updates * 1000 - 60_000
    for n in range(args.updates):
        sim.add_updates(f"E{n % args.codes}", 1, at_millis=start + n * 1000)
    app = sim.server.app

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"requests": len(sim.requests)})

    app.router.add_get("/_stats", stats)
    await sim.start()
    print(f"READY {sim.server.port}", flush=True)
    await asyncio.Event().wait()


async def receiver(args: argparse.Namespace) -> None:
    state: dict[str, float | int] = {"count": 0, "first": 0.0, "last": 0.0}
    times: dict[str, float] = {}

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        now = time.time()
        if not state["count"]:
            state["first"] = now
        state["count"] = int(state["count"]) + 1
        state["last"] = now
        if args.record_ids:
            times.setdefault(request.headers.get("webhook-id", ""), now)
        return web.Response()

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({**state, "times": times})

    async def reset(request: web.Request) -> web.Response:
        state.update(count=0, first=0.0, last=0.0)
        times.clear()
        return web.Response()

    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_get("/_stats", stats)
    app.router.add_post("/_reset", reset)
    app.router.add_post("/{name}", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    print(f"READY {runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    f = commands.add_parser("feed")
    f.add_argument("--system", default="sequence")
    f.add_argument("--events", type=int, default=0)
    f.add_argument("--rate", type=float, default=0.0)
    f.add_argument("--seconds", type=float, default=0.0)
    f.add_argument("--subjects", type=int, default=0, help="resources per kind (0: one each)")
    m = commands.add_parser("modulo")
    m.add_argument("--updates", type=int, default=100_000)
    m.add_argument("--codes", type=int, default=2)
    r = commands.add_parser("receiver")
    r.add_argument("--record-ids", action="store_true")
    args = parser.parse_args()
    try:
        run = {"feed": feed, "modulo": modulo, "receiver": receiver}[args.command]
        asyncio.run(run(args))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
