"""Simulated Modulo Risk Manager: OAuth2 tokens and the List Event Updates service.

`POST {RMUrl}/APIIntegration/token` (client credentials) issues bearer tokens that expire;
`GET {WSUrl}/api/events/<code>/updates` honours `$filter` on Date (a `datetime'…'` literal
read in the server's own time zone, which the page leaves unsaid), `$orderby=Date [desc]`,
`page`, `page_size` (at most 1000, default 10) and `show_child_events`.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from aiohttp import web

from feedhook.sim.faults import SimUpstream

_CLAUSE = re.compile(r"Date\s+(ge|gt|le|lt)\s+datetime'([^']+)'", re.I)


class SimModulo(SimUpstream):
    def __init__(
        self,
        client_id: str = "feedhook",
        client_secret: str = "client-secret",
        static_token: str | None = None,
        token_lifetime: float = 86400.0,
        server_offset: str = "-0300",
        **upstream: Any,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.static_token = static_token
        self.token_lifetime = token_lifetime
        self.server_offset = server_offset
        sign = -1 if server_offset[0] == "-" else 1
        self.zone = timezone(
            sign * timedelta(hours=int(server_offset[1:3]), minutes=int(server_offset[3:5]))
        )
        self.tokens: dict[str, float] = {}  # token -> expiry (monotonic)
        self.tokens_issued = 0
        self.updates: dict[str, list[dict[str, Any]]] = {}
        self.children: dict[str, list[str]] = {}
        self._clock = itertools.count()
        super().__init__(**upstream)

    @property
    def ws_url(self) -> str:
        return f"{self.server.url}/WorkflowWS"

    @property
    def api_url(self) -> str:
        return self.ws_url  # Modulo sources are configured with {WSUrl}

    @property
    def token_url(self) -> str:
        return f"{self.server.url}/RM/APIIntegration/token"

    def add_child(self, parent: str, child: str) -> None:
        self.children.setdefault(parent, []).append(child)

    def add_updates(
        self,
        code: str,
        count: int,
        action: int | None = 13,
        at_millis: int | None = None,
        **fields: Any,
    ) -> list[dict[str, Any]]:
        """Append updates to an event; dates are now unless given (ms since the epoch)."""
        added = []
        for _ in range(count):
            millis = at_millis if at_millis is not None else int(time.time() * 1000)
            update = {
                "Action": action,
                "AdditionalParameter": "",
                "AttachmentId": None,
                "ChildEventCode": None,
                "Comment": "",
                "Date": f"/Date({millis}{self.server_offset})/",
                "Id": str(uuid.uuid4()),
                "NewValue": str(next(self._clock)),
                "OldValue": None,
                "Property": "Progress" if action == 5 else "StartDate",
                "UpdateType": 2 if action == 5 else 0,
                "UpdatedBy": "administrator",
                **fields,
            }
            self.updates.setdefault(code, []).append(update)
            added.append(update)
        return added

    def expire_tokens(self) -> None:
        """Every issued token stops working now (as after expires_in)."""
        self.tokens = dict.fromkeys(self.tokens, 0.0)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/RM/APIIntegration/token", self._token)
        app.router.add_get("/WorkflowWS/api/events/{code}/updates", self._updates)
        return app

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if (
            form.get("grant_type") != "client_credentials"
            or form.get("client_id") != self.client_id
            or form.get("client_secret") != self.client_secret
        ):
            return web.json_response(
                {"error": "invalid_client", "detail": self.echo(request, dict(form))}, status=400
            )
        token = secrets.token_urlsafe(24)
        self.tokens[token] = time.monotonic() + self.token_lifetime
        self.tokens_issued += 1
        return web.json_response(
            {"access_token": token, "token_type": "bearer", "expires_in": int(self.token_lifetime)}
        )

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ")
        if self.static_token is not None and token == self.static_token:
            return True
        return self.tokens.get(token, 0.0) > time.monotonic()

    def unauthorized(self) -> web.Response:
        return web.json_response({"Message": "Authorization has been denied"}, status=401)

    async def _updates(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self.unauthorized()
        refused, fault = await self.gate(request)
        if refused is not None:
            return refused
        code = request.match_info["code"]
        query = request.query
        try:
            page = int(query.get("page", "1"))
            size = int(query.get("page_size", "10"))
            if page < 1 or not 1 <= size <= 1000:
                raise ValueError
            keep = self._date_filter(query.get("$filter"))
        except ValueError:
            return web.json_response({"Message": "The request is invalid."}, status=400)
        codes = [code]
        if query.get("show_child_events", "").lower() == "true":
            codes += self.children.get(code, [])
        rows = [
            {**u, "ChildEventCode": c if c != code else u["ChildEventCode"]}
            for c in codes
            for u in self.updates.get(c, [])
            if keep(self._millis(u))
        ]
        order = query.get("$orderby", "").strip()
        if order.lower().startswith("date"):
            rows.sort(key=self._millis, reverse=order.lower().endswith("desc"))
        chunk = rows[(page - 1) * size : page * size]
        if not chunk and page == 1 and not rows:
            return web.Response(status=204)
        body = json.dumps(chunk).replace("/Date(", "\\/Date(").replace(")/", ")\\/")
        response = web.Response(body=body.encode(), content_type="application/json")
        return self.finish(fault, response)

    @staticmethod
    def _millis(update: dict[str, Any]) -> int:
        return int(re.match(r"/Date\((-?\d+)", update["Date"]).group(1))  # type: ignore[union-attr]

    def _date_filter(self, expression: str | None) -> Any:
        """Only Date comparisons joined by `and`; literals are read in the server's zone."""
        if not expression:
            return lambda millis: True
        bounds = []
        for op, literal in _CLAUSE.findall(expression):
            moment = datetime.fromisoformat(literal).replace(tzinfo=self.zone)
            bounds.append((op.lower(), int(moment.timestamp() * 1000)))
        if not bounds:
            raise ValueError(expression)
        checks = {
            "ge": lambda a, b: a >= b,
            "gt": lambda a, b: a > b,
            "le": lambda a, b: a <= b,
            "lt": lambda a, b: a < b,
        }
        return lambda millis: all(checks[op](millis, bound) for op, bound in bounds)
