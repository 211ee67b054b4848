"""triobus.testing.BusStateMachine: rule-based stateful tests against a live bus.

The machine runs its bus on the real clock in a thread (by design), so the
rules here stay quick: handlers only pass checkpoints, never sleep.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import pytest
import trio
import trio.lowlevel
from hypothesis import HealthCheck, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule, run_state_machine_as_test

from triobus import Command, Event, Module, Request, current_bus, local_queue, route
from triobus.testing import BusStateMachine, RecordKind

MACHINE_SETTINGS = settings(
    max_examples=12,
    stateful_step_count=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# ---------------------------------------------------------------- a small counter module


@attrs.frozen
class Add(Command):
    amount: int


@attrs.frozen
class Added(Event):
    amount: int


@attrs.frozen
class Reset(Command):
    pass


@attrs.frozen
class GetValue(Request[int]):
    pass


@attrs.frozen
class GetAudit(Request[int]):
    pass


class Counter:
    """The counter's state: ``value`` is changed by Add; ``audit`` follows through events."""

    def __init__(self) -> None:
        self.value = 0
        self.audit = 0

    async def add(self, command: Add) -> None:
        self.value += command.amount
        # A cascade: the audit follows only once the event is handled elsewhere.
        await current_bus().publish(Added(command.amount))

    async def added(self, event: Added) -> None:
        for _ in range(3):
            await trio.lowlevel.checkpoint()
        self.audit += event.amount

    async def reset(self, command: Reset) -> None:
        await current_bus().publish(Added(-self.value))
        self.value = 0

    async def get_value(self, query: GetValue) -> int:
        return self.value

    async def get_audit(self, query: GetAudit) -> int:
        return self.audit

    def module(self) -> Module:
        return (
            Module("counter")
            .bind_request(Add, self.add)
            .bind_request(Reset, self.reset)
            .bind_request(GetValue, self.get_value)
            .bind_request(GetAudit, self.get_audit)
            .bind_event(Added, [self.added])
        )


class CounterMachine(BusStateMachine):
    """The counter against a model: an int, and the number of Add commands sent."""

    def __init__(self) -> None:
        self.counter = Counter()
        self.model = 0
        self.adds = 0
        super().__init__()

    def bus_modules(self) -> Sequence[Module]:
        return [self.counter.module()]

    def bus_options(self) -> dict[str, Any]:
        return {"endpoints": [local_queue("audit")], "routing": [route(Added).to("audit")]}

    @rule(amount=st.integers(-5, 5))
    def add(self, amount: int) -> None:
        self.run(self.bus.send, Add(amount))
        self.model += amount
        self.adds += 1

    @rule(amounts=st.lists(st.integers(-5, 5), max_size=4))
    def add_many_at_once(self, amounts: list[int]) -> None:
        async def send_all() -> None:
            async with trio.open_nursery() as nursery:
                for amount in amounts:
                    nursery.start_soon(self.bus.send, Add(amount))

        self.run(send_all)
        self.model += sum(amounts)
        self.adds += len(amounts)

    @precondition(lambda self: self.model != 0)
    @rule()
    def reset(self) -> None:
        self.run(self.bus.send, Reset())
        self.model = 0

    @rule()
    def value_matches_the_model(self) -> None:
        assert self.run(self.bus.invoke, GetValue()) == self.model

    @invariant()
    def the_audit_has_caught_up_after_every_step(self) -> None:
        # Each rule ran to quiet: the Added cascade is already handled.
        assert self.counter.audit == self.counter.value == self.model

    @invariant()
    def every_command_was_handled_and_nothing_is_in_flight(self) -> None:
        assert self.bus.in_flight == 0
        assert len(self.session.handled(Add)) == self.adds
        assert self.session.dead_letters == []
        assert self.session.failed() == []

    @invariant()
    def events_are_handled_on_their_endpoint(self) -> None:
        for record in self.session.of_kind(RecordKind.HANDLED, Added):
            assert record.endpoint is not None and record.endpoint.endswith("/audit")


TestCounterMachine = CounterMachine.TestCase
TestCounterMachine.settings = MACHINE_SETTINGS


# ---------------------------------------------------------------- a machine with a bug to find


class AuditNeverNegative(AssertionError):
    """The deliberately wrong invariant of BrokenCounterMachine."""


class BrokenCounterMachine(CounterMachine):
    """Claims the audit never goes negative, which adding -1 disproves."""

    @invariant()
    def the_audit_is_never_negative(self) -> None:
        audit = self.run(self.bus.invoke, GetAudit())
        if audit < 0:
            raise AuditNeverNegative(f"the audit went down to {audit}")


def test_hypothesis_finds_the_broken_invariant() -> None:
    machine = seed(20260202)(BrokenCounterMachine)
    with pytest.raises(AuditNeverNegative, match="went down to -"):
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=30,
                stateful_step_count=6,
                deadline=None,
                database=None,
                print_blob=False,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )


# ---------------------------------------------------------------- the machine's plumbing


class Plain(BusStateMachine):
    """Driven by hand here (hypothesis needs at least one rule to accept the class)."""

    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        super().__init__()

    def bus_modules(self) -> Sequence[Module]:
        return [self.counter.module()]

    @rule()
    def nothing(self) -> None:
        pass


def test_run_returns_the_result_once_the_bus_is_quiet() -> None:
    counter = Counter()
    machine = Plain(counter)
    try:
        assert machine.run(machine.bus.send, Add(4)) is None
        assert counter.audit == 4  # the cascade finished before run returned
        assert machine.run(machine.bus.invoke, GetValue()) == 4
        kinds = [str(r.kind) for r in machine.session.records]
        assert kinds.count("handled") == 3
    finally:
        machine.teardown()


def test_a_rule_that_raises_in_trio_raises_in_the_rule() -> None:
    class Boom(Exception):
        pass

    async def fails() -> None:
        await trio.lowlevel.checkpoint()
        raise Boom("in trio")

    machine = Plain(Counter())
    try:
        with pytest.raises(Boom, match="in trio"):
            machine.run(fails)
        assert machine.run(machine.bus.invoke, GetValue()) == 0  # the bus still runs
    finally:
        machine.teardown()


def test_after_teardown_the_machine_refuses_to_run() -> None:
    machine = Plain(Counter())
    machine.teardown()
    with pytest.raises(RuntimeError, match="not running"):
        machine.run(machine.bus.invoke, GetValue())


def test_a_bus_that_cannot_start_fails_the_machine_at_once() -> None:
    class Miswired(Plain):
        def bus_options(self) -> dict[str, Any]:
            return {"routing": [route(Added).to("nowhere")]}

    with pytest.raises(RuntimeError, match="failed to start") as caught:
        Miswired(Counter())
    assert "nowhere" in str(caught.value.__cause__)
