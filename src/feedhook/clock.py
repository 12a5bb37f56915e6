"""The one place feedhook reads the time, so tests can move it."""

import time
from collections.abc import Callable

_now: Callable[[], float] = time.time


def now() -> float:
    """Seconds since the epoch, as the worker sees them."""
    return _now()


def set_clock(fn: Callable[[], float] | None) -> None:
    """Replace the clock (tests); None restores the real one."""
    global _now
    _now = fn or time.time
