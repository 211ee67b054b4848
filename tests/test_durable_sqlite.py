"""The SQLite connection thread: group commit, and one bad write failing alone."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
import trio
import trio.testing

from triobus import StoreError
from triobus.durability._sqlite import SqliteDatabase as Database


async def test_writes_that_arrive_together_commit_together_and_a_bad_one_fails_alone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db.sqlite"
    database = Database(path, max_delay=0.05)  # the batch waits for the others
    await database.open()
    try:
        await database.write(lambda c: c.execute("CREATE TABLE t (n INTEGER PRIMARY KEY)"))
        outcomes: list[object] = []

        async def insert(n: int) -> None:
            try:
                await database.write(lambda c: c.execute("INSERT INTO t VALUES (?)", (n,)))
                outcomes.append("ok")
            except sqlite3.IntegrityError as exc:
                outcomes.append(exc)

        async with trio.open_nursery() as nursery:
            for n in (1, 2, 2, 3):  # the second 2 breaks the primary key
                nursery.start_soon(insert, n)
    finally:
        await database.close()
    assert outcomes.count("ok") == 3
    assert [type(v) for v in outcomes].count(sqlite3.IntegrityError) == 1
    connection = sqlite3.connect(path)
    assert [n for (n,) in connection.execute("SELECT n FROM t ORDER BY n")] == [1, 2, 3]
    connection.close()


async def test_a_database_that_cannot_be_opened_says_where(tmp_path: Path) -> None:
    database = Database(tmp_path / "missing" / "db.sqlite")
    with pytest.raises(StoreError, match="missing"):
        await database.open()


async def test_a_write_cancelled_while_it_waits_for_a_batch_is_committed_and_returned(
    tmp_path: Path,
) -> None:
    # A caller told "cancelled" must be able to trust that its write did not
    # happen (else a stored message is counted twice, or a claim is never
    # handed over): once queued, a write runs and its caller gets the result.
    database = Database(tmp_path / "db.sqlite")
    await database.open()
    gate = threading.Event()
    ran: list[str] = []
    returned: list[str] = []
    try:

        async def write_behind_a_slow_batch(scope: trio.CancelScope) -> None:
            with scope:
                returned.append(await database.write(lambda c: ran.append("w") or "w"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(database.write, lambda c: gate.wait(10))
            await trio.testing.wait_all_tasks_blocked()  # that batch is on the thread
            scope = trio.CancelScope()
            nursery.start_soon(write_behind_a_slow_batch, scope)
            await trio.testing.wait_all_tasks_blocked()  # queued behind it
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
        await database.flush()
    finally:
        await database.close()
    assert ran == ["w"]
    assert returned == ran


async def test_a_batch_whose_commit_job_fails_fails_each_of_its_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (A ROLLBACK that fails after a failed COMMIT escapes the batch's job.)
    from triobus.durability import _database

    def broken(connection: sqlite3.Connection, writes: list[object], begin: str) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    database = Database(tmp_path / "db.sqlite", max_delay=0.05)  # the two writes batch
    await database.open()
    failed: list[BaseException] = []
    try:
        monkeypatch.setattr(_database, "commit_batch", broken)

        async def write() -> None:
            try:
                await database.write(lambda c: None)
            except StoreError as exc:
                failed.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            nursery.start_soon(write)
        monkeypatch.undo()
        assert await database.write(lambda c: "later") == "later"
    finally:
        await database.close()
    assert len(failed) == 2
    assert all("disk I/O error" in str(exc) for exc in failed)


#: The tables a queue and its outbox had in files of schema version 1.
_VERSION_1 = """
CREATE TABLE triobus_schema (version INTEGER NOT NULL);
INSERT INTO triobus_schema (version) VALUES (1);
CREATE TABLE triobus_queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint TEXT NOT NULL,
    message_id TEXT NOT NULL,
    message_name TEXT NOT NULL,
    step TEXT NOT NULL DEFAULT '',
    due REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    progress INTEGER NOT NULL DEFAULT 0,
    claimed_by TEXT,
    suspect INTEGER NOT NULL DEFAULT 0,
    counted_by TEXT,
    body BLOB NOT NULL
);
CREATE TABLE triobus_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint TEXT NOT NULL,
    message_id TEXT NOT NULL,
    message_name TEXT NOT NULL,
    step TEXT NOT NULL DEFAULT '',
    due REAL,
    body BLOB NOT NULL
);
"""


async def test_a_version_1_file_is_upgraded_and_its_queue_and_outbox_rows_delivered(
    tmp_path: Path,
) -> None:
    import attrs

    from durable_helpers import root_envelope
    from triobus import Command, Module, open_bus, route
    from triobus.durability import Codec, MessageTypes, durable_queue
    from triobus.durability._store import SCHEMA_VERSION

    @attrs.frozen
    class Old(Command):
        message_name = "upgrade.old"
        n: int

    codec = Codec(MessageTypes().register(Old))
    path = tmp_path / "v1.db"
    connection = sqlite3.connect(path)
    connection.executescript(_VERSION_1)
    with connection:
        for n, table in ((1, "triobus_queue"), (2, "triobus_outbox")):
            body = codec.encode(root_envelope(Old(n), f"old-{n}", "upgrade.old"))
            due = ", due" if table == "triobus_queue" else ""
            connection.execute(
                f"INSERT INTO {table} (endpoint, message_id, message_name, body{due}) "
                f"VALUES ('old', ?, 'upgrade.old', ?{', 0' if due else ''})",
                (f"old-{n}", body),
            )
    connection.close()
    seen: list[int] = []
    both = trio.Event()

    async def handle(old: Old) -> None:
        seen.append(old.n)
        if len(seen) == 2:
            both.set()

    async with open_bus(
        Module("upgrade").bind_request(Old, handle),
        endpoints=[durable_queue("old", path=path)],
        routing=[route(Old).to("old")],
    ) as bus:
        with trio.fail_after(20):
            await both.wait()
        await bus.wait_quiet()
    assert sorted(seen) == [1, 2]
    connection = sqlite3.connect(path)
    assert connection.execute("SELECT version FROM triobus_schema").fetchall() == [
        (SCHEMA_VERSION,)
    ]
    assert connection.execute("SELECT COUNT(*) FROM triobus_outbox").fetchone() == (0,)
    connection.close()
