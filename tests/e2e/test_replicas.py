"""Several `feedhook run` replicas on one PostgreSQL database (a real server)."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from feedhook.sim import Receiver, SimFeed

from conftest import Cli, PostgresServer, eventually, source, subscription

TOKEN = "replicas-admin-token"


def replica(tmp_path: Path, n: int, url: str, raw: dict[str, Any]) -> Cli:
    cli = Cli(tmp_path / f"replica-{n}")
    cli.dir.mkdir()
    cli.config = cli.dir / "hooks.yaml"
    cli.env["FEEDHOOK_DB"] = url
    cli.env["FEEDHOOK_LEASE"] = "3s"
    cli.env["FEEDHOOK_ADMIN_TOKEN"] = TOKEN
    cli.write_config(raw)
    return cli


async def console_overview(cli: Cli) -> str:
    """The overview a signed-in browser gets from this replica's console."""
    jar = aiohttp.CookieJar(unsafe=True)  # keep the cookie of 127.0.0.1
    async with aiohttp.ClientSession(cookie_jar=jar) as browser:
        async with browser.post(f"{cli.admin}/sign-in", data={"token": TOKEN}) as signed_in:
            assert signed_in.status == 200
        async with browser.get(f"{cli.admin}/console/overview") as overview:
            assert overview.status == 200
            return await overview.text()


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def page_requests(feed: SimFeed, requests: list[str] | None = None) -> Counter[int]:
    """How often each page of events was asked for (by its newer_than), the drained
    tail's repeated polls left out."""
    last = feed.events[-1].id
    asked: Counter[int] = Counter()
    for path in feed.requests if requests is None else requests:
        if "newer_than=" in path:
            cursor = int(path.split("newer_than=")[1].split("&")[0])
            if cursor < last:
                asked[cursor] += 1
    return asked


async def test_three_replicas_one_killed_lose_nothing(
    tmp_path: Path,
    postgres_url: str,
    sequence_feed: SimFeed,
    movida_feed: SimFeed,
    receiver: Receiver,
) -> None:
    """Three replicas drain two sources to two subscriptions; the one polling a source is
    killed with kill -9 in the middle. Every (event, subscription) pair arrives,
    duplicates only for deliveries in flight on the killed replica; its source is taken
    over from the stored cursor; no other page is asked for twice."""
    sequence_feed.add_events(1500)
    movida_feed.add_events(1000)
    receiver.answer("all", 200, delay=0.03)
    raw = {
        "sources": {"seq": source(sequence_feed), "mov": source(movida_feed)},
        "subscriptions": {
            "all": subscription(receiver, "all", max_in_flight=10),
            "jobs": subscription(receiver, "jobs", types=["sequence.job.*"], max_in_flight=5),
        },
    }
    expected = {(f"seq:{e.id}", "all") for e in sequence_feed.events}
    expected |= {(f"mov:{e.id}", "all") for e in movida_feed.events}
    expected |= {
        (f"seq:{e.id}", "jobs") for e in sequence_feed.events if e.event_type.startswith("job_")
    }
    replicas = [replica(tmp_path, n, postgres_url, raw) for n in range(3)]
    procs = [await r.start("run") for r in replicas]
    try:
        db = await asyncpg.connect(postgres_url)
        pollers: dict[str, str] = {}

        async def spread() -> bool:
            """The two sources are polled by two replicas, not both by the first (a
            replica that started late gets its share handed over)."""
            try:
                pollers.update(dict(await db.fetch("SELECT name, poller FROM sources")))
            except asyncpg.UndefinedTableError:
                return False  # no replica has made the schema yet
            replicas = {_parent(int(p.split(":")[1])) for p in pollers.values() if p}
            return len(replicas) == 2

        try:
            await eventually(spread, timeout=20, what="the sources spread over two replicas")
            mov_spread_at = len(movida_feed.requests)
            # Any replica's console says which replica polls each source.
            overview = await console_overview(replicas[2])
            assert "Polled by" in overview
            for name, poller in pollers.items():
                host, pid, _ = poller.split(":")
                row = overview[overview.index(f'<th scope="row">{name}') :]
                assert f"<td>{host}:{pid}</td>" in row[: row.index("</tr>")], name
            await eventually(lambda: len(receiver.ok()) >= 600, timeout=60, what="600")
            pollers.update(dict(await db.fetch("SELECT name, poller FROM sources")))
            seq_child = int(pollers["seq"].split(":")[1])
            victim = next(p for p in procs if p.pid == _parent(seq_child))
            cursor_at_kill = {
                name: int(c) for name, c in await db.fetch("SELECT name, cursor FROM sources")
            }
            victim.kill()
            await victim.wait()
            in_flight = {
                (r["envelope_id"], r["subscription"])
                for r in await db.fetch(
                    "SELECT e.envelope_id, d.subscription FROM deliveries d JOIN events e"
                    " ON e.id = d.event_id WHERE d.state = 'in_flight' AND d.owner LIKE $1",
                    f"%:{victim.pid}:%",
                )
            }
        finally:
            await db.close()
        assert len(receiver.ok()) < len(expected)

        got = lambda: Counter((r.webhook_id, r.path) for r in receiver.ok())  # noqa: E731
        await eventually(lambda: set(got()) >= expected, timeout=90, what="every pair")
        db = await asyncpg.connect(postgres_url)

        async def taken_over() -> bool:
            """Another replica polls it now (a hand-over may leave it free a moment)."""
            taken_by = await db.fetchval("SELECT poller FROM sources WHERE name = 'seq'")
            return taken_by is not None and f":{seq_child}:" not in taken_by

        try:
            await eventually(taken_over, timeout=15, what="the source taken over")
        finally:
            await db.close()
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            await asyncio.wait_for(proc.wait(), 30)
    counts = got()
    assert set(counts) == expected
    assert {pair for pair, n in counts.items() if n > 1} <= in_flight
    # Pages asked for twice: only those the killed replica had read but not yet written;
    # the source it did not poll, each page once.
    seq_twice = {c for c, n in page_requests(sequence_feed).items() if n > 1}
    assert all(c >= cursor_at_kill["seq"] for c in seq_twice), seq_twice
    before = page_requests(movida_feed, movida_feed.requests[:mov_spread_at])
    after = page_requests(movida_feed, movida_feed.requests[mov_spread_at:])
    assert max(after.values(), default=1) == 1 and not set(before) & set(after)


async def test_replicas_starting_together_make_one_schema(postgres_url: str) -> None:
    """Two replicas opening an empty database at the same instant: one schema, no error."""
    from feedhook.store.postgres import SCHEMA_VERSION, PostgresStore

    stores = [PostgresStore(postgres_url) for _ in range(3)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        db = await asyncpg.connect(postgres_url)
        try:
            versions = [r["version"] for r in await db.fetch("SELECT version FROM feedhook_schema")]
        finally:
            await db.close()
        assert versions == list(range(1, SCHEMA_VERSION + 1))
    finally:
        for store in stores:
            await store.close()


async def test_a_database_restarted_under_a_replica_is_recovered_from(
    tmp_path: Path,
    postgres_server: PostgresServer,
    postgres_url: str,
    sequence_feed: SimFeed,
    receiver: Receiver,
) -> None:
    """PostgreSQL restarts while a replica runs: it retries, readiness recovers, and every
    event is delivered once."""
    raw = {
        "sources": {"seq": source(sequence_feed)},
        "subscriptions": {"all": subscription(receiver, "all")},
    }
    cli = replica(tmp_path, 0, postgres_url, raw)
    proc = await cli.start("run")
    try:
        sequence_feed.add_events(50)
        await eventually(lambda: len(receiver.ok()) == 50, timeout=30, what="the first 50")
        # Down longer than the lease (3 s): the source's lease has run out on return.
        await asyncio.to_thread(postgres_server.restart, 5.0)
        sequence_feed.add_events(50)
        await eventually(lambda: len(receiver.ok()) >= 100, timeout=60, what="the next 50")
        await cli.until_idle()

        async def whole_again() -> bool:
            """Status shows the replica alive and polling: its leases, which ran out
            while the database was down, renewed (within a lease of its return)."""
            code, out, err = await cli.run("status")
            assert code == 0, err
            alive = f"replicas alive: {socket.gethostname()}:{proc.pid}" in out
            return alive and "polled by:" in out

        await eventually(whole_again, timeout=15, what="the leases renewed")
    finally:
        err = await cli.stop(proc)
    assert proc.returncode == 0, err[-3000:]
    counts = Counter(r.webhook_id for r in receiver.ok())
    assert len(counts) == 100 and max(counts.values()) == 1
