"""Retries on a durable queue go through its store and stay in flight while due."""

from __future__ import annotations

from pathlib import Path

import attrs
import trio

from triobus import Command, Module, open_bus, route
from triobus.durability import durable_queue


@attrs.frozen
class Flaky(Command):
    message_name = "retries.flaky"
    n: int


async def test_wait_quiet_waits_for_a_retry_that_is_due_now(tmp_path: Path) -> None:
    calls: list[int] = []

    async def handle(command: Flaky) -> None:
        calls.append(command.n)
        if len(calls) < 3:
            raise RuntimeError("not yet")

    queue = durable_queue("flaky", path=tmp_path / "q.db", retries=2)
    async with open_bus(
        Module("m").bind_request(Flaky, handle),
        endpoints=[queue],
        routing=[route(Flaky).to("flaky")],
    ) as bus:
        await bus.send(Flaky(1))
        await bus.wait_quiet()
        assert calls == [1, 1, 1]
        counts = await queue.counts()
        assert (counts.incoming, counts.dead_letters) == (0, 0)


async def test_each_retry_is_counted_in_the_store_before_the_handler_runs(
    tmp_path: Path,
) -> None:
    seen: list[int] = []
    path = tmp_path / "q.db"

    async def handle(command: Flaky) -> None:
        import sqlite3

        connection = sqlite3.connect(path)
        (attempts,) = connection.execute("SELECT attempts FROM triobus_queue").fetchone()
        connection.close()
        seen.append(attempts)
        if len(seen) < 3:
            raise RuntimeError("not yet")

    async with open_bus(
        Module("m").bind_request(Flaky, handle),
        endpoints=[durable_queue("flaky", path=path, retries=2)],
        routing=[route(Flaky).to("flaky")],
    ) as bus:
        await bus.send(Flaky(1))
        await bus.wait_quiet()
    assert seen == [1, 2, 3]
    await trio.lowlevel.checkpoint()
