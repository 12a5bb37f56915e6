"""How a long-running feedhook process runs: on uvloop, with the cycle collector and the
interpreter's thread switching tuned."""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import Coroutine
from typing import Any


def run_async(coro: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop where it is installed: the same asyncio, a faster loop under it."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


# How long a thread may keep the GIL while another waits for it (Python's default: 5 ms).
SWITCH_INTERVAL = 0.0005


def tune_runtime() -> None:
    """The worker allocates many short-lived objects that reference counting frees at
    once; the cycle collector need not rescan the startup heap (frozen) or run every 700
    allocations. Measured: about 6% less CPU per delivery (BENCHMARKS.md).

    Each process has threads that wait for the event loop's GIL: the database thread,
    and in the worker the HTTP client's, which hands every answer back through it. With
    a 0.5 ms switch interval they are let in sooner: about 3% more deliveries a second
    (BENCHMARKS.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)
    sys.setswitchinterval(SWITCH_INTERVAL)
