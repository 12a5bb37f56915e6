"""The worker: one poller per source and the dispatcher, under one TaskGroup."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from feedhook import __version__, logs
from feedhook.config import Config, ConfigError, SourceConfig, load_config
from feedhook.delivery import Dispatcher, Sender
from feedhook.delivery.sender import new_session
from feedhook.metrics import Metrics
from feedhook.router import Router
from feedhook.sources import Source, build_source
from feedhook.sources.poller import Poller, SourceHealth
from feedhook.store.base import Store

log = logging.getLogger("feedhook")


@dataclass
class _Tail:
    """A running poller and what it was started with."""

    config: SourceConfig
    source: Source
    poller: Poller
    task: asyncio.Task[None]


class Worker:
    """Tails every source into the store and delivers what is due, until `stop()`."""

    def __init__(
        self,
        config: Config,
        store: Store,
        grace: float = 8.0,
        metrics: Metrics | None = None,
        config_path: str | Path | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.grace = grace
        self.metrics = metrics or Metrics()
        self.config_path = config_path
        self.router = Router(config.subscriptions)
        self.dispatcher: Dispatcher | None = None
        self.running = False
        self._stop = asyncio.Event()
        self._tails: dict[str, _Tail] = {}
        self._tasks: asyncio.TaskGroup | None = None
        self._reload_lock = asyncio.Lock()

    def stop(self) -> None:
        self._stop.set()

    @property
    def health(self) -> dict[str, SourceHealth]:
        return {name: tail.poller.health for name, tail in self._tails.items()}

    def alive(self) -> bool:
        """The dispatcher and every poller are still running."""
        if not self.running or self.dispatcher is None:
            return False
        return all(not tail.task.done() for tail in self._tails.values())

    async def run(self) -> None:
        recovered = await self.store.recover_in_flight()
        if recovered:
            log.info("%d deliveries were in flight at the last stop; sending them again", recovered)
        async with AsyncExitStack() as stack:
            session = await stack.enter_async_context(new_session())
            stack.push_async_callback(self._close_sources)
            dispatcher = Dispatcher(
                self.store,
                self.config.subscriptions,
                Sender(session, f"feedhook/{__version__}"),
                grace=self.grace,
                metrics=self.metrics,
            )
            self.dispatcher = dispatcher
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                tasks.create_task(dispatcher.run(), name="dispatcher")
                for name, source_config in self.config.sources.items():
                    await self._start_tail(name, source_config)
                self.running = True
                log.info(
                    "feedhook %s running: %d sources, %d subscriptions",
                    __version__,
                    len(self._tails),
                    len(self.config.subscriptions),
                )
                await self._stop.wait()
                self.running = False
                log.info("stopping: no new polls; finishing in-flight deliveries")
                for tail in self._tails.values():
                    tail.task.cancel()
                dispatcher.stop()
        log.info("stopped")

    async def _start_tail(self, name: str, config: SourceConfig) -> None:
        assert self._tasks is not None and self.dispatcher is not None
        source = build_source(name, config)
        await source.open()
        poller = Poller(source, self.store, lambda: self.router, self.dispatcher.wake, self.metrics)
        task = self._tasks.create_task(poller.run(), name=f"poll:{name}")
        self._tails[name] = _Tail(config, source, poller, task)

    async def _stop_tail(self, name: str) -> None:
        tail = self._tails.pop(name)
        tail.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tail.task
        await tail.source.close()

    async def _close_sources(self) -> None:
        for tail in self._tails.values():
            await tail.source.close()

    # --- live reload -----------------------------------------------------------------

    async def reload(self, config: Config) -> dict[str, list[str]]:
        """Apply a new, already validated config without dropping in-flight work.

        New subscriptions receive events ingested from now on; removed ones get no new
        deliveries (their pending ones stay in the store and in status). Sources that are
        new or changed (re)start from their stored cursor; removed ones stop.
        """
        async with self._reload_lock:
            old = self.config
            changes = {
                "subscriptions_added": sorted(set(config.subscriptions) - set(old.subscriptions)),
                "subscriptions_removed": sorted(set(old.subscriptions) - set(config.subscriptions)),
                "sources_added": sorted(set(config.sources) - set(old.sources)),
                "sources_removed": sorted(set(old.sources) - set(config.sources)),
                "sources_changed": sorted(
                    n
                    for n in set(config.sources) & set(old.sources)
                    if config.sources[n] != old.sources[n]
                ),
            }
            self.config = config
            logs.redact.update(logs.redact.secrets + tuple(config.secret_values()))
            self.router = Router(config.subscriptions)
            if self.dispatcher is not None:
                self.dispatcher.reconfigure(config.subscriptions)
            if self.running:
                for name in changes["sources_removed"] + changes["sources_changed"]:
                    await self._stop_tail(name)
                for name in changes["sources_added"] + changes["sources_changed"]:
                    await self._start_tail(name, config.sources[name])
            log.info(
                "configuration reloaded: %s",
                ", ".join(f"{k} {v}" for k, v in changes.items() if v) or "nothing changed",
            )
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
        return True, [f"{k}: {', '.join(v)}" for k, v in changes.items() if v]

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
