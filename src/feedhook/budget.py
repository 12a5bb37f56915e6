"""A request budget: at most N starts in any window of `per` seconds (a sliding window,
exact: BeBanjo bans a user for 300 s past 150 requests in 30 s). The feeds wait for it;
the dispatcher asks when the next start may be, and sleeps until then."""

from __future__ import annotations

from collections import deque

from feedhook.config.values import RateLimit


class Budget:
    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self._starts: deque[float] = deque()

    def wait(self, now: float) -> float:
        """Seconds until one more start fits the budget (0: now)."""
        while self._starts and now - self._starts[0] >= self.limit.per:
            self._starts.popleft()
        if len(self._starts) < self.limit.requests:
            return 0.0
        return self._starts[0] + self.limit.per - now

    def take(self, now: float) -> None:
        """Count a start (after `wait` said 0)."""
        self._starts.append(now)
