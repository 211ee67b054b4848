"""Pipeline behaviors: order, per-handling instances, transactions and held messages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from triobus import (
    Command,
    DeadLetterReason,
    Event,
    Module,
    Next,
    Request,
    TransactionalBehavior,
    local_queue,
    open_bus,
    route,
)


@attrs.frozen
class Ask(Request[int]):
    n: int


@attrs.frozen
class Do(Command):
    n: int


@attrs.frozen
class Then(Command):
    n: int


@attrs.frozen
class Happened(Event):
    n: int


class Failure(Exception):
    pass


def tracing(log: list[str], name: str) -> type:
    """A behavior class that logs around ``next()``."""

    class Tracing:
        async def __call__(self, message: Any, next: Next) -> Any:
            log.append(f"{name}>")
            try:
                return await next()
            finally:
                log.append(f"<{name}")

    Tracing.__qualname__ = f"Tracing[{name}]"
    return Tracing


# ---------------------------------------------------------------- order


async def test_global_behaviors_wrap_per_type_ones_first_registered_outermost() -> None:
    log: list[str] = []

    async def handle(request: Ask) -> int:
        log.append("handler")
        return request.n

    module = Module("m").bind_request(
        Ask, handle, behaviors=[tracing(log, "t1"), tracing(log, "t2")]
    )
    async with open_bus(module, pipeline=[tracing(log, "g1"), tracing(log, "g2")]) as bus:
        assert await bus.invoke(Ask(5)) == 5
    assert log == ["g1>", "g2>", "t1>", "t2>", "handler", "<t2", "<t1", "<g2", "<g1"]


async def test_behaviors_wrap_sent_commands_and_each_event_subscription() -> None:
    log: list[str] = []

    async def do(command: Do) -> None:
        log.append("do")

    async def first(event: Happened) -> None:
        log.append("first")

    async def second(event: Happened) -> None:
        log.append("second")

    module = (
        Module("m")
        .bind_request(Do, do, behaviors=[tracing(log, "do")])
        .bind_event(Happened, [first, second], behaviors=[tracing(log, "ev")])
    )
    async with open_bus(module, pipeline=[tracing(log, "g")]) as bus:
        await bus.send(Do(1))
        await bus.wait_quiet()
        assert log == ["g>", "do>", "do", "<do", "<g"]
        log.clear()
        await bus.publish(Happened(1))
        await bus.wait_quiet()
    assert log == [
        *["g>", "ev>", "first", "<ev", "<g"],
        *["g>", "ev>", "second", "<ev", "<g"],
    ]


async def test_per_type_behaviors_apply_only_to_their_type() -> None:
    log: list[str] = []

    async def ask(request: Ask) -> int:
        return 0

    async def do(command: Do) -> None:
        return None

    module = (
        Module("m").bind_request(Ask, ask, behaviors=[tracing(log, "ask")]).bind_request(Do, do)
    )
    async with open_bus(module) as bus:
        await bus.invoke(Do(1))
        assert log == []
        await bus.invoke(Ask(1))
    assert log == ["ask>", "<ask"]


async def test_a_behavior_sees_the_message_and_can_change_the_result() -> None:
    seen: list[object] = []

    async def add_one(message: Any, next: Next) -> Any:
        seen.append(message)
        return await next() + 1

    async def handle(request: Ask) -> int:
        return request.n * 10

    async with open_bus(Module("m").bind_request(Ask, handle, behaviors=[add_one])) as bus:
        assert await bus.invoke(Ask(4)) == 41
    assert seen == [Ask(4)]


async def test_a_behavior_can_short_circuit_the_handler() -> None:
    called: list[int] = []

    class Validate:
        async def __call__(self, message: Ask, next: Next) -> Any:
            if message.n < 0:
                raise ValueError("n must be >= 0")
            return await next()

    async def handle(request: Ask) -> int:
        called.append(request.n)
        return request.n

    async with open_bus(Module("m").bind_request(Ask, handle), pipeline=[Validate]) as bus:
        with pytest.raises(ValueError, match="n must be >= 0"):
            await bus.invoke(Ask(-1))
        assert await bus.invoke(Ask(2)) == 2
    assert called == [2]


async def test_behaviors_are_made_fresh_per_handling() -> None:
    instances: list[object] = []

    class Counting:
        def __init__(self) -> None:
            self.calls = 0

        async def __call__(self, message: Any, next: Next) -> Any:
            self.calls += 1
            instances.append(self)  # kept alive: distinct objects
            assert self.calls == 1
            return await next()

    async def handle(request: Ask) -> int:
        return request.n

    async with open_bus(Module("m").bind_request(Ask, handle), pipeline=[Counting]) as bus:
        kept = [await bus.invoke(Ask(n)) for n in range(3)]
    assert kept == [0, 1, 2]
    assert len({id(i) for i in instances}) == 3


async def test_a_behavior_runs_again_on_each_retry() -> None:
    log: list[str] = []
    attempts = 0

    async def flaky(command: Do) -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 2:
            raise Failure("once")

    async with open_bus(Module("m").bind_request(Do, flaky), pipeline=[tracing(log, "g")]) as bus:
        await bus.send(Do(1))
        await bus.wait_quiet()
    assert log == ["g>", "<g", "g>", "<g"]
    assert attempts == 2


# ---------------------------------------------------------------- transactions


@attrs.define
class FakeUnitOfWork:
    log: list[str]
    name: str

    async def commit(self) -> None:
        self.log.append(f"commit {self.name}")

    async def rollback(self) -> None:
        self.log.append(f"rollback {self.name}")


class FailingCommit(FakeUnitOfWork):
    async def commit(self) -> None:
        self.log.append(f"commit failed {self.name}")
        raise Failure("commit failed")


def units(log: list[str], kind: type[FakeUnitOfWork] = FakeUnitOfWork) -> Callable[[], Any]:
    counter = iter(range(1, 1000))
    return lambda: kind(log, f"uow{next(counter)}")


async def test_transactional_behavior_commits_on_success() -> None:
    log: list[str] = []

    async def handle(request: Ask) -> int:
        log.append("handler")
        return request.n

    module = Module("m").bind_request(
        Ask, handle, behaviors=[TransactionalBehavior.using(units(log))]
    )
    async with open_bus(module) as bus:
        assert await bus.invoke(Ask(1)) == 1
        assert await bus.invoke(Ask(2)) == 2
    assert log == ["handler", "commit uow1", "handler", "commit uow2"]


async def test_transactional_behavior_rolls_back_on_error_and_the_error_goes_on() -> None:
    log: list[str] = []

    async def handle(request: Ask) -> int:
        log.append("handler")
        raise Failure("handler failed")

    module = Module("m").bind_request(
        Ask, handle, behaviors=[TransactionalBehavior.using(units(log))]
    )
    async with open_bus(module) as bus:
        with pytest.raises(Failure, match="handler failed"):
            await bus.invoke(Ask(1))
    assert log == ["handler", "rollback uow1"]


async def test_messages_sent_in_a_transaction_are_released_after_the_commit() -> None:
    log: list[str] = []

    async def handle(command: Do) -> None:
        await bus.send(Then(command.n))
        await bus.publish(Happened(command.n))
        log.append("handler")

    async def then(command: Then) -> None:
        log.append("then")

    async def happened(event: Happened) -> None:
        log.append("happened")

    module = (
        Module("m")
        .bind_request(Do, handle, behaviors=[TransactionalBehavior.using(units(log))])
        .bind_request(Then, then)
        .bind_event(Happened, [happened])
    )
    async with open_bus(
        module,
        endpoints=[local_queue("other")],
        routing=[route(Then).to("other"), route(Happened).to("other")],
    ) as bus:
        await bus.send(Do(1))
        await bus.wait_quiet()
    assert log == ["handler", "commit uow1", "then", "happened"]


async def test_messages_sent_in_a_rolled_back_transaction_are_dropped() -> None:
    log: list[str] = []

    async def handle(request: Ask) -> int:
        await bus.send(Then(request.n))
        await bus.publish(Happened(request.n))
        raise Failure("handler failed")

    async def then(command: Then) -> None:
        log.append("then")

    async def happened(event: Happened) -> None:
        log.append("happened")

    module = (
        Module("m")
        .bind_request(Ask, handle, behaviors=[TransactionalBehavior.using(units(log))])
        .bind_request(Then, then)
        .bind_event(Happened, [happened])
    )
    async with open_bus(module) as bus:
        with pytest.raises(Failure):
            await bus.invoke(Ask(1))
        await bus.wait_quiet()
        assert bus.in_flight == 0
        assert list(bus.dead_letters) == []
    assert log == ["rollback uow1"]


async def test_messages_sent_before_a_failed_commit_are_dropped() -> None:
    log: list[str] = []

    async def handle(request: Ask) -> int:
        await bus.send(Then(request.n))
        return request.n

    async def then(command: Then) -> None:
        log.append("then")

    module = (
        Module("m")
        .bind_request(
            Ask, handle, behaviors=[TransactionalBehavior.using(units(log, FailingCommit))]
        )
        .bind_request(Then, then)
    )
    async with open_bus(module) as bus:
        with pytest.raises(Failure, match="commit failed"):
            await bus.invoke(Ask(1))
        await bus.wait_quiet()
        assert bus.in_flight == 0
    assert log == ["commit failed uow1"]


async def test_a_retried_send_releases_only_the_successful_attempts_messages() -> None:
    log: list[str] = []
    attempts = 0

    async def handle(command: Do) -> None:
        nonlocal attempts
        attempts += 1
        await bus.send(Then(attempts))
        if attempts < 3:
            raise Failure(f"attempt {attempts}")

    async def then(command: Then) -> None:
        log.append(f"then {command.n}")

    module = (
        Module("m")
        .bind_request(Do, handle, behaviors=[TransactionalBehavior.using(units(log))])
        .bind_request(Then, then)
    )
    async with open_bus(module) as bus:
        await bus.send(Do(1))
        await bus.wait_quiet()
        assert list(bus.dead_letters) == []
    assert log == ["rollback uow1", "rollback uow2", "commit uow3", "then 3"]


async def test_messages_of_a_dead_lettered_send_are_never_released() -> None:
    log: list[str] = []

    async def handle(command: Do) -> None:
        await bus.send(Then(command.n))
        raise Failure("always")

    async def then(command: Then) -> None:
        log.append("then")

    module = Module("m").bind_request(Do, handle).bind_request(Then, then)
    async with open_bus(module) as bus:
        await bus.send(Do(1))
        await bus.wait_quiet()
        assert bus.in_flight == 0
        assert [(d.message, d.reason) for d in bus.dead_letters] == [
            (Do(1), DeadLetterReason.FAILED)
        ]
    assert log == []


async def test_a_global_transaction_holds_back_what_an_inner_behavior_sent() -> None:
    log: list[str] = []

    async def inner(message: Any, next: Next) -> Any:
        await bus.send(Then(0))
        return await next()

    async def handle(command: Do) -> None:
        log.append("handler")

    async def then(command: Then) -> None:
        log.append("then")

    module = Module("m").bind_request(Do, handle, behaviors=[inner]).bind_request(Then, then)
    async with open_bus(
        module,
        pipeline=[TransactionalBehavior.using(units(log))],
        endpoints=[local_queue("other")],
        routing=[route(Then).to("other")],
    ) as bus:
        await bus.send(Do(1))
        await bus.wait_quiet()
    # Then is handled by a transaction of its own after Do's commit.
    assert log == ["handler", "commit uow1", "then", "commit uow2"]


async def test_an_abandoned_invoke_still_finishes_its_handling(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []

    async def handle(request: Ask) -> int:
        await trio.sleep(10)
        log.append("handler")
        return request.n

    module = Module("m").bind_request(
        Ask, handle, behaviors=[TransactionalBehavior.using(units(log))]
    )
    async with open_bus(module) as bus:
        with trio.move_on_after(1):
            await bus.invoke(Ask(1))
        await bus.wait_quiet()
        await trio.sleep(20)
        # The caller gave up; the reply it abandoned is a late reply.
        assert [d.reason for d in bus.dead_letters] == [DeadLetterReason.LATE_REPLY]
    assert log == ["handler", "commit uow1"]
