"""Simulated Helix TeamHub events API, as its page describes it.

`GET /api/events?limit=&offset=&project=&operation=&target=` newest first with
`{metadata: {more_results, next_offset, count}, results}`, `GET /api/events/:id`, header
auth (`Accept: application/vnd.hth.v1`, `Authorization: hth.company_key='…',account_key='…'`),
live events whose progress changes in place, and the shared fault switches.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from feedhook.sim.faults import SimUpstream

PAGE_LIMIT = 1000


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")  # seconds, as the API does


class SimTeamHub(SimUpstream):
    def __init__(
        self, company_key: str = "company-key", account_key: str = "account-key", **upstream: Any
    ) -> None:
        self.company_key = company_key
        self.account_key = account_key
        self.events: list[dict[str, Any]] = []  # oldest first; served reversed
        self._ids = itertools.count(0x50883CFE1229C02952000036)
        # Called after each page is served: tests add events "while pages are being read".
        self.after_page: Callable[[int], None] | None = None
        # The API's page does not say what "newest first" sorts on: by timestamp, or by
        # arrival (a back-dated event then shows at the top). Both are served.
        self.order: str = "timestamp"
        super().__init__(**upstream)

    def add_events(
        self,
        count: int,
        target: str = "push",
        operation: str = "created",
        progress: int = 100,
        project: str = "luotsi",
        repository: str | None = "devrel",
        at: datetime | None = None,
    ) -> list[dict[str, Any]]:
        added = []
        for _ in range(count):
            moment = _stamp(at or datetime.now(UTC))
            objects: dict[str, Any] = {"project": {"id": project}}
            if repository:
                objects["repository"] = {"id": repository}
            if target == "push":
                objects["ref"] = "master"
            event = {
                "api_status": 200,
                "api_timestamp": moment,
                "id": f"{next(self._ids):024x}",
                "created_at": moment,
                "updated_at": moment,
                "subject": {"id": "assimov"},
                "operation": operation,
                "target": target,
                "progress": progress,
                "objects": objects,
                "timestamp": moment,
            }
            self.events.append(event)
            added.append(event)
        return added

    def update_progress(self, event_id: str, progress: int, operation: str | None = None) -> None:
        """A live event moves on in place (PUT /events/:id), keeping its timestamp."""
        event = next(e for e in self.events if e["id"] == event_id)
        event["progress"] = progress
        if operation is not None:
            event["operation"] = operation
        event["updated_at"] = _stamp(datetime.now(UTC))

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/events", self._list)
        app.router.add_get("/api/events/{id}", self._one)
        return app

    def _denied(self, request: web.Request) -> web.Response | None:
        expected = f"hth.company_key='{self.company_key}',account_key='{self.account_key}'"
        if request.headers.get("Authorization") != expected:
            return self.unauthorized()
        if request.headers.get("Accept") != "application/vnd.hth.v1":
            return web.json_response({"api_status": 406, "message": "Not Acceptable"}, status=406)
        return None

    def unauthorized(self) -> web.Response:
        return web.json_response({"api_status": 401, "message": "Unauthorized"}, status=401)

    async def _list(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        refused, fault = await self.gate(request)
        if refused is not None:
            return refused
        try:
            limit = min(int(request.query.get("limit", "20")), PAGE_LIMIT)
            offset = int(request.query.get("offset", "0"))
        except ValueError:
            return web.json_response({"api_status": 400, "message": "Bad Request"}, status=400)
        wanted = [
            (key, request.query[key])
            for key in ("project", "operation", "target")
            if key in request.query
        ]
        arrival = list(reversed(self.events))
        ordered = (
            arrival
            if self.order == "arrival"
            else sorted(arrival, key=lambda e: e["timestamp"], reverse=True)
        )
        newest_first = [
            e for e in ordered if all(self._field(e, key) == value for key, value in wanted)
        ]
        page = newest_first[offset : offset + limit]
        more = offset + len(page) < len(newest_first)
        body = {
            "metadata": {
                "more_results": more,
                "next_offset": offset + len(page),
                "count": len(page),
            },
            "results": page,
        }
        response = web.Response(body=json.dumps(body).encode(), content_type="application/json")
        if self.after_page is not None:
            self.after_page(offset)
        return self.finish(fault, response)

    @staticmethod
    def _field(event: dict[str, Any], key: str) -> Any:
        if key == "project":
            return event["objects"].get("project", {}).get("id")
        return event[key]

    async def _one(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        refused, fault = await self.gate(request)
        if refused is not None:
            return refused
        for event in self.events:
            if event["id"] == request.match_info["id"]:
                response = web.Response(
                    body=json.dumps(event).encode(), content_type="application/json"
                )
                return self.finish(fault, response)
        return web.json_response({"api_status": 404, "message": "Not Found"}, status=404)
