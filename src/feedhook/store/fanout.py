"""How an ingest queues its new events for their subscriptions, in every durable store.

A delivery row per (event, subscription) pair made fan-out the cost of an ingest: a
hundred subscriptions wanting every event meant a hundred rows written per event. So a
lane is queued *runs* instead: one row per stretch of consecutive new events routed to
it, turned into deliveries by the claims that take them. A lane kept in order by subject
is the exception: its claims must see every waiting delivery of a subject to keep the
line, so its deliveries are made at ingest, one per pair, as before.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from feedhook.store.base import IngestItem


@dataclass(slots=True)
class Queued:
    """What an ingest writes for its new events: `runs` as [subscription, first, last]
    (numbers of the first and last event of the stretch; every number between belongs
    to it), oldest first; `pairs` as (number, subscription, subject) for ordered lanes."""

    runs: list[list[Any]] = field(default_factory=list)
    pairs: list[tuple[int, str, str | None]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.runs or self.pairs)


def queue(items: Sequence[IngestItem], numbers: Sequence[int]) -> Queued:
    """The runs and ordered pairs of `items`, numbered by `numbers` (increasing: a gap
    between two numbers ends every run there). Items routed alike (the same list, as
    the router hands every event of a type when no filter decides) extend their runs
    together: the cost is per item and per change of routing, not per pair."""
    queued = Queued()
    open_runs: dict[str, list[Any]] = {}  # each lane's run that the next event may extend
    extending: list[list[Any]] = []  # the runs the current routing extends
    routed: Sequence[str] | None = None
    last = None
    for item, number in zip(items, numbers, strict=True):
        follows = last is not None and number == last + 1
        if item.ordered:
            queued.pairs += [
                (number, name, item.envelope.subject)
                for name in item.subscriptions
                if name in item.ordered
            ]
        if follows and (item.subscriptions is routed or item.subscriptions == routed):
            for run in extending:
                run[2] = number
        else:
            routed, extending = item.subscriptions, []
            for name in routed:
                if name in item.ordered:
                    continue
                run = open_runs.get(name) or []
                if follows and run and run[2] == last:
                    run[2] = number
                else:
                    run = open_runs[name] = [name, number, number]
                    queued.runs.append(run)
                extending.append(run)
            # A lane this event is not routed to cannot extend its run past it.
            for name in [n for n, run in open_runs.items() if run[2] != number]:
                del open_runs[name]
        last = number
    return queued


class Stretches:
    """Numbers covered by any of some (first, last) stretches, merged: what retention
    must keep of the events still queued. Asked in O(log n)."""

    def __init__(self, stretches: Sequence[tuple[int, int]]) -> None:
        self._firsts: list[int] = []
        self._lasts: list[int] = []
        for first, last in sorted(stretches):
            if self._lasts and first <= self._lasts[-1] + 1:
                self._lasts[-1] = max(self._lasts[-1], last)
            else:
                self._firsts.append(first)
                self._lasts.append(last)

    def __contains__(self, number: int) -> bool:
        at = bisect.bisect_right(self._firsts, number) - 1
        return at >= 0 and number <= self._lasts[at]

    def merged(self) -> list[tuple[int, int]]:
        return list(zip(self._firsts, self._lasts, strict=True))
