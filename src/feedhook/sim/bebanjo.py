"""Simulated BeBanjo Sequence and Movida APIs: the event feed as the vendor pages describe it.

Digest auth, XML (both) and JSON (Sequence), `newer_than`, `event_type`, 50 a page in
ascending id order, Movida's "last 50" when `newer_than` is absent, the API root linking
the feed, `/events/:id`, the resources the events are about (`sim/resources.py`); plus
switches that make the next responses fail in the ways
real upstreams do.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from aiohttp import web

from feedhook.sim.digest import DigestGuard
from feedhook.sim.faults import Fault, SimUpstream
from feedhook.sim.resources import SimResource, new_resource

SEQUENCE_RESOURCES = {
    "job": ["name", "due-date", "ends-at", "licensor-name", "tag-list", "title-external-id"],
    "asset": ["type-name", "status"],
    "task": ["name", "status", "duration"],
}
MOVIDA_RESOURCES = {
    "title": ["episode-number", "name", "external-id"],
    "title_metadata": ["actor", "director", "first-tx-starts"],
    "asset": ["name", "duration"],
    "scheduling": ["put-up", "take-down"],
    "deal": ["name", "licensor"],
    "image": ["encoding", "is-cover"],
}


@dataclass(frozen=True, slots=True)
class SimEvent:
    id: int
    event_type: str
    timestamp: datetime
    changes: str | None
    subject: str  # path below the API root


class SimFeed(SimUpstream):
    """One simulated BeBanjo account. Start it, add events, point feedhook at `api_url`."""

    def __init__(
        self,
        system: str = "sequence",
        username: str = "robot_user",
        password: str = "secret",
        page_size: int = 50,
        track_served: bool = False,
        **upstream: Any,
    ) -> None:
        if system not in ("sequence", "movida"):
            raise ValueError(f"unknown system {system!r}")
        self.system = system
        self.page_size = page_size
        self.guard = DigestGuard(f"{system.title()} API", username, password)
        self.events: list[SimEvent] = []
        self._ids: list[int] = []
        self._next_id = 1
        self.track_served = track_served
        self.served_at: dict[int, float] = {}
        # The resources the events are about, by path below the API root.
        self.resources: dict[str, SimResource] = {}
        self.subject_requests: list[str] = []
        # Per resource path, how its next requests are answered instead: a status, or
        # "hang" (no answer at all).
        self.subject_faults: dict[str, deque[int | str]] = {}
        self.subject_delay = 0.0  # seconds before each resource is answered
        super().__init__(**upstream)

    # --- control ---------------------------------------------------------------------

    def inject(self, fault: Fault | str, times: int = 1) -> None:
        """The next `times` feed responses fail this way."""
        # A rejected Digest answer is retried once with a fresh challenge by the client:
        # refusing credentials for one fetch takes two responses.
        super().inject(fault, times * (2 if Fault(fault) is Fault.UNAUTHORIZED else 1))

    def unauthorized(self) -> web.Response:
        return self.guard.challenge()

    def fail_subject(self, path: str, *answers: int | str) -> None:
        """The next requests for the resource at `path` get these answers: a status, or
        "hang" (never answered)."""
        self.subject_faults.setdefault(path, deque()).extend(answers)

    def add_events(
        self,
        count: int,
        types: list[str] | None = None,
        gap: int = 1,
        at: datetime | None = None,
        subjects: int | None = None,
    ) -> list[SimEvent]:
        """Append `count` events, cycling through `types` (default: every kind). Each is
        about a resource of its own, or, with `subjects`, about one of that many per
        kind; the resource changes as the event says."""
        resources = SEQUENCE_RESOURCES if self.system == "sequence" else MOVIDA_RESOURCES
        if types is None:
            types = [f"{r}_{op}" for r in resources for op in ("created", "updated", "deleted")]
        added = []
        for _ in range(count):
            event_id = self._next_id
            self._next_id += gap
            event_type = types[(event_id // gap) % len(types)]
            resource = event_type.rpartition("_")[0]
            changes = None
            if event_type.endswith("_updated"):
                fields = resources.get(resource, ["name"])
                changes = ",".join(fields[: 1 + event_id % len(fields)])
            number = event_id if subjects is None else len(self.events) % subjects
            fresh = new_resource(self.system, resource, number)
            subject = self.resources.setdefault(fresh.path, fresh)
            subject.apply(event_id, event_type.rpartition("_")[2], changes)
            event = SimEvent(event_id, event_type, at or datetime.now(UTC), changes, subject.path)
            self.events.append(event)
            self._ids.append(event_id)
            added.append(event)
        return added

    # --- HTTP ------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api", self._root)
        app.router.add_get("/api/events", self._feed)
        app.router.add_get("/api/events/{id}", self._one)
        app.router.add_get("/api/{path:.+}", self._subject)
        return app

    async def _subject(self, request: web.Request) -> web.StreamResponse:
        """A resource an event is about: 404 once deleted, unless asked with ?deleted."""
        if (denied := self.guard.check(request)) is not None:
            return denied
        self.subject_requests.append(request.path_qs)
        if (refused := self._over_budget()) is not None:
            return refused
        path = request.path.removeprefix("/api")
        if self.subject_delay:
            await asyncio.sleep(self.subject_delay)
        if faults := self.subject_faults.get(path):
            answer = faults.popleft()
            if answer == "hang":
                await asyncio.Event().wait()
            return web.Response(status=int(answer), text=f"simulated {answer}\n")
        resource = self.resources.get(path)
        if resource is None or resource.deleted != ("deleted" in request.query):
            raise web.HTTPNotFound()
        api = f"{request.url.origin()}/api"
        if self._wants_json(request):
            return web.json_response(resource.to_json(api))
        return web.Response(body=resource.to_xml(api).encode(), content_type="application/xml")

    def _wants_json(self, request: web.Request) -> bool:
        return self.system == "sequence" and "json" in request.headers.get("Accept", "")

    async def _root(self, request: web.Request) -> web.StreamResponse:
        if (denied := self.guard.check(request)) is not None:
            return denied
        events = f"{request.url.origin()}/api/events"
        if self._wants_json(request):
            return web.json_response({"resource_type": self.system, "events_link": events})
        body = (
            "<?xml version='1.0' encoding='utf-8' ?>\n"
            f'<{self.system}>\n  <link rel="events" href={quoteattr(events)}/>\n</{self.system}>\n'
        )
        return web.Response(text=body, content_type="application/xml")

    async def _one(self, request: web.Request) -> web.StreamResponse:
        if (denied := self.guard.check(request)) is not None:
            return denied
        try:
            event_id = int(request.match_info["id"])
        except ValueError:
            raise web.HTTPNotFound() from None
        index = bisect.bisect_left(self._ids, event_id)
        if index == len(self._ids) or self._ids[index] != event_id:
            raise web.HTTPNotFound()
        return self._render(request, [self.events[index]], single=True)

    async def _feed(self, request: web.Request) -> web.StreamResponse:
        if (denied := self.guard.check(request)) is not None:
            return denied
        refused, fault = await self.gate(request)
        if refused is not None:
            return refused
        try:
            newer_than = int(request.query["newer_than"]) if "newer_than" in request.query else None
        except ValueError:
            return web.Response(status=400, text="newer_than must be an integer\n")
        wanted = set(filter(None, request.query.get("event_type", "").split(",")))
        page = self._select(newer_than, wanted)
        if self.track_served:
            now = time.time()
            for event in page:
                self.served_at.setdefault(event.id, now)
        return self.finish(fault, self._render(request, page))

    def _select(self, newer_than: int | None, wanted: set[str]) -> list[SimEvent]:
        if newer_than is None:
            pool = [e for e in self.events if not wanted or e.event_type in wanted]
            # Movida answers its LAST 50 without newer_than; Sequence starts at the oldest.
            return pool[-self.page_size :] if self.system == "movida" else pool[: self.page_size]
        page: list[SimEvent] = []
        for index in range(bisect.bisect_right(self._ids, newer_than), len(self.events)):
            event = self.events[index]
            if not wanted or event.event_type in wanted:
                page.append(event)
                if len(page) == self.page_size:
                    break
        return page

    def _render(
        self, request: web.Request, events: list[SimEvent], single: bool = False
    ) -> web.Response:
        api = f"{request.url.origin()}/api"
        if self._wants_json(request):
            entries = [self._json_event(api, e) for e in events]
            document = entries[0] if single else {"entries": entries}
            return web.Response(body=json.dumps(document).encode(), content_type="application/json")
        parts = [self._xml_event(api, e) for e in events]
        if single:
            body = "<?xml version='1.0' encoding='utf-8' ?>\n" + parts[0]
        else:
            body = (
                "<?xml version='1.0' encoding='utf-8' ?>\n<events type=\"array\">\n"
                + "".join(parts)
                + "</events>\n"
            )
        return web.Response(body=body.encode(), content_type="application/xml")

    @staticmethod
    def _json_event(api: str, event: SimEvent) -> dict[str, object]:
        entry: dict[str, object] = {
            "resource_type": "event",
            "id": event.id,
            "event_type": event.event_type,
            "timestamp": event.timestamp.isoformat(timespec="milliseconds"),
        }
        if event.changes is not None:
            entry["changes"] = event.changes
        entry["self_link"] = f"{api}/events/{event.id}"
        entry["subject_link"] = f"{api}{event.subject}"
        return entry

    @staticmethod
    def _xml_event(api: str, event: SimEvent) -> str:
        changes = (
            f"  <changes>{escape(event.changes)}</changes>\n" if event.changes is not None else ""
        )
        return (
            "<event>\n"
            f'  <id type="integer">{event.id}</id>\n'
            f"  <event-type>{event.event_type}</event-type>\n"
            f'  <timestamp type="datetime">{event.timestamp.isoformat(timespec="seconds")}'
            "</timestamp>\n"
            f"{changes}"
            f'  <link rel="self" href="{api}/events/{event.id}"/>\n'
            f'  <link rel="subject" href="{api}{event.subject}"/>\n'
            "</event>\n"
        )
