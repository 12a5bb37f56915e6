"""Probes of one path at a time, for profiling (the scenarios are in run.py):

    python bench/probe.py deliver --events 30000 --subscriptions 1 --in-flight 64
    python bench/probe.py deliver --events 1500 --subscriptions 20 --in-flight 8
    python bench/probe.py ingest --events 100000
    python bench/probe.py raw --events 30000

`deliver` drains a prebuilt outbox with no feed traffic; `ingest` reads a backlog that
no subscription matches; `raw` is the plain aiohttp reference. Each prints the rate and
the CPU per item of every process, and of each thread of `feedhook run`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import tempfile
import time
from pathlib import Path

from run import (
    FAST_SOURCE,
    Bridge,
    children,
    raw_post,
    received,
    sample_bodies,
    server,
    subscription,
    until,
)

from feedhook.sources.bebanjo import RawEvent, normalize
from feedhook.store import IngestItem, SqliteStore

TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of `feedhook run` (main:) and its ingest process
    (ingest:), from /proc."""
    out = {}
    for process in [pid, *children(pid)]:
        role = "main" if process == pid else "ingest"
        for tid in os.listdir(f"/proc/{process}/task"):
            stat = Path(f"/proc/{process}/task/{tid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            out[f"{role}:{tid}"] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def report(what: str, count: int, seconds: float, pid: int, before: dict[str, float]) -> None:
    after = thread_cpu(pid)
    per = {t: (after[t] - before.get(t, 0.0)) / count * 1e6 for t in after}
    busy = {t: round(us, 1) for t, us in per.items() if us >= 0.5}
    print(
        f"{what}: {count / seconds:,.0f}/s; feedhook {sum(per.values()):.0f} us of CPU per"
        f" item, by thread {busy} (the first of each process is its event loop)"
    )


async def deliver(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp())
    names = [f"s{i:02d}" for i in range(args.subscriptions)]
    async with SqliteStore(work / "bench.db") as store:
        for start in range(1, args.events + 1, 1000):
            items = []
            for n in range(start, min(start + 1000, args.events + 1)):
                raw = RawEvent(
                    id=n,
                    event_type="job_updated",
                    timestamp="2026-01-01T00:00:00.000+00:00",
                    changes="name",
                    links={"subject": f"http://x/api/jobs/{n}"},
                    native={"id": n, "event_type": "job_updated"},
                )
                envelope = normalize("seq", "sequence", "http://x/api", raw)
                items.append(IngestItem(str(n), envelope, names))
            await store.ingest("seq", items, str(start))
    total = args.events * len(names)
    async with server("feed") as feed, server("receiver") as rx:
        bridge = Bridge(
            work,
            {
                "seq": {
                    "kind": "sequence",
                    "url": f"{feed.url}/api",
                    **FAST_SOURCE,
                    "start": "latest",
                }
            },
            {name: subscription(rx, name, max_in_flight=args.in_flight) for name in names},
        )
        await bridge.start()
        assert bridge.proc is not None
        try:
            await until(lambda: received(rx, 1), 60, 0.002)
            before = thread_cpu(bridge.proc.pid)
            await until(lambda: received(rx, total), 600, 0.05)
            got = await rx.stats()
            report("deliver", total, got["last"] - got["first"], bridge.proc.pid, before)
        finally:
            await bridge.stop()


async def ingest(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp())
    async with server("feed", "--events", str(args.events)) as feed, server("receiver") as rx:
        bridge = Bridge(
            work,
            {"seq": {"kind": "sequence", "url": f"{feed.url}/api", **FAST_SOURCE}},
            {"none": subscription(rx, "none", types=["nothing.*"])},
        )
        await bridge.start()
        assert bridge.proc is not None
        try:
            await until(lambda: bridge.ingested() > 0, 60, 0.005)
            before, started = thread_cpu(bridge.proc.pid), time.perf_counter()
            await until(lambda: bridge.ingested() >= args.events, 600, 0.01)
            seconds = time.perf_counter() - started
            report("ingest", args.events, seconds, bridge.proc.pid, before)
        finally:
            await bridge.stop()


async def raw(args: argparse.Namespace) -> None:
    bodies = sample_bodies(args.events)
    async with server("receiver") as rx:
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        await raw_post(f"{rx.url}/raw", bodies, args.in_flight)
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        print(f"raw: {args.events / seconds:,.0f}/s; {cpu / args.events * 1e6:.0f} us per request")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("path", choices=["deliver", "ingest", "raw"])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--subscriptions", type=int, default=1)
    parser.add_argument("--in-flight", type=int, default=64)
    args = parser.parse_args()
    asyncio.run({"deliver": deliver, "ingest": ingest, "raw": raw}[args.path](args))


if __name__ == "__main__":
    main()
