"""The admin HTTP server inside `feedhook run`: health, readiness, metrics, and (with a
token) the API and the console."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from feedhook import openapi
from feedhook.app import Worker
from feedhook.console import add_console
from feedhook.report import dead_letter_document, trace_document
from feedhook.settings import Settings

log = logging.getLogger("feedhook.admin")

MAX_PAGE = 1000


@dataclass
class Runtime:
    """What the admin server can see: nothing until the worker exists (not ready)."""

    worker: Worker | None = None


RUNTIME = web.AppKey("runtime", Runtime)
TOKEN = web.AppKey("token", str)


class AdminError(Exception):
    """The admin server cannot start."""


def _json(document: Any, status: int = 200) -> web.Response:
    return web.json_response(document, status=status, dumps=lambda d: json.dumps(d, indent=2))


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return _json({"error": message, **extra}, status=status)


def _worker(request: web.Request) -> Worker:
    worker = request.app[RUNTIME].worker
    if worker is None:
        raise web.HTTPServiceUnavailable(
            text=json.dumps({"error": "starting: the store is not open yet"}),
            content_type="application/json",
        )
    return worker


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def api_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """/api/* needs the bearer token; every failure answers JSON, never a traceback."""
    if request.path.startswith("/api/"):
        if TOKEN not in request.app:
            return _error(404, "the admin API is off: set FEEDHOOK_ADMIN_TOKEN to enable it")
        expected = request.app[TOKEN]
        given = request.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        try:
            sent = token.encode()
        except UnicodeError:  # bytes that are not UTF-8: no token of ours
            sent = b""
        if scheme.lower() != "bearer" or not hmac.compare_digest(sent, expected.encode()):
            return _error(401, "missing or wrong token: send Authorization: Bearer <token>")
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        return _error(exc.status, exc.reason)
    except Exception:
        log.exception("admin request %s %s failed", request.method, request.path)
        return _error(500, "internal error; see the feedhook log")


# --- health, readiness, metrics ------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    worker = request.app[RUNTIME].worker
    if worker is not None and worker.running and not worker.alive():
        return _json({"status": "unhealthy", "reason": "a worker task has stopped"}, 503)
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    worker = request.app[RUNTIME].worker
    if worker is None:
        return _json({"ready": False, "reason": "starting"}, 503)
    ready, document = worker.readiness()
    return _json(document, 200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    body = await _worker(request).metrics_text()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


# --- the API -------------------------------------------------------------------------


def _int(request: web.Request, key: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"{key} must be a whole number from {low} to {high}"}),
            content_type="application/json",
        )
    return value


def _dead_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not (raw.isascii() and raw.isdigit() and 0 < int(raw) < 2**63):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "a dead letter id is a whole number from 1 to 2^63-1"}),
            content_type="application/json",
        )
    return int(raw)


async def api_status(request: web.Request) -> web.Response:
    return _json(await _worker(request).status())


async def api_dead_letters(request: web.Request) -> web.Response:
    worker = _worker(request)
    limit = _int(request, "limit", 100, 1, MAX_PAGE)
    after = _int(request, "after", 0, 0, 2**62)
    subscription = request.query.get("subscription") or None
    letters = await worker.dead_letters(subscription, limit, after)
    return _json(
        {
            "dead_letters": [dead_letter_document(d) for d in letters],
            "next_after": letters[-1].id if len(letters) == limit else None,
        }
    )


async def api_dead_letter(request: web.Request) -> web.Response:
    letter = await _worker(request).dead_letter(_dead_id(request))
    if letter is None:
        return _error(404, f"no dead letter {request.match_info['id']}")
    return _json(dead_letter_document(letter, with_event=True))


async def api_replay_one(request: web.Request) -> web.Response:
    dead_id = _dead_id(request)
    if not (count := await _worker(request).replay_dead([dead_id], None)):
        return _error(404, f"no dead letter {dead_id}")
    return _json({"replayed": count})


async def api_replay_bulk(request: web.Request) -> web.Response:
    subscription = request.query.get("subscription") or None
    return _json({"replayed": await _worker(request).replay_dead(None, subscription)})


async def api_purge_one(request: web.Request) -> web.Response:
    dead_id = _dead_id(request)
    if not await _worker(request).purge_dead([dead_id]):
        return _error(404, f"no dead letter {dead_id}")
    return _json({"purged": 1})


async def api_event(request: web.Request) -> web.Response:
    envelope_id = request.match_info["id"]
    trace = await _worker(request).trace(envelope_id)
    if trace is None:
        return _error(404, f"no event {envelope_id} is stored")
    return _json(trace_document(trace))


async def api_subscription_state(request: web.Request) -> web.Response:
    name, action = request.match_info["name"], request.match_info["action"]
    try:
        changed = await _worker(request).set_enabled(name, action == "enable")
    except KeyError:
        return _error(404, f"no subscription {name} is configured")
    return _json({"subscription": name, "state": f"{action}d", "changed": changed})


async def api_openapi(request: web.Request) -> web.Response:
    return _json(openapi.document())


async def api_reload(request: web.Request) -> web.Response:
    ok, lines = await _worker(request).reload_from_file()
    if not ok:
        return _error(400, "invalid configuration; the running one stays", errors=lines)
    return _json({"reloaded": True, "changes": lines})


def build_app(runtime: Runtime, token: str | None) -> web.Application:
    app = web.Application(middlewares=[api_guard])
    app[RUNTIME] = runtime
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    add_console(app, token, lambda: runtime.worker)
    if token:
        app[TOKEN] = token
        app.router.add_get("/api/openapi.json", api_openapi)
        app.router.add_get("/api/status", api_status)
        app.router.add_get("/api/dead-letters", api_dead_letters)
        app.router.add_post("/api/dead-letters/replay", api_replay_bulk)
        app.router.add_get("/api/dead-letters/{id}", api_dead_letter)
        app.router.add_post("/api/dead-letters/{id}/replay", api_replay_one)
        app.router.add_delete("/api/dead-letters/{id}", api_purge_one)
        app.router.add_post("/api/reload", api_reload)
        app.router.add_get("/api/events/{id}", api_event)
        app.router.add_post(
            "/api/subscriptions/{name}/{action:disable|enable}", api_subscription_state
        )
    return app


class AdminServer:
    def __init__(self, runtime: Runtime, settings: Settings) -> None:
        self.host = settings.admin_host
        self.port = settings.admin_port
        self.app = build_app(runtime, settings.admin_token)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise AdminError(
                f"the admin server cannot listen on {self.host}:{self.port} ({exc.strerror}); "
                "set FEEDHOOK_ADMIN_HOST / FEEDHOOK_ADMIN_PORT"
            ) from None
        self._runner = runner
        self.port = runner.addresses[0][1]
        api = (
            "console at /, API at /api"
            if TOKEN in self.app
            else "no console or /api: FEEDHOOK_ADMIN_TOKEN is not set"
        )
        log.info("admin server on http://%s:%d (%s)", self.host, self.port, api)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
