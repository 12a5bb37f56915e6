"""The console over HTTP: who may see it, who may act, and what each page shows.
(The same pages in a real browser: tests/e2e/test_console.py.)"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from feedhook.console import views
from feedhook.sim import Receiver, SimFeed
from feedhook.store.base import StoreError

from conftest import ADMIN_TOKEN, SECRET, Admin, admin_for, eventually, one_feed


class Browser:
    """A cookie-keeping client that reads the form value off the pages it gets."""

    def __init__(self, base: str) -> None:
        self.base = base
        # unsafe: keep cookies from an IP address (127.0.0.1), as browsers do.
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.csrf = ""

    async def get(self, path: str) -> tuple[int, str, aiohttp.ClientResponse]:
        async with self.session.get(self.base + path, allow_redirects=False) as r:
            text = await r.text()
        if found := re.search(r'name="csrf" value="([^"]+)"', text):
            self.csrf = found.group(1)
        return r.status, text, r

    async def post(
        self, path: str, form: dict[str, str] | None = None, **headers: str
    ) -> tuple[int, str, aiohttp.ClientResponse]:
        data = {"csrf": self.csrf} if form is None else form
        async with self.session.post(
            self.base + path, data=data, headers=headers, allow_redirects=False
        ) as r:
            return r.status, await r.text(), r

    async def sign_in(self, token: str = ADMIN_TOKEN) -> None:
        status, _, _ = await self.post("/sign-in", {"token": token, "next": "/"})
        assert status == 303, status
        await self.get("/")

    async def close(self) -> None:
        await self.session.close()


@asynccontextmanager
async def console(
    tmp_path: Path, raw: dict[str, Any], token: str | None = ADMIN_TOKEN
) -> AsyncIterator[tuple[Admin, Browser]]:
    async with admin_for(tmp_path, raw, token) as admin:
        browser = Browser(admin.base)
        try:
            yield admin, browser
        finally:
            await browser.close()


async def dead(admin: Admin, subscription: str) -> int:
    _, body = await admin.call("GET", f"/api/dead-letters?subscription={subscription}")
    return len(body["dead_letters"])


async def test_without_a_token_the_console_says_how_to_turn_it_on(
    tmp_path: Path, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """No FEEDHOOK_ADMIN_TOKEN: / explains; no other page and no action exists."""
    async with console(tmp_path, one_feed(sequence_feed, receiver, all={}), token=None) as (
        _,
        browser,
    ):
        status, text, _ = await browser.get("/")
        assert status == 200 and "FEEDHOOK_ADMIN_TOKEN" in text and "console is off" in text
        assert "seq" not in text
        for path in ("/dead-letters", "/events?id=seq:1", "/console/overview"):
            assert (await browser.get(path))[0] == 404
        assert (await browser.post("/sign-in", {"token": ""}))[0] == 404
        assert (await browser.post("/subscriptions/all/disable"))[0] == 404


async def test_nothing_is_shown_and_nothing_done_before_signing_in(
    tmp_path: Path, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """Pages lead to the sign-in form, the refresh answers 401, actions 403, a wrong
    token is refused; the dead letter stays where it was."""
    sequence_feed.add_events(1)
    receiver.answer("strict", 400)
    async with console(tmp_path, one_feed(sequence_feed, receiver, strict={})) as (
        admin,
        browser,
    ):
        await eventually(lambda: len(receiver.received) == 1)
        await eventually(lambda: dead(admin, "strict"), what="the dead letter")
        status, text, _ = await browser.get("/")
        assert status == 200 and 'name="token"' in text and "strict" not in text
        status, _, r = await browser.get("/dead-letters/1")
        assert status == 303 and r.headers["Location"] == "/?next=%2Fdead-letters%2F1"
        assert (await browser.get("/console/overview"))[0] == 401
        for path in ("/dead-letters/1/replay", "/subscriptions/strict/dead-letters/purge"):
            status, text, _ = await browser.post(path, {"csrf": "guess"})
            assert status == 403 and "sign in" in text
        status, text, r = await browser.post("/sign-in", {"token": "wrong", "next": "/"})
        assert status == 401 and "not the admin token" in text and "Set-Cookie" not in r.headers
        assert await dead(admin, "strict") == 1


async def test_signing_in_sets_a_strict_http_only_cookie_and_goes_back(
    tmp_path: Path, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """The cookie is HttpOnly and SameSite=Strict; after signing in the browser goes to
    the page it asked for, never to another site."""
    async with console(tmp_path, one_feed(sequence_feed, receiver, all={})) as (_, browser):
        form = {"token": ADMIN_TOKEN, "next": "/dead-letters?subscription=all"}
        status, _, r = await browser.post("/sign-in", form)
        assert status == 303 and r.headers["Location"] == "/dead-letters?subscription=all"
        cookie = r.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        assert ADMIN_TOKEN not in cookie
        for elsewhere in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
            form = {"token": ADMIN_TOKEN, "next": elsewhere}
            assert (await browser.post("/sign-in", form))[2].headers["Location"] == "/"
        await browser.get("/")  # a page, with the session's form value
        status, _, r = await browser.post("/sign-out")
        assert status == 303
        assert (await browser.get("/console/overview"))[0] == 401


async def test_actions_need_the_session_form_value_and_this_site(
    tmp_path: Path, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """A signed-in browser's POST without the form value, or from another site's page,
    is refused; with both it replays."""
    sequence_feed.add_events(1)
    receiver.answer("strict", 400)
    async with console(tmp_path, one_feed(sequence_feed, receiver, strict={})) as (
        admin,
        browser,
    ):
        await eventually(lambda: dead(admin, "strict"), what="the dead letter")
        await browser.sign_in()
        for form in ({}, {"csrf": "x" * 64}):
            status, text, _ = await browser.post("/dead-letters/1/replay", form)
            assert status == 403 and "not from this browser&#39;s session" in text
        status, text, _ = await browser.post("/dead-letters/1/replay", Origin="http://evil.example")
        assert status == 403 and "another site (http://evil.example" in text
        assert await dead(admin, "strict") == 1
        receiver.answer("strict", 200)
        status, _, r = await browser.post("/dead-letters/1/replay")
        assert status == 303
        assert r.headers["Location"] == "/dead-letters?subscription=strict&done=replayed&count=1"
        await eventually(lambda: len(receiver.ok("strict")) == 1, what="the replayed delivery")


async def test_the_overview_shows_sources_subscriptions_and_the_hour(
    tmp_path: Path, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """Sources with kind, state and counts; subscriptions with state, counts, rate,
    percentiles and a chart; no secret anywhere; the page's own security headers."""
    sequence_feed.add_events(5)
    raw = one_feed(sequence_feed, receiver, all={})
    raw["subscriptions"]["all"]["url"] += "?api_key=receiver-query-secret"
    async with console(tmp_path, raw) as (_, browser):
        await eventually(lambda: len(receiver.ok("all")) == 5)
        await browser.sign_in()
        status, page, r = await browser.get("/")
        assert status == 200
        assert "default-src 'none'" in r.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
        assert r.headers["Cache-Control"] == "no-store"
        _, fragment, _ = await browser.get("/console/overview")
        assert "<html" not in fragment and "<table" in fragment
        row = re.search(r'<th scope="row">seq.*?</tr>', fragment, re.S)
        assert row and "sequence" in row.group(0) and "state-ok" in row.group(0)
        assert re.search(r'class="num">5</td>', row.group(0))  # events ingested
        row = re.search(r'<th scope="row">all.*?</tr>', fragment, re.S)
        assert row is not None
        cells = re.findall(r'<td class="num">([^<]*)</td>', row.group(0))
        assert cells[:2] == ["0", "5"]  # pending, delivered
        assert cells[3] == "5"  # per minute
        assert cells[4].endswith(" ms")  # p50
        assert "Last hour: 5 delivered, 0 failed attempts" in row.group(0)
        assert "api_key=***" in row.group(0)
        for secret in ("receiver-query-secret", SECRET, "secret"):
            assert secret not in page, secret


async def test_dead_letters_listed_paged_shown_replayed_and_purged(
    tmp_path: Path,
    sequence_feed: SimFeed,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two a page; one shown with its reason, answer and event; replay and purge one
    (each asked first), then replay all that are left."""
    monkeypatch.setattr(views, "PAGE_SIZE", 2)
    sequence_feed.add_events(5)
    receiver.answer("strict", 422)
    async with console(tmp_path, one_feed(sequence_feed, receiver, strict={})) as (
        admin,
        browser,
    ):

        async def five() -> bool:
            return await dead(admin, "strict") == 5

        await eventually(five, what="five dead letters")
        await browser.sign_in()
        _, first, _ = await browser.get("/dead-letters?subscription=strict")
        ids = re.findall(r'<td class="num"><a href="/dead-letters/(\d+)">', first)
        assert ids == ["1", "2"] and "Next page" in first
        _, second, _ = await browser.get("/dead-letters?subscription=strict&after=2")
        assert re.findall(r'<td class="num"><a href="/dead-letters/(\d+)">', second) == ["3", "4"]

        status, letter, _ = await browser.get("/dead-letters/1")
        assert status == 200 and "HTTP 422" in letter and "seq:1" in letter
        assert "&#34;specversion&#34;: &#34;1.0&#34;" in letter  # the envelope, escaped
        status, question, _ = await browser.get("/dead-letters/1/purge")
        assert status == 200 and "Purge dead letter 1" in question
        assert await dead(admin, "strict") == 5  # asking did nothing
        status, _, r = await browser.post("/dead-letters/1/purge")
        assert status == 303 and await dead(admin, "strict") == 4
        _, after, _ = await browser.get(r.headers["Location"])
        assert "Purged 1 dead letter(s)." in after
        assert (await browser.get("/dead-letters/1"))[0] == 404

        receiver.answer("strict", 200)
        status, question, _ = await browser.get("/subscriptions/strict/dead-letters/replay")
        assert "Replay all 4 dead letter(s) of strict?" in question
        status, _, r = await browser.post("/subscriptions/strict/dead-letters/replay")
        assert status == 303 and "count=4" in r.headers["Location"]
        await eventually(lambda: len(receiver.ok("strict")) == 4, what="four replayed")


async def test_an_event_is_found_by_its_id_with_every_attempt(
    tmp_path: Path, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """Find seq:1: its envelope and, per subscription, each attempt; an unknown id says
    it is not stored."""
    sequence_feed.add_events(1)
    receiver.plan("flaky", [503])
    async with console(tmp_path, one_feed(sequence_feed, receiver, flaky={}, all={})) as (
        _,
        browser,
    ):
        await eventually(lambda: len(receiver.ok()) == 2)
        await browser.sign_in()
        status, page, _ = await browser.get("/events?id=seq:1")
        assert status == 200 and "sequence.job.updated" in page and "<h3>all" in page
        flaky = page[page.index("<h3>flaky") : page.index("<h2>Envelope")]
        assert [s.strip() for s in re.findall(r'<td class="num">(\d+)</td>', flaky)] == [
            "503",
            "200",
        ]
        assert "retry" in flaky and "delivered" in flaky
        status, page, _ = await browser.get("/events?id=seq:404")
        assert status == 404 and "No event seq:404 is stored" in page


async def test_a_subscription_is_disabled_after_asking_and_enabled_again(
    tmp_path: Path, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    async with console(tmp_path, one_feed(sequence_feed, receiver, all={})) as (
        admin,
        browser,
    ):
        await browser.sign_in()
        status, question, _ = await browser.get("/subscriptions/all/disable")
        assert status == 200 and "Disable all?" in question
        status, _, r = await browser.post("/subscriptions/all/disable")
        assert status == 303 and r.headers["Location"] == "/?done=disabled&name=all"
        _, page, _ = await browser.get(r.headers["Location"])
        assert "Disabled all" in page and "state-disabled" in page
        sequence_feed.add_events(2)
        await admin.worker.until_idle()
        assert receiver.ok("all") == []
        assert (await browser.post("/subscriptions/all/enable"))[0] == 303
        await eventually(lambda: len(receiver.ok("all")) == 2, what="the backlog")
        assert (await browser.get("/subscriptions/nope/disable"))[0] == 404


async def test_a_database_that_does_not_answer_is_said_so(
    tmp_path: Path,
    sequence_feed: SimFeed,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A store error on a page: 503 and its message, not a traceback or a blank page."""
    async with console(tmp_path, one_feed(sequence_feed, receiver, all={})) as (admin, browser):
        await browser.sign_in()

        async def away() -> None:
            raise StoreError("cannot reach the database at db.example:5432 (timeout)")

        monkeypatch.setattr(admin.worker.store, "status", away)
        status, page, _ = await browser.get("/")
        assert status == 503 and "cannot reach the database at db.example:5432" in page
