"""Subjects: the resource an event is about, fetched once per batch, deleted ones
included, and what changed since it was last read; through the real poller and feed,
against the simulated Sequence and Movida."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import pytest

from feedhook.config import parse_config
from feedhook.envelope import make_envelope
from feedhook.sim import SimFeed
from feedhook.sources import BebanjoFeed
from feedhook.sources.poller import Poller
from feedhook.sources.subjects import attributes, diff
from feedhook.store import MemoryStore
from unit.sources.test_poller import Reports, router

from conftest import eventually, source


def enriched_source(feed: SimFeed, **enrich: Any) -> dict[str, Any]:
    return source(feed, enrich={"types": ["*"], **enrich})


async def ingest(
    feed: SimFeed, store: MemoryStore, raw: Mapping[str, Any], reports: Reports | None = None
) -> dict[str, dict[str, Any]]:
    """Poll `feed` with the real poller until every event it holds is stored; the stored
    envelopes' data by upstream id."""
    config = parse_config({"sources": {"seq": dict(raw)}}, "t", env={}).sources["seq"]
    reader = BebanjoFeed("seq", config)  # type: ignore[arg-type]
    await reader.open()
    poller = Poller(reader, store, lambda: router({"all": ["*"]}), reports or Reports())
    task = asyncio.create_task(poller.run())
    last = str(feed.events[-1].id)
    try:

        async def caught_up() -> bool:
            return await store.get_cursor("seq") == last

        await eventually(caught_up, timeout=20, what="every event")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await reader.close()
    stored = await store.stored_events(0, 10_000)
    return {e.envelope_id.partition(":")[2]: json.loads(e.body)["data"] for e in stored}


def served(feed: SimFeed, path: str, fmt: str) -> Any:
    """What the simulated API serves for a resource now, read as feedhook reads it."""
    resource = feed.resources[path]
    if fmt == "json":
        return resource.to_json(feed.api_url)
    from defusedxml.ElementTree import fromstring

    from feedhook.sources.bebanjo import xml_native

    return xml_native(fromstring(resource.to_xml(feed.api_url).encode()))


@pytest.mark.parametrize("fmt", ["json", "xml"])
async def test_job_events_carry_the_job_what_changed_and_the_deleted_job(
    sequence_feed: SimFeed, fmt: str
) -> None:
    """A job created, then updated (its status changes too, which `changes` never
    lists), then deleted: each event carries the job as Sequence serves it, the update
    the diff with `status`, the deletion the `?deleted` form."""
    store = MemoryStore()
    raw = enriched_source(sequence_feed, types=["job_*"]) | {"format": fmt}
    (created,) = sequence_feed.add_events(1, types=["job_created"], subjects=1)
    path = created.subject
    first = await ingest(sequence_feed, store, raw)
    assert first["1"]["resource"] == served(sequence_feed, path, fmt)
    assert "diff" not in first["1"]  # the first sight of a subject
    assert first["1"]["resource_fetched_at"].endswith("Z")

    before = served(sequence_feed, path, fmt)
    (updated,) = sequence_feed.add_events(1, types=["job_updated"], subjects=1)
    assert updated.changes is not None and "status" not in updated.changes
    second = await ingest(sequence_feed, store, raw)
    data = second[str(updated.id)]
    assert data["resource"] == served(sequence_feed, path, fmt)
    assert data["diff"]["status"] == {"old": "pending", "new": "late"}
    assert data["diff"] == diff(before, data["resource"])
    assert set(data["diff"]) == set(data["changes"]) | {"status"}

    (deleted,) = sequence_feed.add_events(1, types=["job_deleted"], subjects=1)
    asked = len(sequence_feed.subject_requests)
    third = await ingest(sequence_feed, store, raw)
    data = third[str(deleted.id)]
    assert data["resource_deleted"] is True
    assert data["resource"] == served(sequence_feed, path, fmt)
    assert attributes(data["resource"])["self"].endswith(f"{path}?deleted")
    # A deletion's subject is asked for as deleted first: one request, not a 404 first.
    assert sequence_feed.subject_requests[asked:] == [f"/api{path}?deleted"]


async def test_movida_titles_come_as_xml_read_like_native(movida_feed: SimFeed) -> None:
    store = MemoryStore()
    movida_feed.add_events(3, types=["title_created", "title_updated"], subjects=1)
    data = await ingest(movida_feed, store, enriched_source(movida_feed, types=["title_*"]))
    resource = data["3"]["resource"]
    assert resource == served(movida_feed, movida_feed.events[0].subject, "xml")
    assert {link["rel"] for link in resource["link"]} == {"self", "schedulings", "images"}
    assert "diff" in data["2"] and data["2"]["diff"] == {}  # read once for the batch


async def test_fifty_events_about_five_subjects_cost_five_requests(
    sequence_feed: SimFeed,
) -> None:
    store = MemoryStore()
    sequence_feed.add_events(50, types=["job_updated"], subjects=5)
    data = await ingest(sequence_feed, store, enriched_source(sequence_feed))
    assert len(data) == 50 and all(d["resource"] is not None for d in data.values())
    assert len(sequence_feed.subject_requests) == 5


async def test_a_failing_subject_is_retried_and_a_dead_one_given_up_in_order(
    sequence_feed: SimFeed,
) -> None:
    """500 twice, then 200: enriched. One that never answers: after max_wait the event
    goes out with resource_error, and the events after it (other types too) wait for
    it, so the feed's order holds."""
    store = MemoryStore()
    flaky, hung = sequence_feed.add_events(2, types=["job_updated"])
    (other,) = sequence_feed.add_events(1, types=["asset_created"])
    sequence_feed.fail_subject(flaky.subject, 500, 500)
    sequence_feed.fail_subject(hung.subject, *["hang"] * 10)
    reports = Reports()
    raw = enriched_source(sequence_feed, types=["job_*"], max_wait="2500ms") | {"timeout": "300ms"}
    data = await ingest(sequence_feed, store, raw, reports)
    assert data[str(flaky.id)]["resource"] == served(sequence_feed, flaky.subject, "json")
    assert data[str(hung.id)]["resource"] is None
    assert "not read within max_wait (2.5s)" in data[str(hung.id)]["resource_error"]
    assert "resource" not in data[str(other.id)]  # not an enriched type
    assert list(data) == [str(flaky.id), str(hung.id), str(other.id)]  # in feed order
    (report,) = [r for r in reports.written if r.subjects]
    assert dict(report.subjects) == {"ok": 1, "gave_up": 1}
    assert report.enrich_wait is not None and report.enrich_wait >= 2.5


async def test_a_subject_on_another_host_is_not_fetched(sequence_feed: SimFeed) -> None:
    """A feed's subject link is followed only on the source's own API: credentials are
    never sent elsewhere."""
    config = parse_config({"sources": {"seq": enriched_source(sequence_feed)}}, "t", env={})
    reader = BebanjoFeed("seq", config.sources["seq"])  # type: ignore[arg-type]
    envelope = make_envelope(
        source_name="seq",
        upstream_id="1",
        source=sequence_feed.api_url,
        type="sequence.job.updated",
        time=None,
        data={},
        subject="https://attacker.example/api/work_areas/1/jobs/1",
    )
    assert reader.enricher is not None
    await reader.open()
    try:
        result = await reader.enricher.enrich([envelope], MemoryStore())
    finally:
        await reader.close()
    (out,) = result.envelopes
    assert out.data["resource"] is None and "not fetched" in out.data["resource_error"]
    assert result.outcomes == {"refused": 1} and sequence_feed.subject_requests == []
