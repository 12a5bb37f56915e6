"""Polls keep a steady cadence, and sources on one interval are spread across it."""

from __future__ import annotations

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


@pytest.mark.parametrize("now", [100.0, 100.2, 100.5, 100.99])
def test_the_next_poll_is_on_the_sources_own_slot(
    monkeypatch: pytest.MonkeyPatch, now: float
) -> None:
    monkeypatch.setattr("feedhook.sources.poller.time.monotonic", lambda: now)
    for phase in (0.0, 0.5):
        wait = poller(phase)._until_next_poll()
        assert 0 < wait <= 1.0
        slot = now + wait - phase  # a whole number of intervals after the phase
        assert slot == pytest.approx(round(slot))


def test_two_sources_never_wake_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("feedhook.sources.poller.time.monotonic", lambda: 42.3)
    first, second = poller(0.0)._until_next_poll(), poller(0.5)._until_next_poll()
    assert abs(first - second) == pytest.approx(0.5)
