"""Probes of one path at a time, for profiling (the scenarios are in run.py):

    python bench/probe.py deliver --events 30000 --subscriptions 1 --in-flight 64
    python bench/probe.py deliver --events 1500 --subscriptions 20 --in-flight 8
    python bench/probe.py deliver --store postgres
    python bench/probe.py deliver --ordering subject --subjects 1002
    python bench/probe.py ingest --events 100000
    python bench/probe.py raw --events 30000
    python bench/probe.py store --ordering subject --subjects 1002 [--store postgres]

`deliver` drains a prebuilt outbox with no feed traffic; `ingest` reads a backlog that
no subscription matches; `raw` is the plain aiohttp reference; `store` times the store's
own calls (ingest, claim, outcomes) with nothing else running. Each prints the rate and
the CPU per item of every process, and of each thread of `feedhook run` (and, with
`--store postgres`, of the PostgreSQL server's processes together).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from run import (
    FAST_SOURCE,
    Bridge,
    Outbox,
    at_least,
    children,
    raw_post,
    received,
    sample_bodies,
    server,
    subscription,
    until,
)

from feedhook.sources.bebanjo import RawEvent, normalize
from feedhook.store import Delivery, IngestItem, Outcome, open_store

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


def server_cpu(postmaster: int | None) -> dict[str, float]:
    """CPU seconds of a PostgreSQL server's processes together (its backends are the
    postmaster's children), as one entry; none without a server."""
    if postmaster is None:
        return {}
    total = 0.0
    for process in [postmaster, *children(postmaster)]:
        try:
            stat = Path(f"/proc/{process}/stat").read_text()
        except OSError:
            continue  # a backend that exited while we looked
        fields = stat[stat.rindex(")") + 2 :].split()
        total += (int(fields[11]) + int(fields[12])) / TICK
    return {"postgres": total}


def report(
    what: str,
    count: int,
    seconds: float,
    pid: int,
    before: dict[str, float],
    postmaster: int | None = None,
) -> None:
    after = {**thread_cpu(pid), **server_cpu(postmaster)}
    per = {t: (after[t] - before.get(t, 0.0)) / count * 1e6 for t in after}
    busy = {t: round(us, 1) for t, us in per.items() if us >= 0.5}
    print(
        f"{what}: {count / seconds:,.0f}/s; feedhook {sum(per.values()):.0f} us of CPU per"
        f" item, by thread {busy} (the first of each process is its event loop)"
    )


@contextlib.asynccontextmanager
async def store_under_test(
    args: argparse.Namespace, work: Path
) -> AsyncIterator[tuple[str, int | None]]:
    """FEEDHOOK_DB for the probe (a SQLite file, or a fresh database on a throwaway
    PostgreSQL server with its durable defaults) and the server's postmaster pid."""
    if args.store == "sqlite":
        yield str(work / "bench.db"), None
        return
    from feedhook.sim.postgres import PostgresServer, postgres_bin

    bin_dir = postgres_bin()
    if bin_dir is None:
        raise SystemExit("--store postgres needs PostgreSQL: apt-get install postgresql")
    pg = PostgresServer(bin_dir, fast=False)
    pg.start()
    try:
        postmaster = int((pg.data / "postmaster.pid").read_text().split()[0])
        yield pg.new_database(), postmaster
    finally:
        pg.stop()


def outbox_items(
    args: argparse.Namespace, names: list[str], start: int, count: int
) -> list[IngestItem]:
    """Events start.. of a simulated Sequence feed (about `--subjects` subjects, or one
    each), routed to `names`, in order per subject with `--ordering subject`."""
    items = []
    for n in range(start, min(start + count, args.events + 1)):
        raw = RawEvent(
            id=n,
            event_type="job_updated",
            timestamp="2026-01-01T00:00:00.000+00:00",
            changes="name",
            links={"subject": f"http://x/api/jobs/{n % args.subjects if args.subjects else n}"},
            native={"id": n, "event_type": "job_updated"},
        )
        envelope = normalize("seq", "sequence", "http://x/api", raw)
        ordered = names if args.ordering == "subject" else ()
        items.append(IngestItem(str(n), envelope, names, ordered))
    return items


async def store_calls(args: argparse.Namespace) -> None:
    """The store's own cost per delivery, no HTTP and no worker: ingest 100 events at a
    time, then claim as the dispatcher does (a lane of 64 plus its reserve held) and
    write outcomes 64 at a time, each call timed from the caller's side."""
    work = Path(tempfile.mkdtemp())
    names, reserve = ["s00"], 5 * args.in_flight
    held: list[Delivery] = []
    ordered = set(names) if args.ordering == "subject" else set()
    async with store_under_test(args, work) as (database, _), open_store(database) as store:
        started = time.perf_counter()
        for start in range(1, args.events + 1, 100):
            await store.ingest("seq", outbox_items(args, names, start, 100), str(start))
        ingest = time.perf_counter() - started
        claim = complete = 0.0
        done = 0
        while done < args.events:
            started = time.perf_counter()
            held += await store.claim({"s00": reserve - len(held)}, 2e9, ordered)
            claim += time.perf_counter() - started
            batch, held = held[: args.in_flight], held[args.in_flight :]
            started = time.perf_counter()
            await store.complete([Outcome(d.id, "delivered", 1, at=1.0) for d in batch])
            complete += time.perf_counter() - started
            done += len(batch)
    per = {"ingest": ingest, "claim": claim, "complete": complete}
    print(
        "store, us per delivery: "
        + ", ".join(f"{what} {seconds / args.events * 1e6:.1f}" for what, seconds in per.items())
    )


async def deliver(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp())
    names = [f"s{i:02d}" for i in range(args.subscriptions)]
    async with store_under_test(args, work) as (database, postmaster):
        await _deliver(args, work, names, database, postmaster)


async def _deliver(
    args: argparse.Namespace,
    work: Path,
    names: list[str],
    database: str,
    postmaster: int | None,
) -> None:
    async with open_store(database) as store:
        for start in range(1, args.events + 1, 1000):
            await store.ingest("seq", outbox_items(args, names, start, 1000), str(start))
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
            {
                name: subscription(rx, name, max_in_flight=args.in_flight, ordering=args.ordering)
                for name in names
            },
            database,
        )
        await bridge.start()
        assert bridge.proc is not None
        try:
            await until(lambda: received(rx, 1), 60, 0.002)
            before = {**thread_cpu(bridge.proc.pid), **server_cpu(postmaster)}
            await until(lambda: received(rx, total), 600, 0.05)
            got = await rx.stats()
            seconds = got["last"] - got["first"]
            report("deliver", total, seconds, bridge.proc.pid, before, postmaster)
        finally:
            await bridge.stop()


async def ingest(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp())
    async with (
        store_under_test(args, work) as (database, postmaster),
        server("feed", "--events", str(args.events)) as feed,
        server("receiver") as rx,
    ):
        bridge = Bridge(
            work,
            {"seq": {"kind": "sequence", "url": f"{feed.url}/api", **FAST_SOURCE}},
            {"none": subscription(rx, "none", types=["nothing.*"])},
            database,
        )
        outbox = Outbox(database)
        await bridge.start()
        assert bridge.proc is not None
        try:
            await until(lambda: at_least(outbox.size(), 1), 60, 0.005)
            before = {**thread_cpu(bridge.proc.pid), **server_cpu(postmaster)}
            started = time.perf_counter()
            await until(lambda: at_least(outbox.size(), args.events), 600, 0.01)
            seconds = time.perf_counter() - started
            report("ingest", args.events, seconds, bridge.proc.pid, before, postmaster)
        finally:
            await outbox.close()
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
    parser.add_argument("path", choices=["deliver", "ingest", "raw", "store"])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--subscriptions", type=int, default=1)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--ordering", choices=["none", "subject"], default="none")
    parser.add_argument(
        "--subjects", type=int, default=0, help="events about so many (0: one each)"
    )
    args = parser.parse_args()
    paths = {"deliver": deliver, "ingest": ingest, "raw": raw, "store": store_calls}
    asyncio.run(paths[args.path](args))


if __name__ == "__main__":
    main()
