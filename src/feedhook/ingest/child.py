"""The pollers in a process of their own, over the same database.

Reading a feed (parsing pages, normalizing, routing, writing the outbox) and delivering
webhooks both want the CPU; in one process they take turns on one event loop, and a
catch-up slows every delivery. Here the pollers run in a child process: the main process
keeps the dispatcher, the admin server and the metrics, and the two meet only in the
SQLite database (WAL: one writes while the other reads) and on two pipes:

- down, the child's stdin: the validated config, pickled, at start and on every reload;
  end of file tells the child to stop;
- up, the child's stdout: one JSON line per poll that found something (the source's
  health, pages read, new events by type) or failed (the cause), and one every few
  seconds for the quiet ones; the main process turns them into metrics, readiness and a
  wake-up for the dispatcher.

The child's logs go to the same stderr. If it dies, the main process starts it again;
each source resumes from its stored cursor, so nothing is lost or sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import IO, TYPE_CHECKING, Any

import orjson

from feedhook import clock, logs, placement
from feedhook.config import Config
from feedhook.health import SourceHealth
from feedhook.ingest import PollObserver, PollReport
from feedhook.process import run_async, tune_runtime
from feedhook.store import open_store

if TYPE_CHECKING:
    from feedhook.settings import Settings

log = logging.getLogger("feedhook")

STOP_TIMEOUT = 15.0  # the child finishes its current write, then exits; else it is killed
RESTART_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)
STEADY_AFTER = 60.0  # a child that ran this long counts as healthy: delays start over
LINE_LIMIT = 1 << 20


@dataclass(frozen=True)
class ChildSettings:
    """What the ingest process needs of the worker's settings. It comes down the pipe
    first, as JSON: the child loads no settings parser of its own (pydantic-settings is
    6 MB), and the store's URL, which may hold a password, never shows in `ps`."""

    store_url: str
    log_level: str
    log_format: str
    lease: float
    admin_token: str | None  # masked in the child's logs like the config's secrets
    # The CPUs the worker could use before it held its threads on one: the child, which
    # starts on the worker's CPU, takes them all back (placement.py). None: left as is.
    cpus: tuple[int, ...] | None = None

    @classmethod
    def of(cls, settings: Settings, cpus: Iterable[int] | None = None) -> ChildSettings:
        return cls(
            settings.db,
            settings.log_level,
            settings.log_format,
            settings.lease,
            settings.admin_token,
            tuple(sorted(cpus)) if cpus is not None else None,
        )


class ChildProcessIngest:
    """The main process's side: starts the child, forwards config, reads its reports,
    restarts it if it dies. The same interface as InProcessIngest (see ingest.Ingest)."""

    def __init__(
        self,
        config: Config,
        settings: ChildSettings,
        observer: PollObserver,
        on_restart: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self.settings = settings
        self.observer = observer
        self.on_restart = on_restart
        self.health: dict[str, SourceHealth] = {}
        # While the child keeps dying: since when, and why. Every source shows it (a
        # child that dies before its first report would otherwise show nothing at all).
        self._trouble: tuple[float, str] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._stop = asyncio.Event()
        self._running = False

    def alive(self) -> bool:
        return self._running

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        self._running = True
        failures = 0
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                code = await self._run_child()
                if self._stop.is_set():
                    break
                failures = 1 if time.monotonic() - started > STEADY_AFTER else failures + 1
                delay = RESTART_DELAYS[min(failures, len(RESTART_DELAYS)) - 1]
                reason = f"the ingest process {_how(code)}"
                log.error(
                    "%s; starting it again in %gs: every source resumes from its stored cursor",
                    reason,
                    delay,
                )
                self.on_restart()
                since = self._trouble[0] if self._trouble else clock.now()
                self._trouble = (since, reason)
                for name, source in self.config.sources.items():
                    health = self.health.setdefault(name, SourceHealth(name, source.poll_interval))
                    self._mark(health)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
        finally:
            self._running = False

    async def apply(self, config: Config) -> None:
        self.config = config
        for name in set(self.health) - set(config.sources):
            del self.health[name]
        if self._proc is not None and self._proc.returncode is None:
            self._send(self._proc, config)

    async def _run_child(self) -> int:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "feedhook.ingest.child",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=LINE_LIMIT,
        )
        self._proc = proc
        try:
            assert proc.stdin is not None
            proc.stdin.write(_frame(orjson.dumps(asdict(self.settings))))
            self._send(proc, self.config)
            reading = asyncio.ensure_future(self._read(proc))
            stopping = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if reading.done() and (exc := reading.exception()) is not None:
                # Cannot happen unless the two sides disagree on the protocol (a partial
                # upgrade?): the child is stopped and started again, nothing is lost.
                log.error("unreadable report from the ingest process: %r", exc)
                proc.kill()
            elif not reading.done():
                assert proc.stdin is not None
                proc.stdin.close()  # end of file: the child stops its pollers and exits
                try:
                    await asyncio.wait_for(reading, STOP_TIMEOUT)
                except TimeoutError:
                    log.warning("the ingest process did not stop within %gs; killed", STOP_TIMEOUT)
                    proc.kill()
            return await proc.wait()
        finally:
            if proc.returncode is None:  # cancelled: no write is left half done (SQLite)
                proc.kill()
                await proc.wait()
            self._proc = None

    def _send(self, proc: asyncio.subprocess.Process, config: Config) -> None:
        assert proc.stdin is not None
        proc.stdin.write(_frame(pickle.dumps(config)))

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            report = orjson.loads(line)
            health = SourceHealth(**report["health"])
            if health.name not in self.config.sources:
                continue  # stopped by a reload the child had not seen yet
            self.health[health.name] = health
            if self._trouble is not None and "poll" not in report:
                self._mark(health)  # a fresh child's "started" does not clear the trouble
            if "poll" in report:
                self._trouble = None  # the child reads and writes: whatever it was is over
                self.observer.ingested(health, PollReport(**report["poll"]))
            elif "cause" in report:
                self.observer.failed(health, report["cause"])
            else:
                self.observer.started(health)

    def _mark(self, health: SourceHealth) -> None:
        assert self._trouble is not None
        since, reason = self._trouble
        health.failed(since, "ingest_process_died", reason)


def _how(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


# --- the child -----------------------------------------------------------------------


# Quiet polls (the feed read, nothing new) go up folded into one line this often, or
# every few poll intervals if those are shorter: for an idle bridge, the line and its
# handling in the main process were a fifth of what each poll cost.
QUIET_REPORT_EVERY = 5.0
QUIET_REPORT_POLLS = 5


class PipeObserver:
    """The child's observer: a JSON line up the pipe for each poll that found something
    or failed; quiet polls folded (pages counted, the latest drained read kept)."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self._held: dict[str, PollReport] = {}  # per source, quiet polls not yet reported
        self._sent_at: dict[str, float] = {}  # per source, its last line

    def _send(self, health: SourceHealth, **fields: Any) -> None:
        # orjson writes the dataclass itself (dataclasses.asdict copies it deeply).
        self.out.write(orjson.dumps({"health": health, **fields}) + b"\n")
        self._sent_at[health.name] = time.monotonic()

    def _flush(self, health: SourceHealth) -> None:
        if (held := self._held.pop(health.name, None)) is not None:
            self._send(health, poll=held.to_json())

    def started(self, health: SourceHealth) -> None:
        self._flush(health)
        self._send(health)

    def ingested(self, health: SourceHealth, report: PollReport) -> None:
        name = health.name
        if report.quiet:
            if (held := self._held.get(name)) is not None:
                report = held.then(report)
            window = min(QUIET_REPORT_EVERY, QUIET_REPORT_POLLS * health.poll_interval)
            if time.monotonic() - self._sent_at.get(name, -window) < window:
                self._held[name] = report
                return
            self._held.pop(name, None)
        else:
            self._flush(health)
        self._send(health, poll=report.to_json())

    def failed(self, health: SourceHealth, cause: str) -> None:
        self._flush(health)
        self._send(health, cause=cause)


def _frame(data: bytes) -> bytes:
    """One message down the pipe: its length in 4 bytes, then the bytes."""
    return len(data).to_bytes(4, "big") + data


def _read_settings() -> ChildSettings | None:
    """The first message, read from the pipe before the event loop takes it over: with
    os.read, exactly its bytes (a buffered read would take the config's too)."""
    head = _read_exactly(4)
    body = _read_exactly(int.from_bytes(head, "big")) if len(head) == 4 else b""
    if not body:
        return None
    fields = orjson.loads(body)
    if fields.get("cpus") is not None:
        fields["cpus"] = tuple(fields["cpus"])  # a JSON list
    return ChildSettings(**fields)


def _read_exactly(size: int) -> bytes:
    data = b""
    while len(data) < size and (chunk := os.read(0, size - len(data))):
        data += chunk
    return data


async def _receive(reader: asyncio.StreamReader) -> Config | None:
    """The next config from the main process; None at end of file (time to stop)."""
    try:
        size = int.from_bytes(await reader.readexactly(4), "big")
        config = pickle.loads(await reader.readexactly(size))
    except asyncio.IncompleteReadError:
        return None
    assert isinstance(config, Config)
    return config


async def _child(settings: ChildSettings, reports: IO[bytes]) -> int:
    # Here, not at the top: the worker imports this module for ChildProcessIngest and
    # needs none of the feeds' code.
    from feedhook.ingest.local import InProcessIngest

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    config = await _receive(reader)
    if config is None:
        return 0
    logs.redact.update(config.secret_values() | {settings.admin_token or ""})
    async with open_store(settings.store_url, lease=settings.lease) as store:
        ingest = InProcessIngest(config, store, PipeObserver(reports))

        async def listen() -> None:
            while (new := await _receive(reader)) is not None:
                logs.redact.add(new.secret_values())
                await ingest.apply(new)
            ingest.stop()

        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(listen(), name="config")
            await ingest.run()
    return 0


def main() -> int:
    settings = _read_settings()
    if settings is None:
        return 0  # the main process went away before it said anything
    logs.setup(settings.log_level, settings.log_format)
    if settings.cpus:
        placement.release(settings.cpus)  # before the database thread starts
    # Ctrl-C reaches the whole process group; the main process decides when to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Reports get stdout to themselves: nothing else may print into the pipe.
    reports = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    tune_runtime()
    code = 1
    try:
        code = run_async(_child(settings, reports))
    except* BrokenPipeError:
        code = 0  # the main process is gone: nothing left to report to
    except* Exception as failed:
        for exc in failed.exceptions:
            log.error("the ingest process failed: %r", exc, exc_info=exc)
    return code


if __name__ == "__main__":
    sys.exit(main())
