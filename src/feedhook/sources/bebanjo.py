"""BeBanjo Sequence and Movida event feeds.

`GET <events>?newer_than=<id>&event_type=a,b` answers at most 50 events in ascending id
order, over HTTP Digest auth; XML by default, JSON (Sequence only) on request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from xml.etree.ElementTree import Element, ParseError

import aiohttp
import orjson
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from feedhook.config import MovidaSource, SequenceSource, redact_url
from feedhook.envelope import Envelope, make_envelope
from feedhook.sources.base import FeedError, Page
from feedhook.sources.http import HttpFeed

log = logging.getLogger("feedhook.source")

PAGE_SIZE = 50
ACCEPT = {"json": "application/json", "xml": "application/xml"}


@dataclass(frozen=True, slots=True)
class RawEvent:
    """An event as the feed described it, before normalization."""

    id: int
    event_type: str
    timestamp: str
    changes: str | None
    links: dict[str, str]
    native: dict[str, Any]


# --- parsing -------------------------------------------------------------------------


def parse_json_feed(body: bytes, where: str) -> list[RawEvent]:
    try:
        document = orjson.loads(body)
    except (UnicodeDecodeError, orjson.JSONDecodeError) as exc:
        raise FeedError(
            f"{where}: the JSON is invalid or truncated ({exc})", cause="invalid_json"
        ) from None
    entries = document.get("entries") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise FeedError(f"{where}: expected a JSON object with an 'entries' list")
    return [json_event(entry, where) for entry in entries]


def json_event(entry: Any, where: str) -> RawEvent:
    try:
        links = {
            key.removesuffix("_link"): str(value)
            for key, value in entry.items()
            if key.endswith("_link") and value
        }
        changes = entry.get("changes")
        return RawEvent(
            id=int(entry["id"]),
            event_type=str(entry["event_type"]),
            timestamp=str(entry["timestamp"]),
            changes=None if changes is None else str(changes),
            links=links,
            native=entry,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise FeedError(f"{where}: malformed event {str(entry)[:200]}: {exc!r}") from None


def parse_xml(body: bytes, where: str) -> Element:
    """Parse with defusedxml: a DTD or any entity declaration is refused outright."""
    head = body[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        raise FeedError(
            f"{where}: answered HTML instead of XML (a login or error page?); "
            "check the url of this source",
            cause="html",
        )
    try:
        return fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
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


def parse_xml_feed(body: bytes, where: str) -> list[RawEvent]:
    root = parse_xml(body, where)
    if root.tag != "events":
        raise FeedError(f"{where}: expected an <events> document, got <{root.tag}>")
    return [_xml_event(element, where) for element in root.findall("event")]


def _xml_event(element: Element, where: str) -> RawEvent:
    native: dict[str, Any] = {}
    links: dict[str, str] = {}
    for child in element:
        if child.tag == "link":
            rel, href = child.get("rel"), child.get("href")
            if rel and href:
                links[rel] = href
                native.setdefault("link", []).append({"rel": rel, "href": href})
        elif child.get("type") == "integer" and (child.text or "").strip().isdigit():
            native[child.tag] = int((child.text or "").strip())
        else:
            native[child.tag] = (child.text or "").strip()
    try:
        return RawEvent(
            id=int(native["id"]),
            event_type=str(native["event-type"]),
            timestamp=str(native["timestamp"]),
            changes=native.get("changes"),
            links=links,
            native=native,
        )
    except (KeyError, ValueError) as exc:
        raise FeedError(f"{where}: malformed <event> (missing or bad {exc})") from None


def normalize(source_name: str, system: str, api_url: str, raw: RawEvent) -> Envelope:
    resource, _, operation = raw.event_type.rpartition("_")
    if not resource:
        raise FeedError(f"{source_name}: event {raw.id} has an unknown type {raw.event_type!r}")
    try:
        moment = datetime.fromisoformat(raw.timestamp)
    except ValueError:
        raise FeedError(
            f"{source_name}: event {raw.id} has an unreadable timestamp {raw.timestamp!r}"
        ) from None
    changes = [c.strip() for c in (raw.changes or "").split(",") if c.strip()]
    return make_envelope(
        source_name=source_name,
        upstream_id=str(raw.id),
        source=api_url,
        type=f"{system}.{resource}.{operation}",
        time=moment,
        subject=raw.links.get("subject"),
        data={
            "system": system,
            "resource_type": resource,
            "operation": operation,
            "event_id": str(raw.id),
            "changes": changes,
            "links": raw.links,
            "native": raw.native,
        },
    )


# --- the source ----------------------------------------------------------------------


class BebanjoFeed(HttpFeed):
    """One Sequence or Movida account's event feed."""

    config: SequenceSource | MovidaSource
    credential_keys = "username and password"

    def __init__(self, name: str, config: SequenceSource | MovidaSource) -> None:
        super().__init__(name, config)
        self.system = config.kind
        self.api_url = config.url.rstrip("/")
        self._events_url = config.events_url

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
                try:
                    link = orjson.loads(response.body).get("events_link")
                except (ValueError, AttributeError):
                    link = None
            else:
                root = parse_xml(response.body, where)
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
        return sorted(events, key=lambda e: e.id)

    async def fetch(self, cursor: str) -> Page:
        last = int(cursor)
        raw = await self.read_page(last)
        fresh = [e for e in raw if e.id > last]
        if len(raw) >= PAGE_SIZE and not fresh:
            raise FeedError(
                f"{redact_url(await self.events_url())}: a full page with no event newer than "
                f"{last}: the feed ignored newer_than; check events_url for source {self.name}"
            )
        events = [(str(e.id), normalize(self.name, self.system, self.api_url, e)) for e in fresh]
        return Page(
            events=events,
            cursor=str(fresh[-1].id) if fresh else cursor,
            more=len(raw) >= PAGE_SIZE,
        )

    # --- where to start --------------------------------------------------------------

    async def initial_cursor(self) -> str:
        start = self.config.start
        if start == "earliest":
            return "0"
        if start != "latest":
            return start
        if self.system == "movida":
            # Without newer_than, Movida answers its last 50 events.
            page = await self.read_page(None)
            return str(page[-1].id) if page else "0"
        return str(await self.newest_id())

    async def newest_id(self) -> int:
        """Sequence has no "last page" request: find the newest id by probing newer_than.

        A full page at x proves an event above x (its last id); an empty page at x
        proves none; a short page ends the search. Exponential probes then bisection:
        about 2·log2(newest id) requests, never a walk through the feed.
        """
        page = await self.read_page(0)
        if len(page) < PAGE_SIZE:
            return page[-1].id if page else 0
        low, step, high = page[-1].id, max(page[-1].id, 1024), None
        requests = 1
        while high is None:
            probe = low + step
            page = await self.read_page(probe)
            requests += 1
            if not page:
                high = probe
            elif len(page) < PAGE_SIZE:
                return page[-1].id
            else:
                low, step = page[-1].id, step * 2
        while low < high:
            middle = (low + high) // 2
            page = await self.read_page(middle)
            requests += 1
            if not page:
                high = middle
            elif len(page) < PAGE_SIZE:
                return page[-1].id
            else:
                low = page[-1].id
        log.info("%s: newest event is %d (found in %d requests)", self.name, low, requests)
        return low
