"""Fault switches shared by every simulated upstream: the ways real feeds go wrong."""

from __future__ import annotations

import asyncio
import enum
import json
import time
from collections import deque

from aiohttp import web

from feedhook.sim.serve import LoopbackServer


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


class SimUpstream:
    """A simulated API on loopback with a request budget (and ban) and injectable faults.

    Subclasses call `gate(request)` at the top of each feed handler, and `finish(fault,
    response)` on the answer they built.
    """

    def __init__(
        self,
        slow_seconds: float = 5.0,
        rate_limit_reset: int = 1,
        rate_limit: tuple[int, float] | None = None,
        ban_seconds: float = 300.0,
    ) -> None:
        self.slow_seconds = slow_seconds
        self.rate_limit_reset = rate_limit_reset
        # BeBanjo: 150 requests per 30 s per API user, then a 300 s ban answered with 429.
        self.rate_limit = rate_limit
        self.ban_seconds = ban_seconds
        self._recent: deque[float] = deque()
        self._banned_until = 0.0
        self._faults: deque[Fault] = deque()
        self.faults_served: list[Fault] = []
        self.requests: list[str] = []
        # Error answers quote the request back, headers included, as some servers do:
        # for tests that credentials never travel on from there.
        self.echo_requests = False
        self.server = LoopbackServer(self.app())

    def app(self) -> web.Application:
        raise NotImplementedError

    @property
    def api_url(self) -> str:
        """The API root to configure as a source's url."""
        return f"{self.server.url}/api"

    async def start(self) -> str:
        await self.server.start()
        return self.api_url

    async def stop(self) -> None:
        await self.server.stop()

    def inject(self, fault: Fault | str, times: int = 1) -> None:
        """The next `times` feed responses fail this way."""
        self._faults.extend([Fault(fault)] * times)

    @property
    def pending_faults(self) -> int:
        return len(self._faults)

    async def gate(self, request: web.Request) -> tuple[web.Response | None, Fault | None]:
        """Record the request; answer for it when over budget or a fault replaces it."""
        self.requests.append(request.path_qs)
        if (refused := self._over_budget()) is not None:
            return refused, None
        fault = self._faults.popleft() if self._faults else None
        if fault is None:
            return None, None
        self.faults_served.append(fault)
        if fault is Fault.SLOW:
            await asyncio.sleep(self.slow_seconds)
            return None, fault
        response = self._fault_response(fault)
        if response is not None and self.echo_requests:
            response.text = f"{response.text}{self.echo(request)}"
        return response, fault

    def echo(self, request: web.Request, extra: object = "") -> str:
        """The request as an error page might quote it (when `echo_requests` is on)."""
        if not self.echo_requests:
            return ""
        quoted = json.dumps({"headers": dict(request.headers), "form": extra})
        return f"\nyour request: {request.method} {request.path_qs} {quoted}"

    @staticmethod
    def finish(fault: Fault | None, response: web.Response) -> web.Response:
        """Apply a fault that spoils an otherwise good answer."""
        if fault is Fault.TRUNCATED and response.body is not None:
            whole = bytes(response.body)  # type: ignore[arg-type]
            response.body = whole[: max(1, len(whole) // 2)]
        return response

    def unauthorized(self) -> web.Response:
        return web.Response(status=401, text="Unauthorized\n")

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

    def _fault_response(self, fault: Fault) -> web.Response | None:
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
            return self.unauthorized()
        return None
