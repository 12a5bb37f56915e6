"""Routing: type globs, optional sources, optional JMESPath filter."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from feedhook.config import SubscriptionConfig
from feedhook.envelope import make_envelope
from feedhook.router import Router


def env(type_: str, source: str = "seq", changes: list[str] | None = None):  # type: ignore[no-untyped-def]
    return make_envelope(
        source_name=source,
        upstream_id="1",
        source="https://x/api",
        type=type_,
        time=datetime.now(UTC),
        data={"changes": changes or [], "count": 0},
    )


def sub(**kw: object) -> SubscriptionConfig:
    return SubscriptionConfig.model_validate({"url": "https://r.example/h", **kw})


def test_globs_sources_and_filters() -> None:
    """Each subscription receives exactly what its three conditions allow."""
    router = Router(
        {
            "jobs": sub(types=["sequence.job.*"]),
            "titles": sub(types=["movida.title.*", "movida.title_metadata.*"]),
            "prod-only": sub(types=["*"], sources=["seq-prod"]),
            "status": sub(types=["sequence.*"], filter="contains(data.changes, 'status')"),
            "zero": sub(types=["*"], filter="data.count"),
        }
    )
    assert router.match(env("sequence.job.created")) == ["jobs", "zero"]
    assert router.match(env("movida.title_metadata.updated")) == ["titles", "zero"]
    assert router.match(env("movida.titles.updated")) == ["zero"]
    assert "prod-only" in router.match(env("anything.at.all", source="seq-prod"))
    assert "status" in router.match(env("sequence.asset.updated", changes=["status"]))
    assert "status" not in router.match(env("sequence.asset.updated", changes=["name"]))


def test_globs_are_case_sensitive() -> None:
    """Types are lowercase by contract; a glob does not match another case."""
    router = Router({"a": sub(types=["sequence.JOB.*"])})
    assert router.match(env("sequence.job.created")) == []


def test_a_failing_filter_is_no_match_for_that_subscription_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`contains(data.changes, 'name')` on an event without `changes` raises inside
    JMESPath: that subscription does not match, the others do, the failure is counted
    and logged once per (subscription, error kind) a minute with the envelope id."""
    router = Router(
        {
            "names": sub(types=["*"], filter="contains(data.changes, 'name')"),
            "all": sub(types=["*"]),
        }
    )
    teamhub_like = make_envelope(
        source_name="th",
        upstream_id="abc",
        source="https://x/api",
        type="teamhub.push.created",
        time=datetime.now(UTC),
        data={"progress": 100},
    )
    with caplog.at_level(logging.WARNING, logger="feedhook.router"):
        for _ in range(50):
            assert router.match(teamhub_like) == ["all"]
        assert router.match(env("sequence.job.updated", changes=["name"])) == ["names", "all"]
    assert router.take_filter_errors() == {"names": 50}
    assert router.take_filter_errors() == {}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "names" in lines[0] and "th:abc" in lines[0], lines
    assert "no match" in lines[0]


def test_types_and_sources_are_decided_once_per_source_and_type(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Globs are matched once per (source, type), not once per event; filters still run
    on every event, and only where a subscription has one; a feed inventing types
    cannot grow what is remembered without bound."""
    router = Router(
        {
            **{
                f"s{i}": sub(types=["sequence.*"] if i % 10 == 0 else ["movida.*"])
                for i in range(100)
            },
            "named": sub(types=["sequence.*"], filter="contains(data.changes, 'name')"),
        }
    )
    looked = 0
    wants = type(router.routes[0]).wants

    def counting(route: object, source: str, type_: str) -> bool:
        nonlocal looked
        looked += 1
        return wants(route, source, type_)  # type: ignore[arg-type]

    monkeypatch.setattr(type(router.routes[0]), "wants", counting)
    for n in range(50):
        changed = ["name"] if n % 2 else []
        got = router.match(env("sequence.job.updated", changes=changed))
        assert len(got) == 10 + (1 if n % 2 else 0)
    assert looked == len(router.routes)  # one plan, for the first event
    monkeypatch.setattr("feedhook.router.MAX_PLANS", 5)
    for n in range(20):
        router.match(env(f"sequence.x{n}.updated"))
    assert len(router._plans) <= 5
