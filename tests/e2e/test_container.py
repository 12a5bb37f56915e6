"""The Dockerfile: hadolint-clean, non-root, and its command line works as written.

No Docker engine is needed: the image's ENTRYPOINT + CMD and ENV are read from the
Dockerfile and run in this virtualenv, with /data and /etc/feedhook mapped to temp dirs.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import sys
from pathlib import Path

import pytest
import yaml

from feedhook.sim import Receiver, SimFeed

from conftest import eventually, free_port, source, subscription

ROOT = Path(__file__).parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    return [
        (m.group(1).upper(), m.group(2).strip())
        for m in re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", text, re.M)
        if not m.group(0).lstrip().startswith("#")
    ]


def test_hadolint_is_clean() -> None:
    """hadolint finds nothing to say about the Dockerfile."""
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    import subprocess

    result = subprocess.run(
        [hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_runs_as_non_root_with_data_volume() -> None:
    """A numeric non-root USER, /data as a volume, the documented paths in ENV."""
    found = dict(instructions())
    assert found["USER"].isdigit() and found["USER"] != "0"
    assert json.loads(found["VOLUME"]) == ["/data"]
    env = " ".join(value for key, value in instructions() if key == "ENV")
    assert "FEEDHOOK_DB=/data/feedhook.db" in env
    assert "FEEDHOOK_CONFIG=/etc/feedhook/hooks.yaml" in env
    assert found["ENTRYPOINT"].startswith("[")  # exec form: signals reach feedhook
    assert found["EXPOSE"] == "8080"
    assert found["STOPSIGNAL"] == "SIGTERM"
    assert "CMD [" in found["HEALTHCHECK"]


async def test_container_command_line_runs(
    tmp_path: Path, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """ENTRYPOINT + CMD with the image's ENV delivers events and stops cleanly on SIGTERM."""
    found = dict(instructions())
    argv = json.loads(found["ENTRYPOINT"]) + json.loads(found["CMD"])
    env = dict(os.environ)
    for key, value in instructions():
        if key == "ENV":
            for name, val in re.findall(r"(\w+)=(\S+)", value):
                env[name] = val.replace("/data", str(tmp_path / "data")).replace(
                    "/etc/feedhook", str(tmp_path / "etc")
                )
    env["FEEDHOOK_ADMIN_PORT"] = str(free_port())
    (tmp_path / "data").mkdir()
    (tmp_path / "etc").mkdir()
    sequence_feed.add_events(5)
    config_path = Path(env["FEEDHOOK_CONFIG"])
    config_path.write_text(
        yaml.safe_dump(
            {
                "sources": {"seq": source(sequence_feed)},
                "subscriptions": {"all": subscription(receiver, "all")},
            }
        )
    )
    executable = shutil.which(argv[0], path=str(Path(sys.executable).parent))
    if executable is None:
        pytest.fail(f"{argv[0]} is not installed in this virtualenv")
    proc = await asyncio.create_subprocess_exec(
        executable,
        *argv[1:],
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await eventually(lambda: len(receiver.ok()) == 5, what="deliveries from the container command")
    health = json.loads(found["HEALTHCHECK"].split("CMD", 1)[1])
    probe = await asyncio.create_subprocess_exec(
        shutil.which(health[0], path=str(Path(sys.executable).parent)) or health[0],
        *health[1:],
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await probe.communicate()
    assert probe.returncode == 0, out  # the HEALTHCHECK passes against the running command
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, err.decode()
    assert (tmp_path / "data" / "feedhook.db").exists()
    first = err.decode().splitlines()[0]
    assert json.loads(first)["level"] == "info"  # FEEDHOOK_LOG_FORMAT=json from the image


def test_the_replicas_compose_file_runs_two_replicas_on_postgres() -> None:
    """docker-compose.postgres.yaml: PostgreSQL, then two replicas pointed at it, the
    password from the env file, the image built with the PostgreSQL driver."""
    compose = yaml.safe_load((ROOT / "docker-compose.postgres.yaml").read_text())
    feedhook = compose["services"]["feedhook"]
    assert feedhook["deploy"]["replicas"] == 2
    assert feedhook["depends_on"]["postgres"]["condition"] == "service_healthy"
    url = feedhook["environment"]["FEEDHOOK_DB"]
    assert url.startswith("postgresql://") and "${POSTGRES_PASSWORD}" in url
    assert any(kind == "RUN" and '".[postgres]"' in value for kind, value in instructions())
