"""A subscription's last hour: the rate, the percentiles and the chart's minutes."""

from __future__ import annotations

import pytest

from feedhook.delivery.activity import EDGES, MINUTES, Activity

T0 = 1_800_000_000.0 - 1_800_000_000.0 % 60  # the start of a minute


def test_an_idle_subscription_has_an_empty_hour() -> None:
    summary = Activity().summary(T0)
    assert summary.per_minute == 0
    assert summary.p50 is None and summary.p99 is None
    assert summary.minutes == ((0, 0),) * MINUTES


def test_the_minutes_land_where_they_happened_and_age_out() -> None:
    """Deliveries and failures counted in their minute; an hour later they are gone."""
    activity = Activity()
    for _ in range(3):
        activity.delivered(T0 + 5, 0.010)
    activity.failed(T0 + 6)
    activity.delivered(T0 + 125, 0.010)  # two minutes later
    minutes = activity.summary(T0 + 130).minutes
    assert minutes[-1] == (1, 0) and minutes[-2] == (0, 0) and minutes[-3] == (3, 1)
    assert activity.summary(T0 + 59 * 60 + 1).minutes[0] == (3, 1)
    an_hour_on = activity.summary(T0 + 60 * 60 + 1).minutes
    assert sum(ok for ok, _ in an_hour_on) == 1 and an_hour_on[1] == (1, 0)
    assert activity.summary(T0 + 62 * 60).minutes == ((0, 0),) * MINUTES


def test_the_rate_slides_over_sixty_seconds() -> None:
    """60 deliveries in the last minute and none in this one: 60 per minute at its start,
    30 half-way through."""
    activity = Activity()
    for second in range(60):
        activity.delivered(T0 + second, 0.01)
    assert activity.summary(T0 + 60).per_minute == pytest.approx(60)
    assert activity.summary(T0 + 90).per_minute == pytest.approx(30)
    assert activity.summary(T0 + 121).per_minute == 0


def test_percentiles_over_the_last_five_minutes_within_a_fifth() -> None:
    """p50 and p99 read off the buckets are within 19% above the true ones; deliveries
    older than five minutes do not count."""
    activity = Activity()
    activity.delivered(T0, 30.0)  # six minutes before: out of the window
    for i in range(1000):
        activity.delivered(T0 + 360 + i * 0.1, 0.002 + i * 0.0001)  # 2 ms .. 102 ms
    summary = activity.summary(T0 + 480)
    assert summary.p50 is not None and summary.p99 is not None
    assert 0.052 <= summary.p50 <= 0.052 * 1.19
    assert 0.101 <= summary.p99 <= 0.101 * 1.19


def test_a_latency_beyond_the_last_bucket_reads_as_the_last_edge() -> None:
    activity = Activity()
    activity.delivered(T0, 10_000.0)
    assert activity.summary(T0).p99 == EDGES[-1]
