"""What reaches a durable queue after it stopped is a dead letter, never lost (each
test on SQLite and on PostgreSQL)."""

from __future__ import annotations

import random

import attrs
import trio

from durable_helpers import StoreAt
from triobus import Command, DeadLetterReason, Module, current_bus, local_queue, open_bus, route
from triobus.durability import durable_queue
from triobus.testing import FaultInjector, tracked


@attrs.frozen
class Slow(Command):
    message_name = "shutdown.slow"


@attrs.frozen
class Stored(Command):
    message_name = "shutdown.stored"
    n: int


async def test_a_message_sent_to_a_stopped_durable_queue_is_a_dead_letter(
    store_at: StoreAt,
) -> None:
    # Real time (0.3 s): the store's thread is real I/O, which autojump would outrun.
    handled: list[int] = []

    async def slow(command: Slow) -> None:
        await current_bus().send(Stored(7))  # held until this handler succeeds
        await trio.sleep(0.3)  # still running when the durable queue has stopped

    async def store(command: Stored) -> None:
        handled.append(command.n)

    async with open_bus(
        Module("m").bind_request(Slow, slow).bind_request(Stored, store),
        # Endpoints stop in reverse order: "stored" first, while "slow" still drains.
        endpoints=[local_queue("slow"), durable_queue("stored", **store_at.options())],
        routing=[route(Slow).to("slow"), route(Stored).to("stored")],
        drain_timeout=0.05,
    ) as bus:
        await bus.send(Slow())
    letters = [letter for letter in bus.dead_letters if letter.reason is DeadLetterReason.STOPPED]
    assert handled == []
    assert [letter.message for letter in letters] == [Stored(7)]
    assert letters[0].endpoint == "stored"


async def test_a_feeder_whose_handler_actor_is_gone_keeps_the_message_stored(
    store_at: StoreAt,
) -> None:
    handled: list[int] = []
    done = trio.Event()

    async def store(command: Stored) -> None:
        handled.append(command.n)
        done.set()

    module = Module("m").bind_request(Stored, store)
    queue = durable_queue("stored", **store_at.options(), poll_interval=0.05)
    async with open_bus(module, endpoints=[queue], routing=[route(Stored).to("stored")]) as bus:
        ref = queue._ref  # the handler actor, stopped under the running queue
        assert ref is not None
        await ref.stop()
        await bus.send(Stored(1))  # stored; the feeder meets the stopped actor
        await trio.sleep(0.2)
        assert handled == []
    # Nothing crashed, nothing was dropped: the row waits for the next start.
    async with open_bus(
        module,
        endpoints=[durable_queue("stored", **store_at.options())],
        routing=[route(Stored).to("stored")],
    ) as bus:
        await done.wait()
        await bus.wait_quiet()
    assert handled == [1]


class Always(random.Random):
    """A fault coin that always lands on "fault"."""

    def random(self) -> float:
        return 0.0


async def test_a_message_whose_actor_crashes_with_it_stays_stored_until_its_attempts_end(
    store_at: StoreAt,
) -> None:
    queue = durable_queue("stored", **store_at.options())
    async with open_bus(
        Module("m").bind_request(Stored, lambda_store),
        endpoints=[queue],
        routing=[route(Stored).to("stored")],
    ) as bus:
        faults = FaultInjector(Always()).crash_actor(Stored)
        async with tracked(bus, faults=faults):
            await bus.send(Stored(1))
            for _ in range(2000):  # at most 20 s: without the fix no durable letter comes
                if (await queue.counts()).dead_letters:
                    break
                await trio.sleep(0.01)
            letters = await queue.dead_letters.list()
    # Each crash was an interrupted attempt, counted in the store; the attempt
    # limit (3) ended it as a durable letter, not an in-memory one only.
    assert [letter.reason for letter in letters] == [DeadLetterReason.INTERRUPTED]
    assert letters[0].attempts == 3


async def lambda_store(command: Stored) -> None:
    pass
