"""Handler classes: the endpoint hands the handler's coroutine to its actor loop.

That is done for an invoke and for a told message (send, or an event with
one handler) whose plan is one handler class. Every promise holds on that
path as on the others: the typed response, the handler's exception in the
caller with the endpoint still serving, a late failure as a dead letter,
the message context, nested dispatch held until the handler succeeded
(dropped when it fails), re-entrant invokes run inline; for told messages
the error policy (retries, then dead letters), and a shutdown that is never
counted as a failure.
"""

from __future__ import annotations

import attrs
import pytest
import trio
import trio.lowlevel
import trio.testing

from triobus import (
    ActorStopped,
    ActorSystem,
    Backoff,
    Command,
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
from triobus.supervision._supervisor import SupervisorCell


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
    async with (
        open_bus(
            module,
            endpoints=[local_queue("one", max_concurrency=1)],
            routing=[route(Fail).to("one")],
        ) as bus,
        trio.open_nursery() as outer,
    ):
        outer.start_soon(observer)
        async with trio.open_nursery() as nursery:
            for _ in range(3 * FAIRNESS_BUDGET):
                nursery.start_soon(caller, bus)
        done = True
    longest = max(len(run) for run in "".join(log).split("o"))
    assert log.count("h") == 3 * FAIRNESS_BUDGET
    assert longest <= 2 * FAIRNESS_BUDGET


# ---------------------------------------------------------------- told messages


@attrs.frozen
class Job(Command):
    n: int


@attrs.frozen
class FollowUp(Command):
    n: int


def _followups(log: list[int]) -> type[RequestHandler[FollowUp, None]]:
    class FollowUpHandler(RequestHandler[FollowUp, None]):
        async def handle(self, command: FollowUp) -> None:
            log.append(command.n)

    return FollowUpHandler


async def test_a_sent_handler_class_that_fails_is_retried_and_its_last_attempt_counts() -> None:
    attempts: list[int] = []
    followed: list[int] = []

    class Flaky(RequestHandler[Job, None]):
        async def handle(self, command: Job) -> None:
            attempts.append(command.n)
            # Each attempt sends; only the successful attempt's command goes out.
            await current_bus().send(FollowUp(len(attempts)))
            if len(attempts) < 2:
                raise RuntimeError("not yet")

    module = Module("m").bind_request(Job, Flaky).bind_request(FollowUp, _followups(followed))
    async with (
        ActorSystem(name="app") as system,
        open_bus(
            module,
            system=system,
            endpoints=[local_queue("jobs", retries=2), local_queue("rest")],
            routing=[route(Job).to("jobs"), route(FollowUp).to("rest")],
        ) as bus,
    ):
        await bus.send(Job(7))
        await bus.wait_quiet()
        assert attempts == [7, 7]
        assert followed == [2]
        assert list(bus.dead_letters) == []
        assert bus.in_flight == 0
        assert _restarts(system.tree()) == 0


async def test_a_sent_handler_class_that_keeps_failing_is_a_dead_letter_and_the_endpoint_goes_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handled: list[int] = []

    class Picky(RequestHandler[Job, None]):
        async def handle(self, command: Job) -> None:
            if command.n < 0:
                raise ValueError(f"negative {command.n}")
            handled.append(command.n)

    async with (
        ActorSystem(name="app") as system,
        open_bus(
            Module("m").bind_request(Job, Picky),
            system=system,
            endpoints=[local_queue("jobs", retries=1, backoff=Backoff(initial=2.0, jitter=0.0))],
            routing=[route(Job).to("jobs")],
        ) as bus,
    ):
        start = trio.current_time()
        await bus.send(Job(-1))
        await bus.send(Job(1))
        await bus.wait_quiet()
        # One retry after the backoff, then the dead letter; the next job runs after.
        assert trio.current_time() - start == pytest.approx(2.0)
        assert handled == [1]
        letters = list(bus.dead_letters)
        assert [(d.message, d.reason) for d in letters] == [(Job(-1), DeadLetterReason.FAILED)]
        assert isinstance(letters[0].exception, ValueError)
        assert letters[0].context is not None
        assert letters[0].context["attempts"] == 2
        assert bus.in_flight == 0
        assert _restarts(system.tree()) == 0


async def test_a_sent_handler_class_cut_off_by_shutdown_is_no_failure_and_drops_what_it_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    followed: list[int] = []

    class Stuck(RequestHandler[Job, None]):
        async def handle(self, command: Job) -> None:
            await current_bus().send(FollowUp(command.n))
            await trio.sleep_forever()

    module = Module("m").bind_request(Job, Stuck).bind_request(FollowUp, _followups(followed))
    async with open_bus(
        module,
        endpoints=[local_queue("jobs", shutdown=1.0), local_queue("rest")],
        routing=[route(Job).to("jobs"), route(FollowUp).to("rest")],
        drain_timeout=0,
    ) as bus:
        await bus.send(Job(1))
        await trio.sleep(1)
    assert followed == []
    assert [(d.message, d.reason, d.exception) for d in bus.dead_letters] == [
        (Job(1), DeadLetterReason.SHUTDOWN, None)
    ]
    assert bus.in_flight == 0


async def test_a_retry_of_a_sent_handler_class_cut_off_by_shutdown_is_no_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    attempts: list[float] = []

    class Failing(RequestHandler[Job, None]):
        async def handle(self, command: Job) -> None:
            attempts.append(trio.current_time())
            raise RuntimeError("down")

    long_wait = Backoff(initial=100.0, maximum=100.0, jitter=0.0)
    async with open_bus(
        Module("m").bind_request(Job, Failing),
        endpoints=[local_queue("jobs", retries=3, backoff=long_wait, shutdown=1.0)],
        routing=[route(Job).to("jobs")],
        drain_timeout=0,
    ) as bus:
        await bus.send(Job(1))
        await trio.sleep(1)
    # The first attempt failed; shutdown came during the backoff before the retry.
    assert len(attempts) == 1
    assert [(d.message, d.reason) for d in bus.dead_letters] == [
        (Job(1), DeadLetterReason.SHUTDOWN)
    ]
    assert bus.in_flight == 0


async def test_an_event_with_one_handler_class_is_retried_like_a_command() -> None:
    attempts: list[int] = []

    class Once(EventHandler[Noticed]):
        async def handle(self, event: Noticed) -> None:
            attempts.append(event.n)
            if len(attempts) == 1:
                raise RuntimeError("first time")

    async with open_bus(
        Module("m").bind_event(Noticed, [Once]),
        endpoints=[local_queue("default", retries=1)],
    ) as bus:
        await bus.publish(Noticed(5))
        await bus.wait_quiet()
    assert attempts == [5, 5]
    assert list(bus.dead_letters) == []
    assert bus.in_flight == 0


async def test_an_invoked_handler_class_cut_off_by_shutdown_drops_what_it_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    followed: list[int] = []
    errors: list[BaseException] = []

    class Stuck(RequestHandler[Lookup, int]):
        async def handle(self, request: Lookup) -> int:
            await current_bus().send(FollowUp(request.n))
            await trio.sleep_forever()
            raise AssertionError("unreachable")

    async def call(bus: MessageBus) -> None:
        try:
            await bus.invoke(Lookup(1), timeout=None)
        except ActorStopped as exc:
            errors.append(exc)

    module = Module("m").bind_request(Lookup, Stuck).bind_request(FollowUp, _followups(followed))
    async with (
        trio.open_nursery() as nursery,
        open_bus(
            module,
            endpoints=[local_queue("one", shutdown=1.0), local_queue("rest")],
            routing=[route(Lookup).to("one"), route(FollowUp).to("rest")],
            drain_timeout=0,
        ) as bus,
    ):
        nursery.start_soon(call, bus)
        await trio.sleep(1)
    assert followed == []
    assert len(errors) == 1
    assert bus.in_flight == 0


async def test_what_a_retry_of_a_sent_handler_class_sent_is_dropped_when_shutdown_cuts_it_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    followed: list[int] = []
    attempts: list[int] = []

    class FailThenStick(RequestHandler[Job, None]):
        async def handle(self, command: Job) -> None:
            attempts.append(command.n)
            if len(attempts) == 1:
                raise RuntimeError("first attempt")
            await current_bus().send(FollowUp(command.n))
            await trio.sleep_forever()

    module = Module("m").bind_request(Job, FailThenStick)
    module.bind_request(FollowUp, _followups(followed))
    async with open_bus(
        module,
        endpoints=[local_queue("jobs", retries=1, shutdown=1.0), local_queue("rest")],
        routing=[route(Job).to("jobs"), route(FollowUp).to("rest")],
        drain_timeout=0,
    ) as bus:
        await bus.send(Job(3))
        await trio.sleep(1)
    assert attempts == [3, 3]
    assert followed == []
    assert [(d.message, d.reason) for d in bus.dead_letters] == [
        (Job(3), DeadLetterReason.SHUTDOWN)
    ]
    assert bus.in_flight == 0


async def test_an_event_cut_off_by_a_restart_of_its_endpoint_goes_on_from_the_handler_cut_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[str] = []
    cut_off = trio.Event()

    def handler(label: str, stall: bool = False) -> type[EventHandler[Noticed]]:
        class Handler(EventHandler[Noticed]):
            async def handle(self, event: Noticed) -> None:
                calls.append(label)
                if stall and calls.count(label) == 1:
                    cut_off.set()
                    await trio.sleep_forever()

        return Handler

    module = Module("m").bind_event(Noticed, [handler("a"), handler("b", True), handler("c")])
    async with open_bus(module, endpoints=[local_queue("default", shutdown=1.0)]) as bus:
        await bus.publish(Noticed(1))
        await cut_off.wait()
        # Restart the endpoint's actor as its supervisor's round would: the
        # stop lets the handler run to the shutdown deadline, then cuts it off.
        cell = bus.endpoints["default"].refs[0]._cell
        supervisor = cell.parent
        assert isinstance(supervisor, SupervisorCell) and supervisor._nursery is not None
        await cell.stop(final=False)
        await cell.start(supervisor._nursery)
        await bus.wait_quiet()
    # a is done and not run again; b runs again from the start; then c.
    assert calls == ["a", "b", "b", "c"]
    assert list(bus.dead_letters) == []
    assert bus.in_flight == 0
