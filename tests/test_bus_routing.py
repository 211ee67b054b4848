"""Endpoints and routing: supervised endpoint actors, route precedence, failures, retries."""

from __future__ import annotations

import itertools
import logging
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from triobus import (
    DEFAULT_ENDPOINT,
    DEFAULT_REQUEST_ENDPOINT,
    ActorSystem,
    Backoff,
    ChildKind,
    ChildState,
    Command,
    DeadLetterReason,
    Event,
    MailboxFull,
    MessageBus,
    Module,
    Request,
    local_queue,
    open_bus,
    route,
    route_module,
)


@attrs.frozen
class Place(Command):
    n: int


@attrs.frozen
class Cancel(Command):
    n: int


@attrs.frozen
class Query(Request[int]):
    n: int


@attrs.frozen
class Placed(Event):
    n: int


@attrs.frozen
class Keyed(Command):
    key: int
    seq: int


class Failure(Exception):
    pass


async def fail(message: object) -> None:
    raise Failure(repr(message))


async def fail_too(message: object) -> None:
    raise Failure(repr(message))


def failing_endpoints(*uris: str) -> list[Any]:
    """Endpoints (the two defaults included) that dead-letter a failure at once."""
    names = (DEFAULT_ENDPOINT, DEFAULT_REQUEST_ENDPOINT, *uris)
    return [local_queue(uri, retries=0) for uri in names]


async def recipients(bus: MessageBus, message: object, *, publish: bool = False) -> list[str]:
    """Where a message is handled: the endpoint names on its (failure) dead letters."""
    bus.dead_letters.clear()
    if publish:
        await bus.publish(message)
    else:
        await bus.send(message)
    await bus.wait_quiet()
    return sorted(letter.recipient.rsplit("/", 1)[1] for letter in bus.dead_letters)


# ---------------------------------------------------------------- endpoints are actors


async def test_every_endpoint_is_a_supervised_actor_in_the_tree() -> None:
    async with ActorSystem("app") as system:
        async with open_bus(
            Module("m"),
            system=system,
            endpoints=[local_queue("orders"), local_queue("billing")],
        ):
            bus_node = system.tree().find("bus")
            assert bus_node.kind is ChildKind.SUPERVISOR
            assert [c.name for c in bus_node.children] == [
                "default",
                "requests",
                "orders",
                "billing",
            ]
            for child in bus_node.children:
                assert child.kind is ChildKind.ACTOR
                assert child.state is ChildState.RUNNING
                assert child.path == f"/app/bus/{child.name}"
        assert system.tree().children == ()


async def test_a_partitioned_endpoint_is_one_actor_per_partition() -> None:
    async with (
        ActorSystem("app") as system,
        open_bus(
            Module("m"),
            system=system,
            endpoints=[local_queue("p", max_concurrency=3, partition_by=lambda m: m)],
        ),
    ):
        names = [c.name for c in system.tree().find("bus").children]
        assert names == ["default", "requests", "p#0", "p#1", "p#2"]


def test_partition_by_needs_more_than_one_partition() -> None:
    with pytest.raises(ValueError, match="max_concurrency"):
        local_queue("p", partition_by=lambda m: m)


def test_local_queue_checks_its_arguments() -> None:
    with pytest.raises(ValueError):
        local_queue("")
    with pytest.raises(ValueError):
        local_queue("q", capacity=0)
    with pytest.raises(ValueError):
        local_queue("q", max_concurrency=0)
    with pytest.raises(ValueError):
        local_queue("q", retries=-1)
    with pytest.raises(ValueError):
        local_queue("q", overflow="explode")


# ---------------------------------------------------------------- route precedence


async def test_unrouted_commands_and_events_go_to_default_requests_to_requests() -> None:
    module = (
        Module("m").bind_request(Place, fail).bind_request(Query, fail).bind_event(Placed, [fail])
    )
    async with open_bus(module, endpoints=failing_endpoints()) as bus:
        assert await recipients(bus, Place(1)) == ["default"]
        assert await recipients(bus, Query(1)) == ["requests"]
        assert await recipients(bus, Placed(1), publish=True) == ["default"]


async def test_a_type_route_beats_a_module_route_beats_the_default() -> None:
    routed = Module("routed").bind_request(Place, fail).bind_request(Cancel, fail)
    other = Module("other").bind_request(Query, fail)
    async with open_bus(
        routed,
        other,
        endpoints=failing_endpoints("by-type", "by-module"),
        routing=[route_module(routed).to("by-module"), route(Place).to("by-type")],
    ) as bus:
        assert await recipients(bus, Place(1)) == ["by-type"]
        assert await recipients(bus, Cancel(1)) == ["by-module"]
        assert await recipients(bus, Query(1)) == ["requests"]
        assert bus.topology().splitlines() == [
            f"request {__name__}.Cancel v1 -> by-module: fail",
            f"request {__name__}.Place v1 -> by-type: fail",
            f"request {__name__}.Query v1 -> requests: fail",
        ]


async def test_a_type_route_given_before_the_module_route_still_wins() -> None:
    module = Module("m").bind_request(Place, fail).bind_request(Cancel, fail)
    async with open_bus(
        module,
        endpoints=failing_endpoints("by-type", "by-module"),
        routing=[route(Place).to("by-type"), route_module(module).to("by-module")],
    ) as bus:
        assert await recipients(bus, Place(1)) == ["by-type"]
        assert await recipients(bus, Cancel(1)) == ["by-module"]


async def test_a_route_by_message_name() -> None:
    module = Module("m").bind_request("do.it", fail)
    async with open_bus(
        module, endpoints=failing_endpoints("named"), routing=[route("do.it").to("named")]
    ) as bus:
        assert await recipients(bus, "do.it") == ["named"]
        assert await recipients(bus, {"message_name": "do.it"}) == ["named"]


async def test_a_module_routed_request_goes_to_its_endpoint() -> None:
    module = Module("m").bind_request(Query, fail)
    async with open_bus(
        module, endpoints=failing_endpoints("q"), routing=[route_module(module).to("q")]
    ) as bus:
        assert await recipients(bus, Query(1)) == ["q"]


async def test_event_routing_is_additive_per_module() -> None:
    sales = Module("sales").bind_event(Placed, [fail])
    stock = Module("stock").bind_event(Placed, [fail_too])
    audit = Module("audit").bind_event(Placed, [fail])
    async with open_bus(
        sales,
        stock,
        audit,
        endpoints=failing_endpoints("sales", "stock"),
        routing=[route_module(sales).to("sales"), route_module(stock).to("stock")],
    ) as bus:
        # Each module's subscribers run on that module's endpoint; the
        # unrouted module's on the default endpoint.
        assert await recipients(bus, Placed(1), publish=True) == ["default", "sales", "stock"]


async def test_a_type_route_of_an_event_moves_every_subscriber() -> None:
    sales = Module("sales").bind_event(Placed, [fail])
    stock = Module("stock").bind_event(Placed, [fail_too])
    async with open_bus(
        sales,
        stock,
        endpoints=failing_endpoints("sales", "events"),
        routing=[route_module(sales).to("sales"), route(Placed).to("events")],
    ) as bus:
        assert await recipients(bus, Placed(1), publish=True) == ["events", "events"]


async def test_two_subscribers_on_one_endpoint_each_get_the_event() -> None:
    seen: list[str] = []

    async def one(event: Placed) -> None:
        seen.append("one")

    async def two(event: Placed) -> None:
        seen.append("two")

    module = Module("m").bind_event(Placed, [one, two])
    async with open_bus(
        module, endpoints=[local_queue("e")], routing=[route(Placed).to("e")]
    ) as bus:
        await bus.publish(Placed(1))
        await bus.wait_quiet()
    assert seen == ["one", "two"]


# ---------------------------------------------------------------- capacity and concurrency


async def test_max_concurrency_bounds_the_handlers_running_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    running = 0
    most = 0

    async def slow(command: Place) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await trio.sleep(1)
        running -= 1

    module = Module("m").bind_request(Place, slow)
    async with open_bus(
        module,
        endpoints=[local_queue("pool", max_concurrency=3)],
        routing=[route(Place).to("pool")],
    ) as bus:
        start = trio.current_time()
        for n in range(6):
            await bus.send(Place(n))
        await bus.wait_quiet()
        assert trio.current_time() - start == pytest.approx(2.0)
    assert most == 3


async def test_a_full_endpoint_with_the_fail_policy_refuses_a_send() -> None:
    gate = trio.Event()
    started = trio.Event()
    handled: list[int] = []

    async def blocked(command: Place) -> None:
        started.set()
        await gate.wait()
        handled.append(command.n)

    module = Module("m").bind_request(Place, blocked)
    async with open_bus(
        module,
        endpoints=[local_queue("tiny", capacity=1, overflow="fail")],
        routing=[route(Place).to("tiny")],
    ) as bus:
        await bus.send(Place(1))
        await started.wait()  # 1 is in hand
        await bus.send(Place(2))  # 2 waits
        with pytest.raises(MailboxFull):
            await bus.send(Place(3))
        assert bus.in_flight == 2
        gate.set()
        await bus.wait_quiet()
        assert bus.in_flight == 0
    assert handled == [1, 2]


async def test_a_full_endpoint_with_the_block_policy_makes_the_sender_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handled: list[int] = []

    async def slow(command: Place) -> None:
        await trio.sleep(1)
        handled.append(command.n)

    module = Module("m").bind_request(Place, slow)
    async with open_bus(
        module,
        endpoints=[local_queue("tiny", capacity=1)],
        routing=[route(Place).to("tiny")],
    ) as bus:
        start = trio.current_time()
        for n in range(4):
            await bus.send(Place(n))
        # 0 in hand and 1 waiting at once; 2 and 3 each waited for room.
        assert trio.current_time() - start == pytest.approx(2.0)
        await bus.wait_quiet()
    assert handled == [0, 1, 2, 3]


async def test_partitioned_endpoint_keeps_order_per_key_and_runs_keys_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[tuple[int, int]] = []
    running = 0
    most = 0

    async def handle(command: Keyed) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await trio.sleep(1)
        log.append((command.key, command.seq))
        running -= 1

    module = Module("m").bind_request(Keyed, handle)
    async with open_bus(
        module,
        endpoints=[local_queue("p", max_concurrency=3, partition_by=lambda m: m.key)],
        routing=[route(Keyed).to("p")],
    ) as bus:
        start = trio.current_time()
        for seq in range(4):
            for key in range(3):
                await bus.send(Keyed(key, seq))
        await bus.wait_quiet()
        elapsed = trio.current_time() - start
    for key in range(3):
        assert [seq for k, seq in log if k == key] == [0, 1, 2, 3]
    assert most == 3
    assert elapsed == pytest.approx(4.0)


async def test_a_partitioned_endpoint_serves_invoke() -> None:
    async def answer(request: Query) -> int:
        return request.n + 1

    module = Module("m").bind_request(Query, answer)
    async with open_bus(
        module,
        endpoints=[local_queue("p", max_concurrency=2, partition_by=lambda m: m.n)],
        routing=[route(Query).to("p")],
    ) as bus:
        assert [await bus.invoke(Query(n)) for n in range(4)] == [1, 2, 3, 4]


# ---------------------------------------------------------------- handler failures


def ids() -> Any:
    counter = itertools.count(1)
    return lambda: f"id-{next(counter)}"


async def test_a_failing_send_is_logged_retried_twice_then_dead_lettered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    attempts: list[int] = []
    after: list[int] = []

    async def flaky(command: Place) -> None:
        if command.n == 0:
            attempts.append(command.n)
            raise Failure("always")
        after.append(command.n)

    caplog.set_level(logging.WARNING, logger="triobus.bus")
    async with (
        ActorSystem("app") as system,
        open_bus(
            Module("m").bind_request(Place, flaky),
            system=system,
            endpoints=[local_queue("q")],
            routing=[route(Place).to("q")],
            id_factory=ids(),
        ) as bus,
    ):
        await bus.send(Place(0))
        await bus.send(Place(1))
        await bus.wait_quiet()
        node = system.tree().find("q")
        assert node.state is ChildState.RUNNING
        assert node.restarts == 0
        letters = list(system.dead_letters)
    assert attempts == [0, 0, 0]  # the first try and 2 retries
    assert after == [1]  # the endpoint kept going
    [letter] = letters
    assert letter.message == Place(0)
    assert letter.reason is DeadLetterReason.FAILED
    assert isinstance(letter.exception, Failure)
    assert letter.recipient == "/app/bus/q"
    assert letter.context is not None
    assert letter.context["message_id"] == "id-1"
    warnings = [r for r in caplog.records if r.name == "triobus.bus"]
    assert len(warnings) == 3
    assert all(r.levelno == logging.WARNING for r in warnings)
    assert all("id-1" in r.getMessage() for r in warnings)


async def test_a_retry_that_succeeds_is_no_dead_letter() -> None:
    attempts = 0

    async def flaky(command: Place) -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise Failure("not yet")

    async with open_bus(Module("m").bind_request(Place, flaky)) as bus:
        await bus.send(Place(1))
        await bus.wait_quiet()
        assert list(bus.dead_letters) == []
    assert attempts == 3


@pytest.mark.parametrize("retries", [0, 1, 4])
async def test_retries_are_set_per_endpoint(retries: int) -> None:
    attempts = 0

    async def failing(command: Place) -> None:
        nonlocal attempts
        attempts += 1
        raise Failure("always")

    async with open_bus(
        Module("m").bind_request(Place, failing),
        endpoints=[local_queue("q", retries=retries)],
        routing=[route(Place).to("q")],
    ) as bus:
        await bus.send(Place(1))
        await bus.wait_quiet()
        [letter] = bus.dead_letters
        assert letter.reason is DeadLetterReason.FAILED
    assert attempts == retries + 1


async def test_retries_wait_for_the_backoff(autojump_clock: trio.testing.MockClock) -> None:
    times: list[float] = []

    async def failing(command: Place) -> None:
        times.append(trio.current_time())
        raise Failure("always")

    async with open_bus(
        Module("m").bind_request(Place, failing),
        endpoints=[
            local_queue("q", retries=3, backoff=Backoff(initial=1.0, factor=2.0, jitter=0.0))
        ],
        routing=[route(Place).to("q")],
    ) as bus:
        await bus.send(Place(1))
        await bus.wait_quiet()
        assert len(bus.dead_letters) == 1
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == pytest.approx([1.0, 2.0, 4.0])


async def test_a_failing_event_handler_is_its_own_delivery() -> None:
    calls: list[str] = []

    async def good(event: Placed) -> None:
        calls.append("good")

    async def bad(event: Placed) -> None:
        calls.append("bad")
        raise Failure("bad")

    async with open_bus(Module("m").bind_event(Placed, [bad, good])) as bus:
        await bus.publish(Placed(1))
        await bus.wait_quiet()
        letters = list(bus.dead_letters)
    # The failing subscription was retried on its own; the good one ran once.
    assert calls == ["bad", "bad", "bad", "good"]
    assert [(d.reason, d.context["handler"] if d.context else None) for d in letters] == [
        (DeadLetterReason.FAILED, "test_a_failing_event_handler_is_its_own_delivery.<locals>.bad")
    ]


async def test_handler_failures_never_count_toward_restarts() -> None:
    async def failing(message: object) -> None:
        raise Failure("always")

    module = Module("m").bind_request(Place, failing).bind_request(Query, failing)
    async with (
        ActorSystem("app") as system,
        open_bus(
            module,
            system=system,
            endpoints=[local_queue("q", retries=0)],
            routing=[route(Place).to("q"), route(Query).to("q")],
        ) as bus,
    ):
        for n in range(20):
            await bus.send(Place(n))
            with pytest.raises(Failure):
                await bus.invoke(Query(n))
        await bus.wait_quiet()
        node = system.tree().find("q")
        assert node.restarts == 0
        assert node.state is ChildState.RUNNING
        assert len([d for d in system.dead_letters if d.reason is DeadLetterReason.FAILED]) == 20


# ---------------------------------------------------------------- releases into full endpoints


@attrs.frozen
class Fan(Command):
    count: int


async def test_a_handler_may_release_more_than_its_own_endpoint_holds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handled: list[int] = []

    async def fan(command: Fan) -> None:
        for n in range(command.count):
            await bus.send(Place(n))

    async def place(command: Place) -> None:
        handled.append(command.n)

    module = Module("m").bind_request(Fan, fan).bind_request(Place, place)
    async with open_bus(
        module,
        endpoints=[local_queue("tiny", capacity=1)],
        routing=[route(Fan).to("tiny"), route(Place).to("tiny")],
    ) as bus:
        await bus.send(Fan(5))
        with trio.fail_after(5):
            await bus.wait_quiet()
        assert bus.in_flight == 0
        assert list(bus.dead_letters) == []
    assert handled == [0, 1, 2, 3, 4]


async def test_a_release_refused_by_a_full_endpoint_keeps_wait_quiet_exact() -> None:
    gate = trio.Event()
    started = trio.Event()
    handled: list[int] = []

    async def fan(command: Fan) -> None:
        for n in range(1, command.count + 1):
            await bus.send(Place(n))

    async def place(command: Place) -> None:
        if command.n == 0:
            started.set()
            await gate.wait()
        handled.append(command.n)

    module = Module("m").bind_request(Fan, fan).bind_request(Place, place)
    async with open_bus(
        module,
        endpoints=[local_queue("tiny", capacity=1, overflow="fail")],
        routing=[route(Place).to("tiny")],
    ) as bus:
        await bus.send(Place(0))
        await started.wait()  # 0 in hand, the mailbox holds one more
        await bus.send(Fan(3))  # releases 1, 2, 3 into "tiny"
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
        await bus.wait_quiet()
        # Quiet means every message was handled or dead-lettered.
        dead = [d.message.n for d in bus.dead_letters]  # type: ignore[attr-defined]
        assert sorted(handled + dead) == [0, 1, 2, 3]
        assert bus.in_flight == 0
