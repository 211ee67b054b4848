"""Retries on a durable queue go through its store and stay in flight while due
(each test on SQLite and on PostgreSQL)."""

from __future__ import annotations

import attrs
import trio

from durable_helpers import StoreAt
from triobus import Command, Module, open_bus, route
from triobus.durability import durable_queue


@attrs.frozen
class Flaky(Command):
    message_name = "retries.flaky"
    n: int


async def test_wait_quiet_waits_for_a_retry_that_is_due_now(store_at: StoreAt) -> None:
    calls: list[int] = []

    async def handle(command: Flaky) -> None:
        calls.append(command.n)
        if len(calls) < 3:
            raise RuntimeError("not yet")

    queue = durable_queue("flaky", **store_at.options(), retries=2)
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
    store_at: StoreAt,
) -> None:
    seen: list[int] = []

    async def handle(command: Flaky) -> None:
        ((attempts,),) = store_at.rows("SELECT attempts FROM triobus_queue")
        seen.append(attempts)
        if len(seen) < 3:
            raise RuntimeError("not yet")

    async with open_bus(
        Module("m").bind_request(Flaky, handle),
        endpoints=[durable_queue("flaky", **store_at.options(), retries=2)],
        routing=[route(Flaky).to("flaky")],
    ) as bus:
        await bus.send(Flaky(1))
        await bus.wait_quiet()
    assert seen == [1, 2, 3]
    await trio.lowlevel.checkpoint()
