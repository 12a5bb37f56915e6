"""TeamHub and Modulo end to end: exactly once across a restart, live builds, token
renewal, and faults that lose nothing."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections import Counter
from pathlib import Path

import pytest

from feedhook.sim import Fault, Receiver, SimModulo, SimTeamHub

from conftest import Cli, eventually, modulo_source, running, subscription, teamhub_source


def ids(rx: Receiver, name: str) -> Counter[str]:
    return Counter(r.webhook_id for r in rx.ok(name))


async def test_every_event_exactly_once_across_a_restart(
    cli: Cli, teamhub: SimTeamHub, modulo: SimModulo, receiver: Receiver
) -> None:
    """The real CLI, stopped and started again, with TeamHub events landing while its
    pages are read: each TeamHub event and Modulo update arrives exactly once."""
    teamhub.add_events(300)
    landed: list[int] = []

    def land_mid_scan(offset: int) -> None:
        if len(landed) < 8:
            landed.append(offset)
            teamhub.add_events(5, target="build", operation="completed")

    teamhub.after_page = land_mid_scan
    modulo.add_updates("E1", 1500, at_millis=1_700_000_000_000)
    modulo.add_updates("E2", 40)
    cli.write_config(
        {
            "sources": {
                "th": teamhub_source(teamhub, page_size=50),
                "risk": modulo_source(modulo, ["E1", "E2"]),
            },
            "subscriptions": {
                "dev": subscription(receiver, "dev", types=["teamhub.*"]),
                "risk": subscription(receiver, "risk", types=["modulo.event.*"]),
            },
        }
    )
    proc = await cli.start("run")
    await eventually(lambda: len(receiver.ok()) >= 500, timeout=30, what="half the events")
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 15) == 0
    teamhub.add_events(20)
    modulo.add_updates("E2", 10)
    proc = await cli.start("run")

    # Read at each check: events may still land mid-scan during the second run.
    def expected_th() -> set[str]:
        return {f"th:{e['id']}" for e in teamhub.events}

    expected_risk = {f"risk:{u['Id']}" for code in ("E1", "E2") for u in modulo.updates[code]}
    await eventually(
        lambda: (
            set(ids(receiver, "dev")) == expected_th()
            and set(ids(receiver, "risk")) == expected_risk
        ),
        timeout=60,
        what="every event",
    )
    await cli.until_idle()  # the polls after it find nothing new
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 15) == 0
    assert len(landed) == 8
    assert max(ids(receiver, "dev").values()) == 1
    assert max(ids(receiver, "risk").values()) == 1
    assert len(expected_th()) == 300 + 40 + 20 and len(expected_risk) == 1550


async def test_live_build_40_to_100_in_both_modes(
    tmp_path: Path, teamhub: SimTeamHub, receiver: Receiver
) -> None:
    """on_complete delivers the build once, completed; each_update delivers 40 and 100."""
    raw = {
        "sources": {
            "done": teamhub_source(teamhub),
            "each": teamhub_source(teamhub, live_events="each_update"),
        },
        "subscriptions": {"builds": subscription(receiver, "builds", types=["teamhub.build.*"])},
    }
    (build,) = teamhub.add_events(1, target="build", operation="created", progress=40)
    async with running(raw, tmp_path / "f.db") as worker:
        await eventually(lambda: f"each:{build['id']}:40" in ids(receiver, "builds"))
        await worker.until_idle()  # polls while the build is still running: nothing new
        teamhub.update_progress(build["id"], 100, operation="completed")
        await eventually(lambda: len(receiver.ok()) == 3, what="the completed build")
        await worker.until_idle()
    got = ids(receiver, "builds")
    assert got == Counter(
        {f"done:{build['id']}": 1, f"each:{build['id']}:40": 1, f"each:{build['id']}:100": 1}
    )
    done = next(r for r in receiver.ok() if r.webhook_id == f"done:{build['id']}")
    assert b'"type":"teamhub.build.completed"' in done.body


async def test_held_build_survives_a_restart(
    tmp_path: Path, teamhub: SimTeamHub, receiver: Receiver
) -> None:
    """A live build held when the worker stops is still watched after it starts again."""
    raw = {
        "sources": {"th": teamhub_source(teamhub)},
        "subscriptions": {"all": subscription(receiver, "all")},
    }
    (build,) = teamhub.add_events(1, target="build", progress=40)
    teamhub.add_events(1)
    async with running(raw, tmp_path / "f.db"):
        await eventually(lambda: len(receiver.ok()) == 1, what="the finished push")
    teamhub.update_progress(build["id"], 100, operation="failed")
    async with running(raw, tmp_path / "f.db"):
        await eventually(lambda: len(receiver.ok()) == 2, what="the held build")
    assert receiver.ok()[1].webhook_id == f"th:{build['id']}"


async def test_token_expiring_mid_run(
    tmp_path: Path, modulo: SimModulo, receiver: Receiver
) -> None:
    """Tokens expire (early, and on schedule); every update still arrives once."""
    modulo.token_lifetime = 2.0
    raw = {
        "sources": {"risk": modulo_source(modulo, ["E1"])},
        "subscriptions": {"all": subscription(receiver, "all")},
    }
    modulo.add_updates("E1", 5)
    async with running(raw, tmp_path / "f.db"):
        await eventually(lambda: len(receiver.ok()) == 5, what="first updates")
        modulo.expire_tokens()  # revoked before its time: the next request gets a 401
        modulo.add_updates("E1", 5)
        await eventually(lambda: len(receiver.ok()) == 10, what="after the 401")
        await asyncio.sleep(2.1)  # past expires_in: renewed before it is used
        modulo.add_updates("E1", 5)
        await eventually(lambda: len(receiver.ok()) == 15, what="after expiry")
    assert modulo.tokens_issued >= 3
    assert max(ids(receiver, "all").values()) == 1


CASES = [
    ("teamhub", Fault.ERROR_500, "HTTP 500"),
    ("teamhub", Fault.TRUNCATED, "JSON is invalid or truncated"),
    ("teamhub", Fault.SLOW, "no complete answer within 0.5s"),
    ("teamhub", Fault.UNAUTHORIZED, "HTTP 401"),
    ("modulo", Fault.ERROR_500, "HTTP 500"),
    ("modulo", Fault.HTML, "answered HTML instead of JSON"),
    ("modulo", Fault.RATE_LIMITED, "answered 429"),
    ("modulo", Fault.TRUNCATED, "JSON is invalid or truncated"),
]


@pytest.mark.parametrize(("kind", "fault", "message"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
async def test_faults_lose_nothing(
    tmp_path: Path,
    teamhub: SimTeamHub,
    modulo: SimModulo,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
    kind: str,
    fault: Fault,
    message: str,
) -> None:
    """A failing feed logs a clear line, backs off, and delivers everything once it heals."""
    caplog.set_level(logging.INFO)
    teamhub.slow_seconds = 1.5
    sim = teamhub if kind == "teamhub" else modulo
    source = (
        teamhub_source(teamhub, timeout="500ms")
        if kind == "teamhub"
        else modulo_source(modulo, ["E1"], timeout="500ms")
    )

    def publish(count: int) -> None:
        if kind == "teamhub":
            teamhub.add_events(count)
        else:
            modulo.add_updates("E1", count)

    raw = {"sources": {"feed": source}, "subscriptions": {"all": subscription(receiver, "all")}}
    publish(10)
    async with running(raw, tmp_path / "f.db"):
        await eventually(lambda: len(receiver.ok()) == 10, what="first events")
        sim.inject(fault, times=3)
        publish(10)
        await eventually(lambda: sim.pending_faults == 0, what="faults served")
        await eventually(lambda: len(receiver.ok()) == 20, what="recovery")
    assert max(ids(receiver, "all").values()) == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "feedhook.source"]
    assert any(line.startswith("feed: ") and message in line for line in lines), lines
    assert not any(
        secret in line
        for line in lines
        for secret in ("account-key", "company-key", "client-secret")
    )
