"""Shared test helpers: simulated feeds, a receiver, a running worker, the real CLI.

Tests mirror src/ under tests/unit/; tests/e2e/ drives the real CLI against real servers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import signal
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from feedhook.admin import AdminServer, Runtime
from feedhook.app import Worker
from feedhook.config import SubscriptionConfig, load_config, parse_config
from feedhook.envelope import Envelope, make_envelope
from feedhook.health import SourceHealth
from feedhook.ingest import PollReport
from feedhook.router import Router
from feedhook.settings import Settings
from feedhook.sim import Receiver, SimFeed, SimModulo, SimTeamHub
from feedhook.sim.postgres import PostgresServer, postgres_bin
from feedhook.sources.base import Page, Source
from feedhook.store import IngestItem, SqliteStore

FIXTURES = Path(__file__).parent / "fixtures"
SECRET = "whsec_" + base64.b64encode(b"feedhook-test-secret-32-bytes!!!").decode()


@pytest.fixture
async def sequence_feed() -> AsyncIterator[SimFeed]:
    feed = SimFeed("sequence")
    await feed.start()
    yield feed
    await feed.stop()


@pytest.fixture
async def movida_feed() -> AsyncIterator[SimFeed]:
    feed = SimFeed("movida")
    await feed.start()
    yield feed
    await feed.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rx = Receiver()
    await rx.start()
    yield rx
    await rx.stop()


def source(feed: SimFeed, **overrides: Any) -> dict[str, Any]:
    """A source block pointing at a simulated feed, tuned for fast tests."""
    return {
        "kind": feed.system,
        "url": feed.api_url,
        "username": "robot_user",
        "password": "secret",
        "poll_interval": "100ms",
        "start": "earliest",
        "rate_limit": "1000/1s",
        "max_backoff": "200ms",
        "timeout": "2s",
        **overrides,
    }


def subscription(receiver: Receiver, name: str, **overrides: Any) -> dict[str, Any]:
    return {
        "url": receiver.url(name),
        "secret": SECRET,
        "types": ["*"],
        "timeout": "2s",
        "retry": {"schedule": ["100ms", "100ms", "100ms"]},
        **overrides,
    }


def one_feed(feed: SimFeed, receiver: Receiver, **subscriptions: dict[str, Any]) -> dict[str, Any]:
    """The config most tests share: the simulated feed as source `seq`, and one
    subscription per keyword (with its settings), posting to the receiver at its name."""
    return {
        "sources": {"seq": source(feed)},
        "subscriptions": {
            name: subscription(receiver, name, **spec) for name, spec in subscriptions.items()
        },
    }


async def eventually(
    check: Callable[[], bool] | Callable[[], Awaitable[bool]],
    timeout: float = 15.0,
    what: str = "condition",
) -> None:
    """Poll `check` until it holds; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def running(raw: dict[str, Any], db: Path, grace: float = 2.0) -> AsyncIterator[Worker]:
    """A real worker over a real store, stopped gracefully at the end."""
    config = parse_config(raw, "test.yaml", env={})
    async with SqliteStore(db) as store:
        worker = Worker(config, store, grace=grace)
        task = asyncio.create_task(worker.run())
        try:
            yield worker
        finally:
            worker.stop()
            await asyncio.wait_for(task, 10)


# --- feeds --------------------------------------------------------------------------


async def poll(feed: Source, cursor: str, pages: list[Page] | None = None) -> Page:
    """One whole poll, as the poller makes it: fetch until the feed has no more for now.
    The events of every page, the last cursor; each page also kept in `pages`."""
    events: list[tuple[str, Envelope]] = []
    while True:
        page = await feed.fetch(cursor)
        if pages is not None:
            pages.append(page)
        events += page.events
        cursor = page.cursor
        if not page.more:
            return Page(events=events, cursor=cursor, more=False)


class Reports:
    """A poll observer that keeps what it is told."""

    def __init__(self) -> None:
        self.written: list[PollReport] = []
        self.failures: list[str] = []

    def started(self, health: SourceHealth) -> None:
        pass

    def ingested(self, health: SourceHealth, report: PollReport) -> None:
        self.written.append(report)

    def failed(self, health: SourceHealth, cause: str) -> None:
        self.failures.append(cause)


def router(subscriptions: Mapping[str, list[str]]) -> Router:
    """Subscriptions by name and type globs, compiled."""
    return Router(
        {
            name: SubscriptionConfig.model_validate({"url": "https://r/x", "types": types})
            for name, types in subscriptions.items()
        }
    )


# --- the store ----------------------------------------------------------------------


def ingest_item(
    n: int,
    subs: tuple[str, ...] = ("a",),
    subject: str | None = None,
    ordered: tuple[str, ...] = (),
) -> IngestItem:
    """Event n of source `seq` (a Sequence job about `subject`), routed to `subs`, in
    order per subject for those in `ordered`."""
    envelope = make_envelope(
        source_name="seq",
        upstream_id=str(n),
        source="https://x/api",
        type="sequence.job.created",
        time=datetime.now(UTC),
        data={"n": n},
        subject=subject,
    )
    return IngestItem(str(n), envelope, subs, ordered)


class LockProbe:
    """A writer beside the code under test, as ingest and delivery are: a small write
    transaction every 2 ms on the database, each one's wait for the write lock kept. It
    asks for the lock every millisecond rather than through SQLite's busy handler, whose
    sleeps grow to 100 ms and can miss short gaps, so a wait measures how long the code
    under test held the lock; its own commit (which may run a WAL checkpoint) is not
    counted."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.waits: list[float] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._write)

    def __enter__(self) -> LockProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _write(self) -> None:
        db = sqlite3.connect(self.db, isolation_level=None, timeout=0)
        while not self._done.is_set():
            started = time.monotonic()
            while True:
                try:
                    db.execute("BEGIN IMMEDIATE")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) and "busy" not in str(exc):
                        raise
                    time.sleep(0.001)
            self.waits.append(time.monotonic() - started)
            db.execute("INSERT INTO sources (name) VALUES ('probe') ON CONFLICT DO NOTHING")
            db.execute("COMMIT")
            time.sleep(0.002)
        db.close()


# --- PostgreSQL ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bin_dir = postgres_bin()
    if bin_dir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed: .ci/run installs the postgresql package")
        pytest.skip("PostgreSQL is not installed (initdb not found): apt-get install postgresql")
    server = PostgresServer(bin_dir)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    return postgres_server.new_database()


# --- the admin server of a worker run in this process ------------------------------


ADMIN_TOKEN = "admin-token-for-tests"


class Admin:
    def __init__(self, base: str, worker: Worker, config_path: Path) -> None:
        self.base = base
        self.worker = worker
        self.config_path = config_path
        self.session = aiohttp.ClientSession()

    async def call(
        self, method: str, path: str, token: str | None = ADMIN_TOKEN, **kw: Any
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.request(method, self.base + path, headers=headers, **kw) as r:
            body = await r.json() if "json" in r.content_type else await r.text()
            return r.status, body

    async def metric(self, name: str, **labels: str) -> float:
        _, text = await self.call("GET", "/metrics")
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            match = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
            if match and match.group(1) == name:
                got = ",".join(sorted((match.group(2) or "").split(","))) if match.group(2) else ""
                if got == want:
                    return float(match.group(3))
        return 0.0


@asynccontextmanager
async def admin_for(
    tmp_path: Path, raw: dict[str, Any], token: str | None = ADMIN_TOKEN
) -> AsyncIterator[Admin]:
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "hooks.yaml"
    path.write_text(yaml.safe_dump(raw))
    settings = Settings(admin_port=free_port(), admin_token=token)
    runtime = Runtime()
    server = AdminServer(runtime, settings)
    await server.start()
    async with SqliteStore(tmp_path / "f.db") as store:
        worker = Worker(load_config(path), store, grace=2.0, config_path=path)
        runtime.worker = worker
        task = asyncio.create_task(worker.run())
        admin = Admin(f"http://127.0.0.1:{server.port}", worker, path)
        await eventually(lambda: worker.running, what="the worker")
        try:
            yield admin
        finally:
            worker.stop()
            await asyncio.wait_for(task, 10)
            await admin.session.close()
            await server.stop()


# --- the real CLI --------------------------------------------------------------------


class Cli:
    """Runs `python -m feedhook` in a subprocess with its own config and database."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.config = tmp_path / "hooks.yaml"
        self.db = tmp_path / "feedhook.db"
        self.admin_port = free_port()
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.env = {
            **os.environ,
            "FEEDHOOK_DB": str(self.db),
            "FEEDHOOK_CONFIG": str(self.config),
            "FEEDHOOK_LOG_FORMAT": "json",
            "FEEDHOOK_ADMIN_PORT": str(self.admin_port),
        }

    def write_config(self, raw: dict[str, Any]) -> Path:
        self.config.write_text(yaml.safe_dump(raw, sort_keys=False))
        return self.config

    async def run(self, *args: str, timeout: float = 30) -> tuple[int, str, str]:
        proc = await self.start(*args)
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def start(self, *args: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "feedhook",
            *args,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

    @staticmethod
    async def stop(proc: asyncio.subprocess.Process, timeout: float = 30) -> str:
        """SIGTERM a started command (unless it already ended) and wait for it; its stderr."""
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), timeout)
        print(err.decode()[-3000:])  # shown by pytest when the test fails
        return err.decode()

    async def until_idle(self, timeout: float = 30.0, held: tuple[str, ...] = ()) -> None:
        """`Worker.until_idle` for a `feedhook run` of this CLI, told from its metrics:
        every configured source has written two more polls since this call (so one read
        began after it), and nothing is pending or in flight (but for the subscriptions
        `held`: disabled ones, whose deliveries wait)."""
        sources = yaml.safe_load(self.config.read_text())["sources"]
        first = await self._metric("feedhook_source_polls_total", "source")

        async def idle() -> bool:
            polls = await self._metric("feedhook_source_polls_total", "source")
            pending = await self._metric("feedhook_pending_deliveries", "subscription")
            read = all(polls.get(name, 0) >= first.get(name, 0) + 2 for name in sources)
            return read and not any(n for name, n in pending.items() if name not in held)

        await eventually(idle, timeout=timeout, what="the worker to be idle")

    async def _metric(self, name: str, label: str) -> dict[str, float]:
        async with aiohttp.ClientSession() as session:
            try:
                async with session.get(f"{self.admin}/metrics") as response:
                    text = await response.text()
            except aiohttp.ClientConnectionError:
                return {}  # not listening yet
        return {
            sample.labels[label]: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name
        }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


@pytest.fixture
async def teamhub() -> AsyncIterator[SimTeamHub]:
    sim = SimTeamHub()
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture
async def modulo() -> AsyncIterator[SimModulo]:
    sim = SimModulo()
    await sim.start()
    yield sim
    await sim.stop()


def teamhub_source(sim: SimTeamHub, **overrides: Any) -> dict[str, Any]:
    return {
        "kind": "teamhub",
        "url": sim.api_url,
        "company_key": sim.company_key,
        "account_key": sim.account_key,
        "poll_interval": "100ms",
        "start": "earliest",
        "rate_limit": "1000/1s",
        "max_backoff": "200ms",
        "timeout": "2s",
        **overrides,
    }


def modulo_source(sim: SimModulo, codes: list[str], **overrides: Any) -> dict[str, Any]:
    return {
        "kind": "modulo",
        "url": sim.ws_url,
        "event_codes": codes,
        "token_url": sim.token_url,
        "client_id": sim.client_id,
        "client_secret": sim.client_secret,
        "poll_interval": "100ms",
        "start": "earliest",
        "rate_limit": "1000/1s",
        "max_backoff": "200ms",
        "timeout": "2s",
        **overrides,
    }


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/e2e/ (the real CLI, real servers, real processes) is
    `slow`: `pytest -m "not slow"` is the quick round of unit tests mirroring src/."""
    for item in items:
        if "e2e" in item.path.parts:
            item.add_marker(pytest.mark.slow)
