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
