"""Bus dispatch: messages and their names, handlers, invoke / send / publish, nested dispatch."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import pytest
import trio
import trio.lowlevel
import trio.testing

from triobus import (
    DEFAULT_INVOKE_TIMEOUT,
    ActorSystem,
    AskTimeout,
    Command,
    DeadLetterReason,
    Event,
    EventHandler,
    IMessageBus,
    IPublisher,
    ISender,
    MessageBus,
    Module,
    NoRouteError,
    Request,
    RequestHandler,
    RequestHandlerNotFound,
    TriobusError,
    current_context,
    default_message_name,
    local_queue,
    open_bus,
    route,
)

# ---------------------------------------------------------------- messages


@attrs.frozen
class Double(Request[int]):
    n: int


@attrs.frozen
class Greet(Request[str]):
    name: str


@attrs.frozen
class Boom(Request[int]):
    text: str


@attrs.frozen
class Store(Command):
    item: str


@attrs.frozen
class Stored(Event):
    item: str


@attrs.frozen
class Nobody(Event):
    pass


@attrs.frozen
class Unbound(Request[int]):
    pass


@attrs.frozen
class UnboundCommand(Command):
    pass


class DoubleHandler(RequestHandler[Double, int]):
    async def handle(self, request: Double) -> int:
        return request.n * 2


class BoomError(Exception):
    pass


async def boom(request: Boom) -> int:
    raise BoomError(request.text)


# ---------------------------------------------------------------- basics


async def test_invoke_returns_the_handlers_typed_response() -> None:
    async def greet(request: Greet) -> str:
        return f"hello {request.name}"

    module = Module("m").bind_request(Double, DoubleHandler).bind_request(Greet, greet)
    async with open_bus(module) as bus:
        doubled: int = await bus.invoke(Double(21))
        greeting: str = await bus.invoke(Greet("ann"))
    assert doubled == 42
    assert greeting == "hello ann"


async def test_invoke_reraises_the_handlers_exception_in_the_caller() -> None:
    module = Module("m").bind_request(Boom, boom).bind_request(Double, DoubleHandler)
    async with open_bus(module) as bus:
        with pytest.raises(BoomError, match=r"^bad input$") as info:
            await bus.invoke(Boom("bad input"))
        assert type(info.value) is BoomError
        # The endpoint survives: the next request is answered.
        assert await bus.invoke(Double(1)) == 2
        # An invoke failure is the caller's, never a dead letter or a retry.
        assert list(bus.dead_letters) == []


async def test_invoke_of_a_failing_handler_runs_it_once() -> None:
    calls: list[str] = []

    async def failing(request: Boom) -> int:
        calls.append(request.text)
        raise BoomError(request.text)

    async with open_bus(Module("m").bind_request(Boom, failing)) as bus:
        with pytest.raises(BoomError):
            await bus.invoke(Boom("once"))
    assert calls == ["once"]


async def test_invoke_without_a_handler_raises_request_handler_not_found() -> None:
    async with open_bus(Module("m").bind_request(Double, DoubleHandler)) as bus:
        with pytest.raises(RequestHandlerNotFound, match="Unbound") as info:
            await bus.invoke(Unbound())
    assert isinstance(info.value, LookupError)
    assert isinstance(info.value, TriobusError)


async def test_send_delivers_to_the_one_handler() -> None:
    stored: list[str] = []

    async def store(command: Store) -> None:
        stored.append(command.item)

    async with open_bus(Module("m").bind_request(Store, store)) as bus:
        await bus.send(Store("a"))
        await bus.send(Store("b"))
        await bus.wait_quiet()
        assert stored == ["a", "b"]
        assert bus.in_flight == 0


async def test_send_without_a_handler_raises_no_route_error() -> None:
    async with open_bus(Module("m").bind_request(Double, DoubleHandler)) as bus:
        with pytest.raises(NoRouteError, match="UnboundCommand") as info:
            await bus.send(UnboundCommand())
        assert bus.in_flight == 0
    assert isinstance(info.value, LookupError)
    assert isinstance(info.value, TriobusError)


async def test_a_command_can_be_invoked_and_returns_the_handlers_result() -> None:
    stored: list[str] = []

    async def store(command: Store) -> None:
        stored.append(command.item)

    async with open_bus(Module("m").bind_request(Store, store)) as bus:
        result = await bus.invoke(Store("x"))
    assert result is None
    assert stored == ["x"]


async def test_publish_reaches_every_subscriber_once() -> None:
    seen: list[tuple[str, str]] = []

    async def first(event: Stored) -> None:
        seen.append(("first", event.item))

    async def second(event: Stored) -> None:
        seen.append(("second", event.item))

    class Third(EventHandler[Stored]):
        async def handle(self, event: Stored) -> None:
            seen.append(("third", event.item))

    module = Module("m").bind_event(Stored, [first, second]).bind_event(Stored, [Third])
    async with open_bus(module) as bus:
        await bus.publish(Stored("x"))
        await bus.wait_quiet()
    assert sorted(seen) == [("first", "x"), ("second", "x"), ("third", "x")]


async def test_publish_with_no_subscriber_is_a_no_op() -> None:
    async with open_bus(Module("m").bind_event(Stored, [boom])) as bus:
        await bus.publish(Nobody())
        assert bus.in_flight == 0
        await bus.wait_quiet()
        assert list(bus.dead_letters) == []


async def test_a_failing_listener_never_stops_the_others() -> None:
    seen: list[str] = []

    async def good(event: Stored) -> None:
        seen.append(event.item)

    async def bad(event: Stored) -> None:
        raise BoomError(event.item)

    async with open_bus(Module("m").bind_event(Stored, [bad, good])) as bus:
        await bus.publish(Stored("x"))  # does not raise
        await bus.wait_quiet()
        letters = list(bus.dead_letters)
    assert seen == ["x"]
    assert [(d.message, d.reason, type(d.exception)) for d in letters] == [
        (Stored("x"), DeadLetterReason.FAILED, BoomError)
    ]


async def test_collect_listener_exceptions_runs_every_handler_and_raises_all_failures() -> None:
    calls: list[str] = []

    async def ok(event: Stored) -> None:
        calls.append("ok")

    async def bad_one(event: Stored) -> None:
        calls.append("bad_one")
        raise BoomError("one")

    async def bad_two(event: Stored) -> None:
        calls.append("bad_two")
        raise KeyError("two")

    module = Module("m").bind_event(Stored, [bad_one, ok, bad_two])
    async with open_bus(module, collect_listener_exceptions=True) as bus:
        with pytest.raises(ExceptionGroup) as info:
            await bus.publish(Stored("x"))
        # Every handler ran exactly once: no retries in this mode.
        assert sorted(calls) == ["bad_one", "bad_two", "ok"]
        failures = info.value.exceptions
        assert sorted(type(e).__name__ for e in failures) == ["BoomError", "KeyError"]
        assert sorted(str(e) for e in failures) == ["'two'", "one"]
        # The failures went to the publisher, not to dead letters.
        await bus.wait_quiet()
        assert list(bus.dead_letters) == []


async def test_collect_listener_exceptions_returns_once_all_handlers_succeeded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    done: list[str] = []

    async def slow(event: Stored) -> None:
        await trio.sleep(1)
        done.append("slow")

    async def fast(event: Stored) -> None:
        done.append("fast")

    module = Module("m").bind_event(Stored, [slow, fast])
    async with open_bus(module, collect_listener_exceptions=True) as bus:
        await bus.publish(Stored("x"))
        # publish waited for every handler.
        assert sorted(done) == ["fast", "slow"]


async def test_collect_listener_exceptions_with_no_subscriber_is_a_no_op() -> None:
    async with open_bus(Module("m"), collect_listener_exceptions=True) as bus:
        await bus.publish(Nobody())


async def test_the_bus_is_imessagebus_isender_and_ipublisher() -> None:
    async with open_bus(Module("m")) as bus:
        assert isinstance(bus, MessageBus)
        assert isinstance(bus, IMessageBus)
        assert isinstance(bus, ISender)
        assert isinstance(bus, IPublisher)

        sender: ISender = bus
        publisher: IPublisher = bus
        assert sender is publisher


# ---------------------------------------------------------------- handlers


async def test_a_handler_class_is_made_fresh_per_message() -> None:
    instances: list[object] = []

    class Counting(RequestHandler[Double, int]):
        def __init__(self) -> None:
            self.calls = 0

        async def handle(self, request: Double) -> int:
            self.calls += 1
            instances.append(self)  # kept alive: distinct objects, never a reused id
            return self.calls

    async with open_bus(Module("m").bind_request(Double, Counting)) as bus:
        results = [await bus.invoke(Double(i)) for i in range(3)]
    assert results == [1, 1, 1]
    assert len({id(i) for i in instances}) == 3


async def test_a_factory_is_called_once_per_message() -> None:
    made: list[str] = []

    class Greeter:
        def __init__(self, prefix: str) -> None:
            self.prefix = prefix

        async def handle(self, request: Greet) -> str:
            return f"{self.prefix} {request.name}"

    def factory() -> Greeter:
        made.append("made")
        return Greeter("hi")

    async with open_bus(Module("m").bind_request(Greet, factory)) as bus:
        assert await bus.invoke(Greet("a")) == "hi a"
        assert await bus.invoke(Greet("b")) == "hi b"
    assert made == ["made", "made"]


async def test_an_event_handler_class_is_made_fresh_per_message() -> None:
    instances: list[object] = []

    class Listener(EventHandler[Stored]):
        async def handle(self, event: Stored) -> None:
            instances.append(self)  # kept alive: distinct objects, never a reused id

    async with open_bus(Module("m").bind_event(Stored, [Listener])) as bus:
        for item in "abc":
            await bus.publish(Stored(item))
        await bus.wait_quiet()
    assert len({id(i) for i in instances}) == 3


# ---------------------------------------------------------------- message names


class Named:
    message_name: ClassVar[str] = "custom.named"

    def __init__(self, n: int) -> None:
        self.n = n


class InheritsName(Named):
    pass


class Plain:
    def __init__(self, n: int) -> None:
        self.n = n


def test_default_message_name_rule() -> None:
    assert default_message_name(Named(1)) == "custom.named"
    # The class attribute counts only on the class itself, not inherited.
    assert default_message_name(InheritsName(1)) == f"{__name__}.InheritsName"
    assert default_message_name(Plain(1)) == f"{__name__}.Plain"
    assert default_message_name(Double(1)) == f"{__name__}.Double"
    assert default_message_name("ping") == "ping"
    assert default_message_name({"message_name": "from.dict"}) == "from.dict"
    assert default_message_name({"other": 1}) == "builtins.dict"


async def test_any_object_can_be_dispatched_by_its_name() -> None:
    got: list[Any] = []

    async def named(message: Named) -> int:
        return message.n + 1

    async def plain(message: Plain) -> int:
        return message.n + 2

    async def by_str(message: str) -> str:
        return message.upper()

    async def by_dict(message: dict[str, Any]) -> Any:
        return message["value"]

    async def listener(message: object) -> None:
        got.append(message)

    module = (
        Module("m")
        .bind_request("custom.named", named)
        .bind_request(Plain, plain)
        .bind_request("ping", by_str)
        .bind_request("from.dict", by_dict)
        .bind_event("happened", [listener])
    )
    async with open_bus(module) as bus:
        assert await bus.invoke(Named(1)) == 2
        assert await bus.invoke(Plain(1)) == 3
        assert await bus.invoke("ping") == "PING"
        assert await bus.invoke({"message_name": "from.dict", "value": 7}) == 7
        await bus.publish("happened")
        await bus.publish({"message_name": "happened", "k": 1})
        await bus.wait_quiet()
        # An inherited message_name is not the subclass's name.
        with pytest.raises(RequestHandlerNotFound):
            await bus.invoke(InheritsName(1))
        with pytest.raises(RequestHandlerNotFound):
            await bus.invoke("pong")
        with pytest.raises(RequestHandlerNotFound):
            await bus.invoke({"message_name": "other.dict"})
    assert got == ["happened", {"message_name": "happened", "k": 1}]


async def test_a_class_bound_with_its_message_name_is_found_by_instances() -> None:
    async def named(message: Named) -> int:
        return message.n

    async with open_bus(Module("m").bind_request(Named, named)) as bus:
        assert await bus.invoke(Named(5)) == 5


async def test_a_custom_name_detector_names_messages_first() -> None:
    def detector(message: object) -> str | None:
        if isinstance(message, tuple):
            return f"tuple.{message[0]}"
        return None  # the default rule

    async def tuple_handler(message: tuple[str, int]) -> int:
        return message[1]

    module = (
        Module("m").bind_request("tuple.add", tuple_handler).bind_request(Double, DoubleHandler)
    )
    async with open_bus(module, name_detector=detector) as bus:
        assert await bus.invoke(("add", 4)) == 4
        assert await bus.invoke(("add", 5)) == 5
        assert await bus.invoke(Double(3)) == 6  # fell back to the default rule
        with pytest.raises(RequestHandlerNotFound, match=r"tuple\.sub"):
            await bus.invoke(("sub", 1))


async def test_a_name_detector_can_rename_a_class() -> None:
    def detector(message: object) -> str | None:
        return "renamed" if isinstance(message, Double) else None

    async def renamed(message: Double) -> int:
        return -message.n

    async with open_bus(
        Module("m").bind_request("renamed", renamed), name_detector=detector
    ) as bus:
        assert await bus.invoke(Double(2)) == -2
        assert await bus.invoke(Double(3)) == -3


# ---------------------------------------------------------------- versions


@attrs.frozen
class PriceV1(Request[str]):
    message_name: ClassVar[str] = "price"
    amount: int


@attrs.frozen
class PriceV2(Request[str]):
    message_name: ClassVar[str] = "price"
    message_version: ClassVar[int] = 2
    amount: int
    currency: str


async def test_handlers_are_bound_per_name_and_version() -> None:
    async def v1(message: PriceV1) -> str:
        return f"v1 {message.amount}"

    async def v2(message: PriceV2) -> str:
        return f"v2 {message.amount} {message.currency}"

    module = Module("m").bind_request(PriceV1, v1).bind_request(PriceV2, v2)
    async with open_bus(module) as bus:
        assert await bus.invoke(PriceV1(3)) == "v1 3"
        assert await bus.invoke(PriceV2(4, "EUR")) == "v2 4 EUR"


async def test_handlers_bound_by_name_with_version_take_versioned_dicts() -> None:
    async def v1(message: dict[str, Any]) -> str:
        return "v1"

    async def v3(message: dict[str, Any]) -> str:
        return "v3"

    module = (
        Module("m")
        .bind_request("quote", v1)  # version 1 by default
        .bind_request("quote", v3, version=3)
    )
    async with open_bus(module) as bus:
        assert await bus.invoke({"message_name": "quote"}) == "v1"
        assert await bus.invoke({"message_name": "quote", "message_version": 1}) == "v1"
        assert await bus.invoke({"message_name": "quote", "message_version": 3}) == "v3"
        with pytest.raises(RequestHandlerNotFound, match="version 2"):
            await bus.invoke({"message_name": "quote", "message_version": 2})


async def test_bind_request_with_a_version_takes_that_version_of_a_class() -> None:
    async def v2_only(message: PriceV2) -> str:
        return "two"

    # Binding the v2 class by its name and an explicit version.
    async with open_bus(Module("m").bind_request("price", v2_only, version=2)) as bus:
        assert await bus.invoke(PriceV2(1, "USD")) == "two"
        with pytest.raises(RequestHandlerNotFound):
            await bus.invoke(PriceV1(1))


async def test_events_are_bound_per_version() -> None:
    seen: list[str] = []

    async def on_v1(message: dict[str, Any]) -> None:
        seen.append("v1")

    async def on_v2(message: dict[str, Any]) -> None:
        seen.append("v2")

    module = Module("m").bind_event("moved", [on_v1]).bind_event("moved", [on_v2], version=2)
    async with open_bus(module) as bus:
        await bus.publish({"message_name": "moved", "message_version": 2})
        await bus.wait_quiet()
        assert seen == ["v2"]
        await bus.publish({"message_name": "moved"})
        await bus.wait_quiet()
        assert seen == ["v2", "v1"]


# ---------------------------------------------------------------- where a bus runs


async def test_open_bus_runs_inside_an_existing_trio_program() -> None:
    ticks: list[int] = []

    async def ticker() -> None:
        for i in range(3):
            ticks.append(i)
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        async with open_bus(Module("m").bind_request(Double, DoubleHandler)) as bus:
            assert await bus.invoke(Double(5)) == 10
    assert ticks == [0, 1, 2]


async def test_open_bus_over_an_existing_actor_system() -> None:
    async with ActorSystem("app") as system:
        async with open_bus(Module("m").bind_request(Double, DoubleHandler), system=system) as bus:
            assert await bus.invoke(Double(2)) == 4
            names = [child.name for child in system.tree().children]
            assert names == ["bus"]
        # The system outlives the bus, and a new bus can start in it.
        async with open_bus(Module("m2").bind_request(Double, DoubleHandler), system=system) as bus:
            assert await bus.invoke(Double(3)) == 6


async def test_two_buses_in_one_system_under_their_own_names() -> None:
    async with ActorSystem("app") as system:
        first = Module("a").bind_request(Double, DoubleHandler)

        async def negate(request: Double) -> int:
            return -request.n

        second = Module("b").bind_request(Double, negate)
        async with (
            open_bus(first, system=system, name="one") as one,
            open_bus(second, system=system, name="two") as two,
        ):
            assert await one.invoke(Double(2)) == 4
            assert await two.invoke(Double(2)) == -2
            assert sorted(child.name for child in system.tree().children) == ["one", "two"]


# ---------------------------------------------------------------- timeouts and concurrency


async def test_invoke_times_out_after_the_default_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def slow(request: Double) -> int:
        await trio.sleep(1000)
        return 0

    assert DEFAULT_INVOKE_TIMEOUT == 30.0
    async with open_bus(Module("m").bind_request(Double, slow), drain_timeout=0) as bus:
        start = trio.current_time()
        with pytest.raises(AskTimeout) as info:
            await bus.invoke(Double(1))
        assert trio.current_time() - start == pytest.approx(30.0)
        assert isinstance(info.value, TimeoutError)


async def test_invoke_timeout_argument_and_bus_default(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def slow(request: Double) -> int:
        await trio.sleep(request.n)
        return request.n

    module = Module("m").bind_request(Double, slow)
    async with open_bus(module, invoke_timeout=5.0, drain_timeout=0) as bus:
        start = trio.current_time()
        with pytest.raises(AskTimeout):
            await bus.invoke(Double(100))
        assert trio.current_time() - start == pytest.approx(5.0)
        start = trio.current_time()
        with pytest.raises(AskTimeout):
            await bus.invoke(Double(100), timeout=2.0)
        assert trio.current_time() - start == pytest.approx(2.0)
        # timeout=None waits as long as it takes.
        assert await bus.invoke(Double(60), timeout=None) == 60


async def test_unrouted_requests_are_served_concurrently(
    autojump_clock: trio.testing.MockClock,
) -> None:
    running = 0
    most = 0

    async def slow(request: Double) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await trio.sleep(1)
        running -= 1
        return request.n

    results: list[int] = []
    async with open_bus(Module("m").bind_request(Double, slow)) as bus:
        start = trio.current_time()

        async def call(n: int) -> None:
            results.append(await bus.invoke(Double(n)))

        async with trio.open_nursery() as nursery:
            for n in range(10):
                nursery.start_soon(call, n)
        elapsed = trio.current_time() - start
    assert sorted(results) == list(range(10))
    assert most == 10
    assert elapsed == pytest.approx(1.0)


async def test_unrouted_commands_are_handled_one_at_a_time_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    running = 0
    most = 0
    order: list[str] = []

    async def slow(command: Store) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await trio.sleep(1)
        order.append(command.item)
        running -= 1

    async with open_bus(Module("m").bind_request(Store, slow)) as bus:
        for item in "abcde":
            await bus.send(Store(item))
        await bus.wait_quiet()
    assert order == list("abcde")
    assert most == 1


# ---------------------------------------------------------------- nested dispatch


@attrs.frozen
class Step1(Command):
    n: int


@attrs.frozen
class Step2(Command):
    n: int


@attrs.frozen
class Lookup(Request[int]):
    n: int


@attrs.frozen
class Outer(Request[int]):
    n: int


async def test_messages_sent_by_a_handler_are_released_after_it_finished(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []

    async def first(command: Step1) -> None:
        await bus.send(Step2(command.n))
        log.append("first sent")
        await trio.sleep(1)  # the other endpoint is free all this time
        log.append("first done")

    async def second(command: Step2) -> None:
        log.append("second ran")

    module = Module("m").bind_request(Step1, first).bind_request(Step2, second)
    async with open_bus(
        module,
        endpoints=[local_queue("one"), local_queue("two")],
        routing=[route(Step1).to("one"), route(Step2).to("two")],
    ) as bus:
        await bus.send(Step1(1))
        await bus.wait_quiet()
    assert log == ["first sent", "first done", "second ran"]


async def test_held_messages_are_released_in_order() -> None:
    order: list[int] = []

    async def first(command: Step1) -> None:
        for n in range(5):
            await bus.send(Step2(n))

    async def second(command: Step2) -> None:
        order.append(command.n)

    module = Module("m").bind_request(Step1, first).bind_request(Step2, second)
    async with open_bus(module) as bus:
        await bus.send(Step1(0))
        await bus.wait_quiet()
    assert order == [0, 1, 2, 3, 4]


async def test_messages_published_by_a_handler_are_held_too(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []

    async def first(command: Step1) -> None:
        await bus.publish(Stored("x"))
        log.append("first published")
        await trio.sleep(1)
        log.append("first done")

    async def listener(event: Stored) -> None:
        log.append("listener ran")

    module = Module("m").bind_request(Step1, first).bind_event(Stored, [listener])
    async with open_bus(
        module, endpoints=[local_queue("one")], routing=[route(Step1).to("one")]
    ) as bus:
        await bus.send(Step1(1))
        await bus.wait_quiet()
    assert log == ["first published", "first done", "listener ran"]


async def test_messages_sent_by_a_failing_handler_are_dropped() -> None:
    handled: list[int] = []

    async def first(request: Outer) -> int:
        await bus.send(Step2(request.n))
        await bus.publish(Stored("never"))
        raise BoomError("after sending")

    async def second(command: Step2) -> None:
        handled.append(command.n)

    async def listener(event: Stored) -> None:
        handled.append(-1)

    module = (
        Module("m")
        .bind_request(Outer, first)
        .bind_request(Step2, second)
        .bind_event(Stored, [listener])
    )
    async with open_bus(module) as bus:
        with pytest.raises(BoomError):
            await bus.invoke(Outer(1))
        await bus.wait_quiet()
        assert bus.in_flight == 0
    assert handled == []


async def test_messages_sent_during_an_invoke_are_released_before_its_reply() -> None:
    gate = trio.Event()
    blocked = trio.Event()

    async def blocker(command: Step1) -> None:
        blocked.set()
        await gate.wait()

    async def second(command: Step2) -> None:
        pass

    async def outer(request: Outer) -> int:
        await bus.send(Step2(request.n))
        return request.n

    module = (
        Module("m")
        .bind_request(Step1, blocker)
        .bind_request(Step2, second)
        .bind_request(Outer, outer)
    )
    async with (
        ActorSystem("app") as system,
        open_bus(
            module,
            system=system,
            endpoints=[local_queue("slow")],
            routing=[route(Step1).to("slow"), route(Step2).to("slow")],
        ) as bus,
    ):
        await bus.send(Step1(0))
        await blocked.wait()
        assert await bus.invoke(Outer(7)) == 7
        # The command is already waiting in its endpoint when the reply arrives.
        assert system.tree().find("slow").mailbox_depth == 1
        gate.set()
        await bus.wait_quiet()


async def test_an_invoke_inside_a_handler_runs_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def lookup(request: Lookup) -> int:
        await trio.sleep(1)
        return request.n * 10

    async def outer(request: Outer) -> int:
        return await bus.invoke(Lookup(request.n)) + 1

    module = Module("m").bind_request(Lookup, lookup).bind_request(Outer, outer)
    async with open_bus(
        module, endpoints=[local_queue("lookups")], routing=[route(Lookup).to("lookups")]
    ) as bus:
        assert await bus.invoke(Outer(4)) == 41


async def test_a_command_handler_can_invoke() -> None:
    results: list[int] = []

    async def lookup(request: Lookup) -> int:
        return request.n * 10

    async def first(command: Step1) -> None:
        results.append(await bus.invoke(Lookup(command.n)))

    module = Module("m").bind_request(Lookup, lookup).bind_request(Step1, first)
    async with open_bus(module) as bus:
        await bus.send(Step1(3))
        await bus.wait_quiet()
    assert results == [30]


async def test_a_reentrant_invoke_with_no_free_capacity_runs_inline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def lookup(request: Lookup) -> int:
        return request.n * 10

    async def outer(request: Outer) -> int:
        # Same endpoint, one message at a time, and this handler holds it.
        return await bus.invoke(Lookup(request.n)) + 1

    module = Module("m").bind_request(Lookup, lookup).bind_request(Outer, outer)
    async with open_bus(
        module,
        endpoints=[local_queue("single", max_concurrency=1)],
        routing=[route(Lookup).to("single"), route(Outer).to("single")],
    ) as bus:
        with trio.fail_after(5):
            assert await bus.invoke(Outer(2)) == 21


async def test_a_reentrant_invoke_through_another_endpoint_runs_inline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def inner(request: Lookup) -> int:
        return request.n

    async def middle(request: Double) -> int:
        return await bus.invoke(Lookup(request.n)) * 2

    async def outer(request: Outer) -> int:
        return await bus.invoke(Double(request.n)) + 1

    module = (
        Module("m")
        .bind_request(Outer, outer)
        .bind_request(Double, middle)
        .bind_request(Lookup, inner)
    )
    async with open_bus(
        module,
        endpoints=[local_queue("a"), local_queue("b")],
        routing=[route(Outer).to("a"), route(Double).to("b"), route(Lookup).to("a")],
    ) as bus:
        with trio.fail_after(5):
            assert await bus.invoke(Outer(5)) == 11


async def test_a_command_handler_reentrant_invoke_runs_inline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    results: list[int] = []

    async def lookup(request: Lookup) -> int:
        return request.n + 1

    async def first(command: Step1) -> None:
        results.append(await bus.invoke(Lookup(command.n)))

    module = Module("m").bind_request(Lookup, lookup).bind_request(Step1, first)
    async with open_bus(
        module,
        endpoints=[local_queue("single")],
        routing=[route(Lookup).to("single"), route(Step1).to("single")],
    ) as bus:
        await bus.send(Step1(1))
        with trio.fail_after(5):
            await bus.wait_quiet()
    assert results == [2]
    assert list(bus.dead_letters) == []


async def test_no_route_error_raises_at_the_call_inside_a_handler() -> None:
    seen: list[str] = []

    async def first(request: Outer) -> int:
        try:
            await bus.send(UnboundCommand())
        except NoRouteError:
            seen.append("no route")
        return 1

    async with open_bus(Module("m").bind_request(Outer, first)) as bus:
        assert await bus.invoke(Outer(1)) == 1
    assert seen == ["no route"]


async def test_a_handler_sees_current_context_only_while_it_runs() -> None:
    seen: list[bool] = []

    async def first(request: Outer) -> int:
        seen.append(current_context() is not None)
        return 0

    async with open_bus(Module("m").bind_request(Outer, first)) as bus:
        assert current_context() is None
        await bus.invoke(Outer(1))
        assert current_context() is None
    assert seen == [True]


# ---------------------------------------------------------------- message base classes


def test_the_message_base_classes_declare_no_fields() -> None:
    for base in (Request, Command, Event):
        assert not attrs.has(base)
    assert [f.name for f in attrs.fields(Double)] == ["n"]
    assert [f.name for f in attrs.fields(Store)] == ["item"]
    assert [f.name for f in attrs.fields(Stored)] == ["item"]
    assert issubclass(Command, Request)
    assert Request.message_version == 1
    assert Event.message_version == 1


def test_a_message_version_must_be_a_whole_number_from_one() -> None:
    class Bad(Request[int]):
        message_version: ClassVar[int] = 0

    with pytest.raises(TypeError, match="message_version"):
        Module("m").bind_request(Bad, DoubleHandler)


async def test_the_default_request_endpoint_serves_100_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    running = 0
    most = 0

    async def slow(request: Double) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await trio.sleep(1)
        running -= 1
        return request.n

    async with open_bus(Module("m").bind_request(Double, slow)) as bus:
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for n in range(150):
                nursery.start_soon(bus.invoke, Double(n))
        assert trio.current_time() - start == pytest.approx(2.0)
    assert most == 100


async def test_an_invoke_timeout_names_the_endpoint_and_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def slow(request: Double) -> int:
        await trio.sleep(100)
        return 0

    async with open_bus(Module("m").bind_request(Double, slow), drain_timeout=0) as bus:
        with pytest.raises(AskTimeout) as info:
            await bus.invoke(Double(1), timeout=3)
    assert "/bus/requests" in str(info.value)
    assert "3 s" in str(info.value)


async def test_an_invoke_timeout_names_the_request_type(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def slow(request: Double) -> int:
        await trio.sleep(100)
        return 0

    async with open_bus(Module("m").bind_request(Double, slow), drain_timeout=0) as bus:
        with pytest.raises(AskTimeout) as info:
            await bus.invoke(Double(1), timeout=3)
    assert "Double" in str(info.value)
    assert "Envelope" not in str(info.value)


async def test_a_failing_inline_invoke_drops_what_it_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handled: list[int] = []

    async def lookup(request: Lookup) -> int:
        await bus.send(Step2(request.n))
        raise BoomError("inner")

    async def outer(request: Outer) -> int:
        try:
            return await bus.invoke(Lookup(request.n))
        except BoomError:
            return -1

    async def second(command: Step2) -> None:
        handled.append(command.n)

    module = (
        Module("m")
        .bind_request(Outer, outer)
        .bind_request(Lookup, lookup)
        .bind_request(Step2, second)
    )
    async with open_bus(
        module,
        endpoints=[local_queue("single")],
        routing=[route(Outer).to("single"), route(Lookup).to("single")],
        drain_timeout=0,
    ) as bus:
        assert await bus.invoke(Outer(1)) == -1
        with trio.fail_after(5):
            await bus.wait_quiet()
        assert bus.in_flight == 0
    assert handled == []
