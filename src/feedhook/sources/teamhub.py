"""Helix TeamHub's event feed.

`GET /events?limit=&offset=` answers newest first and offsets shift while new events
arrive, so the cursor is a high-water mark: the newest timestamp seen, and the ids of the
events seen within `overlap` of it. A poll walks the list one page per fetch (`Scan`):
down from offset 0 through that window, looking only, then back up from the deepest page
with news, handing each page's new events over oldest first. Catching up after a long
stop therefore holds one page at a time and delivers in order. An event that appears late
with an earlier timestamp (a back-dated build, a server's clock skew) is still delivered,
once, if it falls inside the window; an older one is logged as arriving too late to be
seen. Live events (progress below 100) change in place; they are held in the cursor and
re-read with `GET /events/:id` at the end of each walk until they complete.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from feedhook import clock
from feedhook.config import TeamHubConfig, redact_url
from feedhook.envelope import Envelope, check_utc
from feedhook.sources.base import (
    INVALID_UTF8,
    FeedError,
    Page,
    build_envelope,
    has_replacement,
    load_json,
    text_id,
    unidentified_id,
)
from feedhook.sources.http import HttpFeed, HttpStatusError

log = logging.getLogger("feedhook.source")

ACCEPT = "application/vnd.hth.v1"
COMPLETE = 100


def parse_time(value: object, where: str) -> datetime:
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        raise FeedError(f"{where}: unreadable timestamp {value!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def read_time(value: object) -> datetime | None:
    """A timestamp that has an RFC 3339 UTC form, or None."""
    try:
        moment = parse_time(value, "")
        check_utc(moment)
    except (FeedError, OverflowError):
        return None
    return moment


@dataclass
class Held:
    """A live event waiting to complete: when to give up, and the progress last emitted."""

    deadline: float
    progress: int

    def to_json(self) -> dict[str, Any]:
        return {"deadline": self.deadline, "progress": self.progress}


@dataclass
class Scan:
    """Where a poll's walk through the newest-first list is, kept in the cursor so that
    each fetch reads one page. Down from offset 0 (looking only) until below what is
    known, noting the deepest page with news; then up again, taking each page's news,
    oldest page first, so events arrive in order and only one page is ever held."""

    cutoff: datetime | None  # the overlap window's bottom when the walk began
    offset: int = 0
    climbing: bool = False
    deepest: int | None = None  # on the way down: the deepest page holding news
    reached_known: bool = False  # on the way down: an event already taken was passed

    def to_json(self) -> dict[str, Any]:
        return {
            "cutoff": self.cutoff.isoformat() if self.cutoff else None,
            "offset": self.offset,
            "climbing": self.climbing,
            "deepest": self.deepest,
            "reached_known": self.reached_known,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Scan:
        return cls(
            cutoff=datetime.fromisoformat(raw["cutoff"]) if raw["cutoff"] else None,
            offset=int(raw["offset"]),
            climbing=bool(raw["climbing"]),
            deepest=None if raw["deepest"] is None else int(raw["deepest"]),
            reached_known=bool(raw["reached_known"]),
        )


@dataclass
class Cursor:
    """The high-water mark, the ids seen within the overlap window below it (with their
    timestamps), the live events being watched, and the walk under way; stored as JSON."""

    newest: datetime | None = None
    seen: dict[str, datetime] = field(default_factory=dict)
    held: dict[str, Held] = field(default_factory=dict)
    scan: Scan | None = None

    def dump(self) -> str:
        raw: dict[str, Any] = {
            "newest": self.newest.isoformat() if self.newest else None,
            "seen": {k: v.isoformat() for k, v in sorted(self.seen.items())},
            "held": {k: v.to_json() for k, v in sorted(self.held.items())},
        }
        if self.scan is not None:
            raw["scan"] = self.scan.to_json()
        return json.dumps(raw, separators=(",", ":"))

    @classmethod
    def load(cls, text: str) -> Cursor:
        try:
            raw = orjson.loads(text)
            newest = datetime.fromisoformat(raw["newest"]) if raw["newest"] else None
            if "seen" in raw:
                seen = {k: datetime.fromisoformat(v) for k, v in raw["seen"].items()}
            else:  # written by an older feedhook: the ids at the newest instant
                seen = dict.fromkeys(raw["ids"], newest) if newest else {}
            return cls(
                newest=newest,
                seen=seen,
                held={
                    k: Held(float(v["deadline"]), int(v["progress"]))
                    for k, v in raw["held"].items()
                },
                scan=Scan.from_json(raw["scan"]) if raw.get("scan") else None,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise FeedError(
                f"the stored TeamHub cursor is unreadable ({exc!r}): {text[:200]}"
            ) from None

    def cutoff(self, overlap: timedelta) -> datetime | None:
        """Events older than this are below the window: known, or too late to be seen."""
        return None if self.newest is None else self.newest - overlap

    def advance(self, moment: datetime, event_id: str, overlap: timedelta) -> None:
        self.seen[event_id] = moment
        if self.newest is None or moment > self.newest:
            self.newest = moment
            cutoff = moment - overlap
            self.seen = {k: v for k, v in self.seen.items() if v >= cutoff}


def _progress(event: dict[str, Any]) -> int:
    value = event.get("progress", COMPLETE)
    if value is None or isinstance(value, bool):
        return COMPLETE
    try:
        return int(value)
    except (TypeError, ValueError):
        return COMPLETE  # unreadable: not held back as live


def normalize(
    source_name: str,
    api_url: str,
    event: dict[str, Any],
    upstream_id: str,
    live: bool = False,
    known_problems: Sequence[str] = (),
) -> Envelope:
    """A TeamHub event -> envelope; `upstream_id` carries the progress in each_update mode.
    What cannot be read is null and said in data.malformed."""
    problems: list[str] = list(known_problems)
    event_id = text_id(event.get("id"))
    if event_id is None:
        problems.append(f"id is not a string: {event.get('id')!r}")
    target, operation = event.get("target"), event.get("operation")
    if not isinstance(target, str) or not target:
        problems.append(f"target is not a string: {target!r}")
        target = None
    if not isinstance(operation, str) or not operation:
        problems.append(f"operation is not a string: {operation!r}")
        operation = None
    objects = event.get("objects")
    if not isinstance(objects, dict):
        if objects is not None:
            problems.append(f"objects is not an object: {objects!r}"[:200])
        objects = {}
    actor = event.get("subject")
    actor = actor.get("id") if isinstance(actor, dict) else actor
    project = _object_id(objects, "project")
    repository = _object_id(objects, "repository")
    moment = read_time(event.get("timestamp"))
    if moment is None:
        problems.append(f"unreadable timestamp {event.get('timestamp')!r}")
    subject = f"{project}/{repository}" if project and repository else project
    fields: dict[str, Any] = {
        "event_id": event_id,
        "subject": actor,
        "objects": objects,
        "progress": _progress(event),
    }
    if live:
        fields["live"] = True
    return build_envelope(
        source_name=source_name,
        system="teamhub",
        source_url=api_url,
        upstream_id=upstream_id,
        resource=target,
        operation=operation,
        time=moment,
        subject=subject,
        fields=fields,
        native=event,
        problems=problems,
    )


def _object_id(objects: dict[str, Any], key: str) -> str | None:
    value = objects.get(key)
    ident = value.get("id") if isinstance(value, dict) else None
    return ident if isinstance(ident, str) else None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _events_in(document: Any) -> list[Any]:
    if isinstance(document, dict) and isinstance(document.get("results"), list):
        return list(document["results"])
    return [document]


def _event_id(event: dict[str, Any]) -> str:
    """The event's id, or a stable stand-in when it has none that can be read."""
    return text_id(event.get("id")) or unidentified_id(event)


class TeamHubFeed(HttpFeed):
    config: TeamHubConfig
    credential_keys = "company_key and account_key"

    def __init__(self, name: str, config: TeamHubConfig) -> None:
        super().__init__(name, config)
        self.api_url = config.url.rstrip("/")
        # Events of this fetch whose bytes were not UTF-8, by object identity.
        self._invalid_utf8: dict[int, Any] = {}
        self._headers = {
            "Authorization": (
                f"hth.company_key='{config.company_key.get_secret_value()}',"
                f"account_key='{config.account_key.get_secret_value()}'"
            )
        }

    # --- requests --------------------------------------------------------------------

    async def _get(self, url: str, params: dict[str, str] | None = None) -> Any:
        response = await self.client.get(url, params, accept=ACCEPT, headers=self._headers)
        where = redact_url(response.url)
        if "html" in response.content_type:
            raise FeedError(
                f"{where}: answered HTML instead of JSON (a login or error page?); "
                "check the url of this source",
                cause="html",
            )
        document, replaced = load_json(response.body, where)
        if replaced:  # remembered (and kept alive, so ids stay unique) until the next fetch
            self._invalid_utf8.update(
                (id(event), event) for event in _events_in(document) if has_replacement(event)
            )
        return document

    async def read_page(self, offset: int) -> tuple[list[dict[str, Any]], int | None]:
        """One page, newest first, and the offset of the next one (None at the end)."""
        params = {"limit": str(self.config.page_size), "offset": str(offset)}
        for key in ("project", "operation", "target"):
            if (value := getattr(self.config, key)) is not None:
                params[key] = value
        url = f"{self.api_url}/events"
        document = await self._get(url, params)
        try:
            results = document["results"]
            metadata = document.get("metadata") or {}
            if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
                raise TypeError("results is not a list of events")
        except (KeyError, TypeError, AttributeError) as exc:
            raise FeedError(
                f"{redact_url(url)}: expected {{metadata, results}} ({exc!r})"
            ) from None
        more = bool(metadata.get("more_results")) and bool(results)
        next_offset = metadata.get("next_offset")
        if more and not isinstance(next_offset, int):
            next_offset = offset + len(results)
        return results, (next_offset if more else None)

    async def read_event(self, event_id: str) -> dict[str, Any] | None:
        try:
            event = await self._get(f"{self.api_url}/events/{event_id}")
        except HttpStatusError as exc:
            if exc.status == 404:
                return None
            raise
        if not isinstance(event, dict):
            raise FeedError(f"{self.name}: GET /events/{event_id} did not answer an event")
        return event

    # --- the feed --------------------------------------------------------------------

    async def initial_cursor(self) -> str:
        cursor = Cursor()
        if self.config.start == "latest":
            results, _ = await self.read_page(0)
            for event in results:
                moment, event_id = read_time(event.get("timestamp")), _event_id(event)
                if moment is not None:
                    cursor.advance(moment, event_id, self._overlap)
        return cursor.dump()

    @property
    def _overlap(self) -> timedelta:
        return timedelta(seconds=self.config.overlap)

    async def fetch(self, cursor_text: str) -> Page:
        """One list request of the poll's walk (see `Scan`); the walk's last page also
        re-reads the live events being watched."""
        self._invalid_utf8.clear()
        cursor = Cursor.load(cursor_text)
        watched = list(cursor.held)
        scan = cursor.scan or Scan(cutoff=cursor.cutoff(self._overlap))
        results, next_offset = await self.read_page(scan.offset)
        if not scan.climbing:
            self._look_down(cursor, scan, results)
            at_bottom = next_offset is None or (
                self._below(scan, results[-1]) and (scan.reached_known or scan.deepest is None)
            )
            if not at_bottom:
                assert next_offset is not None
                return self._walk_on(cursor, replace(scan, offset=next_offset))
            deepest = scan.deepest
            if deepest is None:  # nothing new anywhere
                cursor.scan = None
                return await self._end_of_poll(cursor, [], watched)
            scan = replace(scan, climbing=True)
            if deepest != scan.offset:
                return self._walk_on(cursor, replace(scan, offset=deepest))
            # else the page in hand is the deepest one with news: taken now
        elif next_offset is not None and results and not self._known(cursor, scan, results[-1]):
            # Events arrived at the top since the last page and pushed unread ones below
            # this one: step down until a page ends on an event already taken.
            return self._walk_on(cursor, replace(scan, offset=scan.offset + len(results) - 1))
        events = self._take(cursor, scan, results)
        if scan.offset == 0:
            cursor.scan = None
            return await self._end_of_poll(cursor, events, watched)
        # Up one page, overlapping the last by a quarter: the next page must end on an
        # event taken already, which holds while fewer new events than that arrive
        # between two requests (else the walk steps back down and reads the gap).
        size = self.config.page_size
        up = max(0, scan.offset - (size - max(1, size // 4)))
        return self._walk_on(cursor, replace(scan, offset=up), events)

    def _walk_on(
        self, cursor: Cursor, scan: Scan, events: list[tuple[str, Envelope]] | None = None
    ) -> Page:
        cursor.scan = scan
        return Page(events=events or [], cursor=cursor.dump(), more=True)

    def _below(self, scan: Scan, event: dict[str, Any]) -> bool:
        moment = read_time(event.get("timestamp"))
        return scan.cutoff is not None and moment is not None and moment < scan.cutoff

    def _known(self, cursor: Cursor, scan: Scan, event: dict[str, Any]) -> bool:
        return _event_id(event) in cursor.seen or self._below(scan, event)

    def _look_down(self, cursor: Cursor, scan: Scan, results: list[dict[str, Any]]) -> None:
        """On the way down: note the deepest page with news, and what arrived too late."""
        for event in results:
            event_id = _event_id(event)
            if event_id in cursor.seen:
                scan.reached_known = True
            elif self._below(scan, event):
                if not scan.reached_known:  # above events we know: it arrived late
                    self._too_late(event_id, event.get("timestamp"), scan.cutoff)
            else:
                scan.deepest = scan.offset

    def _take(
        self, cursor: Cursor, scan: Scan, results: list[dict[str, Any]]
    ) -> list[tuple[str, Envelope]]:
        """The page's news, oldest first, each id once (shifting offsets show an event
        twice); the cursor advances past them."""
        found: dict[str, tuple[datetime | None, dict[str, Any]]] = {}
        for event in results:
            event_id = _event_id(event)
            moment = read_time(event.get("timestamp"))
            if event_id in cursor.seen:
                if moment is None:  # no time to age out by: kept while it is still listed
                    cursor.seen[event_id] = cursor.newest or _EPOCH
            elif not self._below(scan, event) and event_id not in found:
                found[event_id] = (moment, event)
        events: list[tuple[str, Envelope]] = []
        for moment, event in sorted(reversed(found.values()), key=lambda p: p[0] or _EPOCH):
            cursor.advance(moment or cursor.newest or _EPOCH, _event_id(event), self._overlap)
            events.extend(self._observe(cursor, event, first_sight=True))
        return events

    async def _end_of_poll(
        self, cursor: Cursor, events: list[tuple[str, Envelope]], watched: Sequence[str]
    ) -> Page:
        """The walk is over: the live events watched before this page are read again."""
        for event_id in watched:
            if event_id not in cursor.held:
                continue
            current = await self.read_event(event_id)
            if current is None:
                log.warning(
                    "%s: live event %s disappeared before completing; no longer watched",
                    self.name,
                    event_id,
                    extra={"source": self.name},
                )
                del cursor.held[event_id]
                continue
            events.extend(self._observe(cursor, current, first_sight=False))
        return Page(events=events, cursor=cursor.dump(), more=False)

    def _normalize(self, event: dict[str, Any], upstream_id: str, live: bool = False) -> Envelope:
        utf8 = [INVALID_UTF8] if id(event) in self._invalid_utf8 else []
        return normalize(self.name, self.api_url, event, upstream_id, live, utf8)

    def _too_late(self, event_id: str, moment: object, cutoff: datetime | None) -> None:
        log.warning(
            "%s: event %s (%s) arrived too late to be seen: it is older than the %gs"
            " overlap window below the newest event; raise `overlap` to catch such events",
            self.name,
            event_id,
            moment,
            self.config.overlap,
            extra={"source": self.name, "envelope_id": f"{self.name}:{event_id}"},
        )

    def _observe(
        self, cursor: Cursor, event: dict[str, Any], first_sight: bool
    ) -> list[tuple[str, Envelope]]:
        """What to emit for an event as it is now, and whether to keep watching it."""
        event_id = _event_id(event)
        progress = _progress(event)
        each_update = self.config.live_events == "each_update"
        held = cursor.held.get(event_id)
        if first_sight and progress >= COMPLETE:
            return [(event_id, self._normalize(event, event_id))]
        now = clock.now()
        if held is None:
            updated = read_time(event.get("updated_at") or event.get("timestamp"))
            start = updated.timestamp() if updated is not None else now
            held = Held(deadline=start + self.config.live_timeout, progress=-1)
        out: list[tuple[str, Envelope]] = []
        if each_update:
            if progress != held.progress:
                upstream_id = f"{event_id}:{progress}"
                out.append((upstream_id, self._normalize(event, upstream_id)))
                held.progress = progress
        elif progress >= COMPLETE or now >= held.deadline:
            live = progress < COMPLETE
            out.append((event_id, self._normalize(event, event_id, live=live)))
        if progress >= COMPLETE or now >= held.deadline or (out and not each_update):
            cursor.held.pop(event_id, None)
        else:
            cursor.held[event_id] = held
        return out
