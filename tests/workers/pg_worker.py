"""A worker process for the PostgreSQL crash test: consumes a shared durable queue.

Usage: python pg_worker.py URL SCHEMA COUNT NAME [KEYS]

With KEYS, the queue is partitioned by ``n % KEYS``.

Each handler writes its effect (one row per message id, counting calls, and
naming the worker) inside a unit of work on the user's psycopg connection,
so the effect and "handled" commit together. The process exits 0 once
COUNT effects exist (written by any worker).
"""

from __future__ import annotations

import sys

import attrs
import psycopg
import trio

from triobus import Command, Module, current_context, open_bus, route
from triobus.durability import durable_queue, unit_of_work


@attrs.frozen
class Work(Command):
    message_name = "crash.work"
    n: int


def schema_sql(schema: str) -> str:
    return (
        f'CREATE TABLE IF NOT EXISTS "{schema}".effects (message_id TEXT PRIMARY KEY, '
        "n INTEGER NOT NULL, calls INTEGER NOT NULL, worker TEXT NOT NULL, "
        "handled BIGSERIAL)"
    )


def module(connection: psycopg.Connection, schema: str, name: str) -> Module:
    async def handle(work: Work) -> None:
        context = current_context()
        assert context is not None
        async with unit_of_work(connection) as uow:
            await uow.execute(
                f'INSERT INTO "{schema}".effects (message_id, n, calls, worker) '
                "VALUES (%s, %s, 1, %s) "
                "ON CONFLICT (message_id) DO UPDATE SET calls = effects.calls + 1",
                (context.message_id, work.n, name),
            )

    return Module("crash").bind_request(Work, handle)


async def consume(url: str, schema: str, count: int, name: str, keys: int) -> None:
    connection = psycopg.connect(url, autocommit=True)  # the effects table exists
    watcher = psycopg.connect(url, autocommit=True)
    async with open_bus(
        module(connection, schema, name),
        endpoints=[
            durable_queue(
                "crash-work",
                url=url,
                schema=schema,
                prefetch=32,
                lease=2.0,
                partition_by=(lambda work: work.n % keys) if keys else None,
            )
        ],
        routing=[route(Work).to("crash-work")],
    ):
        while True:
            (done,) = watcher.execute(f'SELECT COUNT(*) FROM "{schema}".effects').fetchone()
            if done >= count:
                return
            await trio.sleep(0.05)


if __name__ == "__main__":
    keys = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    trio.run(consume, sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], keys)
