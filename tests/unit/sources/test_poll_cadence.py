"""Polls keep a steady cadence: quiet sources on one interval poll together, on one of
its two ticks; sources that found events are spread across it."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from feedhook.sources.poller import Poller


class _Source:
    name = "s"
    poll_interval = 1.0
    max_backoff = 1.0
    enricher = None

    async def fetch(self, cursor: str) -> Any:
        raise NotImplementedError

    async def initial_cursor(self) -> str:
        return "0"


def poller(phase: float) -> Poller:
    return Poller(_Source(), store=None, router=lambda: None, observer=None, phase=phase)  # type: ignore[arg-type]


def next_poll(
    monkeypatch: pytest.MonkeyPatch, phase: float, began: float, now: float, found: bool
) -> float:
    """The instant of the next poll of a poll that began at `began` and ended at `now`."""
    monkeypatch.setattr("feedhook.sources.poller.time.monotonic", lambda: now)
    return now + poller(phase)._until_next_poll(began, found)


@pytest.mark.parametrize("took", [0.0, 0.01, 0.3])
@pytest.mark.parametrize(("phase", "found"), [(0.0, False), (0.5, True), (0.25, True)])
def test_a_source_that_stays_quiet_or_busy_polls_once_an_interval(
    monkeypatch: pytest.MonkeyPatch, phase: float, found: bool, took: float
) -> None:
    slot = 100.0 + phase
    began = slot + 0.002  # woken a little late, as a timer is
    assert next_poll(monkeypatch, phase, began, began + took, found) == pytest.approx(slot + 1)


@pytest.mark.parametrize(
    ("phases", "tick"), [((0.0, 0.2, 0.4, 0.45), 42.0), ((0.5, 0.7, 0.95), 42.5)]
)
def test_quiet_sources_poll_together_on_a_tick_of_the_interval(
    monkeypatch: pytest.MonkeyPatch, phases: tuple[float, ...], tick: float
) -> None:
    # One wake-up for each half of the interval, not one for each source.
    polls = [
        next_poll(monkeypatch, phase, began=41.0 + phase, now=41.1 + phase, found=False)
        for phase in phases
    ]
    assert polls == pytest.approx([tick] * len(phases))


def test_busy_sources_never_poll_together(monkeypatch: pytest.MonkeyPatch) -> None:
    first = next_poll(monkeypatch, 0.0, began=42.0, now=42.3, found=True)
    second = next_poll(monkeypatch, 0.5, began=41.5, now=41.8, found=True)
    assert abs(first - second) == pytest.approx(0.5)


@pytest.mark.parametrize("phase", [0.0, 0.1, 0.49, 0.5, 0.51, 0.9, 0.99])
def test_a_source_changing_between_quiet_and_busy_polls_within_half_and_one_and_a_half_intervals(
    monkeypatch: pytest.MonkeyPatch, phase: float
) -> None:
    began = 100.0
    for found in itertools.islice(itertools.cycle([True, False, False, True, True, False]), 30):
        following = next_poll(monkeypatch, phase, began, began + 0.05, found)
        assert 0.5 <= following - began <= 1.5 + 1e-9
        slot = phase if found else phase - phase % 0.5
        assert (following - slot) == pytest.approx(round(following - slot))  # on its slot
        began = following
