"""The console's pages: the overview, dead letters, one event's trail, and the actions
an operator takes on them. Server-rendered; the only script refreshes the overview."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from functools import cache, wraps
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from aiohttp import web

from feedhook import clock
from feedhook.app import Worker
from feedhook.config.values import format_duration
from feedhook.console.session import COOKIE, Sessions
from feedhook.delivery.activity import Summary
from feedhook.logs import redact
from feedhook.report import dead_letter_document, trace_document
from feedhook.store.base import StoreError

log = logging.getLogger("feedhook.console")

HERE = Path(__file__).parent
PAGE_SIZE = 50
REFRESH_SECONDS = 5
FAILED_SIGN_IN_DELAY = 0.5  # each wrong token costs the guesser half a second

SESSIONS = web.AppKey("console_sessions", Sessions)
WORKER: web.AppKey[Callable[[], Worker | None]] = web.AppKey("console_worker")

# Pages are self-contained: scripts and styles from /static only, no frames, forms post
# back here only.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self';"
    " img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none';"
    " base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
# What an action did, shown on the page it leads to (codes, so no link can make the
# console say something of its choosing).
NOTICES = {
    "replayed": "Replayed {count} dead letter(s): they are back in the outbox and go out"
    " within a moment.",
    "purged": "Purged {count} dead letter(s).",
    "disabled": "Disabled {name}: its deliveries wait as pending until it is enabled.",
    "enabled": "Enabled {name}: its backlog goes out in order.",
}


DONE = {"replay": "replayed", "purge": "purged", "disable": "disabled", "enable": "enabled"}


def _timestamp(value: str | float | None) -> float | None:
    if value is None or isinstance(value, float | int):
        return value
    return datetime.fromisoformat(value).timestamp()


def ago(value: str | float | None) -> str:
    """'12s ago', 'in 3m', or 'never'."""
    at = _timestamp(value)
    if at is None:
        return "never"
    delta = clock.now() - at
    if abs(delta) < 1:
        return "just now"
    return f"{format_duration(delta)} ago" if delta > 0 else f"in {format_duration(-delta)}"


def moment(value: str | float | None) -> str:
    at = _timestamp(value)
    return "" if at is None else datetime.fromtimestamp(at).astimezone().isoformat("T", "seconds")


def millis(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.0f} s"


def size(count: int | None) -> str:
    if count is None:
        return "–"
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


@cache
def templates() -> Any:
    """The pages' templates, loaded with Jinja2 when the first page is shown: a worker
    whose console nobody opens does not hold the template engine."""
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(ago=ago, moment=moment, millis=millis, size=size)
    return environment


def chart(minutes: tuple[tuple[int, int], ...]) -> dict[str, Any]:
    """The hour as bars, one a minute: delivered below, failed stacked above."""
    height, width = 40, 4
    top = max((ok + failed for ok, failed in minutes), default=0) or 1
    bars = []
    for index, (ok, failed) in enumerate(minutes):
        ok_h, failed_h = ok / top * height, failed / top * height
        bars.append(
            {
                "x": index * width,
                "ok_y": height - ok_h,
                "ok_h": ok_h,
                "failed_y": height - ok_h - failed_h,
                "failed_h": failed_h,
            }
        )
    return {
        "bars": bars,
        "width": len(minutes) * width,
        "height": height,
        "delivered": sum(ok for ok, _ in minutes),
        "failed": sum(failed for _, failed in minutes),
        "peak": top,
    }


# --- access --------------------------------------------------------------------------


@dataclass(frozen=True)
class Visit:
    """A signed-in browser's request: the worker it looks at, the session's form value."""

    worker: Worker
    csrf: str


Page = Callable[[web.Request, Visit], Awaitable[web.StreamResponse]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def render(
    request: web.Request,
    template: str,
    status: int = 200,
    visit: Visit | None = None,
    **context: Any,
) -> web.Response:
    def static(name: str) -> str:
        return str(request.app.router["static"].url_for(filename=name))

    page = templates().get_template(template)
    text = page.render(
        static=static,
        signed_in=visit is not None,
        csrf=visit.csrf if visit is not None else "",
        nav=context.pop("nav", None),
        **context,
    )
    return web.Response(text=text, status=status, content_type="text/html", headers=HEADERS)


def _see(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, **HEADERS})


def _same_origin(request: web.Request) -> bool:
    """A browser says where a POST comes from; one from another site is refused."""
    origin = request.headers.get("Origin")
    return origin is None or urlsplit(origin).netloc == request.host


def _local(target: str) -> str:
    """Where to go after signing in: a path of this console, never another site."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def _off(request: web.Request) -> web.Response:
    """No admin token: the console says how to turn it on, and nothing else exists."""
    status = 200 if request.path == "/" else 404
    return render(request, "off.html", status=status, title="Console off")


def page(handler: Page) -> Handler:
    """A page or action of the console: off without a token; otherwise only for a
    signed-in browser, and a POST only with the session's form value from this site."""

    @wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        sessions = request.app.get(SESSIONS)
        if sessions is None:
            return _off(request)
        nonce = sessions.verify(request.cookies.get(COOKIE), clock.now())
        if request.method == "POST":
            form = await request.post()
            given = form.get("csrf")
            refused = None
            if nonce is None:
                refused = "This action needs a signed-in browser: sign in, then try again."
            elif not _same_origin(request):
                refused = (
                    f"This action came from a page of another site ({request.headers['Origin']},"
                    f" while this is {request.host}). Behind a proxy, pass the Host header"
                    " through unchanged."
                )
            elif not isinstance(given, str) or not sessions.csrf_ok(nonce, given):
                refused = "This form is not from this browser's session: reload the page."
            if refused is not None or nonce is None:
                return render(request, "error.html", status=403, title="Refused", message=refused)
        elif nonce is None:
            if request.path == "/console/overview":
                return web.Response(status=401, text="signed out", headers=HEADERS)
            if request.path == "/":
                target = _local(request.query.get("next", "/"))
                return render(request, "sign_in.html", title="Sign in", next=target)
            return _see("/?" + urlencode({"next": request.path_qs}))
        worker = request.app[WORKER]()
        if worker is None:
            return render(
                request,
                "error.html",
                status=503,
                title="Starting",
                message="feedhook is starting: the store is not open yet. Reload in a moment.",
            )
        visit = Visit(worker, sessions.csrf(nonce))
        try:
            return await handler(request, visit)
        except StoreError as exc:  # the database is away: say so, the worker carries on
            return render(
                request,
                "error.html",
                status=503,
                visit=visit,
                title="The database is not answering",
                message=f"{redact(str(exc))} This page works again once it answers.",
            )
        except Exception:
            log.exception("console request %s %s failed", request.method, request.path)
            return render(
                request,
                "error.html",
                status=500,
                visit=visit,
                title="Error",
                message="Something failed inside feedhook; its log says what.",
            )

    return guarded


async def sign_in(request: web.Request) -> web.Response:
    sessions = request.app.get(SESSIONS)
    form = await request.post()
    target = _local(str(form.get("next", "/")))
    if sessions is None:
        return _off(request)
    token = form.get("token")
    if not _same_origin(request) or not isinstance(token, str) or not sessions.token_ok(token):
        await asyncio.sleep(FAILED_SIGN_IN_DELAY)
        return render(
            request,
            "sign_in.html",
            status=401,
            title="Sign in",
            next=target,
            error="That is not the admin token (FEEDHOOK_ADMIN_TOKEN).",
        )
    response = _see(target)
    response.set_cookie(
        COOKIE,
        sessions.issue(clock.now()),
        httponly=True,
        samesite="Strict",
        secure=request.secure,
        path="/",
    )
    return response


@page
async def sign_out(request: web.Request, visit: Visit) -> web.StreamResponse:
    response = _see("/")
    response.del_cookie(COOKIE, path="/")
    return response


# --- the overview --------------------------------------------------------------------


async def _overview(worker: Worker) -> dict[str, Any]:
    document = await worker.status()
    activity = worker.activity()
    idle = Summary(0.0, None, None, ((0, 0),) * 60)
    subscriptions = {
        name: {**entry, "activity": (a := activity.get(name, idle)), "chart": chart(a.minutes)}
        for name, entry in document["subscriptions"].items()
    }
    return {
        "sources": document["sources"],
        "subscriptions": subscriptions,
        "replicas": document.get("replicas", {}),
        "storage": document.get("storage"),
        "refresh": REFRESH_SECONDS,
    }


@page
async def overview(request: web.Request, visit: Visit) -> web.StreamResponse:
    return render(
        request,
        "overview.html",
        visit=visit,
        title="Overview",
        nav="overview",
        notice=_notice(request),
        **await _overview(visit.worker),
    )


@page
async def overview_fragment(request: web.Request, visit: Visit) -> web.StreamResponse:
    return render(request, "_overview.html", visit=visit, **await _overview(visit.worker))


def _notice(request: web.Request) -> str | None:
    template = NOTICES.get(request.query.get("done", ""))
    if template is None:
        return None
    count = request.query.get("count", "0")
    return template.format(
        count=count if count.isdigit() else "0", name=request.query.get("name", "")
    )


# --- dead letters --------------------------------------------------------------------


def _whole(raw: str | None, default: int = 0) -> int:
    return int(raw) if raw and raw.isascii() and raw.isdigit() and len(raw) < 19 else default


def _subscription(request: web.Request) -> str | None:
    return request.query.get("subscription") or None


@page
async def dead_letters(request: web.Request, visit: Visit) -> web.StreamResponse:
    worker = visit.worker
    subscription = _subscription(request)
    after = _whole(request.query.get("after"))
    letters = await worker.dead_letters(subscription, PAGE_SIZE, after)
    next_after = letters[-1].id if len(letters) == PAGE_SIZE else None
    query = {"subscription": subscription} if subscription else {}
    return render(
        request,
        "dead_letters.html",
        visit=visit,
        title="Dead letters",
        nav="dead",
        notice=_notice(request),
        letters=[dead_letter_document(d) for d in letters],
        subscription=subscription,
        subscriptions=sorted(worker.config.subscriptions),
        first_page=after == 0,
        next_page=f"?{urlencode({**query, 'after': next_after})}" if next_after else None,
        this_page=f"?{urlencode(query)}",
    )


async def _letter(request: web.Request, visit: Visit) -> dict[str, Any] | None:
    dead_id = _whole(request.match_info["id"])
    letter = await visit.worker.dead_letter(dead_id) if dead_id else None
    return None if letter is None else dead_letter_document(letter, with_event=True)


def _missing(request: web.Request, visit: Visit, what: str) -> web.Response:
    return render(request, "error.html", 404, visit, title="Not found", message=what)


@page
async def dead_letter(request: web.Request, visit: Visit) -> web.StreamResponse:
    letter = await _letter(request, visit)
    if letter is None:
        return _missing(request, visit, f"No dead letter {request.match_info['id']}.")
    return render(
        request,
        "dead_letter.html",
        visit=visit,
        title=f"Dead letter {letter['id']}",
        nav="dead",
        letter=letter,
        event=json.dumps(letter.get("event"), indent=2, ensure_ascii=False),
    )


def _confirm(
    request: web.Request,
    visit: Visit,
    action: str,
    what: str,
    explanation: str,
    cancel: str,
    nav: str = "dead",
) -> web.Response:
    """The page that asks before an action: its button posts the same path."""
    question = f"{action.capitalize()} {what}?"
    return render(
        request,
        "confirm.html",
        visit=visit,
        title=question,
        nav=nav,
        question=question,
        explanation=explanation,
        action=action,
        cancel=cancel,
    )


# What replaying or purging does, said of one dead letter and of all of a subscription's.
ACTIONS = {
    "replay": (
        "It goes back into the outbox with a fresh budget of attempts.",
        "They go back into the outbox with a fresh budget of attempts, oldest first.",
    ),
    "purge": (
        "It is deleted for good; the event stays stored for other subscriptions.",
        "They are deleted for good; the events stay stored for other subscriptions.",
    ),
}


@page
async def one_letter(request: web.Request, visit: Visit) -> web.StreamResponse:
    """Replay or purge one dead letter: GET asks, POST does."""
    action = request.match_info["action"]
    letter = await _letter(request, visit)
    if letter is None:
        return _missing(request, visit, f"No dead letter {request.match_info['id']}.")
    if request.method == "GET":
        return _confirm(
            request,
            visit,
            action,
            f"dead letter {letter['id']} ({letter['envelope_id']} to {letter['subscription']})",
            ACTIONS[action][0],
            cancel=f"/dead-letters/{letter['id']}",
        )
    worker = visit.worker
    if action == "replay":
        count = await worker.replay_dead([letter["id"]], None)
    else:
        count = await worker.purge_dead([letter["id"]])
    query = {"subscription": letter["subscription"], "done": DONE[action], "count": count}
    return _see(f"/dead-letters?{urlencode(query)}")


@page
async def all_letters(request: web.Request, visit: Visit) -> web.StreamResponse:
    """Replay or purge every dead letter of a subscription: GET asks, POST does."""
    action, name = request.match_info["action"], request.match_info["name"]
    worker = visit.worker
    if request.method == "GET":
        waiting = (await worker.status())["subscriptions"].get(name, {}).get("dead", 0)
        return _confirm(
            request,
            visit,
            action,
            f"all {waiting} dead letter(s) of {name}",
            ACTIONS[action][1],
            cancel=f"/dead-letters?{urlencode({'subscription': name})}",
        )
    if action == "replay":
        count = await worker.replay_dead(None, name)
    else:
        count = await worker.purge_dead(None, name)
    query = {"subscription": name, "done": DONE[action], "count": count}
    return _see(f"/dead-letters?{urlencode(query)}")


# --- one event -----------------------------------------------------------------------


@page
async def find_event(request: web.Request, visit: Visit) -> web.StreamResponse:
    envelope_id = request.query.get("id", "").strip()
    trace = await visit.worker.trace(envelope_id) if envelope_id else None
    document = trace_document(trace) if trace is not None else None
    return render(
        request,
        "event.html",
        visit=visit,
        status=404 if envelope_id and document is None else 200,
        title=f"Event {envelope_id}" if envelope_id else "Find an event",
        nav="event",
        envelope_id=envelope_id,
        trace=document,
        event=json.dumps(document["event"], indent=2, ensure_ascii=False) if document else "",
    )


# --- subscriptions -------------------------------------------------------------------


@page
async def subscription_state(request: web.Request, visit: Visit) -> web.StreamResponse:
    """Disable (asked first) or enable a subscription."""
    name, action = request.match_info["name"], request.match_info["action"]
    worker = visit.worker
    if name not in worker.config.subscriptions:
        return _missing(request, visit, f"No subscription {name} is configured.")
    if request.method == "GET":
        explanation = (
            "Nothing is sent to it until it is enabled again; its deliveries wait as"
            " pending, none is lost."
            if action == "disable"
            else "Its waiting deliveries go out in order."
        )
        return _confirm(request, visit, action, name, explanation, cancel="/", nav="overview")
    await worker.set_enabled(name, action == "enable")
    return _see(f"/?{urlencode({'done': DONE[action], 'name': name})}")


def add_console(
    app: web.Application, token: str | None, worker: Callable[[], Worker | None]
) -> None:
    """The console's routes on the admin server (`/`; off, saying how to turn it on,
    without a token)."""
    if token:
        app[SESSIONS] = Sessions(token)
    app[WORKER] = worker
    route = app.router
    route.add_static("/static", HERE / "static", name="static", append_version=True)
    route.add_get("/", overview)
    route.add_get("/console/overview", overview_fragment)
    route.add_post("/sign-in", sign_in)
    route.add_post("/sign-out", sign_out)
    route.add_get("/dead-letters", dead_letters)
    route.add_get("/dead-letters/{id}", dead_letter)
    # Actions: GET asks for a confirmation, POST (from that page) does it.
    for path, handler in (
        ("/dead-letters/{id}/{action:replay|purge}", one_letter),
        ("/subscriptions/{name}/dead-letters/{action:replay|purge}", all_letters),
        ("/subscriptions/{name}/{action:disable|enable}", subscription_state),
    ):
        route.add_get(path, handler)
        route.add_post(path, handler)
    route.add_get("/events", find_event)
