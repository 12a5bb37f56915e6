"""What is known about each source while feedhook runs: the one record of a source's
health and every change it can go through (a poll succeeded, a poll failed, the ingest
process died), read by readiness, status and the metrics. No heavy imports: read-only
commands load it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# A source that keeps failing this long counts as failing (not merely retrying).
FAILING_AFTER_POLLS = 3
FAILING_AFTER_SECONDS = 300.0


@dataclass
class SourceHealth:
    """What the admin server and the metrics say about a source, kept by its poller."""

    name: str
    poll_interval: float
    last_success_at: float | None = None
    failing_since: float | None = None
    last_error: str | None = None  # masked; for the token-guarded API and the logs
    cause: str | None = None  # a short label (timeout, http_401, ...): safe to show anyone
    newest_event_at: float | None = None
    events: int = 0  # new events ingested since this poller started

    def succeeded(self, now: float, newest_event_at: float | None, events: int = 0) -> bool:
        """A poll wrote its pages (`events` of them new); True if the source had been
        failing."""
        recovered = self.failing_since is not None
        self.events += events
        self.last_success_at = now
        self.failing_since = self.last_error = self.cause = None
        if newest_event_at is not None:
            self.newest_event_at = max(newest_event_at, self.newest_event_at or newest_event_at)
        return recovered

    def failed(self, since: float, cause: str, message: str) -> None:
        """Polling fails (`message` already masked): failing since the first failure."""
        self.failing_since = min(self.failing_since or since, since)
        self.last_error = message
        self.cause = cause

    def state(self, now: float) -> str:
        if self.failing_since is None:
            return "ok" if self.last_success_at is not None else "starting"
        limit = min(FAILING_AFTER_POLLS * self.poll_interval, FAILING_AFTER_SECONDS)
        return "failing" if now - self.failing_since > limit else "retrying"

    def to_json(self, now: float, detail: bool = True) -> dict[str, Any]:
        """The source's live state; without `detail` (the unauthenticated /readyz) only
        states, times and the cause's label: never a URL or an upstream's words."""
        out: dict[str, Any] = {
            "state": self.state(now),
            "cause": self.cause,
            "last_success_at": self.last_success_at,
            "failing_since": self.failing_since,
            "newest_event_at": self.newest_event_at,
        }
        if detail:
            out["last_error"] = self.last_error
        return out
