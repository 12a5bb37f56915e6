"""Injected feed faults, end to end: no crash, no skipped event, a clear log, recovery."""

from __future__ import annotations

import logging
import resource
from pathlib import Path

import pytest

from feedhook.sim import Fault, Receiver, SimFeed

from conftest import eventually, running, source, subscription

CASES = [
    (Fault.ERROR_500, "json", "HTTP 500"),
    (Fault.RATE_LIMITED, "json", "answered 429 (rate limited); waiting"),
    (Fault.HTML, "xml", "answered HTML instead of XML"),
    (Fault.TRUNCATED, "json", "JSON is invalid or truncated"),
    (Fault.TRUNCATED, "xml", "XML is invalid or truncated"),
    (Fault.BILLION_LAUGHS, "xml", "refused an XML document with a DTD"),
    (Fault.EXTERNAL_ENTITY, "xml", "refused an XML document with a DTD"),
    (Fault.SLOW, "json", "no complete answer within 0.5s"),
    (Fault.UNAUTHORIZED, "json", "HTTP 401"),
]


@pytest.mark.parametrize(("fault", "fmt", "message"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
async def test_fault_loses_nothing(
    tmp_path: Path,
    sequence_feed: SimFeed,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
    fault: Fault,
    fmt: str,
    message: str,
) -> None:
    """The feed fails mid-stream three times; every event still arrives exactly once,
    a log line names the source, the URL and the cause, and other sources go on."""
    caplog.set_level(logging.INFO)
    sequence_feed.slow_seconds = 1.5
    healthy = SimFeed("movida")
    await healthy.start()
    try:
        sequence_feed.add_events(60)
        healthy.add_events(20)
        raw = {
            "sources": {
                "seq": source(sequence_feed, format=fmt, timeout="500ms"),
                "other": source(healthy),
            },
            "subscriptions": {"all": subscription(receiver, "all")},
        }
        async with running(raw, tmp_path / "f.db") as worker:
            await eventually(lambda: len(receiver.ok()) == 80, what="first batch")
            sequence_feed.inject(fault, times=3)
            sequence_feed.add_events(60)
            healthy.add_events(20)
            # the healthy source is not held up while the other one fails
            await eventually(
                lambda: sum(r.webhook_id.startswith("other:") for r in receiver.ok()) == 40,
                what="the healthy source",
            )
            await eventually(lambda: sequence_feed.pending_faults == 0, what="faults served")
            await eventually(lambda: len(receiver.ok()) == 160, what="recovery")
            status = await worker.store.status()
        ids = sorted(r.webhook_id for r in receiver.ok())
        assert ids == sorted(
            [f"seq:{n}" for n in range(1, 121)] + [f"other:{n}" for n in range(1, 41)]
        )
        lines = [r.getMessage() for r in caplog.records if r.name == "feedhook.source"]
        assert any(
            message in line and line.startswith("seq: ") and sequence_feed.api_url in line
            for line in lines
        ), lines
        assert not any("secret" in line for line in lines)  # the password never shows
        assert status.sources["seq"].cursor == "120"
        if fault is not Fault.RATE_LIMITED:  # a 429 is waited out, not an error
            assert status.sources["seq"].last_error is None  # cleared by the recovery
    finally:
        await healthy.stop()


async def test_xml_bombs_do_not_blow_up_memory(
    tmp_path: Path, movida_feed: SimFeed, receiver: Receiver
) -> None:
    """Hundreds of billion-laughs answers are refused before any entity expands."""
    movida_feed.add_events(5)
    raw = {
        "sources": {"mov": source(movida_feed, max_backoff="10ms")},
        "subscriptions": {"all": subscription(receiver, "all")},
    }
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    async with running(raw, tmp_path / "f.db"):
        await eventually(lambda: len(receiver.ok()) == 5, what="first events")
        movida_feed.inject(Fault.BILLION_LAUGHS, times=100)
        movida_feed.inject(Fault.EXTERNAL_ENTITY, times=100)
        movida_feed.add_events(5)
        await eventually(lambda: len(receiver.ok()) == 10, timeout=30, what="recovery")
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 50_000, f"peak RSS grew by {grown_kb} KB"
    assert movida_feed.faults_served.count(Fault.BILLION_LAUGHS) == 100
