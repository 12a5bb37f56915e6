"""The one envelope every event becomes: CloudEvents 1.0, JSON, structured mode."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import MAXYEAR, MINYEAR, datetime
from typing import Any

import orjson


# Not frozen: one is made per event, and a frozen dataclass sets each field through
# object.__setattr__ (0.62 us for eight fields, against 0.12). Nothing changes one once
# made: `with_data` makes another.
@dataclass(slots=True)
class Envelope:
    """A normalized event. `id` is `<source name>:<upstream id>`, stable forever."""

    id: str
    source: str
    type: str
    time: str | None  # None only for a malformed event whose time could not be read
    feedhooksource: str
    data: dict[str, Any]
    subject: str | None = None
    # The canonical bytes are what is stored, signed and sent: computed once.
    body: bytes = field(default=b"", compare=False, repr=False)

    @property
    def upstream_id(self) -> str:
        """The upstream's id for the event."""
        return split_id(self.id)[1]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "specversion": "1.0",
            "id": self.id,
            "source": self.source,
            "type": self.type,
        }
        if self.subject is not None:
            out["subject"] = self.subject
        if self.time is not None:  # optional in CloudEvents
            out["time"] = self.time
        out["datacontenttype"] = "application/json"
        out["feedhooksource"] = self.feedhooksource
        out["data"] = self.data
        return out


def split_id(envelope_id: str) -> tuple[str, str]:
    """An envelope id's source name and upstream id: it is "<source>:<upstream id>", and
    source names never hold a colon (an id without one names no event)."""
    source, _, upstream_id = envelope_id.partition(":")
    return source, upstream_id


def make_envelope(
    *,
    source_name: str,
    upstream_id: str,
    source: str,
    type: str,
    time: datetime | None,
    data: dict[str, Any],
    subject: str | None = None,
) -> Envelope:
    """Build an envelope and its canonical JSON bytes."""
    envelope = Envelope(
        id=f"{source_name}:{upstream_id}",
        source=source,
        type=type,
        time=None if time is None else rfc3339_utc(time),
        feedhooksource=source_name,
        data=data,
        subject=subject,
    )
    envelope.body = encode(envelope.to_dict())
    return envelope


def with_data(envelope: Envelope, data: dict[str, Any]) -> Envelope:
    """The same envelope with other data (an enriched one), its bytes made anew."""
    changed = dataclasses.replace(envelope, data=data)
    changed.body = encode(changed.to_dict())
    return changed


def sequenced(body: bytes, number: int) -> bytes:
    """An envelope's bytes with the CloudEvents `sequence` extension: its number in its
    source, zero-padded so that the strings sort as the numbers do. Added last (the
    object's closing brace replaced), by the store, which alone knows the number."""
    return b'%s,"sequence":"%020d"}' % (body[:-1], number)


def encode(document: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON: the exact bytes receivers verify signatures against.

    orjson writes the same bytes as json.dumps(separators=(",", ":"), ensure_ascii=False),
    ten times faster; the standard library takes what orjson refuses (integers beyond
    64 bits in an upstream's native event). orjson's bytes keep the 4 KB buffer they were
    written into: copied to their own length, the envelopes waiting in the ingest process
    (pages read ahead, a batch being written) hold a tenth as much, and that process
    peaked at 61-63 MB instead of 72 on a 400,000-event backlog (BENCHMARKS.md)."""
    try:
        return bytes(memoryview(orjson.dumps(document)))
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def rfc3339_utc(moment: datetime) -> str:
    """RFC 3339 in UTC with a Z; fractions only when the upstream had them. A naive
    instant is taken as UTC. Raises OverflowError for an instant that has no UTC year
    between 1 and 9999."""
    offset = moment.utcoffset()
    if offset is None:
        text = moment.isoformat()
    else:
        if offset:
            moment -= offset  # the same instant on UTC's clock, still with its own offset
        text = moment.isoformat()[:-6]  # without that offset ("+05:30")
    if moment.microsecond:
        text = text.rstrip("0")
    return text + "Z"


def check_utc(moment: datetime) -> None:
    """Raises OverflowError, as rfc3339_utc would, for an instant that has no UTC year
    between 1 and 9999. A UTC offset moves an instant by less than a day, so only one in
    the first or the last year can leave the calendar: every other passes at no cost."""
    if moment.year in (MINYEAR, MAXYEAR):
        rfc3339_utc(moment)
