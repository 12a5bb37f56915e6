"""Probes of one path at a time, for profiling (the scenarios are in run.py):

    python bench/probe.py deliver --events 30000 --subscriptions 1 --in-flight 64
    python bench/probe.py deliver --events 1500 --subscriptions 20 --in-flight 8
    python bench/probe.py deliver --store postgres
    python bench/probe.py deliver --ordering subject --subjects 1002
    python bench/probe.py ingest --events 100000
    python bench/probe.py raw --events 30000
    python bench/probe.py store --ordering subject --subjects 1002 [--store postgres]
    python bench/probe.py store --busy-loop
    python bench/probe.py catchup --events 60000
    python bench/probe.py pin --events 50000 --rounds 5
    python bench/probe.py compare --against /tmp/before --events 50000 --rounds 5
    python bench/probe.py slow --events 2000 --in-flight 16 --delay 0.05
    python bench/probe.py normalize --rounds 5
    python bench/probe.py dispatch --events 60000

`deliver` drains a prebuilt outbox with no feed traffic; `ingest` reads a backlog that
no subscription matches; `raw` is the plain aiohttp reference; `store` times the store's
own calls (ingest, claim, outcomes) with nothing else running, or, with `--busy-loop`,
beside an event loop kept as busy as the worker's; `catchup` reads a backlog and
delivers it at once, as the throughput scenario does, and prints every second what each
thread of every process (feedhook's two, the feed, the receiver) spent per delivery;
`normalize` reads and normalizes a feed page in this process, nothing else; `dispatch`
drains an outbox in this process through a transport that answers at once (feedhook's
own work per delivery, without HTTP).
The others print the rate and the CPU per item of every process, and of each thread of
`feedhook run` (and, with `--store postgres`, of the PostgreSQL server's processes
together).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from run import (
    FAST_SOURCE,
    SECRET,
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

if TYPE_CHECKING:
    from feedhook.sim.postgres import PostgresServer

TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of `feedhook run` (main:) and its ingest process
    (ingest:), from /proc."""
    out = {}
    for process in [pid, *children(pid)]:
        role = "main" if process == pid else "ingest"
        out |= {f"{role}:{tid}": seconds for tid, seconds in threads(process).items()}
    return out


def threads(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of one process, from /proc: by thread id, and the
    name a thread gave itself if any (pyreqwest's is "pyreqwest")."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            key = tid if name.startswith("python") else f"{tid}/{name}"
            out[key] = (int(fields[11]) + int(fields[12])) / TICK
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
    with throwaway_postgres() as pg:
        postmaster = int((pg.data / "postmaster.pid").read_text().split()[0])
        yield pg.new_database(), postmaster


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the probe's own, with its durable defaults."""
    from feedhook.sim.postgres import PostgresServer, postgres_bin

    bin_dir = postgres_bin()
    if bin_dir is None:
        raise SystemExit("--store postgres needs PostgreSQL: apt-get install postgresql")
    pg = PostgresServer(bin_dir, fast=False)
    pg.start()
    try:
        yield pg
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


async def busy_loop(stop: asyncio.Event) -> None:
    """Keep the event loop about as busy as the worker's while it delivers: short turns
    of Python work, one after another."""
    while not stop.is_set():
        sum(range(300))
        await asyncio.sleep(0)


async def store_calls(args: argparse.Namespace) -> None:
    """The store's own cost per delivery, no HTTP and no worker: ingest 100 events at a
    time, then claim as the dispatcher does (a lane of 64 plus its reserve held) and
    write outcomes 64 at a time, each call timed from the caller's side; and the CPU
    per delivery of the database thread (SQLite) while claiming and writing."""
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
        stop = asyncio.Event()
        busy = asyncio.create_task(busy_loop(stop)) if args.busy_loop else None
        loop_thread = str(threading.get_native_id())
        before = threads(os.getpid())
        while done < args.events:
            started = time.perf_counter()
            held += await store.claim({"s00": reserve - len(held)}, 2e9, ordered)
            claim += time.perf_counter() - started
            batch, held = held[: args.in_flight], held[args.in_flight :]
            started = time.perf_counter()
            await store.complete([Outcome(d.id, "delivered", 1, at=1.0) for d in batch])
            complete += time.perf_counter() - started
            done += len(batch)
        after = threads(os.getpid())
        stop.set()
        if busy is not None:
            await busy
    per = {"ingest": ingest, "claim": claim, "complete": complete}
    # The busiest thread besides the event loop's is the database's (SQLite's only).
    database_thread = max(
        (after[t] - before.get(t, 0.0) for t in after if t.split("/")[0] != loop_thread),
        default=0.0,
    )
    print(
        "store, us per delivery: "
        + ", ".join(f"{what} {seconds / args.events * 1e6:.1f}" for what, seconds in per.items())
        + f"; the database thread's CPU while claiming and writing"
        f" {database_thread / args.events * 1e6:.1f}"
        + (" (beside a busy event loop)" if args.busy_loop else "")
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


async def catchup(args: argparse.Namespace) -> None:
    """The throughput scenario, watched: `feedhook run` reads a backlog of `--events`
    and delivers it to one subscription at once. Every second: deliveries that second,
    and the CPU per delivery of each thread of every process, feedhook's (main:,
    ingest:) and the harness's (feed:, receiver:)."""
    work = Path(tempfile.mkdtemp())
    async with (
        server("feed", "--events", str(args.events)) as feed,
        server("receiver") as rx,
    ):
        bridge = Bridge(
            work,
            {"seq": {"kind": "sequence", "url": f"{feed.url}/api", **FAST_SOURCE}},
            {"all": subscription(rx, "all", max_in_flight=args.in_flight)},
        )
        await bridge.start()
        assert bridge.proc is not None
        pid = bridge.proc.pid
        try:
            await until(lambda: received(rx, 1), 60, 0.002)

            def cpu() -> dict[str, float]:
                out = thread_cpu(pid)
                for role, proc in (("feed", feed.proc), ("receiver", rx.proc)):
                    out |= {f"{role}:{t}": v for t, v in threads(proc.pid).items()}
                return out

            before, count = cpu(), (await rx.stats())["count"]
            while count < args.events:
                await asyncio.sleep(1.0)
                now, got = cpu(), (await rx.stats())["count"]
                if got > count:
                    per = {t: (now[t] - before.get(t, 0.0)) / (got - count) * 1e6 for t in now}
                    busy = {t: round(us) for t, us in per.items() if us >= 0.5}
                    print(f"{got - count:,} deliveries: {sum(per.values()):.0f} us each, {busy}")
                before, count = now, got
        finally:
            await bridge.stop()


async def raw(args: argparse.Namespace) -> None:
    bodies = sample_bodies(args.events)
    async with server("receiver") as rx:
        before = resource.getrusage(resource.RUSAGE_SELF)
        receiver = sum(threads(rx.proc.pid).values())
        started = time.perf_counter()
        await raw_post(f"{rx.url}/raw", bodies, args.in_flight)
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        receiver = sum(threads(rx.proc.pid).values()) - receiver
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        print(
            f"raw: {args.events / seconds:,.0f}/s; {cpu / args.events * 1e6:.0f} us per request"
            f" (the receiver: {receiver / args.events * 1e6:.0f} us)"
        )


async def pin(args: argparse.Namespace) -> None:
    """The throughput scenario with FEEDHOOK_PIN_WORKER false and true (see
    `alternate`)."""
    await alternate(
        args,
        {
            "FEEDHOOK_PIN_WORKER=false": {"FEEDHOOK_PIN_WORKER": "false"},
            "FEEDHOOK_PIN_WORKER=true": {"FEEDHOOK_PIN_WORKER": "true"},
        },
    )


async def compare(args: argparse.Namespace) -> None:
    """The throughput scenario with this checkout's feedhook and another's, `--against`
    (its root: a `git worktree add` of an earlier commit, say), see `alternate`."""
    await alternate(args, source_trees(args.against))


def source_trees(against: str) -> dict[str, dict[str, str]]:
    """This checkout's src/ and another's, each as a variant's PYTHONPATH."""
    other = Path(against).resolve()
    if not (other / "src" / "feedhook").is_dir():
        raise SystemExit(f"--against {against}: no src/feedhook there")
    this = Path(__file__).resolve().parent.parent
    return {str(root): {"PYTHONPATH": str(root / "src")} for root in (this, other)}


async def alternate(args: argparse.Namespace, variants: dict[str, dict[str, str]]) -> None:
    """The throughput scenario (`--events` backlog, one subscription, `--in-flight`)
    with each variant's environment (passed on to `feedhook run`), alternated with the
    raw client in one run: raw, each variant, raw, ... for `--rounds` rounds after a
    warm-up round; with `--store postgres`, each run on a fresh database of one
    PostgreSQL server. Prints each variant's median rate and its ratio to raw."""
    bodies = sample_bodies(args.events)
    rates: dict[str, list[float]] = {name: [] for name in ("raw", *variants)}
    async with (
        databases(args) as fresh,
        server("feed", "--events", str(args.events)) as feed,
        server("receiver") as rx,
    ):

        async def once(variant: str | None, n: int) -> float:
            await rx.post("/_reset")
            if variant is None:
                await raw_post(f"{rx.url}/raw", bodies, args.in_flight)
            else:
                saved = os.environ.copy()
                os.environ.update(variants[variant])  # the Bridge passes it on
                work = Path(tempfile.mkdtemp())
                bridge = Bridge(
                    work,
                    {"seq": {"kind": "sequence", "url": f"{feed.url}/api", **FAST_SOURCE}},
                    {"all": subscription(rx, "all", max_in_flight=args.in_flight)},
                    fresh(),
                )
                try:
                    await bridge.start()
                    await until(lambda: received(rx, args.events), 1800, 0.1)
                finally:
                    await bridge.stop()
                    os.environ.clear()
                    os.environ.update(saved)
                    shutil.rmtree(work, ignore_errors=True)  # a database per run adds up
            got = await rx.stats()
            return args.events / (got["last"] - got["first"])

        for n in range(args.rounds + 1):
            measured = {"raw": await once(None, n)}
            measured |= {variant: await once(variant, n) for variant in variants}
            if n:  # the first round warms the receiver up
                for name, rate in measured.items():
                    rates[name].append(rate)
                print(f"round {n}: " + ", ".join(f"{k} {v:,.0f}/s" for k, v in measured.items()))
    for variant in variants:
        ratios = [a / b for a, b in zip(rates[variant], rates["raw"], strict=True)]
        print(
            f"{variant}: median {statistics.median(rates[variant]):,.0f}"
            f" deliveries/s, {statistics.median(ratios):.2f}x raw (rounds"
            f" {min(ratios):.2f}-{max(ratios):.2f})"
        )


@contextlib.asynccontextmanager
async def databases(args: argparse.Namespace) -> AsyncIterator[Callable[[], str | None]]:
    """A maker of fresh databases for `--store`: None (the Bridge's own SQLite file) or
    a new database on one throwaway PostgreSQL server with its durable defaults."""
    if args.store == "sqlite":
        yield lambda: None
        return
    with throwaway_postgres() as pg:
        yield pg.new_database


async def slow(args: argparse.Namespace) -> None:
    """A receiver slower than feedhook: deliveries/s from first to last receipt, against
    the most `--in-flight` answers of `--delay` seconds each allow."""
    from feedhook.sim.receiver import Receiver

    rx = Receiver()
    await rx.start()
    rx.answer("slow", delay=args.delay)
    try:
        async with server("feed", "--events", str(args.events)) as feed:
            bridge = Bridge(
                Path(tempfile.mkdtemp()),
                {"seq": {"kind": "sequence", "url": f"{feed.url}/api", **FAST_SOURCE}},
                {
                    "slow": {
                        "url": rx.url("slow"),
                        "secret": SECRET,
                        "types": ["*"],
                        "max_in_flight": args.in_flight,
                    }
                },
            )
            await bridge.start()
            try:
                await until(lambda: len(rx.received) >= args.events, 600, 0.05)
            finally:
                await bridge.stop()
    finally:
        await rx.stop()
    times = sorted(r.at for r in rx.received)
    rate = (len(times) - 1) / (times[-1] - times[0])
    bound = args.in_flight / args.delay
    print(f"slow: {rate:,.0f} deliveries/s, {rate / bound:.1%} of the bound, {bound:,.0f}/s")


async def dispatch(args: argparse.Namespace) -> None:
    """feedhook's own cost per delivery, in this process: the real dispatcher, signer
    and store drain an outbox of `--events` through a transport that answers 200 at
    once (no HTTP). CPU per delivery of the event loop and of the database thread."""
    from feedhook.config import SubscriptionConfig
    from feedhook.delivery import Dispatcher
    from feedhook.delivery.sender import Sender
    from feedhook.delivery.transport import Response

    class AtOnce:
        async def request(self, *args: object) -> Response:
            await asyncio.sleep(0)
            return Response(200, {}, b"")

    work = Path(tempfile.mkdtemp())
    names = [f"s{i:02d}" for i in range(args.subscriptions)]
    async with store_under_test(args, work) as (database, _), open_store(database) as store:
        for start in range(1, args.events + 1, 1000):
            await store.ingest("seq", outbox_items(args, names, start, 1000), str(start))
        config = {"url": "http://receiver/", "types": ["*"], "secret": SECRET}
        lanes = {
            name: SubscriptionConfig.model_validate({**config, "max_in_flight": args.in_flight})
            for name in names
        }
        dispatcher = Dispatcher(store, lanes, Sender(AtOnce(), "probe"))
        loop_thread, total = str(threading.get_native_id()), args.events * len(names)
        before, started = threads(os.getpid()), time.perf_counter()
        running = asyncio.create_task(dispatcher.run())

        async def delivered() -> int:
            return sum(c.delivered for c in (await store.counts()).values())

        await until(lambda: at_least(delivered(), total), 600)
        seconds, after = time.perf_counter() - started, threads(os.getpid())
        dispatcher.stop()
        await running
    per = {t: (after[t] - before.get(t, 0.0)) / total * 1e6 for t in after}
    others = sorted((us for t, us in per.items() if t != loop_thread), reverse=True)
    print(
        f"dispatch: {total / seconds:,.0f}/s; us of CPU per delivery: the event loop"
        f" {per[loop_thread]:.1f}, the database thread {others[0] if others else 0.0:.1f}"
    )


async def normalize_page(args: argparse.Namespace) -> None:
    """A Sequence JSON page of 50 events read and normalized into envelopes, as the
    ingest process does each one (no network, no store): us of CPU per event, median
    and range of `--rounds` rounds of 2,000 pages."""
    from datetime import UTC, datetime, timedelta

    from feedhook.sim.bebanjo import SimEvent, SimFeed
    from feedhook.sources.bebanjo import parse_json_feed

    api, start = "http://x/api", datetime(2026, 1, 1, tzinfo=UTC)
    events = [
        SimEvent(n, "job_updated", start + timedelta(seconds=n), "name,status", f"/jobs/{n}")
        for n in range(1, 51)
    ]
    page = orjson.dumps({"entries": [SimFeed._json_event(api, e) for e in events]})
    per_event = []
    for _ in range(args.rounds):
        began = time.process_time()
        for _ in range(2000):
            for event in parse_json_feed(page, "probe"):
                normalize("seq", "sequence", api, event)
        per_event.append((time.process_time() - began) / (2000 * len(events)) * 1e6)
    print(
        f"normalize: {statistics.median(per_event):.2f} us of CPU per event"
        f" (rounds {min(per_event):.2f}-{max(per_event):.2f})"
    )


def main() -> None:
    paths = {
        "deliver": deliver,
        "ingest": ingest,
        "raw": raw,
        "store": store_calls,
        "catchup": catchup,
        "pin": pin,
        "compare": compare,
        "slow": slow,
        "normalize": normalize_page,
        "dispatch": dispatch,
    }
    parser = argparse.ArgumentParser()
    parser.add_argument("path", choices=list(paths))
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--subscriptions", type=int, default=1)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--ordering", choices=["none", "subject"], default="none")
    parser.add_argument(
        "--subjects", type=int, default=0, help="events about so many (0: one each)"
    )
    parser.add_argument("--busy-loop", action="store_true", help="store: beside a busy event loop")
    parser.add_argument("--rounds", type=int, default=5, help="pin, compare: alternated rounds")
    parser.add_argument("--against", help="compare: the root of another feedhook checkout")
    parser.add_argument("--delay", type=float, default=0.05, help="slow: seconds per answer")
    args = parser.parse_args()
    asyncio.run(paths[args.path](args))


if __name__ == "__main__":
    main()
