"""Invokes of handler classes: the endpoint hands the handler's coroutine to its actor loop.

Every promise of invoke holds on that path as on the others: the typed
response, the handler's exception in the caller with the endpoint still
serving, a late failure as a dead letter, the message context, nested
dispatch held until the handler succeeded (dropped when it fails), and
re-entrant invokes run inline.
"""

from __future__ import annotations

import attrs
import pytest
import trio
import trio.lowlevel
import trio.testing

from triobus import (
    ActorSystem,
    DeadLetterReason,
    Event,
    EventHandler,
    MessageBus,
    Module,
    Request,
    RequestHandler,
    TreeNode,
    current_bus,
    current_context,
    local_queue,
    open_bus,
    route,
)
from triobus.actors._cell import FAIRNESS_BUDGET


@attrs.frozen
class Lookup(Request[int]):
    n: int


@attrs.frozen
class Outer(Request[int]):
    n: int


@attrs.frozen
class Fail(Request[int]):
    text: str


@attrs.frozen
class Noticed(Event):
    n: int


class LookupHandler(RequestHandler[Lookup, int]):
    made = 0

    def __init__(self) -> None:
        type(self).made += 1

    async def handle(self, request: Lookup) -> int:
        return request.n * 10


class FailHandler(RequestHandler[Fail, int]):
    async def handle(self, request: Fail) -> int:
        raise ValueError(request.text)


async def test_an_invoked_handler_class_is_made_fresh_and_answers() -> None:
    LookupHandler.made = 0
    async with open_bus(Module("m").bind_request(Lookup, LookupHandler)) as bus:
        assert await bus.invoke(Lookup(1)) == 10
        assert await bus.invoke(Lookup(2)) == 20
    assert LookupHandler.made == 2


def _restarts(node: TreeNode) -> int:
    return node.restarts + sum(_restarts(child) for child in node.children)


async def test_a_failing_handler_class_raises_in_the_caller_and_the_endpoint_goes_on() -> None:
    module = Module("m").bind_request(Fail, FailHandler).bind_request(Lookup, LookupHandler)
    async with (
        ActorSystem(name="app") as system,
        open_bus(
            module,
            system=system,
            endpoints=[local_queue("one", max_concurrency=1)],
            routing=[route(Fail).to("one"), route(Lookup).to("one")],
        ) as bus,
    ):
        with pytest.raises(ValueError, match="no good"):
            await bus.invoke(Fail("no good"))
        assert await bus.invoke(Lookup(4)) == 40
        # A handler's failure is not the endpoint's: nothing was restarted.
        assert _restarts(system.tree()) == 0
    assert len(bus.dead_letters) == 0


async def test_a_handler_class_that_fails_after_its_caller_gave_up_is_a_late_reply(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class SlowFail(RequestHandler[Fail, int]):
        async def handle(self, request: Fail) -> int:
            await trio.sleep(10)
            raise ValueError(request.text)

    async with open_bus(Module("m").bind_request(Fail, SlowFail)) as bus:
        with trio.move_on_after(1):
            await bus.invoke(Fail("too late"))
        await trio.sleep(20)
        letters = list(bus.dead_letters)
    assert [letter.reason for letter in letters] == [DeadLetterReason.LATE_REPLY]
    assert isinstance(letters[0].exception, ValueError)
    assert letters[0].message == Fail("too late")


async def test_a_handler_class_sees_its_context_and_what_it_publishes_follows_the_chain() -> None:
    seen: list[tuple[str | None, str | None]] = []
    ids: list[str] = []

    class Notice(EventHandler[Noticed]):
        async def handle(self, event: Noticed) -> None:
            context = current_context()
            assert context is not None
            seen.append((context.correlation_id, context.causation_id))

    class Publishing(RequestHandler[Lookup, int]):
        async def handle(self, request: Lookup) -> int:
            context = current_context()
            assert context is not None
            ids.append(context.message_id)
            await current_bus().publish(Noticed(request.n))
            return request.n

    module = Module("m").bind_request(Lookup, Publishing).bind_event(Noticed, [Notice])
    async with open_bus(module) as bus:
        assert await bus.invoke(Lookup(3)) == 3
        # Released before the reply: in flight (or handled) once invoke returned.
        assert bus.in_flight > 0 or seen
        await bus.wait_quiet()
    assert seen == [(ids[0], ids[0])]


async def test_what_a_failing_handler_class_published_is_dropped_with_it() -> None:
    handled: list[int] = []

    class Notice(EventHandler[Noticed]):
        async def handle(self, event: Noticed) -> None:
            handled.append(event.n)

    class PublishThenFail(RequestHandler[Lookup, int]):
        async def handle(self, request: Lookup) -> int:
            await current_bus().publish(Noticed(request.n))
            raise ValueError("after publishing")

    module = Module("m").bind_request(Lookup, PublishThenFail).bind_event(Noticed, [Notice])
    async with open_bus(module) as bus:
        with pytest.raises(ValueError, match="after publishing"):
            await bus.invoke(Lookup(5))
        await bus.wait_quiet()
        assert bus.in_flight == 0
    assert handled == []
    assert len(bus.dead_letters) == 0


async def test_a_reentrant_invoke_from_a_handler_class_runs_inline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class OuterHandler(RequestHandler[Outer, int]):
        async def handle(self, request: Outer) -> int:
            # Same endpoint, one message at a time, and this handler holds it.
            return await current_bus().invoke(Lookup(request.n)) + 1

    module = Module("m").bind_request(Lookup, LookupHandler).bind_request(Outer, OuterHandler)
    async with open_bus(
        module,
        endpoints=[local_queue("single", max_concurrency=1)],
        routing=[route(Lookup).to("single"), route(Outer).to("single")],
    ) as bus:
        with trio.fail_after(5):
            assert await bus.invoke(Outer(2)) == 21


async def test_a_backlog_of_failing_invokes_still_lets_other_tasks_run() -> None:
    # The endpoint yields to the scheduler every FAIRNESS_BUDGET messages,
    # failed ones included, so an observer task runs at least once in any two
    # budgets (trio runs a batch's tasks in random order); without the yield
    # all the failures would run in one go.
    log: list[str] = []
    done = False

    class Refuse(RequestHandler[Fail, int]):
        async def handle(self, request: Fail) -> int:
            log.append("h")
            raise ValueError(request.text)

    async def caller(bus: MessageBus) -> None:
        with pytest.raises(ValueError):
            await bus.invoke(Fail("no"))

    async def observer() -> None:
        while not done:
            log.append("o")
            await trio.lowlevel.checkpoint()

    module = Module("m").bind_request(Fail, Refuse)
    async with open_bus(
        module,
        endpoints=[local_queue("one", max_concurrency=1)],
        routing=[route(Fail).to("one")],
    ) as bus, trio.open_nursery() as outer:
        outer.start_soon(observer)
        async with trio.open_nursery() as nursery:
            for _ in range(3 * FAIRNESS_BUDGET):
                nursery.start_soon(caller, bus)
        done = True
    longest = max(len(run) for run in "".join(log).split("o"))
    assert log.count("h") == 3 * FAIRNESS_BUDGET
    assert longest <= 2 * FAIRNESS_BUDGET
