"""The ingest in this process: the pollers of every configured source, started,
restarted on a reload, stopped (`FEEDHOOK_INGEST_PROCESS=false`, and the tests)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from feedhook.config import Config, ConfigChanges, SourceConfig
from feedhook.health import SourceHealth
from feedhook.ingest import PollObserver
from feedhook.router import Router
from feedhook.sources import Source, build_source
from feedhook.sources.poller import Poller
from feedhook.store.base import Store


@dataclass
class _Running:
    """A running poller and what it was started with."""

    config: SourceConfig
    source: Source
    poller: Poller
    task: asyncio.Task[None]


class InProcessIngest:
    """Polls every source into the store until `stop()`; a poller's crash ends `run()`."""

    def __init__(self, config: Config, store: Store, observer: PollObserver) -> None:
        self.config = config
        self.store = store
        self.observer = observer
        self.router = Router(config.subscriptions)
        self._running: dict[str, _Running] = {}
        self._tasks: asyncio.TaskGroup | None = None
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()

    @property
    def health(self) -> dict[str, SourceHealth]:
        return {name: running.poller.health for name, running in self._running.items()}

    def alive(self) -> bool:
        return self._tasks is not None and all(not t.task.done() for t in self._running.values())

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                async with self._lock:
                    for name, source_config in self.config.sources.items():
                        await self._start(name, source_config)
                await self._stop.wait()
                for running in self._running.values():
                    running.task.cancel()
        finally:
            self._tasks = None
            for running in self._running.values():
                await running.source.close()

    async def apply(self, config: Config) -> None:
        """A new config: new routes at once; new or changed sources (re)start from their
        stored cursor, removed ones stop."""
        async with self._lock:
            old, self.config = self.config, config
            self.router = Router(config.subscriptions)
            if self._tasks is None:
                return
            changes = ConfigChanges.between(old, config)
            for name in changes.sources_changed + changes.sources_removed:
                if name in self._running:
                    await self._stop_poller(name)
            for name, source_config in config.sources.items():
                if name not in self._running:
                    await self._start(name, source_config)

    async def _start(self, name: str, config: SourceConfig) -> None:
        assert self._tasks is not None
        source = build_source(name, config)
        await source.open()
        # Busy sources spread evenly: the i-th of n polls i/n of the way into its interval
        # (quiet ones poll together, on a few ticks of it: Poller._until_next_poll).
        names = sorted(self.config.sources)
        phase = source.poll_interval * names.index(name) / len(names)
        poller = Poller(source, self.store, lambda: self.router, self.observer, phase)
        task = self._tasks.create_task(poller.run(), name=f"poll:{name}")
        self._running[name] = _Running(config, source, poller, task)

    async def _stop_poller(self, name: str) -> None:
        running = self._running.pop(name)
        running.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running.task
        await running.source.close()
