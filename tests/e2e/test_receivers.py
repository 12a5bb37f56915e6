"""Sparing receivers, through the real CLI: 410 Gone disables a subscription until an
operator enables it, across restarts."""

from __future__ import annotations

import asyncio
import json
import time

from feedhook.sim import Receiver, SimFeed

from conftest import Cli, eventually, one_feed


async def test_410_disables_until_enabled_and_a_restart_changes_nothing(
    cli: Cli, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """The receiver answers 410: one request, then none (other subscriptions flow);
    status says disabled and why; a restart keeps it so; after `feedhook subscriptions
    enable`, every pending event arrives once, in order."""
    receiver.answer("gone", 410)
    cli.write_config(one_feed(sequence_feed, receiver, gone={"max_in_flight": 1}, other={}))
    sequence_feed.add_events(20)
    proc = await cli.start("run")
    try:
        await eventually(lambda: len(receiver.ok("other")) == 20, what="the other 20")
        await cli.until_idle(held=("gone",))
        assert [r.status for r in receiver.received if r.path == "gone"] == [410]
        code, out, err = await cli.run("status")
        assert code == 0, err
        assert "disabled" in out and "HTTP 410 Gone from" in out
    finally:
        await cli.stop(proc)
    assert proc.returncode == 0

    proc = await cli.start("run")
    try:
        sequence_feed.add_events(5)
        await eventually(lambda: len(receiver.ok("other")) == 25, what="the other 25")
        await cli.until_idle(held=("gone",))
        assert len([r for r in receiver.received if r.path == "gone"]) == 1
        code, out, _ = await cli.run("status", "--json")
        state = json.loads(out)["subscriptions"]["gone"]["state"]
        assert state["state"] == "disabled" and state["since"] is not None
        assert json.loads(out)["subscriptions"]["gone"]["pending"] == 25

        receiver.answer("gone", 200)
        code, out, err = await cli.run("subscriptions", "enable", "gone")
        assert code == 0, err
        assert "gone enabled: 25 pending deliveries go out in order" in out
        await eventually(lambda: len(receiver.ok("gone")) == 25, what="the backlog")
    finally:
        await cli.stop(proc)
    got = [r.webhook_id for r in receiver.ok("gone")]
    assert got == [f"seq:{e.id}" for e in sequence_feed.events]  # each once, in order


async def test_an_operator_disables_for_maintenance_and_enables(
    cli: Cli, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """`feedhook subscriptions disable` on a running worker: nothing more is sent within
    a second, events keep arriving as pending; enable sends them. Unknown names are a
    usage error naming the configured ones."""
    cli.write_config(one_feed(sequence_feed, receiver, ops={}))
    proc = await cli.start("run")
    try:
        sequence_feed.add_events(3)
        await eventually(lambda: len(receiver.ok("ops")) == 3, what="the first 3")
        code, out, err = await cli.run("subscriptions", "disable", "ops")
        assert code == 0, err
        assert "ops disabled" in out
        code, out, err = await cli.run("subscriptions", "disable", "ops")
        assert "already disabled" in out
        await cli.until_idle(held=("ops",))
        sequence_feed.add_events(4)
        await cli.until_idle(held=("ops",))
        assert len(receiver.ok("ops")) == 3
        code, _, err = await cli.run("subscriptions", "enable", "nope")
        assert code == 2 and "no subscription 'nope' (configured: ops)" in err
        code, out, err = await cli.run("subscriptions", "enable", "ops")
        assert code == 0, err
        await eventually(lambda: len(receiver.ok("ops")) == 7, what="the 4 held back")
    finally:
        await cli.stop(proc)


async def test_a_receiver_down_20s_gets_a_few_requests_then_everything_in_order(
    cli: Cli, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """Down (503) for 20 s while 1,500 events arrive: a few dozen requests during the
    outage (those that opened the circuit, then one probe per cooldown), then every
    event, in order, without waiting for the retry schedule's 10-minute step."""
    receiver.answer("down", 503)
    config = one_feed(
        sequence_feed,
        receiver,
        down={
            "max_in_flight": 1,
            "retry": {"schedule": ["10m", "10m", "10m"]},
            "circuit_breaker": {"failures": 5, "cooldown": "1s"},
        },
    )
    cli.write_config(config)
    proc = await cli.start("run")
    try:
        outage_ends = time.monotonic() + 20
        while time.monotonic() < outage_ends:
            sequence_feed.add_events(75)
            await asyncio.sleep(1)
        during = len(receiver.received)
        receiver.answer("down", 200)
        await eventually(lambda: len(receiver.ok("down")) == 1500, timeout=60, what="all 1,500")
    finally:
        await cli.stop(proc)
    assert during <= 30, during
    got = [r.webhook_id for r in receiver.ok("down")]
    assert got == [f"seq:{e.id}" for e in sequence_feed.events]


async def test_429_retry_after_5_pauses_the_subscription_5s_then_everything(
    cli: Cli, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """`429 Retry-After: 5`: nothing is sent to that subscription for 5 s (the other one
    flows meanwhile), then everything."""
    # The first answer a 429; every answer carries the header (a 2xx's is ignored).
    receiver.answer("busy", 200, headers={"Retry-After": "5"})
    receiver.plan("busy", [429])
    cli.write_config(one_feed(sequence_feed, receiver, busy={"max_in_flight": 1}, calm={}))
    sequence_feed.add_events(30)
    proc = await cli.start("run")
    try:
        await eventually(lambda: len(receiver.ok("busy")) == 30, timeout=30, what="all 30")
    finally:
        await cli.stop(proc)
    busy = [r for r in receiver.received if r.path == "busy"]
    assert busy[0].status == 429 and len(busy) == 31
    assert busy[1].at - busy[0].at >= 4.9
    assert max(r.at for r in receiver.ok("calm")) < busy[0].at + 4  # not held up
