"""The ingest: the pollers of every configured source, one interface, two places to run.

`InProcessIngest` (local.py) runs them on the worker's event loop; `ChildProcessIngest`
(child.py, what `feedhook run` uses) runs them in a child process over the same store,
restarted if it dies. Either reports every poll to a PollObserver, as a PollReport.
(Neither is imported here, nor any feed: the worker that runs the pollers in a child
process loads no feed code, and the child runs as `python -m feedhook.ingest.child`.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from feedhook.config import Config
from feedhook.health import SourceHealth


@dataclass(frozen=True)
class PollReport:
    """What one write of pages did: pages read, new events by type, subscription filters
    that failed on them (counted as no match), and new events that were malformed."""

    pages: int
    types: Mapping[str, int]
    filter_errors: Mapping[str, int]
    malformed: int = 0
    # When the read that found the feed drained began (time.monotonic(), the same clock
    # in every process of the host); None: the feed has more.
    drained_at: float | None = None
    # Subjects fetched for these pages, by outcome, and how long the batch waited.
    subjects: Mapping[str, int] = field(default_factory=dict)
    enrich_wait: float | None = None

    @property
    def quiet(self) -> bool:
        """Nothing new, nothing failed, nothing fetched: the feed was only read."""
        return not (
            self.types
            or self.filter_errors
            or self.malformed
            or self.subjects
            or self.enrich_wait is not None
        )

    def then(self, later: PollReport) -> PollReport:
        """This quiet report and a later quiet one, as one."""
        return replace(later, pages=self.pages + later.pages)

    def to_json(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it rebuilds a Counter from its items, counting pairs.
        return {
            "pages": self.pages,
            "types": dict(self.types),
            "filter_errors": dict(self.filter_errors),
            "malformed": self.malformed,
            "drained_at": self.drained_at,
            "subjects": dict(self.subjects),
            "enrich_wait": self.enrich_wait,
        }


class PollObserver(Protocol):
    """Told what each poller does: the metrics, the dispatcher's wake-up and, when the
    pollers run in their own process, the pipe to the main one."""

    def started(self, health: SourceHealth) -> None: ...

    def ingested(self, health: SourceHealth, report: PollReport) -> None:
        """Pages were written (their report may count no new event at all)."""

    def failed(self, health: SourceHealth, cause: str) -> None: ...


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


__all__ = ["Ingest", "PollObserver", "PollReport"]
