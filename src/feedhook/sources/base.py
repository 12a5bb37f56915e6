"""What every source kind provides, and the errors a feed can raise."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from feedhook.envelope import Envelope


class FeedError(Exception):
    """A page could not be read or understood. The poller retries it with backoff;
    the message names the source, the URL (never credentials) and the cause.
    `cause` is a short label for metrics (timeout, connect, http_503, invalid_json, ...)."""

    def __init__(self, message: str, cause: str = "invalid_data") -> None:
        super().__init__(message)
        self.cause = cause


@dataclass(frozen=True, slots=True)
class Page:
    """Normalized events in feed order, the cursor after them, and whether to fetch again now."""

    events: Sequence[tuple[str, Envelope]]
    cursor: str
    more: bool


class Source(Protocol):
    name: str
    poll_interval: float
    max_backoff: float

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    async def initial_cursor(self) -> str:
        """Where to begin when no cursor is stored (from the `start` setting)."""
        ...

    async def fetch(self, cursor: str) -> Page:
        """The next page after `cursor`. Raises FeedError."""
        ...
