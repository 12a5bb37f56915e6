"""A throwaway PostgreSQL server for the tests and the benchmarks: a cluster of its own
on a temporary directory and a free loopback port, trust auth, no fsync."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    """A throwaway PostgreSQL cluster: initdb and pg_ctl on a temporary directory, a free
    loopback port, trust auth. Run as the `postgres` user when this runs as root (initdb
    refuses root). `fast`: no fsync (tests); otherwise PostgreSQL's durable defaults
    (benchmarks)."""

    def __init__(self, bin_dir: Path, fast: bool = True) -> None:
        self.bin = bin_dir
        self.fast = fast
        self.dir = Path(tempfile.mkdtemp(prefix="feedhook-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgresql://feedhook@127.0.0.1:{self.port}/postgres"
        self._databases = 0

    def _as_owner(self, *command: str | Path) -> None:
        args = [str(a) for a in command]
        if os.geteuid() == 0:
            args = ["runuser", "-u", "postgres", "--", *args]
        subprocess.run(args, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self._as_owner(
            self.bin / "initdb", "-D", self.data, "-U", "feedhook", "-A", "trust", "--no-sync"
        )
        self._start()

    def _start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        options += " -c max_connections=200"
        if self.fast:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._as_owner(
            self.bin / "pg_ctl",
            "-D",
            self.data,
            "-o",
            options,
            "-l",
            self.dir / "log",
            "-w",
            "start",
        )

    def restart(self, down: float = 0.0) -> None:
        """Stop (fast: every connection dropped), stay down `down` seconds, and start
        again on the same port."""
        self._as_owner(self.bin / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")
        time.sleep(down)
        self._start()

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self._as_owner(self.bin / "pg_ctl", "-D", self.data, "-m", "immediate", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)

    def new_database(self) -> str:
        """The URL of a fresh, empty database."""
        self._databases += 1
        name = f"t{self._databases}_{os.getpid()}"
        subprocess.run(
            [
                str(self.bin / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "feedhook",
                name,
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        return self.url.rsplit("/", 1)[0] + f"/{name}"


def postgres_bin() -> Path | None:
    """Where initdb and pg_ctl live (on PATH, or Debian's /usr/lib/postgresql/*/bin)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True):
        return candidate.parent
    return None
