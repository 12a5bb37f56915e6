"""A subscription's last hour as this worker saw it, minute by minute: deliveries,
failures and how long deliveries took. The console's rates, percentiles and chart come
from here; nothing is stored, so a restart starts a new hour."""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from dataclasses import dataclass, field

MINUTES = 60
PERCENTILE_MINUTES = 5  # p50/p99 over the last five minutes: recent, yet not one burst
# Latency buckets 1 ms * 2^(i/4): each a fifth wider than the last, so a percentile read
# off them is within 19% of the true one, up to 17 minutes; beyond lands in the last.
EDGES = tuple(0.001 * 2 ** (i / 4) for i in range(81))


@dataclass(slots=True)
class Minute:
    at: int  # minutes since the epoch
    delivered: int = 0
    failed: int = 0  # attempts that will be retried or were dead-lettered
    latencies: list[int] = field(default_factory=lambda: [0] * (len(EDGES) + 1))


@dataclass(frozen=True, slots=True)
class Summary:
    per_minute: float  # deliveries in the last sixty seconds (sliding)
    p50: float | None  # seconds from ingest to a 2xx, over the last five minutes
    p99: float | None
    # The last hour, oldest first: (delivered, failed) per minute, the current one last.
    minutes: tuple[tuple[int, int], ...]


class Activity:
    def __init__(self) -> None:
        self._minutes: deque[Minute] = deque(maxlen=MINUTES)

    def _minute(self, now: float) -> Minute:
        at = int(now // 60)
        if not self._minutes or self._minutes[-1].at != at:
            self._minutes.append(Minute(at))
        return self._minutes[-1]

    def delivered(self, now: float, latency: float) -> None:
        minute = self._minute(now)
        minute.delivered += 1
        minute.latencies[bisect_left(EDGES, latency)] += 1

    def failed(self, now: float) -> None:
        self._minute(now).failed += 1

    def summary(self, now: float) -> Summary:
        current = int(now // 60)
        by_minute = {m.at: m for m in self._minutes if m.at > current - MINUTES}
        minutes = tuple(
            (m.delivered, m.failed) if (m := by_minute.get(at)) else (0, 0)
            for at in range(current - MINUTES + 1, current + 1)
        )
        # The sliding window: this minute so far, and the part of the last minute that
        # is still within sixty seconds.
        into = now / 60 - current
        per_minute = minutes[-1][0] + minutes[-2][0] * (1 - into)
        counts = [0] * (len(EDGES) + 1)
        for at in range(current - PERCENTILE_MINUTES + 1, current + 1):
            if (m := by_minute.get(at)) is not None:
                counts = [a + b for a, b in zip(counts, m.latencies, strict=True)]
        return Summary(per_minute, _percentile(counts, 0.5), _percentile(counts, 0.99), minutes)


def _percentile(counts: list[int], q: float) -> float | None:
    """The upper edge of the bucket holding the q-th delivery; None with none."""
    total = sum(counts)
    if not total:
        return None
    rank, seen = q * total, 0
    for index, count in enumerate(counts):
        seen += count
        if seen >= rank:
            return EDGES[min(index, len(EDGES) - 1)]
    return EDGES[-1]
