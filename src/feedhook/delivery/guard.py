"""What spares one receiver: its rate limit, a pause it asked for (Retry-After on a 429
or 503), and a circuit breaker that stops sending to a receiver that keeps failing.

The dispatcher asks `blocked_until(now)` before starting a delivery and tells the guard
what each attempt did; nothing here sleeps or touches the store. States: `active`,
`paused` (Retry-After), `circuit_open` (one probe per cooldown)."""

from __future__ import annotations

from feedhook.budget import Budget
from feedhook.config import SubscriptionConfig
from feedhook.config.values import RateLimit
from feedhook.delivery.policy import MAX_RETRY_AFTER, AttemptResult
from feedhook.store.base import ACTIVE, SubscriptionState

MAX_COOLDOWN = 600.0
PAUSING_STATUSES = frozenset({429, 503})


class Guard:
    def __init__(self, config: SubscriptionConfig) -> None:
        self.budget: Budget | None = None
        self.allowed: Budget | None = None  # the rate the receiver allows (handshake)
        self.paused_until = 0.0
        self.pause_reason: str | None = None
        self.paused_since: float | None = None
        self.failures = 0  # retryable failures in a row
        self.open_since: float | None = None
        self.open_until = 0.0
        self.cooldown = 0.0
        self.probing = False
        self.last_failure = ""
        self.reconfigure(config)

    def reconfigure(self, config: SubscriptionConfig) -> None:
        self.config = config
        limit = config.rate_limit
        if limit is None:
            self.budget = None
        elif self.budget is None or self.budget.limit != limit:
            self.budget = Budget(limit)
        self.threshold = config.circuit_breaker.failures
        self.base_cooldown = config.circuit_breaker.cooldown

    # --- may it start? -----------------------------------------------------------------

    def allow(self, per_minute: int | None) -> None:
        """The receiver's own limit, from the handshake (WebHook-Allowed-Rate)."""
        self.allowed = None if per_minute is None else Budget(RateLimit(per_minute, 60.0))

    def pause(self, until: float, reason: str, now: float) -> None:
        """Hold the lane until `until` (a refused handshake, asked again then)."""
        self.paused_until, self.paused_since, self.pause_reason = until, now, reason

    def blocked_until(self, now: float) -> float | None:
        """When the next delivery may start, if not now."""
        if (
            self.budget is None
            and self.open_since is None
            and self.paused_until <= now
            and self.allowed is None
        ):
            return None  # the common case, on every start: nothing holds the lane back
        later = [self.paused_until] if self.paused_until > now else []
        if self.open_since is not None:
            if self.probing:  # one probe in flight: nothing else until it answers
                later.append(now + self.cooldown)
            elif self.open_until > now:
                later.append(self.open_until)
        for budget in (self.budget, self.allowed):
            if budget is not None and (wait := budget.wait(now)) > 0:
                later.append(now + wait)
        return max(later) if later else None

    def started(self, now: float) -> None:
        if self.budget is not None:
            self.budget.take(now)
        if self.allowed is not None:
            self.allowed.take(now)
        if self.open_since is not None:
            self.probing = True

    # --- what it did ---------------------------------------------------------------------

    def answered(self, result: AttemptResult, now: float) -> str | None:
        """Take one attempt's result; returns `closed` when a probe closed the circuit
        (the dispatcher then brings the receiver's held-back retries forward), `opened`
        when the circuit opened, else None."""
        if result.retry_after is not None and result.status in PAUSING_STATUSES:
            until = now + min(result.retry_after, MAX_RETRY_AFTER)
            if until > self.paused_until:
                self.paused_until, self.paused_since = until, now
                self.pause_reason = f"HTTP {result.status} with Retry-After"
        if result.ok or not result.retryable:
            # A permanent failure is the delivery's, not the receiver's: it answers.
            self.failures = 0
            if self.open_since is not None:
                self.open_since, self.probing, self.cooldown = None, False, 0.0
                return "closed"
            return None
        self.failures += 1
        if self.open_since is not None:
            if self.probing:  # the probe failed: wait twice as long
                self.probing = False
                self.cooldown = min(MAX_COOLDOWN, self.cooldown * 2)
                self.open_until = now + self.cooldown
            return None
        if self.threshold and self.failures >= self.threshold:
            self.open_since, self.cooldown = now, self.base_cooldown
            self.open_until = now + self.cooldown
            self.last_failure = result.describe()
            return "opened"
        return None

    def state(self, now: float) -> SubscriptionState:
        if self.open_since is not None:
            reason = f"{self.failures} failures in a row; last: {self.last_failure}"
            return SubscriptionState("circuit_open", reason, self.open_since, self.open_until)
        if self.paused_until > now:
            return SubscriptionState(
                "paused", self.pause_reason, self.paused_since, self.paused_until
            )
        return ACTIVE
