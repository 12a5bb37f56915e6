"""The database, as the CLI meets it: files that cannot be used, a second `feedhook run`,
a file deleted underneath a running worker, a corrupt file. Each ends in one line a
person can act on and exit 1, never a traceback or a hang."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
import time
from pathlib import Path

import aiohttp
import pytest

from feedhook.sim import Receiver, SimFeed
from feedhook.store import SqliteStore, StoreError

from conftest import Cli, eventually, free_port, one_feed


def _not_a_database(tmp: Path) -> tuple[str, str]:
    path = tmp / "notes.txt"
    path.write_text("these are my notes, not a database\n" * 100)
    return str(path), "not a SQLite database"


def _newer_schema(tmp: Path) -> tuple[str, str]:
    path = tmp / "newer.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    return str(path), "newer than this feedhook understands"


def _missing_directory(tmp: Path) -> tuple[str, str]:
    return str(tmp / "no" / "such" / "dir" / "feedhook.db"), "does not exist; create it"


def _directory_is_a_file(tmp: Path) -> tuple[str, str]:
    (tmp / "afile").write_text("x")
    return str(tmp / "afile" / "feedhook.db"), "is not a directory"


def _a_directory(tmp: Path) -> tuple[str, str]:
    (tmp / "adir").mkdir()
    return str(tmp / "adir"), "is a directory"


@pytest.mark.parametrize(
    "case", [_not_a_database, _newer_schema, _missing_directory, _directory_is_a_file, _a_directory]
)
@pytest.mark.parametrize("command", [["run"], ["status"], ["dlq", "list"]])
async def test_an_unusable_database_exits_1_at_once_with_one_line(
    cli: Cli, tmp_path: Path, case: object, command: list[str]
) -> None:
    """Each unusable FEEDHOOK_DB: exit 1 within 2 seconds (no worker thread left behind
    to hang the exit), one line naming the file and what to do, no traceback."""
    db, message = case(tmp_path)  # type: ignore[operator]
    cli.env["FEEDHOOK_DB"] = db
    cli.write_config({"sources": {}})
    started = time.monotonic()
    code, _, err = await cli.run(*command, timeout=10)
    elapsed = time.monotonic() - started
    lines = [line for line in err.splitlines() if not line.startswith("{")]
    if command != ["run"] and case in (_missing_directory, _directory_is_a_file):
        message = "no database at"  # read-only commands never create one
    assert code == 1 if message != "no database at" else code == 2, err
    assert elapsed < 2.0 + 1.5, elapsed  # + the interpreter's own start
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, err


def test_permission_problems_name_the_uid_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unwritable directory or file (the container's volume owned by another user):
    the message names the uid feedhook runs as and the chown to run. (Checked through
    os.access, which answers for the real uid; the tests may run as root.)"""
    path = tmp_path / "feedhook.db"
    path.write_bytes(b"")

    def deny(target: str, mode: int) -> bool:
        return False

    monkeypatch.setattr(os, "access", deny)
    with pytest.raises(StoreError) as info:
        asyncio.run(SqliteStore(path).open())
    text = str(info.value)
    assert f"uid {os.getuid()}" in text and f"chown -R {os.getuid()} {tmp_path}" in text


async def test_a_corrupt_database_is_reported_at_start(cli: Cli, tmp_path: Path) -> None:
    """A database whose pages were damaged: `feedhook run` checks it at start and says so."""
    db = tmp_path / "feedhook.db"
    raw = sqlite3.connect(db)
    raw.execute("CREATE TABLE filler (x TEXT)")
    raw.executemany("INSERT INTO filler VALUES (?)", [("x" * 500,)] * 2000)
    raw.execute("CREATE INDEX filler_x ON filler (x)")
    raw.commit()
    raw.close()
    data = bytearray(db.read_bytes())
    for offset in range(8192, len(data) - 4096, 8192):  # scribble over inner pages
        data[offset : offset + 64] = os.urandom(64)
    db.write_bytes(bytes(data))
    cli.write_config({"sources": {}})
    code, _, err = await cli.run("run", timeout=10)
    lines = [line for line in err.splitlines() if not line.startswith("{")]
    assert code == 1 and len(lines) == 1, err
    assert "corrupt" in lines[0] or "not a SQLite database" in lines[0], err


@pytest.mark.slow
async def test_a_second_run_on_the_same_database_exits_naming_the_holder(
    cli: Cli, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """Two `feedhook run` on one SQLite file: the second exits 1 at once, naming the
    database and the holder's pid and host; the first keeps delivering, once each."""
    sequence_feed.add_events(50)
    cli.write_config(one_feed(sequence_feed, receiver, all={}))
    first = await cli.start("run")
    try:
        await eventually(lambda: len(receiver.received) >= 50, what="the first run delivers")
        second = Cli(cli.dir)
        second.env = {**cli.env, "FEEDHOOK_ADMIN_PORT": "0"}
        started = time.monotonic()
        code, _, err = await second.run("run", timeout=10)
        assert code == 1 and time.monotonic() - started < 3.5, err
        assert f"{cli.db} is in use by another feedhook run" in err
        assert f"pid {first.pid} on host {socket.gethostname()}" in err
        sequence_feed.add_events(30)
        await eventually(lambda: len(receiver.received) >= 80, what="the first run goes on")
        ids = [r.headers["webhook-id"] for r in receiver.received]
        assert len(ids) == len(set(ids)) == 80
    finally:
        first.terminate()
        await first.communicate()
    # Once the holder is gone, the database is free again.
    proc = await cli.start("run")
    await asyncio.sleep(1.5)
    assert proc.returncode is None
    proc.terminate()
    await proc.communicate()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["deleted", "replaced"])
async def test_a_database_deleted_or_replaced_while_running_stops_the_worker(
    cli: Cli, sequence_feed: SimFeed, receiver: Receiver, how: str
) -> None:
    """The file removed (or swapped for another) under a running worker: readiness goes
    red, the log says why, and `feedhook run` exits 1 within a few seconds."""
    sequence_feed.add_events(5)
    cli.write_config(one_feed(sequence_feed, receiver, all={}))
    proc = await cli.start("run")
    try:
        await eventually(lambda: len(receiver.received) >= 5, what="deliveries")
        os.replace(cli.db, cli.dir / "moved-away.db")
        if how == "replaced":
            sqlite3.connect(cli.db).close()
        started = time.monotonic()
        red = False
        reading = asyncio.ensure_future(proc.communicate())
        async with aiohttp.ClientSession() as http:
            while not reading.done() and time.monotonic() - started < 8:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{cli.admin}/readyz") as response:
                        red = red or response.status == 503
                await asyncio.sleep(0.03)
        _, err = await asyncio.wait_for(reading, 10)
        assert proc.returncode == 1, err.decode()
        assert time.monotonic() - started < 8
        assert f"the database file was {how}" in err.decode()
        assert red
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()


async def test_feedhook_db_takes_a_sqlite_url(
    cli: Cli, sequence_feed: SimFeed, receiver: Receiver
) -> None:
    """FEEDHOOK_DB=sqlite:///path names the same file as the plain path: `run` writes
    it (ingest process included) and `status` reads it."""
    sequence_feed.add_events(3)
    cli.write_config(one_feed(sequence_feed, receiver, all={}))
    cli.env["FEEDHOOK_DB"] = f"sqlite:///{cli.db}"  # an absolute path: four slashes
    proc = await cli.start("run")
    try:
        await eventually(lambda: len(receiver.ok()) == 3, what="deliveries")
    finally:
        proc.terminate()
        await proc.communicate()
    assert cli.db.exists()
    code, out, _ = await cli.run("status", "--json")
    assert code == 0 and '"delivered": 3' in out


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            f"postgresql://feedhook:pw@127.0.0.1:{free_port()}/feedhook",
            "cannot connect to PostgreSQL at postgresql://feedhook:***@127.0.0.1:",
        ),
        ("redis://127.0.0.1/0", "unknown kind of store redis://"),
    ],
)
async def test_a_store_url_this_version_cannot_use_is_one_line(
    cli: Cli, url: str, message: str
) -> None:
    """A URL for a kind of store this version does not have, or a PostgreSQL server
    that does not answer: exit 1, one line, and the password in it never shown."""
    cli.env["FEEDHOOK_DB"] = url
    cli.write_config({"sources": {}})
    code, _, err = await cli.run("run", timeout=10)
    lines = [line for line in err.splitlines() if not line.startswith("{")]
    assert code == 1 and len(lines) == 1 and message in lines[0], err
    assert ":pw@" not in err
