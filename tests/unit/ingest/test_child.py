"""The ingest process's reports up the pipe: a poll that found something at once; quiet
polls (most of an idle bridge's work) folded into one line every few seconds."""

from __future__ import annotations

import io

import orjson
import pytest

from feedhook.health import SourceHealth
from feedhook.ingest import PollReport, child
from feedhook.ingest.child import PipeObserver


def lines(out: io.BytesIO) -> list[dict]:
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


def quiet(drained_at: float) -> PollReport:
    return PollReport(pages=1, types={}, filter_errors={}, drained_at=drained_at)


def test_quiet_polls_are_folded_and_news_goes_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(child.time, "monotonic", lambda: now[0])
    out = io.BytesIO()
    pipe = PipeObserver(out)
    health = SourceHealth("seq", poll_interval=1.0)
    pipe.started(health)
    for second in range(1, 5):  # four quiet polls within the window: nothing yet
        now[0] = 100.0 + second
        pipe.ingested(health, quiet(drained_at=now[0]))
    assert len(lines(out)) == 1
    now[0] = 100.0 + child.QUIET_REPORT_EVERY + 0.1
    health.last_success_at = 1234.0
    pipe.ingested(health, quiet(drained_at=now[0]))
    folded = lines(out)[-1]
    assert folded["poll"]["pages"] == 5 and folded["poll"]["drained_at"] == now[0]
    assert folded["health"]["last_success_at"] == 1234.0  # the health as it is now
    # A quiet poll held back goes up before news, so the counts stay in order.
    now[0] += 1
    pipe.ingested(health, quiet(drained_at=now[0]))
    busy = PollReport(pages=1, types={"sequence.job.created": 2}, filter_errors={})
    pipe.ingested(health, busy)
    *_, held, news = lines(out)
    assert held["poll"]["pages"] == 1 and news["poll"]["types"] == {"sequence.job.created": 2}
    now[0] += 1
    pipe.ingested(health, quiet(drained_at=now[0]))
    pipe.failed(health, "timeout")
    *_, held, failure = lines(out)
    assert held["poll"]["pages"] == 1 and failure["cause"] == "timeout"


def test_a_fast_poller_reports_quiet_polls_a_few_intervals_apart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Polling every 100 ms, quiet polls go up every half second (not every five), so
    the main process knows soon that the feed is drained."""
    now = [0.0]
    monkeypatch.setattr(child.time, "monotonic", lambda: now[0])
    out = io.BytesIO()
    pipe = PipeObserver(out)
    health = SourceHealth("seq", poll_interval=0.1)
    for tick in range(1, 21):  # two seconds
        now[0] = tick * 0.1
        pipe.ingested(health, quiet(drained_at=now[0]))
    assert 3 <= len(lines(out)) <= 4
    assert sum(line["poll"]["pages"] for line in lines(out)) <= 20
