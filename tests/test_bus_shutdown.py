"""Stopped endpoints, a closed bus, draining on exit, firm stops, and what is never a failure."""

from __future__ import annotations

import logging

import attrs
import pytest
import trio
import trio.testing

from triobus import (
    ActorStopped,
    ActorSystem,
    BusClosed,
    Command,
    DeadLetterReason,
    Event,
    MessageBus,
    Module,
    PublishError,
    Request,
    TriobusError,
    local_queue,
    open_bus,
    route,
    route_module,
)


@attrs.frozen
class Work(Command):
    n: int


@attrs.frozen
class Then(Command):
    n: int


@attrs.frozen
class Done(Event):
    n: int


@attrs.frozen
class Query(Request[int]):
    n: int


async def query(request: Query) -> int:
    return request.n


async def stop_endpoint(bus: MessageBus, uri: str) -> None:
    for ref in bus.endpoints[uri].refs:
        await ref.stop()


# ---------------------------------------------------------------- stopped endpoints


async def test_sending_to_a_stopped_endpoint_raises_and_leaves_a_dead_letter(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handled: list[int] = []

    async def work(command: Work) -> None:
        handled.append(command.n)

    async with open_bus(
        Module("m").bind_request(Work, work),
        endpoints=[local_queue("w")],
        routing=[route(Work).to("w")],
    ) as bus:
        await stop_endpoint(bus, "w")
        with pytest.raises(ActorStopped, match="/w"):
            await bus.send(Work(1))
        assert bus.in_flight == 0
        [letter] = bus.dead_letters
        assert letter.message == Work(1)
        assert letter.reason is DeadLetterReason.STOPPED
        assert letter.recipient.endswith("/w")
        with trio.fail_after(1):
            await bus.wait_quiet()
    assert handled == []


async def test_invoking_a_stopped_endpoint_raises_actor_stopped() -> None:
    async with open_bus(
        Module("m").bind_request(Query, query),
        endpoints=[local_queue("q")],
        routing=[route(Query).to("q")],
    ) as bus:
        assert await bus.invoke(Query(1)) == 1
        await stop_endpoint(bus, "q")
        with pytest.raises(ActorStopped):
            await bus.invoke(Query(2))
        assert bus.in_flight == 0
        assert [d.message for d in bus.dead_letters] == [Query(2)]


async def test_publishing_to_a_stopped_endpoint_raises_publish_error_naming_it() -> None:
    got: list[str] = []

    async def on_a(event: Done) -> None:
        got.append("a")

    async def on_b(event: Done) -> None:
        got.append("b")

    a = Module("a").bind_event(Done, [on_a])
    b = Module("b").bind_event(Done, [on_b])
    async with open_bus(
        a,
        b,
        endpoints=[local_queue("a"), local_queue("b")],
        routing=[route_module(a).to("a"), route_module(b).to("b")],
    ) as bus:
        await stop_endpoint(bus, "b")
        with pytest.raises(PublishError) as info:
            await bus.publish(Done(1))
        assert info.value.endpoints == ("b",)
        await bus.wait_quiet()
        assert bus.in_flight == 0
        assert [(d.message, d.reason) for d in bus.dead_letters] == [
            (Done(1), DeadLetterReason.STOPPED)
        ]
    assert got == ["a"]  # the endpoint that accepted it handled it


async def test_a_held_message_released_to_a_stopped_endpoint_is_a_dead_letter(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def work(command: Work) -> None:
        await bus.send(Then(command.n))

    async def then(command: Then) -> None:
        pytest.fail("the endpoint is stopped")

    async with open_bus(
        Module("m").bind_request(Work, work).bind_request(Then, then),
        endpoints=[local_queue("then")],
        routing=[route(Then).to("then")],
    ) as bus:
        await stop_endpoint(bus, "then")
        await bus.send(Work(1))
        with trio.fail_after(1):
            await bus.wait_quiet()
        assert bus.in_flight == 0
        assert [(d.message, d.reason) for d in bus.dead_letters] == [
            (Then(1), DeadLetterReason.STOPPED)
        ]


# ---------------------------------------------------------------- a closed bus


async def test_dispatch_after_the_bus_exited_raises_bus_closed() -> None:
    async def work(command: Work) -> None:
        pass

    module = Module("m").bind_request(Work, work).bind_request(Query, query)
    async with open_bus(module) as bus:
        pass
    with pytest.raises(BusClosed):
        await bus.send(Work(1))
    with pytest.raises(BusClosed):
        await bus.invoke(Query(1))
    with pytest.raises(BusClosed):
        await bus.publish(Done(1))
    assert issubclass(BusClosed, TriobusError)
    assert list(bus.dead_letters) == []


async def test_dispatch_of_a_type_used_before_raises_bus_closed_after_exit() -> None:
    async def work(command: Work) -> None:
        pass

    async def done(event: Done) -> None:
        pass

    module = Module("m").bind_request(Work, work).bind_request(Query, query)
    module.bind_event(Done, [done])
    async with open_bus(module) as bus:
        await bus.send(Work(1))
        await bus.invoke(Query(1))
        await bus.publish(Done(1))
    outcomes = []
    for call in (bus.send(Work(2)), bus.invoke(Query(2)), bus.publish(Done(2))):
        try:
            await call
        except Exception as exc:
            outcomes.append(type(exc))
    assert outcomes == [BusClosed, BusClosed, BusClosed]


# ---------------------------------------------------------------- leaving the block


async def test_leaving_waits_until_the_bus_is_quiet_cascades_included(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []

    async def work(command: Work) -> None:
        await trio.sleep(1)
        log.append(f"work {command.n}")
        await bus.send(Then(command.n))

    async def then(command: Then) -> None:
        await trio.sleep(1)
        log.append(f"then {command.n}")
        await bus.publish(Done(command.n))

    async def done(event: Done) -> None:
        await trio.sleep(1)
        log.append(f"done {event.n}")

    module = Module("m").bind_request(Work, work).bind_request(Then, then).bind_event(Done, [done])
    async with open_bus(module) as bus:
        await bus.send(Work(1))
        await bus.send(Work(2))
    assert sorted(log) == ["done 1", "done 2", "then 1", "then 2", "work 1", "work 2"]
    assert list(bus.dead_letters) == []
    assert bus.in_flight == 0


async def test_wait_quiet_waits_for_pending_retries(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from triobus import Backoff

    attempts: list[float] = []

    async def flaky(command: Work) -> None:
        attempts.append(trio.current_time())
        if len(attempts) < 3:
            raise RuntimeError("not yet")

    async with open_bus(
        Module("m").bind_request(Work, flaky),
        endpoints=[local_queue("w", backoff=Backoff(initial=5.0, jitter=0.0))],
        routing=[route(Work).to("w")],
    ) as bus:
        start = trio.current_time()
        await bus.send(Work(1))
        await bus.wait_quiet()
        assert trio.current_time() - start == pytest.approx(15.0)
        assert len(attempts) == 3
        assert list(bus.dead_letters) == []


async def test_endpoints_stop_in_reverse_order(autojump_clock: trio.testing.MockClock) -> None:
    stopped: list[str] = []

    async def forever(message: str) -> None:
        try:
            await trio.sleep_forever()
        finally:
            stopped.append(message)

    uris = ["first", "second", "third"]
    module = Module("m")
    for uri in uris:
        module.bind_request(uri, forever)
    async with open_bus(
        module,
        endpoints=[local_queue(uri, shutdown=1.0) for uri in uris],
        routing=[route(uri).to(uri) for uri in uris],
        drain_timeout=1.0,
    ) as bus:
        for uri in uris:
            await bus.send(uri)
    assert stopped == ["third", "second", "first"]


async def test_a_backlog_beyond_the_drain_deadline_is_dead_lettered_not_failed(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    async def slow(command: Work) -> None:
        calls.append(command.n)
        await trio.sleep(100)

    caplog.set_level(logging.WARNING, logger="triobus.bus")
    start = trio.current_time()
    async with open_bus(
        Module("m").bind_request(Work, slow),
        endpoints=[local_queue("w", shutdown=2.0)],
        routing=[route(Work).to("w")],
        drain_timeout=1.0,
    ) as bus:
        for n in range(3):
            await bus.send(Work(n))
    # drain_timeout, then the endpoint's shutdown deadline: 1 + 2 seconds.
    assert trio.current_time() - start == pytest.approx(3.0)
    # The cancelled handler ran once: shutdown is no failure, so no retry.
    assert calls == [0]
    letters = list(bus.dead_letters)
    assert sorted((d.message.n, d.reason) for d in letters) == [
        (0, DeadLetterReason.SHUTDOWN),
        (1, DeadLetterReason.SHUTDOWN),
        (2, DeadLetterReason.SHUTDOWN),
    ]
    assert all(d.exception is None for d in letters)
    assert not [r for r in caplog.records if r.name == "triobus.bus" and "failed" in r.message]
    assert bus.in_flight == 0


async def test_the_bodys_exception_leaves_open_bus_unchanged() -> None:
    class BodyError(Exception):
        pass

    with pytest.raises(BodyError, match=r"^body$"):
        async with open_bus(Module("m")):
            raise BodyError("body")


async def test_a_failing_body_stops_at_once_and_dead_letters_the_backlog(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[int] = []

    async def slow(command: Work) -> None:
        calls.append(command.n)
        await trio.sleep(100)

    start = trio.current_time()
    with pytest.raises(ValueError):
        async with open_bus(Module("m").bind_request(Work, slow)) as bus:
            for n in range(3):
                await bus.send(Work(n))
            await trio.sleep(1)
            raise ValueError("body")
    assert trio.current_time() - start == pytest.approx(1.0)
    assert calls == [0]
    assert sorted((d.message.n, d.reason) for d in bus.dead_letters) == [
        (0, DeadLetterReason.SHUTDOWN),
        (1, DeadLetterReason.SHUTDOWN),
        (2, DeadLetterReason.SHUTDOWN),
    ]


async def test_cancellation_from_outside_stops_at_once_and_never_counts_as_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[int] = []
    interrupted: list[int] = []

    async def slow(command: Work) -> None:
        calls.append(command.n)
        try:
            await trio.sleep(100)
        except trio.Cancelled:
            interrupted.append(command.n)
            raise

    start = trio.current_time()
    with trio.move_on_after(1) as scope:
        async with open_bus(Module("m").bind_request(Work, slow)) as bus:
            for n in range(3):
                await bus.send(Work(n))
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert trio.current_time() - start == pytest.approx(1.0)
    assert calls == [0]
    assert interrupted == [0]
    assert not [d for d in bus.dead_letters if d.reason is DeadLetterReason.FAILED]


async def test_cancellation_from_outside_dead_letters_what_is_queued(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def slow(command: Work) -> None:
        await trio.sleep(100)

    with trio.move_on_after(1):
        async with open_bus(Module("m").bind_request(Work, slow)) as bus:
            for n in range(3):
                await bus.send(Work(n))
            await trio.sleep_forever()
    assert sorted((d.message.n, d.reason) for d in bus.dead_letters) == [
        (0, DeadLetterReason.SHUTDOWN),
        (1, DeadLetterReason.SHUTDOWN),
        (2, DeadLetterReason.SHUTDOWN),
    ]
    assert bus.in_flight == 0


@pytest.mark.parametrize("how", ["cancelled", "failing body"])
async def test_a_firm_stop_over_an_existing_system_leaves_no_bus_behind(
    how: str, autojump_clock: trio.testing.MockClock
) -> None:
    async def slow(command: Work) -> None:
        await trio.sleep(100)

    module = Module("m").bind_request(Work, slow)
    async with ActorSystem("app") as system:
        with trio.move_on_after(1):
            try:
                async with open_bus(module, system=system) as bus:
                    for n in range(3):
                        await bus.send(Work(n))
                    if how == "cancelled":
                        await trio.sleep_forever()
                    raise ValueError("body")
            except ValueError:
                pass
        assert system.tree().children == ()
        assert sorted((d.message.n, d.reason) for d in system.dead_letters) == [
            (0, DeadLetterReason.SHUTDOWN),
            (1, DeadLetterReason.SHUTDOWN),
            (2, DeadLetterReason.SHUTDOWN),
        ]
        # The name is free again for a new bus.
        async with open_bus(Module("m2").bind_request(Query, query), system=system) as bus:
            assert await bus.invoke(Query(1)) == 1


async def test_a_normal_exit_over_an_existing_system_removes_the_bus() -> None:
    async with ActorSystem("app") as system:
        async with open_bus(Module("m").bind_request(Query, query), system=system) as bus:
            assert [c.name for c in system.tree().children] == ["bus"]
            assert await bus.invoke(Query(1)) == 1
        assert system.tree().children == ()


async def test_an_invoke_whose_endpoint_stops_while_it_waits_gets_actor_stopped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    started = trio.Event()

    async def slow(request: Query) -> int:
        started.set()
        await trio.sleep(100)
        return 0

    errors: list[BaseException] = []
    async with open_bus(
        Module("m").bind_request(Query, slow),
        endpoints=[local_queue("q", shutdown=1.0)],
        routing=[route(Query).to("q")],
    ) as bus:

        async def call() -> None:
            try:
                await bus.invoke(Query(1), timeout=None)
            except ActorStopped as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await started.wait()
            await stop_endpoint(bus, "q")
    assert len(errors) == 1
    # A handler cancelled by a stop is not a handler failure.
    assert not [d for d in bus.dead_letters if d.reason is DeadLetterReason.FAILED]


def test_drain_timeout_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="drain_timeout"):
        open_bus(Module("m"), drain_timeout=-1)
    with pytest.raises(ValueError, match="drain_timeout"):
        open_bus(Module("m"), drain_timeout=float("nan"))


async def test_a_drain_timeout_of_zero_stops_without_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def slow(command: Work) -> None:
        await trio.sleep(100)

    start = trio.current_time()
    async with open_bus(
        Module("m").bind_request(Work, slow),
        endpoints=[local_queue("w", shutdown=1.0)],
        routing=[route(Work).to("w")],
        drain_timeout=0,
    ) as bus:
        await bus.send(Work(1))
    assert trio.current_time() - start == pytest.approx(1.0)
    assert [(d.message, d.reason) for d in bus.dead_letters] == [
        (Work(1), DeadLetterReason.SHUTDOWN)
    ]


# ---------------------------------------------------------------- KeyboardInterrupt, SystemExit


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit], ids=lambda t: t.__name__)
@pytest.mark.parametrize("own_system", [True, False], ids=["own-system", "given-system"])
async def test_keyboard_interrupt_or_system_exit_from_a_handler_leaves_open_bus_bare(
    autojump_clock: trio.testing.MockClock, interrupt: type[BaseException], own_system: bool
) -> None:
    raised = interrupt()

    async def interrupting(command: Work) -> None:
        raise raised

    module = Module("m").bind_request(Work, interrupting)
    caught: BaseException | None = None
    try:
        if own_system:
            async with open_bus(module) as bus:
                await bus.send(Work(1))
                await trio.sleep_forever()
        else:
            async with ActorSystem() as system, open_bus(module, system=system) as bus:
                await bus.send(Work(1))
                await trio.sleep_forever()
    except interrupt as exc:  # a plain except clause catches it: no group around it
        caught = exc
    assert caught is raised
