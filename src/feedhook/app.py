"""The worker: the dispatcher and the pollers of every source, until stopped.

The pollers run in this process (`InProcessIngest`) or in a process of their own
(`ChildProcessIngest`, what `feedhook run` uses): either way they report each poll to the
worker, which counts it and wakes the dispatcher."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from feedhook import __version__, clock, logs
from feedhook.config import Config, ConfigChanges, ConfigError, load_config
from feedhook.delivery import Dispatcher, Sender
from feedhook.delivery.activity import Summary
from feedhook.delivery.transport import open_transport
from feedhook.health import SourceHealth
from feedhook.ingest import Ingest, PollReport
from feedhook.ingest.child import ChildProcessIngest, ChildSettings
from feedhook.metrics import Metrics
from feedhook.report import status_document
from feedhook.store.base import (
    DISABLED_BY_OPERATOR,
    DeadLetter,
    PruneResult,
    Store,
    StoreError,
    Trace,
)

log = logging.getLogger("feedhook")

# How often the worker makes sure its database file is still the one it opened.
IDENTITY_CHECK_INTERVAL = 2.0


class WorkerObserver:
    """What the worker does with each poll: metrics, and new events wake the dispatcher."""

    def __init__(self, metrics: Metrics, wake: Callable[[], None]) -> None:
        self.metrics = metrics
        self.wake = wake
        # Per source, when the last read that found it drained began (Worker.until_idle).
        self.drained_at: dict[str, float] = {}

    def started(self, health: SourceHealth) -> None:
        pass

    def ingested(self, health: SourceHealth, report: PollReport) -> None:
        self.metrics.polls.labels(health.name).inc(report.pages)
        for type_, count in report.types.items():
            self.metrics.events_ingested.labels(health.name, type_).inc(count)
        for subscription, count in report.filter_errors.items():
            self.metrics.filter_errors.labels(subscription).inc(count)
        if report.malformed:
            self.metrics.malformed_events.labels(health.name).inc(report.malformed)
        for outcome, count in report.subjects.items():
            self.metrics.subject_fetches.labels(health.name, outcome).inc(count)
        if report.enrich_wait is not None:
            self.metrics.enrichment_wait.labels(health.name).observe(report.enrich_wait)
        if report.drained_at is not None:
            self.drained_at[health.name] = report.drained_at
        if report.types:
            self.wake()

    def failed(self, health: SourceHealth, cause: str) -> None:
        self.metrics.poll_errors.labels(health.name, cause).inc()


class Worker:
    """Polls every source into the store and delivers what is due, until `stop()`.

    With `ingest_process` (the settings of a child over the store `store` has open), the
    pollers run in an ingest process of their own; without, in this one."""

    def __init__(
        self,
        config: Config,
        store: Store,
        grace: float = 8.0,
        metrics: Metrics | None = None,
        config_path: str | Path | None = None,
        ingest_process: ChildSettings | None = None,
        origin: str | None = None,
    ) -> None:
        self.config = config
        self.origin = origin
        self.store = store
        self.grace = grace
        self.metrics = metrics or Metrics()
        self.config_path = config_path
        self.ingest_process = ingest_process
        self.dispatcher: Dispatcher | None = None
        self.ingest: Ingest | None = None
        self.running = False
        # Why the worker is stopping on its own (readiness says it while it does).
        self.fatal: str | None = None
        self._stop = asyncio.Event()
        self._tasks: asyncio.TaskGroup | None = None
        self._reload_lock = asyncio.Lock()
        self._observer: WorkerObserver | None = None
        self._started = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    @property
    def health(self) -> dict[str, SourceHealth]:
        return dict(self.ingest.health) if self.ingest is not None else {}

    def alive(self) -> bool:
        """The dispatcher and the pollers are still running."""
        if not self.running or self.dispatcher is None or self.ingest is None:
            return False
        return self.ingest.alive()

    async def until_idle(self, timeout: float = 30.0) -> None:
        """Return once the work in sight is done (arq's burst mode, for tests and
        embedders): every source read to its end by a read that began after this call,
        and nothing in flight or due. TimeoutError after `timeout` seconds."""
        called = time.monotonic()
        async with asyncio.timeout(timeout):
            await self._started.wait()
            observer, dispatcher = self._observer, self.dispatcher
            assert observer is not None and dispatcher is not None
            while True:
                read = all(
                    observer.drained_at.get(name, 0.0) > called for name in self.config.sources
                )
                if read and await dispatcher.idle():
                    return
                await asyncio.sleep(0.01)

    def _wake(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.wake()

    async def run(self) -> None:
        self.store.on_work(self._wake)
        recovered = await self.store.recover_in_flight(clock.now())
        if recovered:
            log.info("%d deliveries were in flight at the last stop; sending them again", recovered)
        observer = self._observer = WorkerObserver(self.metrics, self._wake)
        async with AsyncExitStack() as stack:
            transport = await stack.enter_async_context(open_transport())
            dispatcher = Dispatcher(
                self.store,
                self.config.subscriptions,
                Sender(transport, f"feedhook/{__version__}", self.origin),
                grace=self.grace,
                metrics=self.metrics,
            )
            self.dispatcher = dispatcher
            if self.ingest_process is not None:
                ingest: Ingest = ChildProcessIngest(
                    self.config, self.ingest_process, observer, self.metrics.ingest_restarts.inc
                )
            else:
                # Imported here: with the ingest process, this one needs no feed code.
                from feedhook.ingest.local import InProcessIngest

                ingest = InProcessIngest(self.config, self.store, observer)
            self.ingest = ingest
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                tasks.create_task(dispatcher.run(), name="dispatcher")
                tasks.create_task(ingest.run(), name="ingest")
                watch = tasks.create_task(self._watch_store(), name="store-watch")
                pruning = tasks.create_task(self._prune_every_interval(), name="prune")
                leases = tasks.create_task(self._keep_leases(), name="leases")
                self.running = True
                self._started.set()
                log.info(
                    "feedhook %s running: %d sources%s, %d subscriptions",
                    __version__,
                    len(self.config.sources),
                    " (in an ingest process)" if self.ingest_process is not None else "",
                    len(self.config.subscriptions),
                )
                await self._stop.wait()
                self.running = False
                log.info("stopping: no new polls; finishing in-flight deliveries")
                ingest.stop()
                dispatcher.stop()
                watch.cancel()
                pruning.cancel()
                leases.cancel()
        log.info("stopped")
        if self.fatal is not None:
            raise StoreError(self.fatal)

    async def _keep_leases(self) -> None:
        """Renew this worker's claims a third of the way through their lease, and take
        back claims whose owner stopped renewing (a worker that died)."""
        while True:
            await asyncio.sleep(self.store.lease / 3)
            now = clock.now()
            await self.store.renew(now)
            if taken := await self.store.recover_in_flight(now):
                log.warning(
                    "%d deliveries claimed by a worker that stopped renewing its lease are"
                    " due again",
                    taken,
                )
                self._wake()

    async def _prune_every_interval(self) -> None:
        """Retention: finished work older than the config says goes, in short
        transactions, once at start and then every `retention.interval`."""
        while True:
            await self.prune()
            await asyncio.sleep(self.config.retention.interval)

    async def prune(self) -> PruneResult:
        retention = self.config.retention
        removed = await self.store.prune(clock.now(), retention.delivered, retention.dead_letters)
        for what in ("deliveries", "dead_letters", "events", "subjects"):
            self.metrics.pruned.labels(what).inc(getattr(removed, what))
        if removed:
            log.info(
                "pruned %d delivered deliveries, %d dead letters, %d events and %d deleted"
                " subjects past their retention",
                removed.deliveries,
                removed.dead_letters,
                removed.events,
                removed.subjects,
            )
        self.metrics.stored_subjects.set((await self.store.storage()).subjects)
        return removed

    async def _watch_store(self) -> None:
        """A database deleted or replaced underneath the worker ends it (exit 1): going
        on would write cursors and outcomes into a file nobody will open again."""
        while True:
            await asyncio.sleep(IDENTITY_CHECK_INTERVAL)
            try:
                self.store.check_identity()
            except StoreError as exc:
                self.fatal = str(exc)
                log.error("%s", exc)
                self.stop()  # readiness is red while in-flight deliveries finish
                return

    # --- what operators ask: the admin server's whole view of the worker --------------

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready, and the document /readyz answers: states, times and causes only (it
        needs no token), never a URL or an upstream's words."""
        try:
            self.store.check_identity()  # a stat: readiness is red the moment it is gone
        except StoreError:
            return False, {"ready": False, "reason": "the database file is gone; stopping"}
        if not self.running:
            return False, {"ready": False, "reason": "starting"}
        now = clock.now()
        if (locked := self.store.locked_since) is not None:
            return False, {
                "ready": False,
                "reason": f"the database has kept feedhook waiting for {now - locked:.0f}s"
                f" ({self.store.waiting_for}); feedhook is waiting for it",
            }
        sources = {n: h.to_json(now, detail=False) for n, h in sorted(self.health.items())}
        failing = [name for name, s in sources.items() if s["state"] == "failing"]
        return True, {"ready": True, "failing": failing, "sources": sources}

    async def status(self) -> dict[str, Any]:
        """What `feedhook status --json` prints, with each source's live state."""
        status, storage = await self.store.status(), await self.store.storage()
        now = clock.now()
        states = self.dispatcher.states(now) if self.dispatcher is not None else None
        return status_document(status, self.config, self.health, now, storage, states)

    async def metrics_text(self) -> bytes:
        """The Prometheus exposition, its gauges read now."""
        now = clock.now()
        states = self.dispatcher.states(now) if self.dispatcher is not None else {}
        self.metrics.observe(await self.store.counts(), self.health, now, states)
        return self.metrics.render()

    async def dead_letters(
        self, subscription: str | None, limit: int, after: int
    ) -> list[DeadLetter]:
        return await self.store.list_dead(subscription, limit, after)

    async def dead_letter(self, dead_id: int) -> DeadLetter | None:
        return await self.store.get_dead(dead_id)

    async def replay_dead(self, ids: list[int] | None, subscription: str | None) -> int:
        """Dead letters back into the outbox with a fresh budget; the store wakes the
        dispatcher, so they go out within a moment."""
        return await self.store.replay_dead(ids, subscription, clock.now())

    async def trace(self, envelope_id: str) -> Trace | None:
        return await self.store.trace(envelope_id)

    async def purge_dead(self, ids: list[int] | None, subscription: str | None = None) -> int:
        return await self.store.purge_dead(ids, subscription)

    def activity(self) -> dict[str, Summary]:
        """Each subscription's last hour as this worker delivered it (the console)."""
        return self.dispatcher.activity(clock.now()) if self.dispatcher is not None else {}

    async def set_enabled(self, subscription: str, enabled: bool) -> bool:
        """An operator disables a subscription (maintenance) or enables it again (its
        backlog goes out in order). Whether anything changed; KeyError when no such
        subscription is configured."""
        if subscription not in self.config.subscriptions:
            raise KeyError(subscription)
        if self.dispatcher is None:  # not running yet: the store is the state
            if enabled:
                return await self.store.enable(subscription, clock.now())
            return await self.store.disable(subscription, DISABLED_BY_OPERATOR, clock.now())
        if enabled:
            return await self.dispatcher.enable(subscription)
        return await self.dispatcher.disable(subscription, DISABLED_BY_OPERATOR)

    # --- live reload -----------------------------------------------------------------

    async def reload(self, config: Config) -> ConfigChanges:
        """Apply a new, already validated config without dropping in-flight work.

        New subscriptions receive events ingested from now on; removed ones get no new
        deliveries (their pending ones stay in the store and in status). Sources that are
        new or changed (re)start from their stored cursor; removed ones stop.
        """
        async with self._reload_lock:
            changes = ConfigChanges.between(self.config, config)
            self.config = config
            logs.redact.add(config.secret_values())
            if self.dispatcher is not None:
                self.dispatcher.reconfigure(config.subscriptions)
            if self.ingest is not None:
                await self.ingest.apply(config)
            log.info("configuration reloaded: %s", "; ".join(changes.lines()) or "nothing changed")
            return changes

    async def reload_from_file(self) -> tuple[bool, list[str]]:
        """Re-read the YAML; an invalid file is rejected and the running config stays."""
        if self.config_path is None:
            return False, ["this worker was not started from a config file"]
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            for line in exc.errors:
                log.error("reload rejected: %s", line)
            log.error("reload rejected: the running configuration stays in force")
            return False, exc.errors
        changes = await self.reload(config)
        return True, changes.lines()

    def reload_soon(self) -> None:
        """SIGHUP: reload in a supervised task."""
        if self._tasks is not None and self.running:
            self._tasks.create_task(self.reload_from_file(), name="reload")


@contextlib.contextmanager
def signal_handlers(worker: Worker) -> Iterator[None]:
    """SIGTERM and SIGINT stop the worker gracefully, SIGHUP reloads its config; the
    old handlers come back after."""
    loop = asyncio.get_running_loop()
    handlers = {
        signal.SIGTERM: worker.stop,
        signal.SIGINT: worker.stop,
        signal.SIGHUP: worker.reload_soon,
    }
    for sig, handler in handlers.items():
        loop.add_signal_handler(sig, handler)
    try:
        yield
    finally:
        for sig in handlers:
            loop.remove_signal_handler(sig)
