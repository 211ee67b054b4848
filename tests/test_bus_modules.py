"""Modules: fluent binding, duplicate errors, start-up validation, freezing."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import pytest

from triobus import (
    ActorNameTaken,
    ActorSystem,
    Command,
    Event,
    EventHandlerAlreadyRegistered,
    Module,
    ModuleFrozen,
    NoRouteError,
    PipelineBehaviorAlreadyRegistered,
    Request,
    RequestHandlerAlreadyRegistered,
    TriobusError,
    WiringError,
    local_queue,
    open_bus,
    route,
    route_module,
)


@attrs.frozen
class Ask(Request[int]):
    n: int


@attrs.frozen
class Do(Command):
    n: int


@attrs.frozen
class Happened(Event):
    n: int


@attrs.frozen
class Lonely(Command):
    pass


@attrs.frozen
class SameNameA(Request[int]):
    message_name: ClassVar[str] = "shared.name"


@attrs.frozen
class SameNameB(Request[int]):
    message_name: ClassVar[str] = "shared.name"


@attrs.frozen
class SameEventA(Event):
    message_name: ClassVar[str] = "shared.event"


@attrs.frozen
class SameEventB(Event):
    message_name: ClassVar[str] = "shared.event"


async def handle_ask(request: Ask) -> int:
    return request.n


async def handle_do(command: Do) -> None:
    pass


async def on_happened(event: Happened) -> None:
    pass


async def on_happened_too(event: Happened) -> None:
    pass


class Behavior:
    async def __call__(self, message: Any, next: Any) -> Any:
        return await next()


class OtherBehavior:
    async def __call__(self, message: Any, next: Any) -> Any:
        return await next()


# ---------------------------------------------------------------- fluent binding


async def test_binding_is_fluent_and_every_binding_is_used() -> None:
    module = Module("orders")
    same = module.bind_request(Ask, handle_ask).bind_event(Happened, [on_happened, on_happened_too])
    assert same is module
    async with open_bus(module) as bus:
        assert await bus.invoke(Ask(3)) == 3


def test_a_module_name_is_a_non_empty_string() -> None:
    with pytest.raises(ValueError):
        Module("")


# ---------------------------------------------------------------- duplicates at bind time


def test_a_second_request_handler_raises_at_bind_time() -> None:
    module = Module("m").bind_request(Ask, handle_ask)
    with pytest.raises(RequestHandlerAlreadyRegistered, match="Ask"):
        module.bind_request(Ask, handle_ask)
    with pytest.raises(RequestHandlerAlreadyRegistered):
        module.bind_request(Ask, lambda: None)


def test_a_second_command_handler_raises_at_bind_time() -> None:
    module = Module("m").bind_request(Do, handle_do)
    with pytest.raises(RequestHandlerAlreadyRegistered):
        module.bind_request(Do, handle_ask)


def test_a_second_handler_by_name_raises_at_bind_time() -> None:
    module = Module("m").bind_request("ping", handle_ask)
    with pytest.raises(RequestHandlerAlreadyRegistered):
        module.bind_request("ping", handle_do)
    # Another version of the same name is another identity.
    module.bind_request("ping", handle_do, version=2)
    with pytest.raises(RequestHandlerAlreadyRegistered):
        module.bind_request("ping", handle_ask, version=2)


def test_the_same_event_handler_twice_raises_at_bind_time() -> None:
    with pytest.raises(EventHandlerAlreadyRegistered, match="on_happened"):
        Module("m").bind_event(Happened, [on_happened, on_happened])
    module = Module("m").bind_event(Happened, [on_happened])
    with pytest.raises(EventHandlerAlreadyRegistered):
        module.bind_event(Happened, [on_happened])
    # A different handler is fine: events have many subscribers.
    module.bind_event(Happened, [on_happened_too])


def test_the_same_behavior_twice_raises_at_bind_time() -> None:
    with pytest.raises(PipelineBehaviorAlreadyRegistered):
        Module("m").bind_request(Ask, handle_ask, behaviors=[Behavior, Behavior])
    with pytest.raises(PipelineBehaviorAlreadyRegistered):
        Module("m").bind_event(Happened, [on_happened], behaviors=[Behavior, Behavior])
    Module("m").bind_request(Ask, handle_ask, behaviors=[Behavior, OtherBehavior])


def test_the_same_global_behavior_twice_raises() -> None:
    with pytest.raises(PipelineBehaviorAlreadyRegistered):
        open_bus(Module("m"), pipeline=[Behavior, OtherBehavior, Behavior])


def test_registration_errors_share_the_base_class() -> None:
    for error in (
        RequestHandlerAlreadyRegistered,
        EventHandlerAlreadyRegistered,
        PipelineBehaviorAlreadyRegistered,
        ModuleFrozen,
        WiringError,
    ):
        assert issubclass(error, TriobusError)


# ---------------------------------------------------------------- start-up validation


async def _start(*modules: Module, **kwargs: Any) -> WiringError:
    with pytest.raises(WiringError) as info:
        async with open_bus(*modules, **kwargs):
            pytest.fail("the bus started despite wiring mistakes")
    return info.value


async def test_a_route_to_an_undeclared_endpoint_is_a_wiring_error() -> None:
    error = await _start(Module("m").bind_request(Do, handle_do), routing=[route(Do).to("nowhere")])
    assert len(error.problems) == 1
    assert "'nowhere'" in error.problems[0]


async def test_a_module_route_to_an_undeclared_endpoint_is_a_wiring_error() -> None:
    module = Module("m").bind_request(Do, handle_do)
    error = await _start(module, routing=[route_module(module).to("nowhere")])
    assert len(error.problems) == 1
    assert "'nowhere'" in error.problems[0]


async def test_a_routed_type_without_a_handler_is_a_wiring_error() -> None:
    error = await _start(
        Module("m").bind_request(Do, handle_do),
        endpoints=[local_queue("q")],
        routing=[route(Lonely).to("q")],
    )
    assert len(error.problems) == 1
    assert "Lonely" in error.problems[0]


async def test_two_modules_binding_one_request_is_a_wiring_error() -> None:
    error = await _start(
        Module("a").bind_request(Ask, handle_ask), Module("b").bind_request(Ask, handle_ask)
    )
    assert len(error.problems) == 1
    assert "'a'" in error.problems[0]
    assert "'b'" in error.problems[0]


async def test_two_types_with_one_identity_is_a_wiring_error() -> None:
    # SameNameA and SameNameB are both ("shared.name", 1).
    error = await _start(
        Module("a").bind_request(SameNameA, handle_ask),
        Module("b").bind_request(SameNameB, handle_ask),
    )
    assert any("SameNameA" in p and "SameNameB" in p for p in error.problems)


async def test_one_name_with_two_versions_is_two_identities() -> None:
    async def second(request: SameNameB) -> int:
        return 2

    module = Module("a").bind_request(SameNameA, handle_ask)
    other = Module("b").bind_request(SameNameB, second, version=2)
    async with open_bus(module, other) as bus:
        assert await bus.invoke({"message_name": "shared.name", "message_version": 2}) == 2


async def test_two_request_types_sharing_one_identity_in_two_modules() -> None:
    # SameNameA and SameNameB are both ("shared.name", 1).
    error = await _start(
        Module("a").bind_request(SameNameA, handle_ask),
        Module("b").bind_event(SameNameB, [on_happened]),
    )
    assert any("SameNameA" in p and "SameNameB" in p for p in error.problems)


async def test_two_event_types_with_one_identity_is_a_wiring_error() -> None:
    error = await _start(
        Module("m").bind_event(SameEventA, [on_happened]).bind_event(SameEventB, [on_happened_too])
    )
    assert len(error.problems) == 1
    assert "SameEventA" in error.problems[0]
    assert "SameEventB" in error.problems[0]


async def test_a_name_bound_as_request_and_as_event_is_a_wiring_error() -> None:
    error = await _start(
        Module("a").bind_request("thing", handle_ask),
        Module("b").bind_event("thing", [on_happened]),
    )
    assert len(error.problems) == 1
    assert "'thing'" in error.problems[0]


async def test_an_endpoint_declared_twice_is_a_wiring_error() -> None:
    error = await _start(Module("m"), endpoints=[local_queue("q"), local_queue("q")])
    assert len(error.problems) == 1
    assert "'q'" in error.problems[0]


async def test_two_modules_with_one_name_is_a_wiring_error() -> None:
    error = await _start(Module("same"), Module("same"))
    assert len(error.problems) == 1
    assert "'same'" in error.problems[0]


async def test_a_route_for_a_module_the_bus_was_not_given_is_a_wiring_error() -> None:
    stray = Module("stray").bind_request(Do, handle_do)
    error = await _start(
        Module("m"), endpoints=[local_queue("q")], routing=[route_module(stray).to("q")]
    )
    assert len(error.problems) == 1
    assert "'stray'" in error.problems[0]


async def test_a_type_routed_to_two_endpoints_is_a_wiring_error() -> None:
    error = await _start(
        Module("m").bind_request(Do, handle_do),
        endpoints=[local_queue("a"), local_queue("b")],
        routing=[route(Do).to("a"), route(Do).to("b")],
    )
    assert len(error.problems) == 1
    assert "Do" in error.problems[0]


async def test_every_wiring_mistake_is_reported_at_once() -> None:
    a = Module("a").bind_request(Ask, handle_ask).bind_request(SameNameA, handle_ask)
    b = Module("b").bind_request(Ask, handle_ask).bind_event(SameNameB, [on_happened])
    error = await _start(
        a,
        b,
        endpoints=[local_queue("q")],
        routing=[route(Do).to("nowhere"), route(Lonely).to("q")],
    )
    problems = "\n".join(error.problems)
    # two modules binding Ask; SameNameA/SameNameB share an identity (and are
    # bound as a request and as an event); Do goes to an undeclared endpoint
    # and has no handler; Lonely has no handler.
    assert "'nowhere'" in problems
    assert "Lonely" in problems
    assert any("Ask" in p and "'a'" in p and "'b'" in p for p in error.problems)
    assert any("SameNameA" in p and "SameNameB" in p for p in error.problems)
    assert any("Do" in p and "no module binds" in p for p in error.problems)
    assert len(error.problems) >= 5
    assert str(len(error.problems)) in str(error)


async def test_nothing_starts_when_the_wiring_is_wrong() -> None:
    module = Module("m").bind_request(Do, handle_do)
    async with ActorSystem("app") as system:
        with pytest.raises(WiringError):
            async with open_bus(module, system=system, routing=[route(Do).to("nowhere")]):
                pytest.fail("unreachable")
        assert system.tree().children == ()
        assert list(system.dead_letters) == []
    # The module was never frozen: it can still be fixed.
    module.bind_request(Ask, handle_ask)


# ---------------------------------------------------------------- freezing


async def test_modules_freeze_while_the_bus_runs() -> None:
    module = Module("m").bind_request(Ask, handle_ask)
    async with open_bus(module) as bus:
        with pytest.raises(ModuleFrozen, match="'m'"):
            module.bind_request(Do, handle_do)
        with pytest.raises(ModuleFrozen):
            module.bind_event(Happened, [on_happened])
        # Nothing was bound by the refused calls.
        with pytest.raises(NoRouteError):
            await bus.send(Do(1))
    # Once the bus is gone the module can be bound again.
    module.bind_request(Do, handle_do)


async def test_a_module_is_reusable_by_a_later_bus() -> None:
    module = Module("m").bind_request(Ask, handle_ask)
    async with open_bus(module) as bus:
        assert await bus.invoke(Ask(1)) == 1
    async with open_bus(module) as bus:
        assert await bus.invoke(Ask(2)) == 2


async def test_a_module_stays_frozen_while_any_bus_runs_it() -> None:
    module = Module("shared").bind_request(Ask, handle_ask)
    async with open_bus(module):
        async with open_bus(module):
            pass
        with pytest.raises(ModuleFrozen):
            module.bind_request(Do, handle_do)


async def test_a_bus_that_fails_to_start_leaves_its_modules_unfrozen() -> None:
    module = Module("late")
    async with ActorSystem("app") as system, open_bus(Module("first"), system=system):
        with pytest.raises(ActorNameTaken):
            async with open_bus(module, system=system):
                pytest.fail("two buses cannot share a name")
        module.bind_request(Ask, handle_ask)  # the failed bus never ran
