"""Operating feedhook through the real CLI: signals, health checks, logs, secrets."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from feedhook.sim import Fault, Receiver, SimFeed, SimModulo, SimTeamHub

from conftest import Cli, eventually, modulo_source, one_feed, source, subscription, teamhub_source

SENTINEL = "Sentinel7x9q"


async def get(url: str, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as r:
        return r.status, await r.text()


async def test_sigterm_during_heavy_delivery(
    cli: Cli, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """SIGTERM with a hundred deliveries in flight: exit 0 within the grace period; the
    next start delivers the rest, each exactly once."""
    sequence_feed.add_events(2000)
    receiver.answer("a", 200, delay=0.2)
    receiver.answer("b", 200, delay=0.2)
    cli.write_config(
        {
            "sources": {"seq": source(sequence_feed)},
            "subscriptions": {
                "a": subscription(receiver, "a", max_in_flight=50),
                "b": subscription(receiver, "b", max_in_flight=50),
            },
        }
    )
    proc = await cli.start("run", "--grace", "3s")
    await eventually(lambda: len(receiver.received) >= 300, what="heavy delivery")
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 10) == 0
    assert time.monotonic() - started < 3.5
    before = len(receiver.ok())
    assert before < 4000
    receiver.answer("a", 200)
    receiver.answer("b", 200)
    proc = await cli.start("run")
    await eventually(lambda: len(receiver.ok()) >= 4000, timeout=60, what="the rest")
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 10) == 0
    counts = Counter((r.webhook_id, r.path) for r in receiver.ok())
    assert len(counts) == 4000 and max(counts.values()) == 1


async def test_sighup_reloads_and_healthcheck_answers(
    cli: Cli, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """SIGHUP re-reads the YAML; an invalid one is logged and ignored; `feedhook
    healthcheck` (the container's HEALTHCHECK) sees the admin server."""
    raw: dict[str, Any] = {
        "sources": {"seq": source(sequence_feed)},
        "subscriptions": {"first": subscription(receiver, "first")},
    }
    cli.write_config(raw)
    code, _, err = await cli.run("healthcheck")
    assert code == 1 and "/healthz" in err  # nothing running yet
    proc = await cli.start("run")
    sequence_feed.add_events(2)
    await eventually(lambda: len(receiver.ok("first")) == 2)
    code, out, _ = await cli.run("healthcheck")
    assert code == 0 and "HTTP 200" in out

    raw["subscriptions"]["second"] = subscription(receiver, "second")
    cli.write_config(raw)
    proc.send_signal(signal.SIGHUP)
    await asyncio.sleep(0.5)
    sequence_feed.add_events(1)
    await eventually(lambda: len(receiver.ok("second")) == 1, what="the added subscription")
    assert receiver.ok("second")[0].webhook_id == "seq:3"

    cli.config.write_text("sources: {nope: {kind: teamhub}}\n")
    proc.send_signal(signal.SIGHUP)
    await asyncio.sleep(0.5)
    sequence_feed.add_events(1)
    await eventually(lambda: len(receiver.ok("second")) == 2, what="the old config at work")
    proc.send_signal(signal.SIGTERM)
    _, err_bytes = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0
    lines = [json.loads(line) for line in err_bytes.decode().splitlines()]
    assert any("configuration reloaded" in x["message"] for x in lines)
    assert any(
        x["level"] == "error"
        and "reload rejected" in x["message"]
        and "sources.nope" in x["message"]
        for x in lines
    )


async def test_log_lines_carry_fields(cli: Cli, sequence_feed: SimFeed, receiver: Receiver) -> None:
    """JSON lines have time, level, message and the delivery's fields; text mode is
    readable and carries them too."""
    sequence_feed.add_events(1)
    receiver.plan("hook", [500])
    cli.write_config(one_feed(sequence_feed, receiver, hook={}))
    for fmt in ("json", "text"):
        cli.env["FEEDHOOK_LOG_FORMAT"] = fmt
        cli.db.unlink(missing_ok=True)
        receiver.received.clear()
        receiver.plan("hook", [500])
        proc = await cli.start("run")
        await eventually(lambda: len(receiver.ok("hook")) == 1)
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 10)
        text = err.decode()
        if fmt == "json":
            retry = next(json.loads(x) for x in text.splitlines() if "are failing" in x)
            assert {"time", "level", "message"} <= retry.keys()
            assert retry["level"] == "warning" and retry["subscription"] == "hook"
            assert retry["envelope_id"] == "seq:1" and retry["attempt"] == 1
            assert retry["status_code"] == 500 and "duration_ms" in retry
        else:
            line = next(x for x in text.splitlines() if "are failing" in x)
            assert "WARNING" in line and "status_code=500" in line and "attempt=1" in line


async def test_sentinel_secret_never_shows(
    cli: Cli,
    sequence_feed: SimFeed,
    teamhub: SimTeamHub,
    modulo: SimModulo,
    receiver: Receiver,
) -> None:
    """A run through every error path, with one sentinel in every secret: it appears in
    no log line, no CLI output and no admin answer."""
    sequence_feed.guard.password = f"pw-{SENTINEL}"
    teamhub.account_key = f"acct-{SENTINEL}"
    modulo.client_secret = f"client-{SENTINEL}"
    token = f"admin-{SENTINEL}"
    cli.env["FEEDHOOK_ADMIN_TOKEN"] = token
    webhook_secret = "whsec_U2VudGluZWw3eDlxU2VudGluZWw3eDlxU2VudA=="
    sequence_feed.add_events(3)
    teamhub.add_events(3)
    modulo.add_updates("E1", 3)
    receiver.answer("strict", 400)
    receiver.plan("flaky", [500, 503])
    raw = {
        "sources": {
            "seq": source(sequence_feed, password=f"wrong-{SENTINEL}", max_backoff="100ms"),
            "th": teamhub_source(teamhub, account_key=f"acct-{SENTINEL}"),
            "risk": modulo_source(modulo, ["E1"], client_secret=f"client-{SENTINEL}"),
        },
        "subscriptions": {
            name: subscription(
                receiver,
                name,
                secret=webhook_secret,
                headers={"Authorization": f"Bearer hdr-{SENTINEL}"},
            )
            for name in ("strict", "flaky")
        },
    }
    raw["subscriptions"]["creds"] = subscription(
        receiver, "creds", url=receiver.url("creds").replace("http://", f"http://u:url-{SENTINEL}@")
    )
    cli.write_config(raw)
    outputs: list[str] = []
    code, out, err = await cli.run("check")
    outputs += [out, err]
    assert code == 0

    proc = await cli.start("run")
    await eventually(lambda: len(receiver.ok("flaky")) == 6, what="flaky deliveries")
    teamhub.inject(Fault.UNAUTHORIZED)
    teamhub.inject(Fault.TRUNCATED)
    modulo.expire_tokens()
    modulo.inject(Fault.ERROR_500)
    modulo.add_updates("E1", 1)
    await asyncio.sleep(1.0)
    base = cli.admin
    for path in ("/api/status", "/api/dead-letters", "/readyz", "/metrics", "/healthz"):
        for auth in (token, "wrong", None):
            outputs.append(repr(await get(base + path, auth)))
    cli.write_config({**raw, "sources": {"seq": {**raw["sources"]["seq"], "url": "ftp://x"}}})
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base}/api/reload", headers={"Authorization": f"Bearer {token}"}) as r,
    ):
        outputs.append(await r.text())
        assert r.status == 400
    for args in (("status",), ("status", "--json"), ("dlq", "list"), ("dlq", "list", "--json")):
        code, out, err = await cli.run(*args)
        outputs += [out, err]
    dead = json.loads((await cli.run("dlq", "list", "--json"))[1])
    outputs.append((await cli.run("dlq", "show", str(dead[0]["id"])))[1])
    proc.send_signal(signal.SIGTERM)
    out_b, err_b = await asyncio.wait_for(proc.communicate(), 10)
    outputs += [out_b.decode(), err_b.decode()]
    code, out, err = await cli.run("check")  # a config error names the key, not the value
    outputs += [out, err]

    everything = "\n".join(outputs)
    assert "HTTP 401" in everything and "permanent failure: HTTP 400" in everything
    assert SENTINEL not in everything
    assert "U2VudGluZWw3eDlx" not in everything  # nor the webhook secret
    received = repr([r.headers for r in receiver.received])
    assert f"hdr-{SENTINEL}" in received  # the header did reach the receiver


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    """Running: not gone, and not a zombie waiting for a reaper."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


async def test_a_killed_ingest_process_is_started_again(
    cli: Cli, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """`feedhook run` polls in an ingest process of its own. Killed in the middle of a
    catch-up, it is started again and resumes from the stored cursor: every event is
    delivered exactly once, and readiness and metrics keep reporting the source."""
    sequence_feed.add_events(3000)
    cli.write_config(one_feed(sequence_feed, receiver, hook={}))
    proc = await cli.start("run")
    await eventually(lambda: len(receiver.ok()) >= 100, what="the first deliveries")
    (child,) = _children(proc.pid)
    os.kill(child, signal.SIGKILL)
    sequence_feed.add_events(500)
    await eventually(lambda: len(receiver.ok()) >= 3500, timeout=60, what="every event")
    (again,) = _children(proc.pid)
    assert again != child
    status, body = await get(f"{cli.admin}/readyz")
    assert status == 200 and json.loads(body)["sources"]["seq"]["state"] == "ok"
    _, metrics = await get(f"{cli.admin}/metrics")
    assert 'feedhook_source_polls_total{source="seq"}' in metrics
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0
    counts = Counter(r.webhook_id for r in receiver.ok())
    assert len(counts) == 3500 and max(counts.values()) == 1
    lines = [json.loads(line) for line in err.decode().splitlines()]
    assert any(
        x["level"] == "error" and "ingest process was killed by SIGKILL" in x["message"]
        for x in lines
    )


async def test_the_ingest_process_follows_its_parent_out(
    cli: Cli, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """A `feedhook run` killed outright leaves no poller behind: its ingest process sees
    the pipe close and stops."""
    cli.write_config(one_feed(sequence_feed, receiver, hook={}))
    proc = await cli.start("run")
    sequence_feed.add_events(1)
    await eventually(lambda: len(receiver.ok()) == 1, what="a delivery")
    (child,) = _children(proc.pid)
    # Its settings came down the pipe: the store's URL (a PostgreSQL one may hold a
    # password) is not on its command line for `ps` to show.
    assert str(cli.db) not in Path(f"/proc/{child}/cmdline").read_text()
    proc.kill()
    await proc.wait()
    await eventually(lambda: not _alive(child), what="the ingest process to exit")


async def test_one_process_when_asked(cli: Cli, sequence_feed: SimFeed, receiver: Receiver) -> None:
    """FEEDHOOK_INGEST_PROCESS=false (a one-core container): the pollers run inside
    `feedhook run`, with no child process, and deliver all the same."""
    cli.env["FEEDHOOK_INGEST_PROCESS"] = "false"
    cli.write_config(one_feed(sequence_feed, receiver, hook={}))
    proc = await cli.start("run")
    sequence_feed.add_events(3)
    await eventually(lambda: len(receiver.ok()) == 3, what="the deliveries")
    assert _children(proc.pid) == []
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 10) == 0


def _cpus(pid: int) -> dict[str, str]:
    """Each thread's name and the CPUs it may run on (Cpus_allowed_list)."""
    cpus = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        status = (task / "status").read_text()
        allowed = next(x for x in status.splitlines() if x.startswith("Cpus_allowed_list"))
        cpus[f"{(task / 'comm').read_text().strip()}:{task.name}"] = allowed.split()[1]
    return cpus


def _listed(cpus: set[int]) -> str:
    """CPUs as /proc lists them, for a contiguous set: 0-1, or 3."""
    low, high = min(cpus), max(cpus)
    assert cpus == set(range(low, high + 1))
    return str(low) if low == high else f"{low}-{high}"


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs Linux and two CPUs to use",
)
@pytest.mark.parametrize("pin", ["default", "false"])
async def test_the_workers_threads_share_one_cpu(
    cli: Cli, sequence_feed: SimFeed, receiver: Receiver, pin: str
) -> None:
    """The worker's threads (event loop, database, HTTP client) take turns on the GIL:
    `feedhook run` holds them all on one CPU. The ingest process is not held: it may
    use every CPU the worker could. FEEDHOOK_PIN_WORKER=false leaves both alone."""
    everything = _listed(set(os.sched_getaffinity(0)))
    if pin != "default":
        cli.env["FEEDHOOK_PIN_WORKER"] = pin
    cli.write_config(one_feed(sequence_feed, receiver, hook={}))
    proc = await cli.start("run")
    sequence_feed.add_events(3)
    await eventually(lambda: len(receiver.ok()) == 3, what="the deliveries")
    worker = _cpus(proc.pid)
    (child,) = _children(proc.pid)
    ingest = _cpus(child)
    err = await cli.stop(proc)
    assert proc.returncode == 0
    assert any("pyreqwest" in name for name in worker)  # the HTTP client's thread is there
    assert set(ingest.values()) == {everything}
    if pin == "false":
        assert set(worker.values()) == {everything}
        assert "the worker's threads run on CPU" not in err
    else:
        (held,) = set(worker.values())
        assert held.isdigit() and int(held) in os.sched_getaffinity(0)
        assert f"the worker's threads run on CPU {held} " in err


@pytest.mark.parametrize("ingest_process", ["true", "false"])
async def test_a_filter_that_fails_on_some_events_stops_nothing(
    cli: Cli, sequence_feed: SimFeed, teamhub: SimTeamHub, receiver: Receiver, ingest_process: str
) -> None:
    """The example file's `contains(data.changes, 'name')` on `types: ['*']` fails on every
    TeamHub event (no `changes`). Every source goes on, the other subscription gets
    everything, the filtered one gets the Sequence events that match, the failures are
    counted per subscription, and `feedhook check` warns about it beforehand."""
    cli.env["FEEDHOOK_INGEST_PROCESS"] = ingest_process
    sequence_feed.add_events(20, types=["job_updated"])
    teamhub.add_events(10)
    cli.write_config(
        {
            "sources": {"seq": source(sequence_feed), "th": teamhub_source(teamhub)},
            "subscriptions": {
                "names": subscription(receiver, "names", filter="contains(data.changes, 'name')"),
                "all": subscription(receiver, "all"),
            },
        }
    )
    code, out, _ = await cli.run("check")
    assert code == 0
    assert "warning: the filter fails on an example teamhub.push.created event" in out
    proc = await cli.start("run")
    try:
        await eventually(lambda: len(receiver.ok("all")) == 30, what="every event to 'all'")
        named = sum(1 for e in sequence_feed.events if "name" in (e.changes or "").split(","))
        await eventually(lambda: len(receiver.ok("names")) == named, what="the named ones")
        teamhub.add_events(5)
        await eventually(lambda: len(receiver.ok("all")) == 35, what="TeamHub goes on")
        _, metrics = await get(f"{cli.admin}/metrics")
        assert 'feedhook_filter_errors_total{subscription="names"} 15.0' in metrics
        status, body = await get(f"{cli.admin}/readyz")
        assert status == 200 and json.loads(body)["failing"] == []
        assert proc.returncode is None
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0
    assert "the ingest process " not in err.decode()  # never died nor restarted
    warnings = [line for line in err.decode().splitlines() if "its filter failed" in line]
    assert len(warnings) == 1


async def test_an_ingest_process_that_keeps_dying_shows_in_readiness_and_metrics(
    cli: Cli, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """An ingest process that dies before its pollers get anything done: every source
    turns `failing` in /readyz with the cause, and a metric counts the restarts."""
    sequence_feed.slow_seconds = 30.0
    sequence_feed.inject(Fault.SLOW, times=100)  # no poll ever completes
    cli.write_config(one_feed(sequence_feed, receiver, hook={}))
    proc = await cli.start("run")
    try:
        await eventually(lambda: len(_children(proc.pid)) == 1, what="the ingest process")
        (child,) = _children(proc.pid)
        os.kill(child, signal.SIGKILL)
        await eventually(lambda: _children(proc.pid) not in ([], [child]), what="a restart")

        async def failing() -> bool:
            _, body = await get(f"{cli.admin}/readyz")
            seq = json.loads(body)["sources"].get("seq", {})
            return seq.get("state") == "failing" and seq.get("cause") == "ingest_process_died"

        await eventually(failing, what="the source shown failing")
        _, metrics = await get(f"{cli.admin}/metrics")
        assert "feedhook_ingest_restarts_total 1.0" in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), 20)


async def test_credentials_echoed_back_by_upstreams_and_receivers_never_show(
    cli: Cli, sequence_feed: SimFeed, teamhub: SimTeamHub, modulo: SimModulo, receiver: Receiver
) -> None:
    """Servers that quote the request back in their error pages: a TeamHub answering
    500 with our keys, a Modulo token endpoint quoting the form (a client_secret with a
    quote and a backslash, URL-encoded there, JSON-escaped in the logs), receivers
    echoing the configured Authorization header or the Basic header made from URL
    credentials. None of it reaches `status`, the API, the unauthenticated /readyz
    (states and causes only), the dead letters, `send-test`, `check` or the logs."""
    token = f"admin-{SENTINEL}"
    cli.env["FEEDHOOK_ADMIN_TOKEN"] = token
    teamhub.echo_requests = modulo.echo_requests = True
    teamhub.account_key = f"acct-{SENTINEL}"
    teamhub.inject(Fault.ERROR_500, times=1000)
    receiver.answer("echo-header", 400, echo=True)
    receiver.answer("echo-basic", 400, echo=True)
    sequence_feed.guard.password = "seq-password-x"  # not a word the messages use
    sequence_feed.add_events(2)
    token_url = modulo.token_url.replace("http://", f"http://tok:url-{SENTINEL}@")
    raw = {
        "sources": {
            "seq": source(sequence_feed, password=sequence_feed.guard.password),
            "th": teamhub_source(teamhub, account_key=f"acct-{SENTINEL}", max_backoff="100ms"),
            "risk": modulo_source(
                modulo, ["E1"], token_url=token_url, client_secret=f'cs"{SENTINEL}\\x'
            ),
        },
        "subscriptions": {
            "echo-header": subscription(
                receiver, "echo-header", headers={"Authorization": f"Bearer hdr-{SENTINEL}"}
            ),
            "echo-basic": subscription(
                receiver,
                "echo-basic",
                url=receiver.url("echo-basic").replace("http://", f"http://u:pw-{SENTINEL}@")
                + f"?api_key=q-{SENTINEL}",
            ),
        },
    }
    cli.write_config(raw)
    outputs: list[str] = []
    code, out, err = await cli.run("check")
    assert code == 0
    outputs += [out, err]
    proc = await cli.start("run")
    try:

        async def errors_stored() -> bool:
            try:
                code, body = await get(f"{cli.admin}/api/status", token)
            except aiohttp.ClientError:
                return False  # not listening yet
            if code != 200:
                return False  # listening, the worker still starting
            sources = json.loads(body)["sources"]
            return all(sources.get(n, {}).get("last_error") for n in ("th", "risk"))

        await eventually(errors_stored, what="both sources' errors stored")
        await eventually(lambda: len(receiver.received) >= 4, what="the echoing receivers")
        for path, auth in (("/api/status", token), ("/readyz", None), ("/api/dead-letters", token)):
            outputs.append((await get(cli.admin + path, auth))[1])
        ready = json.loads(outputs[-2])["sources"]
        assert ready["th"]["cause"] == "http_500" and ready["risk"]["cause"] == "http_400"
        assert "http://" not in outputs[-2] and "last_error" not in outputs[-2]
        dead: list[dict[str, Any]] = []

        async def all_dead() -> bool:
            dead[:] = json.loads((await cli.run("dlq", "list", "--json"))[1])
            return len(dead) == 4  # 2 events x 2 receivers answering 400

        await eventually(all_dead, what="the dead letters written")
        for letter in dead:
            outputs.append((await cli.run("dlq", "show", str(letter["id"])))[1])
            outputs.append((await get(f"{cli.admin}/api/dead-letters/{letter['id']}", token))[1])
        outputs += list((await cli.run("status"))[1:])
        for name in ("echo-header", "echo-basic"):
            outputs += list((await cli.run("send-test", name))[1:])
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err_b = await asyncio.wait_for(proc.communicate(), 10)
    outputs.append(err_b.decode())
    everything = "\n".join(outputs)
    assert "your request" in everything  # the echoes did happen
    assert "credentials rejected: check client_id and client_secret" in everything
    assert "Basic ***" in everything  # the echoed headers arrived, masked
    leak = everything.find(SENTINEL)
    assert leak < 0, everything[max(0, leak - 300) : leak + 100]
    basic = base64.b64encode(f"u:pw-{SENTINEL}".encode()).decode()
    assert basic not in everything


async def test_a_receiver_that_keeps_failing_does_not_flood_the_log(
    cli: Cli, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """300 deliveries failing with 503, each retried: one WARNING line per (subscription,
    cause) a minute with a count, the attempts themselves at DEBUG only."""
    sequence_feed.add_events(300)
    receiver.answer("down", 503)
    cli.write_config(
        {
            "sources": {"seq": source(sequence_feed)},
            "subscriptions": {
                "down": subscription(
                    receiver,
                    "down",
                    max_in_flight=50,
                    retry={"schedule": ["50ms"] * 3},
                    circuit_breaker={"failures": 0},  # every attempt made: the log is the test
                )
            },
        }
    )
    proc = await cli.start("run")
    await eventually(lambda: len(receiver.received) >= 1200, timeout=30, what="every attempt")
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    lines = [json.loads(line) for line in err.decode().splitlines()]
    failing = [x for x in lines if x["level"] == "warning" and "are failing" in x["message"]]
    assert len(failing) == 1, failing
    assert "HTTP 503" in failing[0]["message"]
    assert not any("retrying in" in x["message"] for x in lines)


async def test_a_database_locked_by_another_program_is_waited_out(
    cli: Cli, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """Another program holds the write lock for 12 s: `feedhook run` waits (readiness
    says why), exits nothing, and delivers everything once the lock is released."""
    sequence_feed.add_events(10)
    cli.write_config(one_feed(sequence_feed, receiver, hook={}))
    proc = await cli.start("run")
    await eventually(lambda: len(receiver.ok()) == 10, what="the first events")
    other = sqlite3.connect(cli.db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    locked_at = time.monotonic()
    try:
        sequence_feed.add_events(20)

        async def not_ready() -> bool:
            status, body = await get(f"{cli.admin}/readyz")
            return status == 503 and "locked by another program" in body

        await eventually(not_ready, timeout=20, what="readiness to show the lock")
        await asyncio.sleep(max(0.0, 12 - (time.monotonic() - locked_at)))
        assert proc.returncode is None and len(receiver.ok()) == 10
    finally:
        other.execute("COMMIT")
        other.close()
    await eventually(lambda: len(receiver.ok()) == 30, timeout=20, what="the rest")
    status, _ = await get(f"{cli.admin}/readyz")
    assert status == 200
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0
    assert "waiting for it" in err.decode() and "lock was released" in err.decode()
