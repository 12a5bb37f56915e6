"""The retry decision: a pure function of one attempt's result and the delivery's history."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

RETRYABLE_STATUSES = frozenset({408, 425, 429})
MAX_RETRY_AFTER = 86400.0


# Not frozen, like the envelope: one of each is made per delivery.
@dataclass(slots=True)
class AttemptResult:
    """What one POST produced: a status, or an error before any status."""

    status: int | None
    error: str | None = None
    retry_after: float | None = None
    body: str | None = None
    duration: float = 0.0
    location: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        if self.status is None:
            return True
        return self.status in RETRYABLE_STATUSES or self.status >= 500

    def describe(self) -> str:
        if self.status is None:
            return self.error or "no response"
        if 300 <= self.status < 400:
            target = f" to {self.location}" if self.location else ""
            return (
                f"HTTP {self.status}: redirect{target} not followed; "
                "point the subscription url at the final address"
            )
        return f"HTTP {self.status}"


@dataclass(slots=True)
class Decision:
    kind: Literal["delivered", "retry", "dead"]
    retry_at: float | None = None
    reason: str | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """`schedule[n]` is the wait after attempt n+1; `max_age` bounds the whole effort."""

    schedule: Sequence[float]
    max_age: float | None = None
    jitter: float = 0.2

    def decide(
        self,
        result: AttemptResult,
        attempts: int,
        created_at: float,
        now: float,
        rand: random.Random | None = None,
    ) -> Decision:
        """`attempts` counts the attempt just made."""
        if result.ok:
            return Decision("delivered")
        reason = result.describe()
        if not result.retryable:
            return Decision("dead", reason=f"permanent failure: {reason}")
        if attempts > len(self.schedule):
            return Decision("dead", reason=f"gave up after {attempts} attempts; last: {reason}")
        spread = (rand or random).uniform(1 - self.jitter, 1 + self.jitter)
        delay = self.schedule[attempts - 1] * spread
        if result.retry_after is not None:
            delay = max(delay, min(result.retry_after, MAX_RETRY_AFTER))
        if self.max_age is not None and now + delay - created_at > self.max_age:
            return Decision(
                "dead",
                reason=f"retry window of {self.max_age:g}s used up after {attempts} "
                f"attempts; last: {reason}",
            )
        return Decision("retry", retry_at=now + delay, reason=reason)
