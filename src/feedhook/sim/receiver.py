"""A webhook receiver that records every request and answers as told."""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from feedhook.sim.serve import LoopbackServer


@dataclass(frozen=True, slots=True)
class Received:
    path: str
    webhook_id: str
    headers: dict[str, str]
    body: bytes
    at: float
    status: int


@dataclass
class _Behaviour:
    plan: deque[int] = field(default_factory=deque)
    status: int = 200
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    echo: bool = False
    # The CloudEvents handshake: the origin allowed (None: refuse) and the rate per minute.
    allowed_origin: str | None = "*"
    allowed_rate: int | None = None


class Receiver:
    """POST /<name> records the request; answers 200 unless planned otherwise."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.handshakes: list[tuple[str, str]] = []  # (name, WebHook-Request-Origin)
        self.listeners: list[Callable[[Received], None]] = []
        self._behaviour: dict[str, _Behaviour] = {}
        self._changed = asyncio.Condition()
        self.server = LoopbackServer(self.app())

    def url(self, name: str) -> str:
        return f"{self.server.url}/{name}"

    async def start(self) -> str:
        return await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    def _for(self, name: str) -> _Behaviour:
        return self._behaviour.setdefault(name, _Behaviour())

    def plan(self, name: str, statuses: list[int]) -> None:
        """Answer these statuses to the next requests on /name, then the usual status."""
        self._for(name).plan.extend(statuses)

    def answer(
        self,
        name: str,
        status: int = 200,
        delay: float = 0.0,
        headers: dict[str, str] | None = None,
        echo: bool = False,
    ) -> None:
        """From now on answer /name with this status after `delay` seconds; with `echo`,
        quote the request's headers back in the body (as some frameworks' error pages do)."""
        behaviour = self._for(name)
        behaviour.status, behaviour.delay, behaviour.headers = status, delay, headers or {}
        behaviour.echo = echo

    def ok(self, name: str | None = None) -> list[Received]:
        """Requests answered 2xx (on /name, or all)."""
        return [
            r for r in self.received if 200 <= r.status < 300 and (name is None or r.path == name)
        ]

    async def wait_for(self, predicate: Callable[[Receiver], bool], timeout: float) -> bool:
        async def until() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: predicate(self))

        try:
            await asyncio.wait_for(until(), timeout)
        except TimeoutError:
            return False
        return True

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/{name}", self._handle)
        app.router.add_route("OPTIONS", "/{name}", self._validate)
        return app

    def allow(self, name: str, origin: str | None, per_minute: int | None = None) -> None:
        """How /name answers the CloudEvents validation handshake: allowing `origin`
        (`*`: anyone; None: refusing), at most `per_minute` deliveries."""
        behaviour = self._for(name)
        behaviour.allowed_origin, behaviour.allowed_rate = origin, per_minute

    async def _validate(self, request: web.Request) -> web.Response:
        """OPTIONS /<name>: the CloudEvents HTTP webhook validation request, recorded."""
        name = request.match_info["name"]
        behaviour = self._for(name)
        self.handshakes.append((name, request.headers.get("WebHook-Request-Origin", "")))
        headers = {"Allow": "POST"}
        if behaviour.allowed_origin is not None:
            headers["WebHook-Allowed-Origin"] = behaviour.allowed_origin
            if behaviour.allowed_rate is not None:
                headers["WebHook-Allowed-Rate"] = str(behaviour.allowed_rate)
        return web.Response(status=200, headers=headers)

    async def _handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await request.read()
        behaviour = self._for(name)
        if behaviour.delay:
            await asyncio.sleep(behaviour.delay)
        status = behaviour.plan.popleft() if behaviour.plan else behaviour.status
        record = Received(
            path=name,
            webhook_id=request.headers.get("webhook-id", ""),
            headers=dict(request.headers),
            body=body,
            at=time.time(),
            status=status,
        )
        self.received.append(record)
        for listener in self.listeners:
            listener(record)
        async with self._changed:
            self._changed.notify_all()
        text = "ok" if status < 300 else f"receiver says no ({status})"
        if behaviour.echo:
            text += f" to {json.dumps(dict(request.headers))}"
        return web.Response(status=status, text=text, headers=behaviour.headers)
