"""Prometheus metrics: what the worker counts as it goes, and what is read at scrape time."""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample

from feedhook import __version__
from feedhook.health import SourceHealth
from feedhook.store.base import SubscriptionCounts, SubscriptionState

SUBSCRIPTION_STATES = ("active", "paused", "circuit_open", "disabled")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)
OUTCOMES = ("delivered", "retry", "dead")


class Metrics:
    """One registry per worker, so tests and embedders can run several side by side."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.info = Gauge("feedhook_build_info", "feedhook version", ["version"], registry=registry)
        self.info.labels(__version__).set(1)
        self.events_ingested = Counter(
            "feedhook_events_ingested",
            "Events written to the outbox, by source and envelope type",
            ["source", "type"],
            registry=registry,
        )
        self.polls = Counter(
            "feedhook_source_polls", "Pages read successfully", ["source"], registry=registry
        )
        self.poll_errors = Counter(
            "feedhook_source_poll_errors",
            "Failed reads of a feed, by cause (timeout, connect, http_503, invalid_json, ...)",
            ["source", "cause"],
            registry=registry,
        )
        self.filter_errors = Counter(
            "feedhook_filter_errors",
            "Events on which a subscription's filter failed (counted as no match)",
            ["subscription"],
            registry=registry,
        )
        self.malformed_events = Counter(
            "feedhook_malformed_events",
            "Events that could not be read in full, delivered marked data.malformed",
            ["source"],
            registry=registry,
        )
        self.pruned = Counter(
            "feedhook_pruned",
            "Rows removed past their retention: deliveries, dead_letters, events, subjects",
            ["what"],
            registry=registry,
        )
        self.subject_fetches = Counter(
            "feedhook_subject_fetches",
            "Subjects fetched for enriched events, by outcome: ok, deleted, not_found,"
            " failed, gave_up (max_wait spent), refused (not on the source's host)",
            ["source", "outcome"],
            registry=registry,
        )
        self.enrichment_wait = Histogram(
            "feedhook_enrichment_wait_seconds",
            "How long a batch of pages waited for its subjects",
            ["source"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.stored_subjects = Gauge(
            "feedhook_stored_subjects",
            "Subjects' last representations kept for diffs (counted at each pruning pass)",
            registry=registry,
        )
        self.ingest_restarts = Counter(
            "feedhook_ingest_restarts",
            "Times the ingest process died and was started again",
            registry=registry,
        )
        self.source_lag = Gauge(
            "feedhook_source_lag_seconds",
            "Now minus the time of the newest event seen from the source",
            ["source"],
            registry=registry,
        )
        self.since_success = Gauge(
            "feedhook_source_seconds_since_success",
            "Seconds since the last successful read of the feed",
            ["source"],
            registry=registry,
        )
        # Counted for every attempt: plain numbers, exposed at scrape time (DeliveryMeters).
        self.deliveries = DeliveryMeters()
        registry.register(self.deliveries)
        self.pending = Gauge(
            "feedhook_pending_deliveries",
            "Deliveries waiting or in flight",
            ["subscription"],
            registry=registry,
        )
        self.subscription_state = Gauge(
            "feedhook_subscription_state",
            "1 for the state each subscription is in: active, paused (Retry-After), circuit_open",
            ["subscription", "state"],
            registry=registry,
        )
        self.dead_letters = Gauge(
            "feedhook_dead_letters",
            "Deliveries in the dead-letter table",
            ["subscription"],
            registry=registry,
        )

    def observe(
        self,
        counts: Mapping[str, SubscriptionCounts],
        health: Mapping[str, SourceHealth],
        now: float,
        states: Mapping[str, SubscriptionState] | None = None,
    ) -> None:
        """Set the gauges that are read, not counted: queue sizes from the store's kept
        counts (never a scan), and each source's lag and time since its last success."""
        for name, c in counts.items():
            self.pending.labels(name).set(c.pending)
            self.dead_letters.labels(name).set(c.dead_letter)
        for name, guard in (states or {}).items():
            for state in SUBSCRIPTION_STATES:
                self.subscription_state.labels(name, state).set(int(guard.state == state))
        for name, h in health.items():
            if h.last_success_at is not None:
                self.since_success.labels(name).set(now - h.last_success_at)
            if h.newest_event_at is not None:
                self.source_lag.labels(name).set(now - h.newest_event_at)

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass(slots=True)
class Buckets:
    """One histogram's counts: how many observations fell at or below each bound (the
    last slot: above them all), and their sum."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds


@dataclass(slots=True)
class LaneMeters:
    """What one subscription's deliveries are counted by, as they happen."""

    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    attempt: Buckets = field(default_factory=Buckets)  # how long each POST took
    latency: Buckets = field(default_factory=Buckets)  # from ingest to a 2xx
    created: float = field(default_factory=time.time)


class DeliveryMeters:
    """feedhook_deliveries_total, feedhook_delivery_attempt_seconds and
    feedhook_delivery_latency_seconds, per subscription. Counted on every delivery as
    plain numbers on the event loop, and made into Prometheus metrics only when
    scraped: prometheus_client's own take a lock for each count, and the three of them
    cost 1.4 us a delivery, a sixteenth of the event loop's time (BENCHMARKS.md)."""

    def __init__(self) -> None:
        self._lanes: dict[str, LaneMeters] = {}

    def lane(self, subscription: str) -> LaneMeters:
        return self._lanes.setdefault(subscription, LaneMeters())

    def collect(self) -> Iterator[Metric]:
        outcomes = CounterMetricFamily(
            "feedhook_deliveries",
            "Delivery attempts by outcome: delivered, retry or dead",
            labels=["subscription", "outcome"],
        )
        attempt = HistogramMetricFamily(
            "feedhook_delivery_attempt_seconds",
            "Duration of one POST to a subscriber",
            labels=["subscription"],
        )
        latency = HistogramMetricFamily(
            "feedhook_delivery_latency_seconds",
            "From ingest into the outbox to a 2xx from the subscriber",
            labels=["subscription"],
        )
        for name, lane in list(self._lanes.items()):
            for outcome, n in lane.outcomes.items():
                outcomes.add_metric([name, outcome], n, created=lane.created)
            for family, buckets in ((attempt, lane.attempt), (latency, lane.latency)):
                counts, seen = [], 0
                for bound, n in zip((*LATENCY_BUCKETS, float("inf")), buckets.counts, strict=True):
                    seen += n
                    counts.append((_bound(bound), float(seen)))
                family.add_metric([name], counts, buckets.total)
                family.samples.append(
                    Sample(f"{family.name}_created", {"subscription": name}, lane.created)
                )
        yield from (outcomes, attempt, latency)


def _bound(bound: float) -> str:
    """A bucket's `le` as prometheus_client writes it ("0.005", "1.0", "+Inf")."""
    return "+Inf" if bound == float("inf") else repr(float(bound))
