"""Dispatch hooks: phases, priorities, stop_propagation, finalize, routing and locating."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
import trio.lowlevel
import trio.testing

from triobus import (
    AskTimeout,
    Backoff,
    Command,
    DeadLetterReason,
    DispatchEvent,
    DispatchKind,
    Event,
    HandlerNotLocated,
    MailboxFull,
    Module,
    Next,
    Phase,
    PluginHandle,
    Request,
    RequestHandlerNotFound,
    TriobusError,
    current_context,
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


class Failure(Exception):
    pass


async def ask(request: Ask) -> int:
    return request.n * 2


ALL_PHASES = [
    Phase.INITIALIZE,
    Phase.DETECT_MESSAGE_NAME,
    Phase.ROUTE,
    Phase.LOCATE_HANDLER,
    Phase.INVOKE_HANDLER,
    Phase.FINALIZE,
]


def test_phases_are_named_as_documented() -> None:
    assert [p.value for p in Phase] == [
        "initialize",
        "detect_message_name",
        "route",
        "locate_handler",
        "invoke_handler",
        "finalize",
    ]


# ---------------------------------------------------------------- phases


async def test_an_invoke_runs_every_phase_in_order() -> None:
    log: list[tuple[str, str | None]] = []

    def recorder(phase: Phase) -> Any:
        def plugin(event: DispatchEvent) -> None:
            log.append((phase.value, event.message_name))

        return plugin

    async with open_bus(Module("m").bind_request(Ask, ask)) as bus:
        for phase in reversed(ALL_PHASES):  # attach order does not matter across phases
            bus.attach(phase, recorder(phase))
        assert await bus.invoke(Ask(2)) == 4
    name = f"{__name__}.Ask"
    assert log == [
        ("initialize", None),
        ("detect_message_name", None),
        ("route", name),
        ("locate_handler", name),
        ("invoke_handler", name),
        ("finalize", name),
    ]


async def test_send_and_publish_run_every_phase_per_delivery() -> None:
    log: list[tuple[str, DispatchKind]] = []
    handled: list[str] = []

    async def do(command: Do) -> None:
        handled.append("do")

    async def one(event: Happened) -> None:
        handled.append("one")

    async def two(event: Happened) -> None:
        handled.append("two")

    module = Module("m").bind_request(Do, do).bind_event(Happened, [one, two])
    async with open_bus(module) as bus:
        for phase in ALL_PHASES:
            bus.attach(phase, lambda e, p=phase: log.append((p.value, e.kind)))
        await bus.send(Do(1))
        await bus.wait_quiet()
        assert [p for p, _ in log] == [p.value for p in ALL_PHASES]
        assert {k for _, k in log} == {DispatchKind.SEND}
        log.clear()
        await bus.publish(Happened(1))
        await bus.wait_quiet()
    assert [p for p, _ in log] == [
        "initialize",
        "detect_message_name",
        "route",
        *["locate_handler", "invoke_handler", "finalize"],
        *["locate_handler", "invoke_handler", "finalize"],
    ]
    assert {k for _, k in log} == {DispatchKind.PUBLISH}
    assert handled == ["do", "one", "two"]


async def test_name_and_route_run_in_the_caller_the_rest_where_the_message_is_handled() -> None:
    where: dict[str, Any] = {}

    def plugin(phase: Phase) -> Any:
        def run(event: DispatchEvent) -> None:
            context = current_context()
            where[phase.value] = None if context is None else context.message_name

        return run

    async with open_bus(Module("m").bind_request(Ask, ask)) as bus:
        for phase in ALL_PHASES:
            bus.attach(phase, plugin(phase))
        await bus.invoke(Ask(1))
    name = f"{__name__}.Ask"
    assert where == {
        "initialize": None,
        "detect_message_name": None,
        "route": None,
        "locate_handler": name,
        "invoke_handler": name,
        "finalize": name,
    }


# ---------------------------------------------------------------- priorities


async def test_higher_priority_first_equal_priorities_in_attach_order() -> None:
    log: list[str] = []
    async with open_bus(Module("m").bind_request(Ask, ask)) as bus:
        bus.attach(Phase.INITIALIZE, lambda e: log.append("a0"))
        bus.attach(Phase.INITIALIZE, lambda e: log.append("b5"), priority=5)
        bus.attach(Phase.INITIALIZE, lambda e: log.append("c0"))
        bus.attach(Phase.INITIALIZE, lambda e: log.append("d-1"), priority=-1)
        bus.attach(Phase.INITIALIZE, lambda e: log.append("e5"), priority=5)
        await bus.invoke(Ask(1))
    assert log == ["b5", "e5", "a0", "c0", "d-1"]


async def test_stop_propagation_skips_the_rest_of_the_phase_only() -> None:
    log: list[str] = []

    def stopper(event: DispatchEvent) -> None:
        log.append("stopper")
        event.stop_propagation()

    async with open_bus(Module("m").bind_request(Ask, ask)) as bus:
        bus.attach(Phase.INITIALIZE, lambda e: log.append("first"), priority=10)
        bus.attach(Phase.INITIALIZE, stopper, priority=5)
        bus.attach(Phase.INITIALIZE, lambda e: log.append("skipped"))
        bus.attach(Phase.ROUTE, lambda e: log.append("route"))
        assert await bus.invoke(Ask(3)) == 6
        assert log == ["first", "stopper", "route"]
        # The next dispatch runs the whole phase again.
        log.clear()
        await bus.invoke(Ask(3))
    assert log == ["first", "stopper", "route"]


async def test_async_and_sync_plugins_both_run() -> None:
    log: list[str] = []

    async def later(event: DispatchEvent) -> None:
        await trio.lowlevel.checkpoint()
        log.append("async")

    async with open_bus(Module("m").bind_request(Ask, ask)) as bus:
        bus.attach(Phase.INITIALIZE, later, priority=1)
        bus.attach("initialize", lambda e: log.append("sync"))
        await bus.invoke(Ask(1))
    assert log == ["async", "sync"]


async def test_detach_removes_a_plugin() -> None:
    log: list[str] = []
    async with open_bus(Module("m").bind_request(Ask, ask)) as bus:
        handle = bus.attach(Phase.ROUTE, lambda e: log.append("route"))
        assert isinstance(handle, PluginHandle)
        await bus.invoke(Ask(1))
        bus.detach(handle)
        await bus.invoke(Ask(1))
        with pytest.raises(ValueError):
            bus.detach(handle)
    assert log == ["route"]


async def test_attach_checks_its_arguments() -> None:
    async with open_bus(Module("m")) as bus:
        with pytest.raises(ValueError, match="phase"):
            bus.attach("nonsense", lambda e: None)
        with pytest.raises(TypeError):
            bus.attach(Phase.ROUTE, "not callable")  # type: ignore[arg-type]


# ---------------------------------------------------------------- finalize


async def test_finalize_sees_the_result_and_the_exception() -> None:
    seen: list[tuple[Any, Any]] = []

    async def maybe(request: Ask) -> int:
        if request.n < 0:
            raise Failure("negative")
        return request.n

    async with open_bus(Module("m").bind_request(Ask, maybe)) as bus:
        bus.attach(Phase.FINALIZE, lambda e: seen.append((e.result, e.exception)))
        assert await bus.invoke(Ask(3)) == 3
        with pytest.raises(Failure, match="negative"):
            await bus.invoke(Ask(-1))
    assert seen[0] == (3, None)
    assert isinstance(seen[1][1], Failure)


async def test_a_finalize_plugin_that_clears_the_exception_makes_invoke_return_none(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def failing(request: Ask) -> int:
        raise Failure("cleared")

    def clear(event: DispatchEvent) -> None:
        if isinstance(event.exception, Failure):
            event.exception = None

    async with open_bus(Module("m").bind_request(Ask, failing)) as bus:
        bus.attach(Phase.FINALIZE, clear)
        with trio.fail_after(5):
            assert await bus.invoke(Ask(1)) is None


async def test_a_finalize_plugin_can_set_the_result_of_a_cleared_failure() -> None:
    async def failing(request: Ask) -> int:
        raise Failure("cleared")

    def fallback(event: DispatchEvent) -> None:
        event.exception = None
        event.result = -1

    async with open_bus(Module("m").bind_request(Ask, failing)) as bus:
        bus.attach(Phase.FINALIZE, fallback)
        assert await bus.invoke(Ask(1)) == -1


async def test_a_finalize_plugin_can_replace_the_exception() -> None:
    class Wrapped(Exception):
        pass

    async def failing(request: Ask) -> int:
        raise Failure("original")

    def wrap(event: DispatchEvent) -> None:
        if event.exception is not None:
            event.exception = Wrapped(str(event.exception))

    async with open_bus(Module("m").bind_request(Ask, failing)) as bus:
        bus.attach(Phase.FINALIZE, wrap)
        with pytest.raises(Wrapped, match="original"):
            await bus.invoke(Ask(1))


async def test_finalize_runs_in_the_caller_when_the_dispatch_fails_there() -> None:
    seen: list[BaseException | None] = []

    def clear(event: DispatchEvent) -> None:
        seen.append(event.exception)
        event.exception = None

    async with open_bus(Module("m")) as bus:
        bus.attach(Phase.FINALIZE, clear)
        assert await bus.invoke(Ask(1)) is None
    [error] = seen
    assert isinstance(error, RequestHandlerNotFound)


async def test_finalize_in_the_caller_lets_the_error_through_when_not_cleared() -> None:
    seen: list[str] = []
    async with open_bus(Module("m")) as bus:
        bus.attach(Phase.FINALIZE, lambda e: seen.append(type(e.exception).__name__))
        with pytest.raises(RequestHandlerNotFound):
            await bus.invoke(Ask(1))
    assert seen == ["RequestHandlerNotFound"]


async def test_a_cleared_send_failure_is_neither_retried_nor_dead_lettered() -> None:
    attempts = 0

    async def failing(command: Do) -> None:
        nonlocal attempts
        attempts += 1
        raise Failure("cleared")

    def clear(event: DispatchEvent) -> None:
        event.exception = None

    async with open_bus(Module("m").bind_request(Do, failing)) as bus:
        bus.attach(Phase.FINALIZE, clear)
        await bus.send(Do(1))
        await bus.wait_quiet()
        assert list(bus.dead_letters) == []
    assert attempts == 1


async def test_an_uncleared_send_failure_is_retried_and_dead_lettered_with_plugins() -> None:
    attempts = 0
    finalized: list[str] = []

    async def failing(command: Do) -> None:
        nonlocal attempts
        attempts += 1
        raise Failure("kept")

    async with open_bus(Module("m").bind_request(Do, failing)) as bus:
        bus.attach(Phase.FINALIZE, lambda e: finalized.append(type(e.exception).__name__))
        await bus.send(Do(1))
        await bus.wait_quiet()
        assert [d.reason for d in bus.dead_letters] == [DeadLetterReason.FAILED]
    assert attempts == 3
    assert finalized == ["Failure"] * 3


# ---------------------------------------------------------------- routing and locating


async def test_a_name_plugin_renames_a_message() -> None:
    async def renamed(message: object) -> str:
        return "renamed"

    def rename(event: DispatchEvent) -> None:
        if isinstance(event.message, Ask):
            event.message_name = "renamed.ask"

    async with open_bus(Module("m").bind_request("renamed.ask", renamed)) as bus:
        bus.attach(Phase.DETECT_MESSAGE_NAME, rename)
        assert await bus.invoke(Ask(1)) == "renamed"


async def test_a_router_plugin_routes_by_name_to_a_lazily_located_handler() -> None:
    located: list[str] = []
    made: list[str] = []

    async def find_user(message: dict[str, Any]) -> str:
        return f"user {message['id']}"

    registry = {"users.find": find_user}

    def router(event: DispatchEvent) -> None:
        if event.message_name == "find-user":
            event.handler = "users.find"

    def locator(event: DispatchEvent) -> None:
        if isinstance(event.handler, str):
            located.append(event.handler)
            made.append("made")
            event.handler = registry[event.handler]

    async with open_bus(Module("m")) as bus:
        bus.attach(Phase.ROUTE, router)
        bus.attach(Phase.LOCATE_HANDLER, locator)
        assert await bus.invoke({"message_name": "find-user", "id": 7}) == "user 7"
        assert await bus.invoke({"message_name": "find-user", "id": 8}) == "user 8"
    assert located == ["users.find", "users.find"]


async def test_a_handler_id_that_no_plugin_locates_raises_handler_not_located() -> None:
    def router(event: DispatchEvent) -> None:
        event.handler = "nowhere.handler"

    async with open_bus(Module("m")) as bus:
        bus.attach(Phase.ROUTE, router)
        with pytest.raises(HandlerNotLocated, match=r"nowhere\.handler") as info:
            await bus.invoke("anything")
    assert isinstance(info.value, LookupError)
    assert isinstance(info.value, TriobusError)


async def test_a_sent_message_with_an_unlocated_handler_is_dead_lettered() -> None:
    def router(event: DispatchEvent) -> None:
        event.handler = "nowhere.handler"

    async with open_bus(Module("m"), endpoints=[local_queue("default", retries=0)]) as bus:
        bus.attach(Phase.ROUTE, router)
        await bus.send("anything")
        await bus.wait_quiet()
        [letter] = bus.dead_letters
    assert letter.message == "anything"
    assert letter.reason is DeadLetterReason.FAILED
    assert isinstance(letter.exception, HandlerNotLocated)


async def test_a_router_plugin_can_hand_a_handler_for_an_unbound_message() -> None:
    got: list[str] = []

    async def direct(message: str) -> None:
        got.append(message)

    def router(event: DispatchEvent) -> None:
        if event.message_name == "direct":
            event.handler = direct

    async with open_bus(Module("m")) as bus:
        bus.attach(Phase.ROUTE, router)
        await bus.send("direct")
        await bus.wait_quiet()
        with pytest.raises(TriobusError):
            await bus.send("not routed")
    assert got == ["direct"]


async def test_a_router_plugin_can_choose_the_endpoint() -> None:
    async def direct(message: str) -> None:
        raise Failure("to see where it ran")

    def router(event: DispatchEvent) -> None:
        event.handler = direct
        event.endpoint = "special"

    async with open_bus(Module("m"), endpoints=[local_queue("special", retries=0)]) as bus:
        bus.attach(Phase.ROUTE, router)
        await bus.send("msg")
        await bus.wait_quiet()
        [letter] = bus.dead_letters
    assert letter.recipient.endswith("/special")


async def test_a_router_plugin_can_hand_subscribers_of_a_published_event() -> None:
    got: list[str] = []

    async def one(message: str) -> None:
        got.append("one")

    async def two(message: str) -> None:
        got.append("two")

    def router(event: DispatchEvent) -> None:
        if event.kind is DispatchKind.PUBLISH:
            event.handlers = [one, two]

    async with open_bus(Module("m")) as bus:
        bus.attach(Phase.ROUTE, router)
        await bus.publish("something")
        await bus.wait_quiet()
    assert got == ["one", "two"]


async def test_an_invoke_handler_plugin_sees_the_located_handler() -> None:
    seen: list[Any] = []

    async with open_bus(Module("m").bind_request(Ask, ask)) as bus:
        bus.attach(Phase.INVOKE_HANDLER, lambda e: seen.append(e.handler))
        await bus.invoke(Ask(1))
    assert seen == [ask]


async def test_no_phase_runs_once_every_plugin_is_detached() -> None:
    log: list[str] = []
    async with open_bus(Module("m").bind_request(Ask, ask)) as bus:
        handles = [bus.attach(p, lambda e, p=p: log.append(p.value)) for p in ALL_PHASES]
        await bus.invoke(Ask(1))
        assert len(log) == 6
        for handle in handles:
            bus.detach(handle)
        log.clear()
        assert await bus.invoke(Ask(2)) == 4
    assert log == []


# ---------------------------------------------------------------- plugins keep the other rules


async def test_plugins_keep_headers_and_correlation() -> None:
    seen: list[tuple[str, dict[str, str]]] = []

    async def handle(request: Ask) -> int:
        context = current_context()
        assert context is not None
        seen.append((context.correlation_id, dict(context.headers)))
        return 0

    async with open_bus(Module("m").bind_request(Ask, handle)) as bus:
        bus.attach(Phase.INITIALIZE, lambda e: None)
        await bus.invoke(Ask(1), headers={"tenant": "t1"}, correlation_id="corr-1")
    assert seen == [("corr-1", {"tenant": "t1"})]


async def test_plugins_keep_reply_to() -> None:
    seen: list[str | None] = []

    async def handle(request: Ask) -> int:
        context = current_context()
        assert context is not None
        seen.append(context.reply_to)
        return 0

    async with open_bus(Module("m").bind_request(Ask, handle)) as bus:
        bus.attach(Phase.INITIALIZE, lambda e: None)
        await bus.invoke(Ask(1), reply_to="replies")
        await bus.send(Ask(1), reply_to="replies")
        await bus.wait_quiet()
    assert seen == ["replies", "replies"]


async def test_plugins_keep_listener_exception_collection() -> None:
    async def bad(event: Happened) -> None:
        raise Failure("bad")

    async with open_bus(
        Module("m").bind_event(Happened, [bad]), collect_listener_exceptions=True
    ) as bus:
        bus.attach(Phase.INITIALIZE, lambda e: None)
        with pytest.raises(ExceptionGroup) as info:
            await bus.publish(Happened(1))
    assert [type(e) for e in info.value.exceptions] == [Failure]


async def test_global_behaviors_wrap_a_plugin_routed_handler() -> None:
    log: list[str] = []

    async def around(message: Any, next: Next) -> Any:
        log.append("behavior")
        return await next()

    async def direct(message: str) -> str:
        log.append("handler")
        return "ok"

    def router(event: DispatchEvent) -> None:
        event.handler = direct

    async with open_bus(Module("m"), pipeline=[around]) as bus:
        bus.attach(Phase.ROUTE, router)
        assert await bus.invoke("anything") == "ok"
    assert log == ["behavior", "handler"]


@attrs.frozen
class Then(Command):
    n: int


async def test_with_plugins_a_failing_invoke_drops_what_it_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handled: list[int] = []

    async def failing(request: Ask) -> int:
        await bus.send(Then(request.n))
        raise Failure("after sending")

    async def then(command: Then) -> None:
        handled.append(command.n)

    module = Module("m").bind_request(Ask, failing).bind_request(Then, then)
    async with open_bus(module, drain_timeout=0) as bus:
        bus.attach(Phase.INITIALIZE, lambda e: None)
        with pytest.raises(Failure):
            await bus.invoke(Ask(1))
        with trio.fail_after(5):
            await bus.wait_quiet()
        assert bus.in_flight == 0
    assert handled == []


async def test_with_plugins_messages_sent_by_a_handler_are_held_until_it_succeeded() -> None:
    log: list[str] = []

    async def handle(request: Ask) -> int:
        await bus.send(Then(request.n))
        log.append("handler done")
        return request.n

    async def then(command: Then) -> None:
        log.append("then")

    module = Module("m").bind_request(Ask, handle).bind_request(Then, then)
    async with open_bus(
        module, endpoints=[local_queue("other")], routing=[route(Then).to("other")]
    ) as bus:
        bus.attach(Phase.INITIALIZE, lambda e: None)
        assert await bus.invoke(Ask(1)) == 1
        await bus.wait_quiet()
    assert log == ["handler done", "then"]


async def test_with_plugins_one_subscribers_failure_never_fails_another(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[str] = []

    async def failing(event: Happened) -> None:
        calls.append("failing")
        await trio.sleep(0.5)
        raise Failure("only mine")

    async def succeeding(event: Happened) -> None:
        calls.append("succeeding")
        await trio.sleep(1)

    a = Module("a").bind_event(Happened, [failing])
    b = Module("b").bind_event(Happened, [succeeding])
    async with open_bus(
        a,
        b,
        endpoints=[
            local_queue("a", retries=1, backoff=Backoff(initial=5.0, jitter=0.0)),
            local_queue("b"),
        ],
        routing=[route_module(a).to("a"), route_module(b).to("b")],
    ) as bus:
        bus.attach(Phase.FINALIZE, lambda e: None)
        await bus.publish(Happened(1))
        await bus.wait_quiet()
        letters = [(d.recipient.rsplit("/", 1)[1], str(d.exception)) for d in bus.dead_letters]
    assert sorted(calls) == ["failing", "failing", "succeeding"]
    assert letters == [("a", "only mine")]


async def test_finalize_sees_a_timeout_in_the_caller_and_runs_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def slow(message: object) -> str:
        await trio.sleep(1)
        return "late"

    seen: list[tuple[str, type[BaseException] | None]] = []

    def monitor(event: DispatchEvent) -> None:
        exception = event.exception
        seen.append((str(event.message_name), None if exception is None else type(exception)))

    async with open_bus(Module("m").bind_request("slow", slow)) as bus:
        bus.attach(Phase.FINALIZE, monitor)
        with pytest.raises(AskTimeout):
            await bus.invoke("slow", timeout=0.1)
        await trio.sleep(2)  # the handler finishes late: no second finalize
        await bus.wait_quiet()
    assert seen == [("slow", AskTimeout)]


async def test_finalize_sees_a_refusal_by_a_full_endpoint_in_the_caller() -> None:
    release = trio.Event()

    async def blocked(message: object) -> None:
        await release.wait()

    seen: list[type[BaseException] | None] = []

    def monitor(event: DispatchEvent) -> None:
        seen.append(None if event.exception is None else type(event.exception))

    async with open_bus(
        Module("m").bind_request("job", blocked),
        endpoints=[local_queue("q", capacity=1, overflow="fail")],
        routing=[route("job").to("q")],
    ) as bus:
        bus.attach(Phase.FINALIZE, monitor)
        await bus.send("job")  # taken by the handler, which blocks
        await trio.testing.wait_all_tasks_blocked()
        await bus.send("job")  # waits in the queue
        with pytest.raises(MailboxFull):
            await bus.send("job")  # refused
        assert seen == [MailboxFull]
        release.set()
        await bus.wait_quiet()
    assert seen == [MailboxFull, None, None]


async def test_a_router_that_routes_an_event_to_no_handler_publishes_to_none() -> None:
    def router(event: DispatchEvent) -> None:
        event.handlers = []

    async with open_bus(Module("m")) as bus:
        bus.attach(Phase.ROUTE, router)
        await bus.publish({"message_name": "nobody-listens"})
        await bus.wait_quiet()
        assert bus.in_flight == 0
    assert len(bus.dead_letters) == 0
