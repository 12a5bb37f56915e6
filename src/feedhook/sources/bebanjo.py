"""BeBanjo Sequence and Movida event feeds.

`GET <events>?newer_than=<id>&event_type=a,b` answers at most 50 events in ascending id
order, over HTTP Digest auth; XML by default, JSON (Sequence only) on request.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from xml.etree.ElementTree import Element, ParseError, tostring

import aiohttp
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from feedhook.config import MovidaConfig, SequenceConfig, redact_url
from feedhook.envelope import Envelope, check_utc
from feedhook.sources.base import (
    INVALID_UTF8,
    REPLACEMENT,
    FeedError,
    Page,
    build_envelope,
    has_replacement,
    load_json,
    unidentified_id,
    whole_number,
)
from feedhook.sources.http import HttpFeed, HttpStatusError
from feedhook.sources.subjects import Enricher

log = logging.getLogger("feedhook.source")

PAGE_SIZE = 50
ACCEPT = {"json": "application/json", "xml": "application/xml"}


# Not frozen, like the envelope: one is made per event.
@dataclass(slots=True)
class RawEvent:
    """An event as the feed described it, before normalization. What could not be read
    is None and said in `problems`."""

    id: int | None
    event_type: str | None
    timestamp: str | None
    changes: str | None
    links: dict[str, str]
    native: Any
    problems: tuple[str, ...] = ()
    native_raw: str | None = None  # the XML element's text, where `native` was built from it


# --- parsing -------------------------------------------------------------------------


def parse_json_feed(body: bytes, where: str) -> list[RawEvent]:
    document, replaced = load_json(body, where)
    entries = document.get("entries") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise FeedError(f"{where}: expected a JSON object with an 'entries' list")
    return [json_event(entry, replaced) for entry in entries]


def json_event(entry: Any, replaced: bool = False) -> RawEvent:
    if not isinstance(entry, dict):
        return RawEvent(None, None, None, None, {}, entry, ("the event is not a JSON object",))
    links = {
        key.removesuffix("_link"): value
        for key, value in entry.items()
        if key.endswith("_link") and isinstance(value, str) and value
    }
    changes = entry.get("changes")
    return _checked(
        entry.get("id"),
        entry.get("event_type"),
        entry.get("timestamp"),
        changes if isinstance(changes, str) else None,
        links,
        entry,
        (INVALID_UTF8,) if replaced and has_replacement(entry) else (),
    )


def _checked(
    raw_id: object,
    event_type: object,
    timestamp: object,
    changes: str | None,
    links: dict[str, str],
    native: Any,
    problems: tuple[str, ...],
    native_raw: str | None = None,
) -> RawEvent:
    """A RawEvent whose fields were checked: the ones that cannot be used are None, each
    with a problem that says what it was."""
    found = list(problems)
    event_id = whole_number(raw_id)
    if event_id is None:
        found.append(f"id is not a whole number: {raw_id!r}")
    if not isinstance(event_type, str) or not _EVENT_TYPE.fullmatch(event_type):
        found.append(f"event type is not <resource>_<operation>: {event_type!r}")
        event_type = None
    if not isinstance(timestamp, str):
        found.append(f"no timestamp: {timestamp!r}")
        timestamp = None
    return RawEvent(
        event_id, event_type, timestamp, changes, links, native, tuple(found), native_raw
    )


_EVENT_TYPE = re.compile(r"[a-z][a-z0-9_]*_[a-z0-9]+")


def parse_xml(body: bytes, where: str) -> tuple[Element, bool]:
    """Parse with defusedxml: a DTD or any entity declaration is refused outright.
    Bytes that are not UTF-8 become U+FFFD (and the second value says so)."""
    head = body[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        raise FeedError(
            f"{where}: answered HTML instead of XML (a login or error page?); "
            "check the url of this source",
            cause="html",
        )
    replaced = False
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        body = body.decode("utf-8", "replace").encode("utf-8")
        replaced = True
    try:
        root = fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise FeedError(
            f"{where}: refused an XML document with a DTD or entity declarations "
            f"({type(exc).__name__}); BeBanjo feeds never contain them, so this is "
            "an attack or a proxy answering instead of the API",
            cause="hostile_xml",
        ) from None
    except ParseError as exc:
        raise FeedError(
            f"{where}: the XML is invalid or truncated ({exc})", cause="invalid_xml"
        ) from None
    return root, replaced


def parse_xml_feed(body: bytes, where: str) -> list[RawEvent]:
    root, replaced = parse_xml(body, where)
    if root.tag != "events":
        raise FeedError(f"{where}: expected an <events> document, got <{root.tag}>")
    return [_xml_event(element, replaced) for element in root.findall("event")]


def xml_native(element: Element) -> dict[str, Any]:
    """An XML element as JSON: each child by its tag (`type="integer"` ones as numbers,
    ones with children as objects), links as `link: [{rel, href}, ...]`."""
    native: dict[str, Any] = {}
    for child in element:
        if child.tag == "link":
            rel, href = child.get("rel"), child.get("href")
            if rel and href:
                native.setdefault("link", []).append({"rel": rel, "href": href})
        elif len(child):
            native[child.tag] = xml_native(child)
        elif child.get("type") == "integer" and (child.text or "").strip().isdigit():
            native[child.tag] = int((child.text or "").strip())
        else:
            native[child.tag] = (child.text or "").strip()
    return native


def _xml_event(element: Element, replaced: bool) -> RawEvent:
    native = xml_native(element)
    links = {link["rel"]: link["href"] for link in native.get("link", [])}
    raw = tostring(element, encoding="unicode").strip()
    changes = native.get("changes")
    return _checked(
        native.get("id"),
        native.get("event-type"),
        native.get("timestamp"),
        changes if isinstance(changes, str) else None,
        links,
        native,
        (INVALID_UTF8,) if replaced and REPLACEMENT in raw else (),
        raw,
    )


def _moment(timestamp: str | None) -> tuple[datetime | None, str | None]:
    """The timestamp as an instant that has an RFC 3339 UTC form, or the problem."""
    if timestamp is None:
        return None, None
    try:
        moment = datetime.fromisoformat(timestamp)
        check_utc(moment)
    except ValueError:
        return None, f"unreadable timestamp {timestamp!r}"
    except OverflowError:
        return None, f"timestamp {timestamp!r} is out of range (no UTC year 1 to 9999)"
    return moment, None


def normalize(source_name: str, system: str, api_url: str, raw: RawEvent) -> Envelope:
    moment, time_problem = _moment(raw.timestamp)
    problems = [*raw.problems, *([time_problem] if time_problem else [])]
    resource = operation = None
    if raw.event_type is not None:
        resource, _, operation = raw.event_type.rpartition("_")
    upstream_id = str(raw.id) if raw.id is not None else unidentified_id(raw.native)
    changes = [c.strip() for c in (raw.changes or "").split(",") if c.strip()]
    return build_envelope(
        source_name=source_name,
        system=system,
        source_url=api_url,
        upstream_id=upstream_id,
        resource=resource,
        operation=operation,
        time=moment,
        subject=raw.links.get("subject"),
        fields={"event_id": upstream_id, "changes": changes, "links": raw.links},
        native=raw.native,
        problems=problems,
        native_raw=raw.native_raw,
    )


# --- the source ----------------------------------------------------------------------


class BebanjoFeed(HttpFeed):
    """One Sequence or Movida account's event feed."""

    config: SequenceConfig | MovidaConfig
    credential_keys = "username and password"

    def __init__(self, name: str, config: SequenceConfig | MovidaConfig) -> None:
        super().__init__(name, config)
        self.system = config.kind
        self.api_url = config.url.rstrip("/")
        self._events_url = config.events_url
        if config.enrich is not None:
            self.enricher = Enricher(name, config.enrich, self, self.api_url)

    def middlewares(self) -> tuple[aiohttp.ClientMiddlewareType, ...]:
        # One Digest middleware per upstream origin, as aiohttp scopes its credentials.
        config = self.config
        return (aiohttp.DigestAuthMiddleware(config.username, config.password.get_secret_value()),)

    # --- feed access -----------------------------------------------------------------

    async def events_url(self) -> str:
        """The feed's address, from config or discovered once from the API root."""
        if self._events_url is None:
            response = await self.client.get(self.api_url, accept=ACCEPT[self.config.format])
            where = redact_url(self.api_url)
            if self.config.format == "json":
                root_document, _ = load_json(response.body, where)
                link = root_document.get("events_link") if isinstance(root_document, dict) else None
            else:
                root, _ = parse_xml(response.body, where)
                link = next(
                    (el.get("href") for el in root.iter("link") if el.get("rel") == "events"),
                    None,
                )
            if not link:
                raise FeedError(
                    f"{where}: the API root has no events link; set events_url for "
                    f"source {self.name}"
                )
            self._events_url = str(link)
            log.info("%s: events feed at %s", self.name, redact_url(self._events_url))
        return self._events_url

    async def read_page(self, newer_than: int | None) -> list[RawEvent]:
        url = await self.events_url()
        params: dict[str, str] = {}
        if newer_than is not None:
            params["newer_than"] = str(newer_than)
        if self.config.event_types:
            params["event_type"] = ",".join(self.config.event_types)
        response = await self.client.get(url, params, accept=ACCEPT[self.config.format])
        where = redact_url(response.url)
        if self.config.format == "json":
            if "html" in response.content_type:
                raise FeedError(
                    f"{where}: answered HTML instead of JSON (a login or error page?); "
                    "check the url of this source",
                    cause="html",
                )
            events = parse_json_feed(response.body, where)
        else:
            events = parse_xml_feed(response.body, where)
        # Ascending by id, as the feed promises; events without a readable id last.
        return sorted(events, key=lambda e: (e.id is None, e.id or 0))

    async def fetch(self, cursor: str) -> Page:
        last = int(cursor)
        raw = await self.read_page(last)
        fresh = [e for e in raw if e.id is None or e.id > last]
        if len(raw) >= PAGE_SIZE and not any(e.id is not None for e in fresh):
            raise FeedError(
                f"{redact_url(await self.events_url())}: a full page with no event newer than "
                f"{last}: the feed ignored newer_than; check events_url for source {self.name}"
            )
        envelopes = [normalize(self.name, self.system, self.api_url, e) for e in fresh]
        newest = max((e.id for e in fresh if e.id is not None), default=None)
        return Page(
            events=[(e.upstream_id, e) for e in envelopes],
            cursor=str(newest) if newest is not None else cursor,
            more=len(raw) >= PAGE_SIZE,
        )

    # --- subjects --------------------------------------------------------------------

    async def read_subject(self, url: str, deleted_first: bool = False) -> tuple[Any, bool] | None:
        """The resource an event is about, as served (JSON read exactly, XML as JSON by
        the rules of `data.native`). A deleted one answers 404 unless asked with
        `?deleted`, as the Job page says: asked that way when the plain request answers
        404, or first when the event itself is a deletion (saving a request)."""
        flagged = f"{url}{'&' if '?' in url else '?'}deleted"
        tries = (
            [(flagged, True), (url, False)] if deleted_first else [(url, False), (flagged, True)]
        )
        for address, deleted in tries:
            try:
                return await self._read_resource(address), deleted
            except HttpStatusError as exc:
                if exc.status != 404:
                    raise
        return None

    async def _read_resource(self, url: str) -> Any:
        response = await self.client.get(url, accept=ACCEPT[self.config.format])
        where = redact_url(response.url)
        if self.config.format == "json" and "html" not in response.content_type:
            document, _ = load_json(response.body, where)
            return document
        root, _ = parse_xml(response.body, where)
        return xml_native(root)

    # --- where to start --------------------------------------------------------------

    async def initial_cursor(self) -> str:
        start = self.config.start
        if start == "earliest":
            return "0"
        if start != "latest":
            return start
        if self.system == "movida":
            # Without newer_than, Movida answers its last 50 events.
            page = [e.id for e in await self.read_page(None) if e.id is not None]
            return str(page[-1]) if page else "0"
        return str(await self.newest_id())

    async def _probe(self, newer_than: int) -> tuple[bool, int | None]:
        """Whether the page after `newer_than` is full, and its last readable id."""
        page = await self.read_page(newer_than)
        ids = [e.id for e in page if e.id is not None]
        return len(page) >= PAGE_SIZE, ids[-1] if ids else None

    async def newest_id(self) -> int:
        """Sequence has no "last page" request: find the newest id by probing newer_than.

        A full page at x proves an event above x (its last id); an empty page at x
        proves none; a short page ends the search. Exponential probes then bisection:
        about 2·log2(newest id) requests, never a walk through the feed.
        """
        full, last = await self._probe(0)
        if not full:
            return last or 0
        if last is None:
            raise FeedError(f"{self.name}: a full page of events without readable ids")
        low, step, high = last, max(last, 1024), None
        requests = 1
        while high is None:
            probe = low + step
            full, last = await self._probe(probe)
            requests += 1
            if last is None:
                high = probe
            elif not full:
                return last
            else:
                low, step = last, step * 2
        while low < high:
            middle = (low + high) // 2
            full, last = await self._probe(middle)
            requests += 1
            if last is None:
                high = middle
            elif not full:
                return last
            else:
                low = last
        log.info("%s: newest event is %d (found in %d requests)", self.name, low, requests)
        return low
