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
