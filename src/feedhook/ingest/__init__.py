"""The ingest: the pollers of every configured source, one interface, two places to run.

`InProcessIngest` (local.py) runs them on the worker's event loop; `ChildProcessIngest`
(child.py, what `feedhook run` uses) runs them in a child process over the same store,
restarted if it dies. Either reports every poll to a PollObserver. (Neither is imported
here: the child runs as `python -m feedhook.ingest.child`.)
"""

from __future__ import annotations

from typing import Protocol

from feedhook.config import Config
from feedhook.health import SourceHealth


class Ingest(Protocol):
    """What the worker asks of its ingest."""

    @property
    def health(self) -> dict[str, SourceHealth]:
        """The live state of each configured source."""
        ...

    async def run(self) -> None:
        """Poll until `stop()`."""

    async def apply(self, config: Config) -> None:
        """A reloaded config: new routes, sources started, restarted or stopped."""

    def stop(self) -> None: ...

    def alive(self) -> bool:
        """Polling goes on (for /healthz)."""
        ...


__all__ = ["Ingest"]
