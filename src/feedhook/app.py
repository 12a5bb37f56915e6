"""The worker: one poller per source and the dispatcher, under one TaskGroup."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator
from contextlib import AsyncExitStack

from feedhook import __version__
from feedhook.config import Config
from feedhook.delivery import Dispatcher, Sender
from feedhook.delivery.sender import new_session
from feedhook.router import Router
from feedhook.sources import build_source
from feedhook.sources.poller import Poller
from feedhook.store.base import Store

log = logging.getLogger("feedhook")


class Worker:
    """Tails every source into the store and delivers what is due, until `stop()`."""

    def __init__(self, config: Config, store: Store, grace: float = 8.0) -> None:
        self.config = config
        self.store = store
        self.grace = grace
        self.router = Router(config.subscriptions)
        self._stop = asyncio.Event()
        self.dispatcher: Dispatcher | None = None

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        recovered = await self.store.recover_in_flight()
        if recovered:
            log.info("%d deliveries were in flight at the last stop; sending them again", recovered)
        async with AsyncExitStack() as stack:
            session = await stack.enter_async_context(new_session())
            sources = [build_source(n, c) for n, c in self.config.sources.items()]
            for source in sources:
                await source.open()
                stack.push_async_callback(source.close)
            dispatcher = Dispatcher(
                self.store,
                self.config.subscriptions,
                Sender(session, f"feedhook/{__version__}"),
                grace=self.grace,
            )
            self.dispatcher = dispatcher
            log.info(
                "feedhook %s running: %d sources, %d subscriptions",
                __version__,
                len(sources),
                len(self.config.subscriptions),
            )
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(dispatcher.run(), name="dispatcher")
                pollers = [
                    tasks.create_task(
                        Poller(source, self.store, lambda: self.router, dispatcher.wake).run(),
                        name=f"poll:{source.name}",
                    )
                    for source in sources
                ]
                await self._stop.wait()
                log.info("stopping: no new polls; finishing in-flight deliveries")
                for poller in pollers:
                    poller.cancel()
                dispatcher.stop()
        log.info("stopped")


@contextlib.contextmanager
def stop_on_signals(worker: Worker) -> Iterator[None]:
    """SIGTERM and SIGINT stop the worker gracefully; the old handlers come back after."""
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, worker.stop)
    try:
        yield
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
