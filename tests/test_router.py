"""Routing: type globs, optional sources, optional JMESPath filter."""

from __future__ import annotations

from datetime import UTC, datetime

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
