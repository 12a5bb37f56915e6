"""The real CLI in subprocesses: crash safety, graceful stop, status, dead letters, demo."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from feedhook.sim import Receiver, SimFeed
from feedhook.store import SqliteStore

from conftest import Cli, LockProbe, eventually, free_port, one_feed, source, subscription


async def stop(proc: asyncio.subprocess.Process, sig: int = signal.SIGTERM) -> tuple[int, str]:
    proc.send_signal(sig)
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_kill_9_mid_flight_then_restart_loses_nothing(
    cli: Cli, sequence_feed: SimFeed, movida_feed: SimFeed, receiver: Receiver
) -> None:
    """kill -9 in the middle of 2,200 events with deliveries in flight, then a restart:
    every (event, subscription) pair arrives; duplicates only for those in flight."""
    sequence_feed.add_events(1200)
    movida_feed.add_events(1000)
    receiver.answer("all", 200, delay=0.01)
    receiver.answer("jobs", 200, delay=0.01)
    cli.write_config(
        {
            "sources": {"seq": source(sequence_feed), "mov": source(movida_feed)},
            "subscriptions": {
                "all": subscription(receiver, "all", max_in_flight=20),
                "jobs": subscription(receiver, "jobs", types=["sequence.job.*"], max_in_flight=5),
            },
        }
    )
    expected = {(f"seq:{e.id}", "all") for e in sequence_feed.events}
    expected |= {(f"mov:{e.id}", "all") for e in movida_feed.events}
    expected |= {
        (f"seq:{e.id}", "jobs") for e in sequence_feed.events if e.event_type.startswith("job_")
    }
    assert len(expected) > 2500

    proc = await cli.start("run")
    await eventually(lambda: len(receiver.ok()) >= 600, timeout=30, what="600 deliveries")
    proc.kill()  # SIGKILL: no cleanup at all
    await proc.wait()
    with sqlite3.connect(cli.db) as db:
        in_flight = set(
            db.execute(
                "SELECT e.envelope_id, d.subscription FROM deliveries d JOIN events e"
                " ON e.id = d.event_id WHERE d.state = 'in_flight'"
            ).fetchall()
        )
    assert in_flight, "the kill should have caught deliveries in flight"
    received_before = len(receiver.received)
    assert received_before < len(expected)

    proc = await cli.start("run")
    got = lambda: Counter((r.webhook_id, r.path) for r in receiver.ok())  # noqa: E731
    await eventually(lambda: set(got()) >= expected, timeout=60, what="every pair")
    code, err = await stop(proc)
    assert code == 0, err
    counts = got()
    assert set(counts) == expected
    duplicates = {pair for pair, n in counts.items() if n > 1}
    assert duplicates <= in_flight, duplicates - in_flight
    assert "were in flight at the last stop; sending them again" in err


async def test_sigterm_lets_in_flight_finish_and_exits_0(
    cli: Cli, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """SIGTERM stops polling, lets in-flight deliveries finish, exits 0; nothing is lost."""
    sequence_feed.add_events(300)
    receiver.answer("all", 200, delay=0.3)
    cli.write_config(one_feed(sequence_feed, receiver, all={"max_in_flight": 10}))
    proc = await cli.start("run", "--grace", "5s")
    await eventually(lambda: len(receiver.received) >= 20, what="deliveries under way")
    started = time.monotonic()
    code, err = await stop(proc)
    assert code == 0, err
    assert time.monotonic() - started < 5
    with sqlite3.connect(cli.db) as db:
        states = dict(db.execute("SELECT state, count(*) FROM deliveries GROUP BY state"))
    assert states.get("in_flight", 0) == 0  # every started attempt finished and was recorded
    assert states["delivered"] == len(receiver.ok())
    receiver.answer("all", 200)
    proc = await cli.start("run")
    await eventually(lambda: len({r.webhook_id for r in receiver.ok()}) == 300, what="the rest")
    code, _ = await stop(proc, signal.SIGINT)
    assert code == 0


async def test_dead_letter_workflow(cli: Cli, sequence_feed: SimFeed, receiver: Receiver) -> None:
    """400 -> dead letter; list, show; fix the receiver; replay reaches it within seconds."""
    sequence_feed.add_events(3)
    receiver.answer("strict", 400)
    cli.write_config(one_feed(sequence_feed, receiver, strict={}, ok={}))
    proc = await cli.start("run")
    try:

        async def dead_count() -> int:
            code, out, _ = await cli.run("dlq", "list", "--json")
            return len(json.loads(out)) if code == 0 and out.strip() else 0

        async def three_dead() -> bool:
            return await dead_count() == 3

        await eventually(three_dead, what="three dead letters")
        code, out, _ = await cli.run("dlq", "list")
        assert code == 0 and "permanent failure: HTTP 400" in out and "seq:1" in out
        letters = json.loads((await cli.run("dlq", "list", "--json", "-s", "strict"))[1])
        assert {d["status_code"] for d in letters} == {400}
        assert letters[0]["response_body"] == "receiver says no (400)"
        code, out, _ = await cli.run("dlq", "show", str(letters[0]["id"]))
        shown = json.loads(out)
        assert shown["event"]["id"] == letters[0]["envelope_id"]

        receiver.answer("strict", 200)  # the receiver is fixed
        code, out, _ = await cli.run("dlq", "replay", str(letters[0]["id"]))
        assert code == 0 and "replayed 1" in out
        replayed_at = time.monotonic()
        await eventually(lambda: len(receiver.ok("strict")) == 1, timeout=5, what="replay")
        assert time.monotonic() - replayed_at < 3
        code, out, _ = await cli.run("dlq", "replay", "--all", "-s", "strict")
        assert "replayed 2" in out
        await eventually(lambda: len(receiver.ok("strict")) == 3, timeout=5, what="bulk replay")

        code, out, _ = await cli.run("status")
        assert code == 0
        assert "cursor:     3" in out
        line = next(x for x in out.splitlines() if x.strip().startswith("strict"))
        assert line.split()[1:4] == ["0", "3", "0"]
        status = json.loads((await cli.run("status", "--json"))[1])
        assert status["subscriptions"]["ok"] == {
            "configured": True,
            "url": receiver.url("ok"),
            "pending": 0,
            "delivered": 3,
            "dead": 0,
            "state": {"state": "active", "reason": None, "since": None, "until": None},
        }
    finally:
        code, _ = await stop(proc)
    assert code == 0


async def test_dlq_purge_and_bad_usage(
    cli: Cli, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """purge deletes; missing ids and missing arguments are usage errors."""
    sequence_feed.add_events(2)
    receiver.answer("strict", 422)
    cli.write_config(one_feed(sequence_feed, receiver, strict={}))
    proc = await cli.start("run")
    try:

        async def two_dead() -> bool:
            code, out, _ = await cli.run("dlq", "list", "--json")
            return code == 0 and len(json.loads(out)) == 2

        await eventually(two_dead, what="dead letters")
    finally:
        await stop(proc)
    code, _, err = await cli.run("dlq", "replay")
    assert code == 2 and "name dead letter IDs, or --all" in err
    code, out, err = await cli.run("dlq", "purge", "1", "999")
    assert code == 1 and "purged 1" in out and "not found" in err
    code, out, _ = await cli.run("dlq", "purge", "--all")
    assert code == 0 and "purged 1" in out
    code, _, err = await cli.run("dlq", "show", "1")
    assert code == 1 and "no dead letter 1" in err


async def test_run_refuses_bad_config(cli: Cli) -> None:
    """`run` with a bad config exits 2 listing the errors, and starts nothing."""
    cli.config.write_text("sources:\n  s:\n    kind: sequence\n    url: ftp://x\n")
    code, _, err = await cli.run("run")
    assert code == 2
    assert f"{cli.config}:4:10: sources.s.url: not an http(s) URL: 'ftp://x'" in err
    assert f"{cli.config}:3:5: sources.s.username: required key is missing" in err
    assert not cli.db.exists()


async def test_status_without_database(cli: Cli) -> None:
    """Reading commands say where they looked for the database."""
    code, _, err = await cli.run("status")
    assert code == 2 and "no database at" in err and "FEEDHOOK_DB" in err


async def test_send_test(cli: Cli, sequence_feed: SimFeed, receiver: Receiver) -> None:
    """send-test posts one signed test event and reports the answer."""
    cli.write_config(one_feed(sequence_feed, receiver, hook={}))
    code, out, _ = await cli.run("send-test", "hook")
    assert code == 0 and "answered HTTP 200" in out
    assert json.loads(receiver.received[0].body)["type"] == "feedhook.test.sent"
    receiver.answer("hook", 500)
    code, out, _ = await cli.run("send-test", "hook")
    assert code == 1 and "HTTP 500" in out
    code, _, err = await cli.run("send-test", "nope")
    assert code == 2 and "no subscription 'nope'" in err


@pytest.mark.parametrize("args", [["demo", "--events", "30", "--duration", "1s"]])
async def test_demo(cli: Cli, args: list[str]) -> None:
    """The quick-start demo delivers every matching event and says so."""
    code, out, err = await cli.run(*args, timeout=60)
    assert code == 0, err
    assert "every event delivered and every queue drained: True" in out
    assert "BAD SIGNATURE" not in out
    assert "signed ok" in out


async def test_demo_keeps_its_database_to_look_around(cli: Cli, tmp_path: Path) -> None:
    """`demo --keep DIR`: the database and config stay; status and trace read them."""
    kept = tmp_path / "kept"
    code, out, err = await cli.run("demo", "--events", "8", "--duration", "1s", "--keep", str(kept))
    assert code == 0, err
    assert f"kept in {kept}" in out
    cli.env["FEEDHOOK_DB"] = str(kept / "demo.db")
    cli.env["FEEDHOOK_CONFIG"] = str(kept / "hooks.yaml")
    code, out, err = await cli.run("status")
    assert code == 0 and "sequence-demo" in out, err
    code, out, err = await cli.run("trace", "sequence-demo:1")
    assert code == 0 and "everything: delivered" in out, err


async def test_replay_stored_events_to_a_new_subscription(
    cli: Cli, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """A subscription added later receives past events only when replayed on purpose."""
    sequence_feed.add_events(9)
    config = one_feed(sequence_feed, receiver, first={})
    cli.write_config(config)
    proc = await cli.start("run")
    await eventually(lambda: len(receiver.ok("first")) == 9, what="first deliveries")
    assert (await stop(proc))[0] == 0

    config["subscriptions"]["late"] = subscription(receiver, "late", types=["sequence.job.*"])
    cli.write_config(config)
    code, _, err = await cli.run("replay", "-s", "late")
    assert code == 2 and "--all" in err
    code, _, err = await cli.run("replay", "-s", "ghost", "--all")
    assert code == 2 and "no subscription 'ghost'" in err
    code, out, _ = await cli.run(
        "replay", "-s", "late", "--type", "sequence.job.*", "--since", "1h"
    )
    assert code == 0 and "queued 3 event(s) for late" in out
    proc = await cli.start("run")
    await eventually(lambda: len(receiver.ok("late")) == 3, what="replayed deliveries")
    assert (await stop(proc))[0] == 0
    assert {json.loads(r.body)["type"] for r in receiver.ok("late")} == {
        "sequence.job.created",
        "sequence.job.updated",
        "sequence.job.deleted",
    }
    assert len(receiver.ok("first")) == 9  # nothing replayed to the first one


async def test_status_never_calls_a_source_that_never_answered_ok(
    cli: Cli, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """A source whose credentials are rejected from the start: `status` shows its
    starting cursor and the error, and "last ok: never" (storing the first cursor is
    not a successful poll)."""
    config = one_feed(sequence_feed, receiver, all={})
    config["sources"]["seq"]["start"] = "earliest"
    config["sources"]["seq"]["events_url"] = f"{sequence_feed.api_url}/events"
    config["sources"]["seq"]["password"] = "wrong"
    cli.write_config(config)
    proc = await cli.start("run")
    try:

        async def error_stored() -> bool:
            code, out, _ = await cli.run("status", "--json")
            return code == 0 and bool(json.loads(out)["sources"].get("seq", {}).get("last_error"))

        await eventually(error_stored, what="the error stored")
    finally:
        await stop(proc)
    code, out, _ = await cli.run("status")
    assert code == 0
    assert "last ok:    never" in out and "credentials rejected" in out, out
    assert json.loads((await cli.run("status", "--json"))[1])["sources"]["seq"]["cursor"] == "0"


async def test_debug_logging_is_no_sql_firehose(
    cli: Cli, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """FEEDHOOK_LOG_LEVEL=DEBUG says what feedhook does, not every SQL statement with
    envelopes and cursors as parameters."""
    sequence_feed.add_events(5)
    cli.env["FEEDHOOK_LOG_LEVEL"] = "DEBUG"
    cli.write_config(one_feed(sequence_feed, receiver, all={}))
    proc = await cli.start("run")
    await eventually(lambda: len(receiver.ok()) == 5)
    _, err = await stop(proc)
    assert "ingested 5 events" in err or "delivered seq:1" in err
    for fragment in ("INSERT INTO", "UPDATE deliveries", "SELECT ", "aiosqlite"):
        assert fragment not in err, fragment


async def test_replay_sends_only_what_the_subscription_would_have_received(
    cli: Cli, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """`replay -s SUB --all` on a subscription with types, sources and a filter queues
    only the stored events it would have received; ids that are not stored are named."""
    sequence_feed.add_events(30)
    config = one_feed(
        sequence_feed,
        receiver,
        all={},
        updates={"types": ["sequence.*.updated"], "filter": "contains(data.changes, 'name')"},
    )
    cli.write_config(config)
    proc = await cli.start("run")
    await eventually(lambda: len(receiver.ok("all")) == 30)
    await stop(proc)
    wanted = {
        f"seq:{e.id}"
        for e in sequence_feed.events
        if e.event_type.endswith("_updated") and "name" in (e.changes or "").split(",")
    }
    assert 0 < len(wanted) < 30
    assert {r.webhook_id for r in receiver.ok("updates")} == wanted
    code, out, _ = await cli.run("replay", "-s", "updates", "--source", "seq", "--all")
    assert code == 0 and f"queued {len(wanted)} event(s)" in out, out
    assert f"{30 - len(wanted)} stored event(s) matched the command's filters but not" in out
    code, out, err = await cli.run("replay", "-s", "all", "seq:1", "seq:999", "nope:1")
    assert code == 1 and "queued 1 event(s)" in out
    assert "not stored, so not queued: seq:999, nope:1" in err
    receiver.received.clear()
    proc = await cli.start("run")
    await eventually(lambda: len(receiver.ok()) == len(wanted) + 1, what="the replays")
    await cli.until_idle()
    await stop(proc)
    assert {r.webhook_id for r in receiver.ok("updates")} == wanted
    assert [r.webhook_id for r in receiver.ok("all")] == ["seq:1"]


@pytest.mark.slow
async def test_a_large_replay_never_holds_the_write_lock_long(cli: Cli, tmp_path: Path) -> None:
    """`replay --all` over 500,000 stored events works in short transactions: a writer
    beside it (as ingest and delivery are) never waits more than a fraction of a second."""
    async with SqliteStore(cli.db):
        pass  # the schema
    with sqlite3.connect(cli.db) as db:
        body = b'{"specversion":"1.0","type":"sequence.job.created","data":{}}'
        db.executemany(
            "INSERT INTO events (source, upstream_id, envelope_id, type, body, ingested_at)"
            " VALUES ('seq', ?, ?, 'sequence.job.created', ?, 0)",
            ((str(n), f"seq:{n}", body) for n in range(500_000)),
        )
    cli.write_config(
        {
            "sources": {
                "seq": {
                    "kind": "sequence",
                    "url": "http://127.0.0.1:9/api",
                    "username": "u",
                    "password": "p",
                }
            },
            "subscriptions": {"all": {"url": "http://127.0.0.1:9/hook", "types": ["*"]}},
        }
    )
    with LockProbe(cli.db) as probe:
        code, out, err = await cli.run("replay", "-s", "all", "--all", timeout=120)
    assert code == 0 and "queued 500000 event(s)" in out, err
    assert len(probe.waits) > 50 and max(probe.waits) < 0.5, max(probe.waits)


@pytest.mark.slow
async def test_a_thousand_subscriptions_and_a_hundred_sources_run(
    cli: Cli, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """1,000 subscriptions (SQLite allows 500 terms in one compound query) over 100
    sources: `feedhook run` starts, routes and delivers every pair once."""
    sequence_feed.add_events(3)
    sources = {f"s{i:03d}": source(sequence_feed, poll_interval="1s") for i in range(100)}
    subscriptions = {
        f"sub{i:04d}": subscription(receiver, f"sub{i:04d}", sources=[f"s{i % 100:03d}"])
        for i in range(1000)
    }
    cli.write_config({"sources": sources, "subscriptions": subscriptions})
    proc = await cli.start("run")
    try:
        # 100 sources x 3 events, each routed to the 10 subscriptions of its source.
        await eventually(lambda: len(receiver.ok()) >= 3000, timeout=60, what="3,000")
        await cli.until_idle()
        assert proc.returncode is None
    finally:
        code, err = await stop(proc)
    assert code == 0, err
    pairs = Counter((r.webhook_id, r.path) for r in receiver.ok())
    assert len(pairs) == 3000 and max(pairs.values()) == 1
    assert all(r.webhook_id.startswith(f"s{int(r.path[3:]) % 100:03d}:") for r in receiver.ok())


async def test_read_only_commands_load_no_http_client_and_no_feed(cli: Cli) -> None:
    """`status`, `check` (without filters) and `dlq list` start without importing aiohttp
    or any feed: they stay quick on a busy host (`python -X importtime`)."""
    async with SqliteStore(cli.db):
        pass
    cli.write_config({"sources": {}, "subscriptions": {}})
    for args in (("status",), ("check",), ("dlq", "list")):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "feedhook",
            *args,
            env=cli.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        modules = {line.rsplit("|", 1)[-1].strip() for line in err.decode().splitlines()}
        assert not {m for m in modules if m.split(".")[0] == "aiohttp"}, args
        assert not {m for m in modules if m.startswith("feedhook.sources")}, args


async def test_trace_tells_whether_an_event_reached_each_subscription(
    cli: Cli, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """`feedhook trace`: one event, per subscription every attempt with its status,
    duration and outcome; --json the same; an unknown id exits 1 and says so."""
    receiver.plan("flaky", [503, 503])
    receiver.answer("strict", 400)
    cli.write_config(one_feed(sequence_feed, receiver, flaky={}, strict={}))
    sequence_feed.add_events(1)
    proc = await cli.start("run")
    try:
        await eventually(lambda: len(receiver.ok("flaky")) == 1, what="the third attempt")
        await cli.until_idle()
    finally:
        await cli.stop(proc)
    code, out, err = await cli.run("trace", "seq:1")
    assert code == 0, err
    assert "flaky: delivered" in out and "strict: dead" in out
    assert out.count(" 503 in ") == 2 and " 200 in " in out and " 400 in " in out
    code, out, _ = await cli.run("trace", "seq:1", "--json")
    doc = json.loads(out)
    flaky = doc["subscriptions"]["flaky"]["attempts"]
    assert [a["outcome"] for a in flaky] == ["retry", "retry", "delivered"]
    assert all(a["duration_ms"] is not None for a in flaky)
    assert doc["event"]["id"] == "seq:1"
    code, _, err = await cli.run("trace", "seq:999")
    assert code == 1 and "no event seq:999 is stored" in err


async def test_check_connect_tries_every_source(
    cli: Cli, sequence_feed: SimFeed, movida_feed: SimFeed
) -> None:
    """`check --connect`: each source read once; a good one ok, wrong credentials named
    as such (the password never shown), a dead port unreachable; exit 1 when any fails."""
    dead = f"http://127.0.0.1:{free_port()}/api"
    cli.write_config(
        {
            "sources": {
                "good": source(sequence_feed),
                "wrong": source(movida_feed, password="not-the-password-7q"),
                "gone": source(sequence_feed, url=dead),
            },
            "subscriptions": {},
        }
    )
    code, out, err = await cli.run("check", "--connect")
    assert code == 1, err
    assert "good: ok" in out
    assert "wrong: credentials rejected" in out and "check username and password" in out
    assert "gone: unreachable" in out
    assert "not-the-password-7q" not in out + err


async def test_check_warns_about_a_glob_that_matches_nothing(
    cli: Cli, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """A type glob no configured source can publish (a typo, another system's type) is
    a warning in `check`, per subscription; globs that match say nothing."""
    config = one_feed(
        sequence_feed,
        receiver,
        typo={"types": ["sequence.jobs.*"]},
        other={"types": ["movida.title.*"]},
        fine={"types": ["sequence.job.*", "sequence.*.deleted"]},
    )
    cli.write_config(config)
    code, out, err = await cli.run("check")
    assert code == 0, err
    assert "the type glob 'sequence.jobs.*' matches no type its sources publish" in out
    assert "the type glob 'movida.title.*' matches no type" in out
    assert out.count("matches no type") == 2
