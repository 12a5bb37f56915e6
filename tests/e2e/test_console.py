"""The console in a real browser (Debian's chromium, headless, driven by Selenium through
chromium-driver) against a real `feedhook run`: sign in, watch the overview refresh by
itself, open a dead letter, replay it and see the receiver get it; without the token,
nothing."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from feedhook.sim import Receiver, SimFeed

from conftest import Cli, eventually, one_feed

selenium = pytest.importorskip("selenium")
from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
TOKEN = "console-token-for-tests"
T = TypeVar("T")

if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    if os.environ.get("CI"):  # CI installs them (.ci/run): their absence is a failure there
        raise RuntimeError("chromium and chromium-driver are missing: apt-get install them")
    pytest.skip("chromium and chromium-driver are not installed", allow_module_level=True)


class Browser:
    """One headless chromium. Its calls block, so tests run them in a thread while the
    event loop keeps serving the simulated feed and receiver."""

    def __init__(self, base: str, phone: bool = False) -> None:
        self.base = base
        self.profile = tempfile.mkdtemp(prefix="feedhook-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (
            "--headless=new",
            "--no-sandbox",  # CI runs as root
            "--disable-gpu",
            "--disable-dev-shm-usage",
            # No calls home: the machine has no way out, and they would only slow the start.
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={self.profile}",
            "--window-size=1280,900",
        ):
            options.add_argument(flag)
        if phone:  # a phone's screen: 390 CSS pixels wide, three device pixels each
            metrics = {"width": 390, "height": 844, "pixelRatio": 3}
            options.add_experimental_option("mobileEmulation", {"deviceMetrics": metrics})
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def text(self) -> str:
        return str(self.driver.find_element(By.TAG_NAME, "body").text)

    def find(self, css: str) -> Any:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def wait(self, check: Callable[[], Any], timeout: float = 15) -> Any:
        # A page being replaced mid-look leaves stale elements: look again.
        ignored = (StaleElementReferenceException, NoSuchElementException)
        waiting = WebDriverWait(self.driver, timeout, 0.1, ignored_exceptions=ignored)
        return waiting.until(lambda _: check())

    def click(self, css: str = "", link: str = "") -> None:
        """Click, finding the element again if the page's refresh replaced it."""

        def clicked() -> bool:
            found = self.driver.find_element(By.LINK_TEXT, link) if link else self.find(css)
            found.click()
            return True

        self.wait(clicked)

    def sign_in(self, token: str) -> None:
        self.open("/")
        field = self.find("#token")
        field.send_keys(token)
        field.send_keys(Keys.ENTER)  # the keyboard is enough

    def quit(self) -> None:
        self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)


async def call(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(fn, *args)


@pytest.fixture
def screenshots() -> Iterator[Path | None]:
    """FEEDHOOK_SCREENSHOTS=dir keeps the pages' screenshots (the README's is one)."""
    folder = os.environ.get("FEEDHOOK_SCREENSHOTS")
    yield Path(folder) if folder else None


async def test_an_operator_signs_in_watches_and_replays_a_dead_letter(
    tmp_path: Path,
    sequence_feed: SimFeed,
    receiver: Receiver,
    screenshots: Path | None,
) -> None:
    cli = Cli(tmp_path)
    cli.env["FEEDHOOK_ADMIN_TOKEN"] = TOKEN
    receiver.answer("strict", 422)
    cli.write_config(one_feed(sequence_feed, receiver, all={}, strict={}))
    sequence_feed.add_events(3)
    proc = await cli.start("run")
    browser: Browser | None = None
    try:
        await eventually(lambda: len(receiver.ok("all")) == 3, what="the first deliveries")
        await eventually(lambda: len(receiver.received) == 6, what="the refusals")
        browser = await call(Browser, cli.admin)
        b = browser

        # Signed in with the keyboard: the overview of the running worker.
        await call(b.sign_in, TOKEN)
        await call(b.wait, lambda: "Subscriptions" in b.text())
        text = await call(b.text)
        assert "seq" in text and "sequence" in text and "strict" in text and "all" in text
        await call(b.driver.execute_script, "window.notReloaded = true")
        delivered = await call(b.find, "table.subscriptions tbody tr:first-child td:nth-child(4)")
        assert (await call(lambda: delivered.text)) == "3"

        # It refreshes by itself: new events show without a reload.
        sequence_feed.add_events(2)
        await eventually(lambda: len(receiver.ok("all")) == 5, what="two more deliveries")

        def refreshed() -> bool:
            cell = b.find("table.subscriptions tbody tr:first-child td:nth-child(4)")
            return bool(cell.text == "5")

        await call(b.wait, refreshed)
        assert await call(b.driver.execute_script, "return window.notReloaded === true")
        if screenshots:
            await call(b.driver.save_screenshot, str(screenshots / "console-overview.png"))

        # strict's dead letters, the first one, replayed after a confirmation.
        await call(b.click, 'a[href="/dead-letters?subscription=strict"]')
        await call(b.wait, lambda: "Dead letters of strict" in b.text())
        await call(b.click, "table.letters tbody tr:first-child td a")
        await call(b.wait, lambda: "The receiver's answer" in b.text())
        text = await call(b.text)
        assert "HTTP 422" in text and '"specversion": "1.0"' in text
        receiver.answer("strict", 200)
        await call(b.click, "", "Replay")
        await call(b.wait, lambda: "Replay dead letter" in b.text())
        await call(b.click, "form.confirm button")
        await call(b.wait, lambda: "Replayed 1 dead letter(s)" in b.text())
        await eventually(lambda: len(receiver.ok("strict")) == 1, what="the replayed delivery")

        # Its trail: the refusal, then the delivery.
        envelope_id = json.loads(receiver.ok("strict")[0].body)["id"]
        await call(b.open, f"/events?id={envelope_id}")
        await call(b.wait, lambda: "Envelope" in b.text())
        text = await call(b.text)
        assert "dead" in text and "delivered" in text and "422" in text
    finally:
        if browser is not None:
            await call(browser.quit)
        await cli.stop(proc)


async def test_without_the_token_nothing_is_shown_and_no_action_works(
    tmp_path: Path, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    cli = Cli(tmp_path)
    cli.env["FEEDHOOK_ADMIN_TOKEN"] = TOKEN
    receiver.answer("strict", 422)
    cli.write_config(one_feed(sequence_feed, receiver, strict={}))
    sequence_feed.add_events(1)
    proc = await cli.start("run")
    browser: Browser | None = None
    try:
        await eventually(lambda: len(receiver.received) == 1, what="the refusal")
        browser = await call(Browser, cli.admin, True)
        b = browser
        await call(b.open, "/dead-letters/1")
        await call(b.wait, lambda: "Admin token" in b.text())
        assert "strict" not in await call(b.text)
        await call(b.sign_in, "not-the-token")
        await call(b.wait, lambda: "not the admin token" in b.text())
        assert "strict" not in await call(b.text)
        # Signed in (readable on a phone), then a page of another site posts a replay.
        await call(b.sign_in, TOKEN)
        await call(b.wait, lambda: "Subscriptions" in b.text())
        # Nothing is wider than the screen but for the tables' own scrolling areas.
        width = await call(b.driver.execute_script, "return document.documentElement.scrollWidth")
        assert width == 390
        # A replay button posted from a page of another origin: refused.
        forged = (
            f"<form method=post action='{cli.admin}/dead-letters/1/replay'>"
            "<input name=csrf value=x><button id=go>go</button></form>"
        )
        await call(b.driver.get, f"data:text/html,{forged}")
        await call(b.click, "#go")
        await call(b.wait, lambda: "Refused" in b.text())
        receiver.answer("strict", 200)
        await asyncio.sleep(1.5)
        assert receiver.ok("strict") == []
    finally:
        if browser is not None:
            await call(browser.quit)
        await cli.stop(proc)
