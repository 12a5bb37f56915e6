"""`feedhook sim`: a new user's own configuration against the simulated systems, in
three commands (sim, run, watch the receiver)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from conftest import Cli, eventually


def five_free_ports() -> int:
    """A base port with the four after it free too (tried, not assumed)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base > 65000:
            continue
        sockets = []
        try:
            for port in range(base, base + 5):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no five free ports in a row")


async def test_sim_serves_a_config_that_feedhook_run_delivers(tmp_path: Path) -> None:
    base = five_free_ports()
    sim = Cli(tmp_path / "sim")
    sim.dir.mkdir()
    hooks = tmp_path / "hooks.yaml"
    sim_proc = await sim.start("sim", "--port-base", str(base), "--rate", "20", "-o", str(hooks))
    run = Cli(tmp_path / "run")
    run.dir.mkdir()
    run.config = hooks
    run.env["FEEDHOOK_CONFIG"] = str(hooks)
    run_proc = None
    received: list[str] = []
    try:
        await eventually(hooks.exists, timeout=20, what="the hooks.yaml")
        code, _, err = await run.run("check")
        assert code == 0, err
        run_proc = await run.start("run")
        assert sim_proc.stdout is not None
        # The four feeds start together and any may answer first: read until
        # a dozen deliveries have arrived, one of them from Sequence.
        while len(received) < 12 or not any("sequence-demo:" in r for r in received):
            line = (await asyncio.wait_for(sim_proc.stdout.readline(), 30)).decode()
            assert line, "feedhook sim stopped"
            if line.startswith("received "):
                received.append(line)
    finally:
        if run_proc is not None:
            await run.stop(run_proc)
        await sim.stop(sim_proc)
    assert all("signature ok" in line for line in received), received
    assert sim_proc.returncode == 0
