"""The delivery meters, counted as plain numbers, read exactly as prometheus_client's own
metrics would be for the same attempts."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from feedhook.metrics import LATENCY_BUCKETS, OUTCOMES, Metrics


def delivery_lines(exposition: bytes) -> list[str]:
    """The delivery metrics' lines, creation times masked (they differ by nature)."""
    return sorted(
        re.sub(r"(_created\{[^}]*\}) \S+", r"\1 T", line)
        for line in exposition.decode().splitlines()
        if "feedhook_deliver" in line
    )


def test_delivery_meters_read_as_prometheus_clients_own() -> None:
    durations = [0.003, 0.005, 0.7, 4000.0]  # 0.005 is a bound: counted at or below it
    latencies = [0.05, 1.0, 12.5]
    metrics = Metrics()
    lane = metrics.deliveries.lane("all")
    metrics.deliveries.lane("quiet")  # configured, nothing delivered yet
    reference = CollectorRegistry()
    outcomes = Counter(
        "feedhook_deliveries",
        "Delivery attempts by outcome: delivered, retry or dead",
        ["subscription", "outcome"],
        registry=reference,
    )
    attempt = Histogram(
        "feedhook_delivery_attempt_seconds",
        "Duration of one POST to a subscriber",
        ["subscription"],
        buckets=LATENCY_BUCKETS,
        registry=reference,
    )
    latency = Histogram(
        "feedhook_delivery_latency_seconds",
        "From ingest into the outbox to a 2xx from the subscriber",
        ["subscription"],
        buckets=LATENCY_BUCKETS,
        registry=reference,
    )
    for name in ("all", "quiet"):
        for outcome in OUTCOMES:
            outcomes.labels(name, outcome)
        attempt.labels(name)
        latency.labels(name)
    for kind in ("delivered", "delivered", "retry", "dead"):
        lane.outcomes[kind] += 1
        outcomes.labels("all", kind).inc()
    for seconds in durations:
        lane.attempt.observe(seconds)
        attempt.labels("all").observe(seconds)
    for seconds in latencies:
        lane.latency.observe(seconds)
        latency.labels("all").observe(seconds)

    ours = delivery_lines(generate_latest(metrics.registry))
    assert ours == delivery_lines(generate_latest(reference))
    assert 'feedhook_delivery_attempt_seconds_bucket{le="0.005",subscription="all"} 2.0' in ours
