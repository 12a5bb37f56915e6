"""Simulated BeBanjo Sequence and Movida APIs: the event feed as the vendor pages describe it.

Digest auth, XML (both) and JSON (Sequence), `newer_than`, `event_type`, 50 a page in
ascending id order, Movida's "last 50" when `newer_than` is absent, the API root linking
the feed, `/events/:id`; plus switches that make the next responses fail in the ways
real upstreams do.
"""

from __future__ import annotations

import asyncio
import bisect
import enum
import json
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from xml.sax.saxutils import escape, quoteattr

from aiohttp import web

from feedhook.sim.digest import DigestGuard
from feedhook.sim.serve import LoopbackServer

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


class Fault(enum.StrEnum):
    """Ways the next feed response can go wrong."""

    ERROR_500 = "500"
    RATE_LIMITED = "429"
    HTML = "html"
    TRUNCATED = "truncated"
    BILLION_LAUGHS = "billion-laughs"
    EXTERNAL_ENTITY = "external-entity"
    SLOW = "slow"
    UNAUTHORIZED = "401"


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<events type="array"><event><id type="integer">1</id>
<event-type>&lol9;</event-type></event></events>
"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE events [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<events type="array"><event><id type="integer">1</id><event-type>&xxe;</event-type></event></events>
"""

LOGIN_PAGE = """<!DOCTYPE html>
<html><head><title>Sign in</title></head><body><form action="/login">
<input name="user"><input name="password" type="password"></form></body></html>
"""


@dataclass(frozen=True, slots=True)
class SimEvent:
    id: int
    event_type: str
    timestamp: datetime
    changes: str | None
    subject: str  # path below the API root


class SimFeed:
    """One simulated BeBanjo account. Start it, add events, point feedhook at `api_url`."""

    def __init__(
        self,
        system: str = "sequence",
        username: str = "robot_user",
        password: str = "secret",
        page_size: int = 50,
        slow_seconds: float = 5.0,
        rate_limit_reset: int = 1,
        track_served: bool = False,
        rate_limit: tuple[int, float] | None = None,
        ban_seconds: float = 300.0,
    ) -> None:
        if system not in ("sequence", "movida"):
            raise ValueError(f"unknown system {system!r}")
        self.system = system
        self.page_size = page_size
        self.slow_seconds = slow_seconds
        self.rate_limit_reset = rate_limit_reset
        self.guard = DigestGuard(f"{system.title()} API", username, password)
        self.events: list[SimEvent] = []
        self._ids: list[int] = []
        self._next_id = 1
        self._faults: deque[Fault] = deque()
        self.requests: list[str] = []
        self.faults_served: list[Fault] = []
        self.track_served = track_served
        self.served_at: dict[int, float] = {}
        # BeBanjo: 150 requests per 30 s per API user, then a 300 s ban answered with 429.
        self.rate_limit = rate_limit
        self.ban_seconds = ban_seconds
        self._recent: deque[float] = deque()
        self._banned_until = 0.0
        self.server = LoopbackServer(self.app())

    # --- control ---------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        return f"{self.server.url}/api"

    async def start(self) -> str:
        await self.server.start()
        return self.api_url

    async def stop(self) -> None:
        await self.server.stop()

    def add_events(
        self,
        count: int,
        types: list[str] | None = None,
        gap: int = 1,
        at: datetime | None = None,
    ) -> list[SimEvent]:
        """Append `count` events, cycling through `types` (default: every kind)."""
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
            subject = (
                f"/work_areas/85/jobs/{97000 + event_id}"
                if self.system == "sequence"
                else f"/{resource.split('_')[0]}s/{110000 + event_id}"
            )
            event = SimEvent(event_id, event_type, at or datetime.now(UTC), changes, subject)
            self.events.append(event)
            self._ids.append(event_id)
            added.append(event)
        return added

    def inject(self, fault: Fault | str, times: int = 1) -> None:
        """The next `times` feed responses fail this way."""
        fault = Fault(fault)
        # A rejected Digest answer is retried once with a fresh challenge by the client:
        # refusing credentials for one fetch takes two responses.
        per_fetch = 2 if fault is Fault.UNAUTHORIZED else 1
        self._faults.extend([fault] * times * per_fetch)

    @property
    def pending_faults(self) -> int:
        return len(self._faults)

    # --- HTTP ------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api", self._root)
        app.router.add_get("/api/events", self._feed)
        app.router.add_get("/api/events/{id}", self._one)
        return app

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
        self.requests.append(request.path_qs)
        if (refused := self._over_budget()) is not None:
            return refused
        fault = self._faults.popleft() if self._faults else None
        if fault is not None:
            self.faults_served.append(fault)
            if fault is Fault.SLOW:
                await asyncio.sleep(self.slow_seconds)
            elif (response := self._fault_response(fault, request)) is not None:
                return response
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
        response = self._render(request, page)
        if fault is Fault.TRUNCATED:
            assert isinstance(response, web.Response) and response.body is not None
            whole = bytes(response.body)  # type: ignore[arg-type]
            response.body = whole[: max(1, len(whole) // 2)]
        return response

    def _over_budget(self) -> web.Response | None:
        if self.rate_limit is None:
            return None
        now = time.monotonic()
        if now < self._banned_until:
            return self._too_many(self._banned_until - now)
        limit, window = self.rate_limit
        while self._recent and now - self._recent[0] >= window:
            self._recent.popleft()
        if len(self._recent) >= limit:
            self._banned_until = now + self.ban_seconds
            self._recent.clear()  # the real ban (300 s) outlasts the window (30 s)
            return self._too_many(self.ban_seconds)
        self._recent.append(now)
        return None

    def _too_many(self, seconds: float) -> web.Response:
        return web.Response(
            status=429,
            text="Too Many Requests\n",
            headers={"Ratelimit-Reset": str(max(1, round(seconds)))},
        )

    def _fault_response(self, fault: Fault, request: web.Request) -> web.Response | None:
        if fault is Fault.ERROR_500:
            return web.Response(status=500, text="Internal Server Error\n")
        if fault is Fault.RATE_LIMITED:
            return self._too_many(self.rate_limit_reset)
        if fault is Fault.HTML:
            return web.Response(text=LOGIN_PAGE, content_type="text/html")
        if fault is Fault.BILLION_LAUGHS:
            return web.Response(body=BILLION_LAUGHS, content_type="application/xml")
        if fault is Fault.EXTERNAL_ENTITY:
            return web.Response(body=EXTERNAL_ENTITY, content_type="application/xml")
        if fault is Fault.UNAUTHORIZED:
            return self.guard.challenge()
        return None

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
