"""A worker process for the crash tests: consumes a durable queue until every message is handled.

Usage: python durable_worker.py DATABASE COUNT

Each handler writes its effect (one row per message id, counting calls)
inside a unit of work on the queue's own database, so the effect and
"handled" commit together. The process exits 0 once COUNT effects exist.
"""

from __future__ import annotations

import sqlite3
import sys

import attrs
import trio

from triobus import Command, Module, open_bus, route
from triobus.durability import durable_queue, unit_of_work


@attrs.frozen
class Work(Command):
    message_name = "crash.work"
    n: int


SCHEMA = (
    "CREATE TABLE IF NOT EXISTS effects "
    "(message_id TEXT PRIMARY KEY, n INTEGER NOT NULL, calls INTEGER NOT NULL)"
)


def module(connection: sqlite3.Connection) -> Module:
    async def handle(work: Work) -> None:
        from triobus import current_context

        context = current_context()
        assert context is not None
        async with unit_of_work(connection) as uow:
            await uow.execute(
                "INSERT INTO effects (message_id, n, calls) VALUES (?, ?, 1) "
                "ON CONFLICT (message_id) DO UPDATE SET calls = calls + 1",
                (context.message_id, work.n),
            )

    return Module("crash").bind_request(Work, handle)


async def consume(path: str, count: int) -> None:
    connection = sqlite3.connect(path, check_same_thread=False, timeout=30)
    connection.execute(SCHEMA)
    connection.commit()
    async with open_bus(
        module(connection),
        endpoints=[durable_queue("crash-work", path=path, prefetch=32)],
        routing=[route(Work).to("crash-work")],
    ):
        watcher = sqlite3.connect(path, timeout=30)
        while True:
            (done,) = watcher.execute("SELECT COUNT(*) FROM effects").fetchone()
            if done >= count:
                watcher.close()
                return
            await trio.sleep(0.05)


if __name__ == "__main__":
    trio.run(consume, sys.argv[1], int(sys.argv[2]))
