"""The vendor pages' own example events become the envelopes DESIGN.md promises."""

from __future__ import annotations

import json
import tracemalloc
from datetime import datetime

import pytest

from feedhook.envelope import check_utc, rfc3339_utc
from feedhook.sources.bebanjo import normalize, parse_json_feed, parse_xml_feed

from conftest import FIXTURES

SEQ = "https://sequence.bebanjo.net/api"


def envelopes(raw_events: list, system: str, name: str, api: str) -> list[dict]:
    return [normalize(name, system, api, e).to_dict() for e in raw_events]


def test_sequence_json_example() -> None:
    """Sequence JSON: UTC time, changes as a list, links, and the native entry kept."""
    body = (FIXTURES / "sequence-events.json").read_bytes()
    out = envelopes(parse_json_feed(body, "seed"), "sequence", "sequence-prod", SEQ)
    assert [e["id"] for e in out] == [
        "sequence-prod:40393",
        "sequence-prod:40397",
        "sequence-prod:40401",
    ]
    assert out[1] == {
        "specversion": "1.0",
        "id": "sequence-prod:40397",
        "source": SEQ,
        "type": "sequence.asset.updated",
        "subject": f"{SEQ}/work_areas/85/jobs/97185/assets/467237",
        "time": "2014-07-27T18:04:10Z",
        "datacontenttype": "application/json",
        "feedhooksource": "sequence-prod",
        "data": {
            "system": "sequence",
            "resource_type": "asset",
            "operation": "updated",
            "event_id": "40397",
            "changes": ["status", "name"],
            "links": {
                "self": f"{SEQ}/events/40397",
                "subject": f"{SEQ}/work_areas/85/jobs/97185/assets/467237",
            },
            "native": json.loads(body)["entries"][1],
        },
    }
    assert out[0]["type"] == "sequence.job.created" and out[0]["data"]["changes"] == []
    assert out[2]["type"] == "sequence.task.deleted"
    assert out[2]["time"] == "2012-12-04T14:46:55Z"


def test_sequence_xml_example() -> None:
    """Sequence XML: the same envelope shape; native mirrors the XML element."""
    body = (FIXTURES / "sequence-events.xml").read_bytes()
    out = envelopes(parse_xml_feed(body, "seed"), "sequence", "sequence-prod", SEQ)
    assert [e["type"] for e in out] == [
        "sequence.job.created",
        "sequence.asset.updated",
        "sequence.task.deleted",
    ]
    second = out[1]
    assert second["time"] == "2012-12-03T09:35:39Z"
    assert second["data"]["changes"] == ["status", "name"]
    assert second["subject"] == f"{SEQ}/work_areas/85/jobs/97185/assets/467237"
    assert second["data"]["native"]["id"] == 40397
    assert second["data"]["native"]["event-type"] == "asset_updated"
    assert {"rel": "self", "href": f"{SEQ}/events/40397"} in second["data"]["native"]["link"]


def test_movida_xml_example() -> None:
    """Movida: the operation is the last `_` word, so title_metadata stays one resource."""
    api = "https://movida.bebanjo.net/api"
    body = (FIXTURES / "movida-events.xml").read_bytes()
    out = envelopes(parse_xml_feed(body, "seed"), "movida", "movida-prod", api)
    assert [(e["id"], e["type"]) for e in out] == [
        ("movida-prod:10", "movida.title.updated"),
        ("movida-prod:12", "movida.title_metadata.updated"),
    ]
    assert out[0]["time"] == "2013-08-14T15:09:35Z"
    assert out[1]["data"]["resource_type"] == "title_metadata"
    assert out[1]["data"]["changes"] == ["actor", "director", "first-tx-starts"]
    assert out[1]["subject"] == f"{api}/titles/59977"


def test_body_is_the_canonical_json_of_the_envelope() -> None:
    """What is stored, signed and sent is exactly the envelope's compact JSON."""
    body = (FIXTURES / "sequence-events.json").read_bytes()
    raw = parse_json_feed(body, "seed")[0]
    envelope = normalize("s", "sequence", SEQ, raw)
    assert json.loads(envelope.body) == envelope.to_dict()
    assert b" " not in envelope.body.replace(b"Z", b"")[:60]


def test_a_body_takes_no_more_memory_than_its_bytes() -> None:
    """Envelopes wait in the ingest process by the hundred (pages read ahead, batches):
    each body must hold its own length, not the 4 KB buffer its JSON was written into."""
    raw = parse_json_feed((FIXTURES / "sequence-events.json").read_bytes(), "seed")[0]
    tracemalloc.start()
    try:
        envelope = normalize("s", "sequence", SEQ, raw)
        held = tracemalloc.get_object_traceback(envelope.body)
        size = sum(
            stat.size
            for stat in tracemalloc.take_snapshot().statistics("traceback")
            if held is not None and stat.traceback == held
        )
    finally:
        tracemalloc.stop()
    assert held is not None
    assert size < len(envelope.body) + 512, (size, len(envelope.body))


@pytest.mark.parametrize(
    ("upstream", "time"),
    [
        ("2026-03-01T10:00:00Z", "2026-03-01T10:00:00Z"),
        ("2026-03-01T10:00:00+00:00", "2026-03-01T10:00:00Z"),
        ("2026-03-01T10:00:00", "2026-03-01T10:00:00Z"),  # no offset: taken as UTC
        ("2026-03-01T00:30:00.250000+05:30", "2026-02-28T19:00:00.25Z"),
        ("2026-12-31T23:00:00-02:00", "2027-01-01T01:00:00Z"),
        ("0001-01-01T00:00:00", "0001-01-01T00:00:00Z"),
        ("9999-12-31T23:59:59.999999Z", "9999-12-31T23:59:59.999999Z"),
    ],
)
def test_times_are_rfc3339_in_utc(upstream: str, time: str) -> None:
    moment = datetime.fromisoformat(upstream)
    check_utc(moment)
    assert rfc3339_utc(moment) == time


@pytest.mark.parametrize("upstream", ["0001-01-01T00:30:00+01:00", "9999-12-31T23:30:00-01:00"])
def test_an_instant_with_no_utc_year_is_refused(upstream: str) -> None:
    """Only in the first and the last year can an offset leave the calendar; there both
    the check and the formatting say so."""
    moment = datetime.fromisoformat(upstream)
    with pytest.raises(OverflowError):
        check_utc(moment)
    with pytest.raises(OverflowError):
        rfc3339_utc(moment)
