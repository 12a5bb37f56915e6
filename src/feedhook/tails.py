"""The pollers of every configured source, in this process: started, restarted on a
reload, stopped. The worker runs them here or in an ingest process (ingest_process.py)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from feedhook.config import Config, SourceConfig
from feedhook.health import SourceHealth
from feedhook.router import Router
from feedhook.sources import Source, build_source
from feedhook.sources.poller import Poller, PollObserver
from feedhook.store.base import Store


@dataclass
class _Tail:
    """A running poller and what it was started with."""

    config: SourceConfig
    source: Source
    poller: Poller
    task: asyncio.Task[None]


class Tails:
    """Tails every source into the store until `stop()`; a poller's crash ends `run()`."""

    def __init__(self, config: Config, store: Store, observer: PollObserver) -> None:
        self.config = config
        self.store = store
        self.observer = observer
        self.router = Router(config.subscriptions)
        self._tails: dict[str, _Tail] = {}
        self._tasks: asyncio.TaskGroup | None = None
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()

    @property
    def health(self) -> dict[str, SourceHealth]:
        return {name: tail.poller.health for name, tail in self._tails.items()}

    def alive(self) -> bool:
        return self._tasks is not None and all(not t.task.done() for t in self._tails.values())

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
                for tail in self._tails.values():
                    tail.task.cancel()
        finally:
            self._tasks = None
            for tail in self._tails.values():
                await tail.source.close()

    async def apply(self, config: Config) -> None:
        """A new config: new routes at once; new or changed sources (re)start from their
        stored cursor, removed ones stop."""
        async with self._lock:
            old, self.config = self.config, config
            self.router = Router(config.subscriptions)
            if self._tasks is None:
                return
            changed = [n for n in old.sources if config.sources.get(n) != old.sources[n]]
            for name in changed:
                if name in self._tails:
                    await self._stop_tail(name)
            for name, source_config in config.sources.items():
                if name not in self._tails:
                    await self._start(name, source_config)

    async def _start(self, name: str, config: SourceConfig) -> None:
        assert self._tasks is not None
        source = build_source(name, config)
        await source.open()
        # Spread evenly: the i-th of n sources polls i/n of the way into its interval.
        names = sorted(self.config.sources)
        phase = source.poll_interval * names.index(name) / len(names)
        poller = Poller(source, self.store, lambda: self.router, self.observer, phase)
        task = self._tasks.create_task(poller.run(), name=f"poll:{name}")
        self._tails[name] = _Tail(config, source, poller, task)

    async def _stop_tail(self, name: str) -> None:
        tail = self._tails.pop(name)
        tail.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tail.task
        await tail.source.close()
