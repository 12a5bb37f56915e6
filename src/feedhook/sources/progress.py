"""What an operator reads while a source catches up: a line every PROGRESS_INTERVAL
(events so far, per second, how far behind, about how long to go) and one line when it
has caught up. Quiet otherwise: a source that keeps up says nothing."""

from __future__ import annotations

import logging
import time

from feedhook.config.values import format_duration

log = logging.getLogger("feedhook.source")

PROGRESS_INTERVAL = 10.0
# A read of several pages that ends within the interval with fewer new events than this
# is a source keeping up (TeamHub scans a few pages on every poll), not a catch-up.
CATCH_UP_EVENTS = 1000


class CatchUp:
    """Follows one source's batches: `more` says whether the feed had more to read."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.started: float | None = None  # monotonic, while catching up
        self.events = 0
        self.first_newest: float | None = None  # event time when it began
        self.newest: float | None = None
        self.last_line = 0.0

    def batch(self, events: int, newest: float | None, more: bool, now: float) -> None:
        """One written batch: `events` new ones, the newest event time among them, and
        whether the feed has more; `now` is the wall clock (for the lag)."""
        tick = time.monotonic()
        if newest is not None:
            self.newest = max(newest, self.newest or newest)
        if self.started is None:
            if not more:
                return  # keeping up: nothing to say
            self.started, self.events, self.last_line = tick, 0, tick
            self.first_newest = self.newest
        self.events += events
        if not more:
            took = tick - self.started
            self.started = None
            if took < PROGRESS_INTERVAL and self.events < CATCH_UP_EVENTS:
                return
            log.info(
                "%s: caught up: %d events in %s (%.0f/s)",
                self.source,
                self.events,
                format_duration(took),
                self.events / max(took, 1e-3),
                extra={"source": self.source},
            )
            return
        if tick - self.last_line >= PROGRESS_INTERVAL:
            self.last_line = tick
            elapsed = tick - self.started
            line = (
                f"{self.source}: catching up: {self.events} events, {self.events / elapsed:.0f}/s"
            )
            if self.newest is not None:
                lag = now - self.newest
                line += f", {format_duration(lag)} behind"
                if self.first_newest is not None and self.newest > self.first_newest:
                    # Feed time read per second of ours: how long the rest should take.
                    speed = (self.newest - self.first_newest) / elapsed
                    line += f", about {format_duration(lag / speed)} to go"
            log.info(line, extra={"source": self.source})
