"""Catch-up progress lines: quiet while a source keeps up, a line every interval while
it catches up (rate, lag, time to go), one line when it has caught up."""

from __future__ import annotations

import logging

import pytest

from feedhook.sources import progress
from feedhook.sources.progress import CatchUp


def test_a_catch_up_says_how_it_goes_and_when_it_is_done(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    caplog.set_level(logging.INFO, "feedhook.source")
    follow = CatchUp("seq")
    follow.batch(3, newest=5_000.0, more=False, now=5_001.0)  # keeping up: nothing
    assert caplog.messages == []
    now = 100_000.0  # the feed's events are a day behind
    for step in range(1, 13):  # 12 s of batches, the feed time advancing 1,000 s a second
        clock[0] += 1.0
        follow.batch(500, newest=now - 86_400 + step * 1_000, more=True, now=now)
    (line,) = caplog.messages
    assert line.startswith("seq: catching up: 5500 events, 550/s, 20.9h behind")
    assert line.endswith("about 75s to go")  # 20.9 h at 1,000 feed-seconds a second
    clock[0] += 1.0
    follow.batch(200, newest=now, more=False, now=now)
    assert caplog.messages[-1] == "seq: caught up: 6200 events in 12s (517/s)"


def test_a_scan_of_a_few_pages_is_not_a_catch_up(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TeamHub reads a few pages newest first on every poll: more, then drained, each
    time. That is keeping up, and says nothing (it once said "caught up" five times a
    second); a short burst of many events still says it caught up."""
    clock = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    caplog.set_level(logging.INFO, "feedhook.source")
    follow = CatchUp("hub")
    for _ in range(20):
        clock[0] += 0.2
        follow.batch(0, newest=5_000.0, more=True, now=5_001.0)
        follow.batch(1, newest=5_000.0, more=False, now=5_001.0)
    assert caplog.messages == []
    follow.batch(3_000, newest=5_000.0, more=True, now=5_001.0)
    clock[0] += 2.0
    follow.batch(3_000, newest=5_000.0, more=False, now=5_001.0)
    assert caplog.messages == ["hub: caught up: 6000 events in 2s (3000/s)"]
