"""Helix TeamHub's event feed.

`GET /events?limit=&offset=` answers newest first and offsets shift while new events
arrive, so the cursor is a high-water mark: the newest timestamp seen and the ids seen at
that instant. Each poll pages from offset 0 until it reaches what is known, then hands the
new events over oldest first. Live events (progress below 100) change in place; they are
held in the cursor and re-read with `GET /events/:id` until they complete.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from feedhook import clock
from feedhook.config import TeamHubSource as TeamHubConfig
from feedhook.config import redact_url
from feedhook.envelope import Envelope, make_envelope
from feedhook.sources.base import FeedError, Page
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


@dataclass
class Held:
    """A live event waiting to complete: when to give up, and the progress last emitted."""

    deadline: float
    progress: int

    def to_json(self) -> dict[str, Any]:
        return {"deadline": self.deadline, "progress": self.progress}


@dataclass
class Cursor:
    """The high-water mark and the live events being watched; stored as JSON."""

    newest: datetime | None = None
    ids: set[str] = field(default_factory=set)
    held: dict[str, Held] = field(default_factory=dict)

    def dump(self) -> str:
        return json.dumps(
            {
                "newest": self.newest.isoformat() if self.newest else None,
                "ids": sorted(self.ids),
                "held": {k: v.to_json() for k, v in sorted(self.held.items())},
            },
            separators=(",", ":"),
        )

    @classmethod
    def load(cls, text: str) -> Cursor:
        try:
            raw = orjson.loads(text)
            return cls(
                newest=datetime.fromisoformat(raw["newest"]) if raw["newest"] else None,
                ids=set(raw["ids"]),
                held={
                    k: Held(float(v["deadline"]), int(v["progress"]))
                    for k, v in raw["held"].items()
                },
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise FeedError(
                f"the stored TeamHub cursor is unreadable ({exc!r}): {text[:200]}"
            ) from None

    def knows(self, moment: datetime, event_id: str) -> bool:
        if self.newest is None:
            return False
        return moment < self.newest or (moment == self.newest and event_id in self.ids)

    def advance(self, moment: datetime, event_id: str) -> None:
        if self.newest is None or moment > self.newest:
            self.newest, self.ids = moment, {event_id}
        elif moment == self.newest:
            self.ids.add(event_id)


def _progress(event: dict[str, Any]) -> int:
    value = event.get("progress", COMPLETE)
    return COMPLETE if value is None else int(value)


def normalize(
    source_name: str, api_url: str, event: dict[str, Any], upstream_id: str, live: bool = False
) -> Envelope:
    """A TeamHub event -> envelope; `upstream_id` carries the progress in each_update mode."""
    where = f"{source_name}: event {event.get('id')!r}"
    try:
        event_id = str(event["id"])
        target, operation = str(event["target"]), str(event["operation"])
        objects = event.get("objects") or {}
        actor = event.get("subject")
        actor = actor.get("id") if isinstance(actor, dict) else actor
        project = (objects.get("project") or {}).get("id")
        repository = (objects.get("repository") or {}).get("id")
        moment = parse_time(event["timestamp"], where)
    except (KeyError, TypeError, AttributeError) as exc:
        raise FeedError(f"{where}: malformed event ({exc!r})") from None
    subject = f"{project}/{repository}" if project and repository else project
    data: dict[str, Any] = {
        "system": "teamhub",
        "resource_type": target,
        "operation": operation,
        "event_id": event_id,
        "subject": actor,
        "objects": objects,
        "progress": _progress(event),
    }
    if live:
        data["live"] = True
    data["native"] = event
    return make_envelope(
        source_name=source_name,
        upstream_id=upstream_id,
        source=api_url,
        type=f"teamhub.{target}.{operation}",
        time=moment,
        subject=subject,
        data=data,
    )


class TeamHubFeed(HttpFeed):
    config: TeamHubConfig
    credential_keys = "company_key and account_key"

    def __init__(self, name: str, config: TeamHubConfig) -> None:
        super().__init__(name, config)
        self.api_url = config.url.rstrip("/")
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
        try:
            return orjson.loads(response.body)
        except (UnicodeDecodeError, orjson.JSONDecodeError) as exc:
            raise FeedError(
                f"{where}: the JSON is invalid or truncated ({exc})", cause="invalid_json"
            ) from None

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
                cursor.advance(parse_time(event.get("timestamp"), self.name), str(event.get("id")))
        return cursor.dump()

    async def fetch(self, cursor_text: str) -> Page:
        cursor = Cursor.load(cursor_text)
        fresh = await self._read_new(cursor)
        events: list[tuple[str, Envelope]] = []
        watched = dict(cursor.held)  # re-read below; new arrivals are judged as they come
        for event in fresh:
            cursor.advance(parse_time(event["timestamp"], self.name), str(event["id"]))
            events.extend(self._observe(cursor, event, first_sight=True))
        for event_id in watched:
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

    async def _read_new(self, cursor: Cursor) -> list[dict[str, Any]]:
        """Everything newer than the high-water mark, oldest first, each id once."""
        seen: dict[str, dict[str, Any]] = {}
        offset: int | None = 0
        while offset is not None:
            results, next_offset = await self.read_page(offset)
            reached_known = False
            for event in results:
                try:
                    event_id = str(event["id"])
                    moment = parse_time(event["timestamp"], f"{self.name}: event {event_id}")
                except KeyError as exc:
                    raise FeedError(f"{self.name}: event without {exc} in {event}") from None
                if cursor.knows(moment, event_id):
                    reached_known = True
                elif event_id not in seen:  # shifted offsets show an event twice
                    seen[event_id] = event
            offset = None if reached_known else next_offset
        return sorted(reversed(seen.values()), key=lambda e: parse_time(e["timestamp"], self.name))

    def _observe(
        self, cursor: Cursor, event: dict[str, Any], first_sight: bool
    ) -> list[tuple[str, Envelope]]:
        """What to emit for an event as it is now, and whether to keep watching it."""
        event_id = str(event["id"])
        progress = _progress(event)
        each_update = self.config.live_events == "each_update"
        held = cursor.held.get(event_id)
        if first_sight and progress >= COMPLETE:
            return [(event_id, normalize(self.name, self.api_url, event, event_id))]
        now = clock.now()
        if held is None:
            updated = parse_time(event.get("updated_at") or event["timestamp"], self.name)
            held = Held(deadline=updated.timestamp() + self.config.live_timeout, progress=-1)
        out: list[tuple[str, Envelope]] = []
        if each_update:
            if progress != held.progress:
                upstream_id = f"{event_id}:{progress}"
                out.append((upstream_id, normalize(self.name, self.api_url, event, upstream_id)))
                held.progress = progress
        elif progress >= COMPLETE or now >= held.deadline:
            live = progress < COMPLETE
            out.append((event_id, normalize(self.name, self.api_url, event, event_id, live=live)))
        if progress >= COMPLETE or now >= held.deadline or (out and not each_update):
            cursor.held.pop(event_id, None)
        else:
            cursor.held[event_id] = held
        return out
