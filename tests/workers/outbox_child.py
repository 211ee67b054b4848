"""A child process for the outbox test: it commits a unit of work and dies before relaying.

Usage: python outbox_child.py DATABASE [SCHEMA]

DATABASE is a SQLite file, or a PostgreSQL URL with the SCHEMA of the
store. The ``orders`` table exists there already (in SCHEMA on PostgreSQL).
The child opens a bus with a durable queue on DATABASE, commits one unit of
work (an order row and a sent ``Work(7)``), prints the id of the message it
sent, and sends itself SIGKILL where the relay would begin. What it leaves is
the order and the outbox row, committed together.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
from typing import Any

import attrs
import trio

from triobus import Command, Module, open_bus, route
from triobus.durability import UnitOfWork, durable_queue, unit_of_work


@attrs.frozen
class Work(Command):
    message_name = "dq.work"
    n: int


async def _die_before_relay(self: Any) -> None:
    for _, delivery in self._sent:
        print(delivery.message_id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def user_connection(database: str, schema: str | None) -> Any:
    if schema is None:
        return sqlite3.connect(database, check_same_thread=False)
    import psycopg

    return psycopg.connect(database, options=f"-c search_path={schema}")


async def commit_and_die(database: str, schema: str | None) -> None:
    UnitOfWork._relay = _die_before_relay  # type: ignore[method-assign]
    connection = user_connection(database, schema)
    store = {"path": database} if schema is None else {"url": database, "schema": schema}

    async def handle(work: Work) -> None:
        raise AssertionError("the child never handles: it dies before the relay")

    bus_runner = open_bus(
        Module("child").bind_request(Work, handle),
        # A long poll: the child's own feeder must not relay the row first.
        endpoints=[durable_queue("work", **store, poll_interval=3600)],
        routing=[route(Work).to("work")],
    )
    async with bus_runner as bus, unit_of_work(connection) as uow:
        await uow.execute("INSERT INTO orders (id) VALUES (7)")
        await bus.send(Work(7))


if __name__ == "__main__":
    trio.run(commit_and_die, sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
