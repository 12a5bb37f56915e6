"""The admin server: health, readiness, metrics, the token-guarded API, live reload."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import jsonschema
import pytest
import yaml

from feedhook.admin import AdminServer, Runtime
from feedhook.settings import Settings
from feedhook.sim import Fault, Receiver, SimFeed

from conftest import ADMIN_TOKEN as TOKEN
from conftest import admin_for, eventually, free_port, one_feed, subscription


async def test_not_ready_until_the_store_is_open() -> None:
    """Before the worker exists: alive, not ready; the API answers JSON 503."""
    runtime = Runtime()
    server = AdminServer(runtime, Settings(admin_port=free_port(), admin_token=TOKEN))
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            base = f"http://127.0.0.1:{server.port}"
            async with session.get(f"{base}/healthz") as r:
                assert r.status == 200
            async with session.get(f"{base}/readyz") as r:
                assert r.status == 503 and (await r.json())["ready"] is False
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with session.get(f"{base}/api/status", headers=headers) as r:
                assert r.status == 503 and "starting" in (await r.json())["error"]
    finally:
        await server.stop()


async def test_health_readiness_and_a_failing_source(
    tmp_path: Path, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """Ready with per-source state; a source failing longer than 3 polls shows as failing
    while readiness stays 200."""
    sequence_feed.add_events(3)
    async with admin_for(tmp_path, one_feed(sequence_feed, receiver, all={})) as admin:
        assert (await admin.call("GET", "/healthz"))[0] == 200
        await eventually(lambda: len(receiver.ok()) == 3)
        status, body = await admin.call("GET", "/readyz")
        assert status == 200 and body["sources"]["seq"]["state"] == "ok"
        assert body["failing"] == []
        sequence_feed.inject(Fault.ERROR_500, times=1000)

        async def failing() -> bool:
            status, body = await admin.call("GET", "/readyz")
            return status == 200 and body["failing"] == ["seq"]

        await eventually(failing, what="the source to show as failing")
        _, body = await admin.call("GET", "/readyz")
        assert body["sources"]["seq"]["cause"] == "http_500"  # a label, never upstream text
        assert "last_error" not in body["sources"]["seq"]


async def test_metrics_move_with_the_work(
    tmp_path: Path, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """Counters, histograms and gauges follow ingest, delivery, failures and replays."""
    sequence_feed.add_events(9)
    receiver.answer("strict", 400)
    raw = one_feed(sequence_feed, receiver, all={}, strict={"types": ["sequence.job.*"]})
    async with admin_for(tmp_path, raw) as admin:
        await eventually(lambda: len(receiver.ok("all")) == 9)

        async def three_dead() -> bool:
            return await admin.metric("feedhook_dead_letters", subscription="strict") == 3

        await eventually(three_dead, what="the dead-letter gauge")
        m = admin.metric
        assert (
            await m("feedhook_events_ingested_total", source="seq", type="sequence.job.created")
            == 1
        )
        assert await m("feedhook_deliveries_total", subscription="all", outcome="delivered") == 9
        assert await m("feedhook_deliveries_total", subscription="strict", outcome="dead") == 3
        assert await m("feedhook_delivery_attempt_seconds_count", subscription="all") == 9
        assert await m("feedhook_delivery_latency_seconds_count", subscription="all") == 9
        assert await m("feedhook_pending_deliveries", subscription="all") == 0
        assert await m("feedhook_source_polls_total", source="seq") >= 1
        assert 0 <= await m("feedhook_source_seconds_since_success", source="seq") < 5
        assert await m("feedhook_source_lag_seconds", source="seq") > 0

        sequence_feed.inject(Fault.TRUNCATED)

        async def error_counted() -> bool:
            return (
                await m("feedhook_source_poll_errors_total", source="seq", cause="invalid_json")
                == 1
            )

        await eventually(error_counted, what="the poll error")
        sequence_feed.add_events(3)
        await eventually(lambda: len(receiver.ok("all")) == 12)
        assert await m("feedhook_deliveries_total", subscription="all", outcome="delivered") == 12


async def test_api_needs_the_token(
    tmp_path: Path, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """401 without or with a wrong token; no /api at all without FEEDHOOK_ADMIN_TOKEN."""
    async with admin_for(tmp_path, one_feed(sequence_feed, receiver, all={})) as admin:
        assert (await admin.call("GET", "/api/status", token=None))[0] == 401
        status, body = await admin.call("GET", "/api/status", token="wrong")
        assert status == 401 and "Bearer" in body["error"]
        status, body = await admin.call("GET", "/api/status")
        assert status == 200 and body["sources"]["seq"]["state"] in ("ok", "starting")
        assert body["subscriptions"]["all"]["pending"] == 0
    async with admin_for(
        tmp_path / "x", one_feed(sequence_feed, receiver, all={}), token=None
    ) as admin:
        assert (await admin.call("GET", "/api/status"))[0] == 404
        assert (await admin.call("GET", "/metrics"))[0] == 200


async def test_dead_letter_api(tmp_path: Path, sequence_feed: SimFeed, receiver: Receiver) -> None:
    """List (paged), inspect, replay one, replay in bulk, delete; 400s and 404s as JSON."""
    sequence_feed.add_events(5)
    receiver.answer("strict", 422)
    async with admin_for(tmp_path, one_feed(sequence_feed, receiver, strict={})) as admin:

        async def five_dead() -> bool:
            _, body = await admin.call("GET", "/api/dead-letters?subscription=strict")
            return len(body["dead_letters"]) == 5

        await eventually(five_dead, what="dead letters")
        status, page = await admin.call("GET", "/api/dead-letters?limit=2")
        assert status == 200 and len(page["dead_letters"]) == 2 and page["next_after"]
        _, rest = await admin.call("GET", f"/api/dead-letters?after={page['next_after']}")
        assert len(rest["dead_letters"]) == 3 and rest["next_after"] is None
        first = page["dead_letters"][0]
        status, one = await admin.call("GET", f"/api/dead-letters/{first['id']}")
        assert (
            status == 200
            and one["status_code"] == 422
            and one["event"]["id"] == first["envelope_id"]
        )

        for bad in (
            "/api/dead-letters?limit=abc",
            "/api/dead-letters?limit=0",
            "/api/dead-letters?after=-1",
            "/api/dead-letters/abc",
        ):
            status, body = await admin.call("GET", bad)
            assert status == 400 and "error" in body, (bad, body)
        assert (await admin.call("GET", "/api/dead-letters/999999"))[0] == 404
        assert (await admin.call("POST", "/api/dead-letters/999999/replay"))[0] == 404
        assert (await admin.call("DELETE", "/api/dead-letters/999999"))[0] == 404

        receiver.answer("strict", 200)
        status, body = await admin.call("POST", f"/api/dead-letters/{first['id']}/replay")
        assert status == 200 and body == {"replayed": 1}
        await eventually(lambda: len(receiver.ok("strict")) == 1, timeout=3, what="the replay")
        status, body = await admin.call(
            "DELETE", f"/api/dead-letters/{page['dead_letters'][1]['id']}"
        )
        assert status == 200 and body == {"purged": 1}
        status, body = await admin.call("POST", "/api/dead-letters/replay?subscription=strict")
        assert body == {"replayed": 3}
        await eventually(lambda: len(receiver.ok("strict")) == 4, timeout=3, what="bulk replay")
        _, status_doc = await admin.call("GET", "/api/status")
        assert status_doc["subscriptions"]["strict"]["dead"] == 0


async def test_reload_adds_removes_and_rejects(
    tmp_path: Path, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """A new subscription gets events ingested from then on; a removed one gets no new
    deliveries and its pending ones stay visible; an invalid file changes nothing."""
    sequence_feed.add_events(4)
    receiver.answer("old", 503)  # keeps its deliveries pending
    raw = one_feed(sequence_feed, receiver, old={"retry": {"schedule": ["1h"]}}, keep={})
    async with admin_for(tmp_path, raw) as admin:
        await eventually(lambda: len(receiver.ok("keep")) == 4)
        await eventually(lambda: len(receiver.received) == 8, what="old's failed attempts")

        del raw["subscriptions"]["old"]
        raw["subscriptions"]["new"] = subscription(receiver, "new")
        admin.config_path.write_text(yaml.safe_dump(raw))
        status, body = await admin.call("POST", "/api/reload")
        assert status == 200 and body["reloaded"] is True
        assert "subscriptions_added: new" in body["changes"]
        assert "subscriptions_removed: old" in body["changes"]

        sequence_feed.add_events(2)
        await eventually(lambda: len(receiver.ok("keep")) == 6)
        await eventually(lambda: len(receiver.ok("new")) == 2)
        assert {r.webhook_id for r in receiver.ok("new")} == {"seq:5", "seq:6"}
        assert sum(r.path == "old" for r in receiver.received) == 4  # nothing new for old
        _, doc = await admin.call("GET", "/api/status")
        old = doc["subscriptions"]["old"]
        assert (old["configured"], old["pending"], old["delivered"], old["dead"]) == (
            False,
            4,
            0,
            0,
        )

        admin.config_path.write_text("subscriptions:\n  broken: [\n")
        status, body = await admin.call("POST", "/api/reload")
        assert status == 400 and "running one stays" in body["error"]
        assert any("invalid YAML" in e for e in body["errors"])
        sequence_feed.add_events(1)
        await eventually(lambda: len(receiver.ok("new")) == 3, what="the old config still at work")


async def test_reload_restarts_a_changed_source(
    tmp_path: Path, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """A source whose settings change is restarted from its stored cursor: no event twice."""
    sequence_feed.add_events(5)
    raw = one_feed(sequence_feed, receiver, all={})
    async with admin_for(tmp_path, raw) as admin:
        await eventually(lambda: len(receiver.ok()) == 5)
        raw["sources"]["seq"]["poll_interval"] = "150ms"
        admin.config_path.write_text(yaml.safe_dump(raw))
        status, body = await admin.call("POST", "/api/reload")
        assert status == 200 and "sources_changed: seq" in body["changes"]
        sequence_feed.add_events(5)
        await eventually(lambda: len(receiver.ok()) == 10)
        await admin.worker.until_idle()
    assert len({r.webhook_id for r in receiver.ok()}) == 10 == len(receiver.ok())


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_open_endpoints_need_no_token(
    tmp_path: Path, sequence_feed: SimFeed, receiver: Receiver, path: str
) -> None:
    """Health, readiness and metrics are for probes and scrapers: no token."""
    async with admin_for(tmp_path, one_feed(sequence_feed, receiver, all={})) as admin:
        await eventually(lambda: admin.worker.health["seq"].last_success_at is not None)
        assert (await admin.call("GET", path, token=None))[0] == 200


async def test_a_reload_that_changes_a_subscription_says_so(
    tmp_path: Path, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """A subscription whose URL changes is reported as changed, not "nothing changed",
    and the next events go to the new URL."""
    sequence_feed.add_events(1)
    raw = one_feed(sequence_feed, receiver, hook={})
    async with admin_for(tmp_path, raw) as admin:
        await eventually(lambda: len(receiver.ok("hook")) == 1)
        raw["subscriptions"]["hook"]["url"] = receiver.url("moved")
        admin.config_path.write_text(yaml.safe_dump(raw))
        status, body = await admin.call("POST", "/api/reload")
        assert status == 200 and body["changes"] == ["subscriptions_changed: hook"]
        sequence_feed.add_events(1)
        await eventually(lambda: len(receiver.ok("moved")) == 1, what="the new URL")


async def test_hostile_api_input_gets_4xx_not_500(
    tmp_path: Path, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """An id beyond 64 bits answers 400; an Authorization header with bytes that are not
    UTF-8 answers 401; neither is an internal error."""
    async with admin_for(tmp_path, one_feed(sequence_feed, receiver, hook={})) as admin:
        for path in ("/api/dead-letters/99999999999999999999999999", "/api/dead-letters/0"):
            status, body = await admin.call("GET", path)
            assert status == 400 and "whole number" in body["error"]
        status, _ = await admin.call("POST", "/api/dead-letters/99999999999999999999999/replay")
        assert status == 400
        port = int(admin.base.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"GET /api/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\x80\r\n"
            b"Connection: close\r\n\r\n"
        )
        await writer.drain()
        head = await reader.readline()
        writer.close()
        assert head.startswith(b"HTTP/1.1 401"), head


async def test_subscriptions_are_disabled_and_enabled_through_the_api(
    tmp_path: Path, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """POST /api/subscriptions/{name}/disable|enable: the state shows in /api/status and
    the metric; what arrives meanwhile waits and goes out on enable; unknown names 404."""
    async with admin_for(tmp_path, one_feed(sequence_feed, receiver, ops={})) as admin:
        status, body = await admin.call("POST", "/api/subscriptions/ops/disable")
        assert status == 200 and body == {
            "subscription": "ops",
            "state": "disabled",
            "changed": True,
        }
        _, doc = await admin.call("GET", "/api/status")
        state = doc["subscriptions"]["ops"]["state"]
        assert state["state"] == "disabled" and state["reason"] == "disabled by an operator"
        assert (
            await admin.metric("feedhook_subscription_state", subscription="ops", state="disabled")
            == 1
        )
        sequence_feed.add_events(3)

        async def waiting() -> bool:
            _, doc = await admin.call("GET", "/api/status")
            return bool(doc["subscriptions"]["ops"]["pending"] == 3)

        await eventually(waiting, what="3 pending")
        await admin.worker.until_idle()
        assert receiver.ok("ops") == []
        status, body = await admin.call("POST", "/api/subscriptions/ops/enable")
        assert status == 200 and body["changed"] is True
        await eventually(lambda: len(receiver.ok("ops")) == 3, what="the 3 held back")
        status, _ = await admin.call("POST", "/api/subscriptions/nope/disable")
        assert status == 404
        status, _ = await admin.call("POST", "/api/subscriptions/ops/disable", token=None)
        assert status == 401


async def test_an_event_is_traced_through_the_api(
    tmp_path: Path, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """GET /api/events/{id}: what `feedhook trace --json` prints; 404 when not stored."""
    sequence_feed.add_events(1)
    async with admin_for(tmp_path, one_feed(sequence_feed, receiver, ops={})) as admin:
        await eventually(lambda: len(receiver.ok("ops")) == 1, what="the delivery")
        await admin.worker.until_idle()
        status, doc = await admin.call("GET", "/api/events/seq:1")
        assert status == 200 and doc["subscriptions"]["ops"]["state"] == "delivered"
        assert [a["status_code"] for a in doc["subscriptions"]["ops"]["attempts"]] == [200]
        status, _ = await admin.call("GET", "/api/events/seq:2")
        assert status == 404
        status, _ = await admin.call("GET", "/api/events/seq:1", token=None)
        assert status == 401


async def test_the_openapi_document_describes_the_real_answers(
    tmp_path: Path, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """/api/openapi.json, and every API answer checked against the schema it names."""
    sequence_feed.add_events(2)
    receiver.answer("strict", 422)
    config = one_feed(sequence_feed, receiver, ok={}, strict={})
    async with admin_for(tmp_path, config) as admin:
        status, doc = await admin.call("GET", "/api/openapi.json")
        assert status == 200 and doc["openapi"].startswith("3.1")

        def conforms(path: str, method: str, code: int, body: object) -> None:
            answer = doc["paths"][path][method]["responses"][str(code)]
            ref = answer["content"]["application/json"]["schema"]["$ref"]
            schema = {"components": doc["components"], "$ref": ref}
            jsonschema.Draft202012Validator(schema).validate(body)

        await eventually(lambda: len(receiver.ok("ok")) == 2, what="deliveries")
        await admin.worker.until_idle()
        _, page = await admin.call("GET", "/api/dead-letters")
        first = page["dead_letters"][0]["id"]
        code, body = await admin.call("GET", f"/api/dead-letters/{first}")
        conforms("/api/dead-letters/{id}", "get", code, body)
        calls = [
            ("/api/status", "get", "/api/status", "GET"),
            ("/api/dead-letters", "get", "/api/dead-letters", "GET"),
            ("/api/events/{envelope_id}", "get", "/api/events/seq:1", "GET"),
            ("/api/events/{envelope_id}", "get", "/api/events/seq:9", "GET"),
            ("/api/dead-letters/{id}", "get", "/api/dead-letters/999", "GET"),
            ("/api/subscriptions/{name}/{action}", "post", "/api/subscriptions/ok/disable", "POST"),
            ("/api/subscriptions/{name}/{action}", "post", "/api/subscriptions/ok/enable", "POST"),
            ("/api/dead-letters/replay", "post", "/api/dead-letters/replay", "POST"),
        ]
        for path, method, url, verb in calls:
            code, body = await admin.call(verb, url)
            conforms(path, method, code, body)
