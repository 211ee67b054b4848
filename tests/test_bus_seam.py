"""The endpoint seam, the wire envelope, the context variable and the bus's input checks."""

from __future__ import annotations

import threading
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import triobus
from triobus import (
    Command,
    DeadLetterReason,
    Delivery,
    DeliveryMode,
    Endpoint,
    EndpointHost,
    Envelope,
    ErrorPolicy,
    Event,
    InvalidHeaders,
    MessageBus,
    Module,
    PartitionKeyError,
    Phase,
    Request,
    Settlement,
    WrongThread,
    WrongVerb,
    current_bus,
    local_queue,
    open_bus,
    route,
)
from triobus.testing import tracked


@attrs.frozen
class Note(Command):
    text: str


@attrs.frozen
class Twice(Request[int]):
    n: int


@attrs.frozen
class Noted(Event):
    text: str


# ---------------------------------------------------------------- an endpoint kind of the tests


class RecordingEndpoint:
    """An endpoint kind written against the public protocol alone: it records, then forwards."""

    def __init__(self, inner: Endpoint) -> None:
        self.inner = inner
        self.log: list[tuple[str, Any]] = []

    @property
    def uri(self) -> str:
        return self.inner.uri

    @property
    def delivery_mode(self) -> DeliveryMode:
        return self.inner.delivery_mode

    @property
    def errors(self) -> ErrorPolicy:
        return self.inner.errors

    async def start(self, host: EndpointHost) -> None:
        self.log.append(("start", None))
        await self.inner.start(host)

    async def stop(self) -> None:
        self.log.append(("stop", None))
        await self.inner.stop()

    def accept_nowait(self, delivery: Delivery) -> None:
        self.log.append(("accept", delivery.message))
        self.inner.accept_nowait(delivery)

    async def accept(self, delivery: Delivery) -> None:
        self.log.append(("accept", delivery.message))
        await self.inner.accept(delivery)

    async def ask(self, delivery: Delivery, timeout: float | None) -> Any:
        self.log.append(("ask", delivery.message))
        return await self.inner.ask(delivery, timeout)

    def settle(self, delivery: Delivery, settlement: Settlement) -> None:
        self.log.append((str(settlement), delivery.message))
        self.inner.settle(delivery, settlement)

    def keep(self, delivery: Delivery) -> bool:
        self.log.append(("keep?", delivery.message))
        return self.inner.keep(delivery)


def test_the_recording_endpoint_implements_the_public_protocol() -> None:
    assert isinstance(RecordingEndpoint(local_queue("x")), Endpoint)
    assert isinstance(local_queue("x"), Endpoint)
    assert local_queue("x").delivery_mode is DeliveryMode.BUFFERED


async def test_an_endpoint_kind_of_the_tests_routes_retries_and_dead_letters_like_a_local_queue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    attempts: dict[str, int] = {}

    async def note(command: Note) -> None:
        attempts[command.text] = attempts.get(command.text, 0) + 1
        if command.text == "always" or (command.text == "once" and attempts["once"] == 1):
            raise ValueError(command.text)

    async def twice(request: Twice) -> int:
        return request.n * 2

    recording = RecordingEndpoint(local_queue("recorded", retries=2))
    module = Module("m").bind_request(Note, note).bind_request(Twice, twice)
    async with open_bus(
        module,
        endpoints=[recording],
        routing=[route(Note).to("recorded"), route(Twice).to("recorded")],
    ) as bus:
        await bus.send(Note("fine"))
        await bus.send(Note("once"))
        await bus.send(Note("always"))
        assert await bus.invoke(Twice(21)) == 42
        await bus.wait_quiet()
        assert bus.in_flight == 0
        letters = [letter for letter in bus.dead_letters if letter.recipient.endswith("recorded")]
    assert attempts == {"fine": 1, "once": 2, "always": 3}
    assert [(letter.message, letter.reason) for letter in letters] == [
        (Note("always"), DeadLetterReason.FAILED)
    ]
    assert ("ask", Twice(21)) in recording.log
    settled = [entry for entry in recording.log if entry[0] in {"handled", "dead_lettered"}]
    assert settled == [
        ("handled", Note("fine")),
        ("handled", Note("once")),
        ("dead_lettered", Note("always")),
    ]
    assert recording.log[0] == ("start", None)
    assert recording.log[-1] == ("stop", None)


async def stopped_with_one_in_hand_and_one_queued(endpoint: Endpoint) -> MessageBus:
    """Run a bus whose only handler never ends, send it two notes, and leave the block."""
    started = trio.Event()

    async def slow(command: Note) -> None:
        started.set()
        await trio.sleep_forever()

    module = Module("m").bind_request(Note, slow)
    async with open_bus(
        module, endpoints=[endpoint], routing=[route(Note).to(endpoint.uri)], drain_timeout=0
    ) as bus:
        await bus.send(Note("in hand"))
        await bus.send(Note("queued"))
        await started.wait()
    return bus


async def test_a_final_stop_asks_the_endpoint_whether_it_keeps_its_backlog() -> None:
    recording = RecordingEndpoint(local_queue("recorded", shutdown=0.1))
    bus = await stopped_with_one_in_hand_and_one_queued(recording)
    assert ("keep?", Note("queued")) in recording.log
    assert ("keep?", Note("in hand")) in recording.log  # cut off by the stop: asked too
    reasons = {letter.message: letter.reason for letter in bus.dead_letters}
    assert reasons[Note("queued")] is DeadLetterReason.SHUTDOWN
    assert bus.in_flight == 0


# ---------------------------------------------------------------- the wire envelope


async def test_the_wire_envelope_is_frozen_and_carries_the_context_not_the_runtime() -> None:
    seen: list[Envelope] = []

    async def note(command: Note) -> None:
        context = triobus.current_context()
        assert context is not None
        seen.append(
            Envelope(
                message_id=context.message_id,
                message_name=context.message_name,
                message_version=1,
                correlation_id=context.correlation_id,
                causation_id=context.causation_id,
                headers=context.headers,
                reply_to=context.reply_to,
                created_at=0.0,
                message=command,
            )
        )

    module = Module("m").bind_request(Note, note)
    async with open_bus(module) as bus:
        await bus.send(Note("x"), headers={"tenant": "a"}, reply_to="back")
        await bus.wait_quiet()
    envelope = seen[0]
    assert envelope.headers == {"tenant": "a"}
    assert envelope.reply_to == "back"
    assert envelope.correlation_id == envelope.message_id
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        envelope.message_id = "other"  # type: ignore[misc]
    fields = {field.name for field in attrs.fields(Envelope)}
    assert fields == {
        "message_id",
        "message_name",
        "message_version",
        "correlation_id",
        "causation_id",
        "headers",
        "reply_to",
        "created_at",
        "message",
    }


# ---------------------------------------------------------------- the context variable


async def test_a_task_that_outlives_its_handler_sends_directly_and_nothing_is_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handled: list[str] = []

    async with trio.open_nursery() as outer:

        async def a(command: Note) -> None:
            if command.text != "A":
                handled.append(command.text)
                if command.text == "B":
                    await trio.sleep(2)
                    raise ValueError("B fails")
                return

            async def later() -> None:
                await trio.sleep(1)  # A is done; B is being handled by the same worker
                await current_bus().send(Note("from the task of A"))

            outer.start_soon(later)

        module = Module("m").bind_request(Note, a)
        async with open_bus(module, endpoints=[local_queue("default", retries=0)]) as bus:
            await bus.send(Note("A"))
            await trio.sleep(0.5)
            await bus.send(Note("B"))
            await trio.sleep(5)
            await bus.wait_quiet()
            assert bus.in_flight == 0
    assert "from the task of A" in handled
    letters = [letter.message for letter in bus.dead_letters]
    assert letters == [Note("B")]


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("headers", ["abc", 5, {1: "x"}, {"x": 1}])
async def test_headers_that_are_not_a_mapping_of_str_to_str_are_refused_at_the_call(
    headers: Any,
) -> None:
    async def note(command: Note) -> None:
        return None

    module = Module("m").bind_request(Note, note)
    async with open_bus(module) as bus:
        with pytest.raises(InvalidHeaders, match="mapping of str to str"):
            await bus.send(Note("x"), headers=headers)
        with pytest.raises(InvalidHeaders):
            await bus.publish(Noted("x"), headers=headers)
        assert bus.in_flight == 0


async def test_an_unhashable_partition_key_fails_the_call_or_dead_letters_a_held_message() -> None:
    async def relay(command: Note) -> None:
        await current_bus().send(Twice(1))

    async def twice(request: Twice) -> int:
        return 2

    module = Module("m").bind_request(Note, relay).bind_request(Twice, twice)
    partitioned = local_queue("p", max_concurrency=2, partition_by=lambda message: [message])
    async with open_bus(module, endpoints=[partitioned], routing=[route(Twice).to("p")]) as bus:
        with pytest.raises(PartitionKeyError, match="'p'"):
            await bus.send(Twice(1))
        await bus.send(Note("relay"))
        with trio.fail_after(5):
            await bus.wait_quiet()
        assert bus.in_flight == 0
    letters = [(letter.message, letter.reason) for letter in bus.dead_letters]
    assert (Twice(1), DeadLetterReason.UNDELIVERABLE) in letters


async def test_a_message_dispatched_with_the_other_kinds_verb_names_the_verb_to_use() -> None:
    async def note(command: Note) -> None:
        return None

    async def noted(event: Noted) -> None:
        return None

    module = Module("m").bind_request(Note, note).bind_event(Noted, [noted])
    async with open_bus(module) as bus:
        with pytest.raises(WrongVerb, match=r"use bus\.send\(\.\.\.\) or bus\.invoke"):
            await bus.publish(Note("x"))
        with pytest.raises(WrongVerb, match=r"publish it with bus\.publish"):
            await bus.invoke(Noted("x"))
        with pytest.raises(WrongVerb, match="cannot be sent"):
            await bus.send(Noted("x"))


async def test_an_unbound_dict_gets_the_advice_to_add_a_message_name() -> None:
    async with open_bus(Module("m")) as bus:
        with pytest.raises(triobus.NoRouteError, match='"message_name" key') as info:
            await bus.send({"x": 1})
    assert "sendd" not in str(info.value)
    assert "cannot be sent" in str(info.value)


# ---------------------------------------------------------------- threads


def test_the_bus_called_from_another_trio_run_raises_and_its_portal_works() -> None:
    async def twice(request: Twice) -> int:
        return request.n * 2

    handled: list[str] = []

    async def note(command: Note) -> None:
        handled.append(command.text)

    outcomes: dict[str, Any] = {}

    def other_thread(bus: MessageBus) -> None:
        async def call_directly() -> None:
            await bus.send(Note("direct"))

        try:
            trio.run(call_directly)
        except WrongThread as exc:
            outcomes["direct"] = exc
        portal = bus.portal()
        portal.send(Note("portal"))
        portal.publish(Noted("portal"))
        outcomes["invoke"] = portal.invoke(Twice(4))

    async def main() -> None:
        module = Module("m").bind_request(Twice, twice).bind_request(Note, note)
        async with open_bus(module) as bus:
            thread = threading.Thread(target=other_thread, args=(bus,))
            thread.start()
            await trio.to_thread.run_sync(thread.join)
            await bus.wait_quiet()

    trio.run(main)
    assert isinstance(outcomes["direct"], WrongThread)
    assert "portal" in str(outcomes["direct"])
    assert outcomes["invoke"] == 8
    assert handled == ["portal"]


# ---------------------------------------------------------------- plugins (prooph parity)


async def test_a_collecting_publish_runs_one_finalize_in_the_caller_that_may_clear_the_group() -> (
    None
):
    async def bad(event: Noted) -> None:
        raise ValueError("bad")

    async def worse(event: Noted) -> None:
        raise KeyError("worse")

    seen: list[BaseException | None] = []

    def clear_groups(event: triobus.DispatchEvent) -> None:
        if isinstance(event.exception, ExceptionGroup):
            seen.append(event.exception)
            event.exception = None

    module = Module("m").bind_event(Noted, [bad, worse])
    async with open_bus(module, collect_listener_exceptions=True) as bus:
        handle = bus.attach(Phase.FINALIZE, clear_groups)
        await bus.publish(Noted("x"))  # cleared: no exception
        bus.detach(handle)
        with pytest.raises(ExceptionGroup) as info:
            await bus.publish(Noted("y"))
    assert len(seen) == 1
    group = seen[0]
    assert isinstance(group, ExceptionGroup)
    assert sorted(type(exc).__name__ for exc in group.exceptions) == ["KeyError", "ValueError"]
    assert len(info.value.exceptions) == 2


# ---------------------------------------------------------------- the front


def test_help_of_the_message_bus_shows_only_what_users_call() -> None:
    public = {name for name in dir(MessageBus) if not name.startswith("_")}
    assert public == {
        "attach",
        "dead_letters",
        "detach",
        "in_flight",
        "invoke",
        "portal",
        "publish",
        "send",
        "topology",
        "wait_quiet",
    }


async def test_the_tracked_session_observes_the_production_path_of_a_failing_late_ask(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def slow_failure(request: Twice) -> int:
        await trio.sleep(10)
        raise ValueError("too late")

    module = Module("m").bind_request(Twice, slow_failure)
    async with open_bus(module) as bus, tracked(bus):
        with pytest.raises(triobus.AskTimeout):
            await bus.invoke(Twice(1), timeout=1)
        await trio.sleep(20)
    letters = [letter for letter in bus.dead_letters if letter.message == Twice(1)]
    assert [letter.reason for letter in letters] == [DeadLetterReason.LATE_REPLY]
    assert isinstance(letters[0].exception, ValueError)


def test_a_handler_class_that_needs_constructor_arguments_is_refused_at_bind_time() -> None:
    class NeedsRepository:
        def __init__(self, repository: object) -> None:
            self.repository = repository

        async def handle(self, command: Note) -> None:
            return None

    with pytest.raises(triobus.InvalidHandler, match="needs constructor arguments"):
        Module("m").bind_request(Note, NeedsRepository)
    Module("m").bind_request(Note, lambda: NeedsRepository(object()))  # a factory is fine


def test_the_bus_called_from_another_thread_raises_before_looking_the_message_up() -> None:
    outcomes: list[BaseException] = []

    def other_thread(bus: MessageBus) -> None:
        async def call() -> None:
            for call in (
                bus.send(Note("unbound")),
                bus.invoke(Twice(1)),
                bus.publish(Noted("nobody subscribed")),
            ):
                try:
                    await call
                except BaseException as exc:
                    outcomes.append(exc)

        trio.run(call)

    async def main() -> None:
        async with open_bus(Module("m")) as bus:
            thread = threading.Thread(target=other_thread, args=(bus,))
            thread.start()
            await trio.to_thread.run_sync(thread.join)

    trio.run(main)
    assert [type(exc) for exc in outcomes] == [WrongThread, WrongThread, WrongThread]


def test_a_delivery_of_a_decoded_envelope_keeps_its_ids_and_context() -> None:
    from triobus.bus import Plan, Step
    from triobus.bus._handlers import Callee
    from triobus.bus._seam import PlanKind

    async def note(command: Note) -> None:
        return None

    ids = iter(["first", "second"])
    plan = Plan(
        triobus.MessageBus.__new__(triobus.MessageBus),
        lambda: next(ids),
        "note",
        1,
        PlanKind.REQUEST,
        local_queue("x"),
        [Step(Callee(note), ())],
    )
    root = Delivery(Note("a"), plan, None, {"tenant": "t"}, reply_to="back")
    child = Delivery(Note("b"), plan, root)
    envelope = child.envelope()
    assert (envelope.message_id, envelope.correlation_id, envelope.causation_id) == (
        "second",
        "first",
        "first",
    )
    assert envelope.headers == {"tenant": "t"}
    again = Delivery.of(envelope, plan)
    assert again.envelope() == envelope
    assert again.attempt == 1 and again.progress == 0 and not again.asked


class KeepingEndpoint(RecordingEndpoint):
    """An endpoint kind that keeps what is left at a final stop (as a durable store would)."""

    def keep(self, delivery: Delivery) -> bool:
        self.log.append(("keep?", delivery.message))
        return True


async def test_what_an_endpoint_keeps_at_a_final_stop_is_not_dead_lettered() -> None:
    keeping = KeepingEndpoint(local_queue("kept", shutdown=0.1))
    bus = await stopped_with_one_in_hand_and_one_queued(keeping)
    assert ("left_for_redelivery", Note("queued")) in keeping.log
    assert ("left_for_redelivery", Note("in hand")) in keeping.log
    assert [letter.message for letter in bus.dead_letters] == []
    assert bus.in_flight == 0
