"""What every source kind provides, the errors a feed can raise, and what every feed
does with the bytes it reads: JSON read exactly, and events that cannot be read in full
delivered as well as they can be, marked, never dropped and never holding up the rest."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from feedhook.envelope import Envelope, make_envelope

if TYPE_CHECKING:
    from feedhook.sources.subjects import Enricher

log = logging.getLogger("feedhook.source")


class FeedError(Exception):
    """A page could not be read or understood. The poller retries it with backoff;
    the message names the source, the URL (never credentials) and the cause.
    `cause` is a short label for metrics (timeout, connect, http_503, invalid_json, ...)."""

    def __init__(self, message: str, cause: str = "invalid_data") -> None:
        super().__init__(message)
        self.cause = cause


@dataclass(frozen=True, slots=True)
class Page:
    """Normalized events in feed order, the cursor after them, and whether to fetch again now."""

    events: Sequence[tuple[str, Envelope]]
    cursor: str
    more: bool


class Source(Protocol):
    """A configured upstream's feed client. `fetch` means the same for every kind: one
    list request to the upstream (one page of events), so the poller's
    read-ahead, back-pressure and memory bound hold for all of them. A poll that needs
    several requests (a TeamHub walk, a Modulo round over event codes) keeps its place in
    the cursor and answers `more=True` until it is done."""

    name: str
    poll_interval: float
    max_backoff: float
    enricher: Enricher | None  # fetches events' subjects, when the source enriches

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    async def initial_cursor(self) -> str:
        """Where to begin when no cursor is stored (from the `start` setting)."""
        ...

    async def fetch(self, cursor: str) -> Page:
        """The next page after `cursor` (possibly empty while a walk is under way).
        Raises FeedError."""
        ...


# A run of 20 digits may be an integer beyond 64 bits, which orjson reads as a float.
# Found by mapping every digit to "0" and everything else to " ", then one substring
# search: a dozen times faster than the regular expression \d{20} on a feed page.
_DIGITS_AS_ZEROS = bytes(ord("0") if chr(b).isdigit() and b < 128 else ord(" ") for b in range(256))
_LONG_DIGITS = b"0" * 20
REPLACEMENT = "\ufffd"


def load_json(body: bytes, where: str) -> tuple[Any, bool]:
    """A JSON document read exactly, and whether invalid UTF-8 had to be replaced.

    orjson first (fast); integers beyond 64 bits are read again by the standard library,
    which keeps them exact. Bytes that are not UTF-8 become U+FFFD, so one bad character
    costs its events a mark (see `problems_of`), never the whole page."""
    try:
        text: bytes | str = body
        document = orjson.loads(body)
        replaced = False
    except orjson.JSONDecodeError as exc:
        if "UTF-8" not in str(exc):
            raise FeedError(
                f"{where}: the JSON is invalid or truncated ({exc})", cause="invalid_json"
            ) from None
        text = body.decode("utf-8", "replace")
        replaced = True
        try:
            document = orjson.loads(text)
        except orjson.JSONDecodeError as again:
            raise FeedError(
                f"{where}: the JSON is invalid or truncated ({again})", cause="invalid_json"
            ) from None
    if _LONG_DIGITS in body.translate(_DIGITS_AS_ZEROS):
        document = json.loads(text)
    return document, replaced


def whole_number(value: object) -> int | None:
    """An id that must be a whole number: an int (not a bool) or a string of digits."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def text_id(value: object) -> str | None:
    """An id that is a string (or a whole number written as one); None otherwise."""
    if isinstance(value, str) and value:
        return value
    number = whole_number(value)
    return None if number is None else str(number)


def unidentified_id(native: object) -> str:
    """A stable id for an event whose own id cannot be read: the same bytes read again
    give the same id, so the store still keeps it once."""
    digest = hashlib.sha256(orjson.dumps(native, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"unidentified-{digest[:16]}"


def has_replacement(native: object) -> bool:
    """Whether invalid UTF-8 was replaced somewhere in this event."""
    if isinstance(native, str):
        return REPLACEMENT in native
    if isinstance(native, dict):
        return any(has_replacement(k) or has_replacement(v) for k, v in native.items())
    if isinstance(native, list):
        return any(has_replacement(v) for v in native)
    return False


INVALID_UTF8 = "invalid UTF-8 in the upstream bytes (replaced with U+FFFD)"


def build_envelope(
    *,
    source_name: str,
    system: str,
    source_url: str,
    upstream_id: str,
    resource: str | None,
    operation: str | None,
    time: datetime | None,
    subject: str | None,
    fields: dict[str, Any],
    native: object,
    problems: Sequence[str] = (),
    native_raw: str | None = None,
) -> Envelope:
    """The envelope every source kind makes of an event: type from system, resource and
    operation, `data` as system, resource_type, operation, the kind's own fields, then
    `native`. With `problems` (an event that could not be read in full), what could not
    be read is None, `data.malformed` lists what was wrong and `data.native_raw` keeps
    the text as received where `native` had to be built from it; it is logged, and the
    poller counts it."""
    data: dict[str, Any] = {
        "system": system,
        "resource_type": resource,
        "operation": operation,
        **fields,
        "native": native,
    }
    if problems:
        log.warning(
            "%s: event %s is malformed (%s); delivering it as read, marked data.malformed",
            source_name,
            upstream_id,
            "; ".join(problems),
            extra={"source": source_name, "envelope_id": f"{source_name}:{upstream_id}"},
        )
        data["malformed"] = list(problems)
        if native_raw is not None:
            data["native_raw"] = native_raw
    return make_envelope(
        source_name=source_name,
        upstream_id=upstream_id,
        source=source_url,
        type=f"{system}.{resource or 'unknown'}.{operation or 'unknown'}",
        time=time,
        subject=subject,
        data=data,
    )
