"""A source's health: every change it goes through, and what each audience may see."""

from __future__ import annotations

from feedhook.health import SourceHealth


def test_failures_keep_their_first_moment_and_a_success_clears_them() -> None:
    health = SourceHealth("seq", poll_interval=10.0)
    assert health.state(0.0) == "starting"
    health.failed(100.0, "timeout", "GET https://x/api: timed out")
    health.failed(90.0, "ingest_process_died", "the ingest process exited with code 1")
    assert health.failing_since == 90.0 and health.cause == "ingest_process_died"
    assert health.state(100.0) == "retrying" and health.state(121.0) == "failing"
    assert health.succeeded(130.0, newest_event_at=125.0) is True
    assert health.state(130.0) == "ok" and health.cause is None and health.last_error is None
    assert health.succeeded(140.0, newest_event_at=None) is False
    assert health.newest_event_at == 125.0  # a poll with no dated event keeps the last


def test_readiness_shows_the_cause_never_the_upstreams_words() -> None:
    health = SourceHealth("seq", poll_interval=10.0)
    health.failed(0.0, "http_401", "https://x/api answered 401: token abc rejected")
    public = health.to_json(1.0, detail=False)
    assert public["cause"] == "http_401" and "last_error" not in public
    assert "rejected" in health.to_json(1.0)["last_error"]
