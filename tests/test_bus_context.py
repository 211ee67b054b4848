"""Message context: ids, correlation, causation, headers and reply-to along a chain."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import attrs
import pytest

from triobus import (
    Command,
    DeadLetterReason,
    Event,
    MessageContext,
    Module,
    Request,
    current_context,
    local_queue,
    open_bus,
    route_module,
)


@attrs.frozen
class Start(Command):
    pass


@attrs.frozen
class Middle(Command):
    pass


@attrs.frozen
class End(Event):
    pass


@attrs.frozen
class Lookup(Request[str]):
    pass


def ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"m{next(counter)}"


def context() -> MessageContext:
    ctx = current_context()
    assert ctx is not None
    return ctx


async def test_current_context_is_none_outside_a_handler() -> None:
    assert current_context() is None
    async with open_bus(Module("m")):
        assert current_context() is None


async def test_a_root_message_is_its_own_correlation_and_has_no_cause() -> None:
    seen: list[MessageContext] = []

    async def lookup(request: Lookup) -> str:
        seen.append(context())
        return "ok"

    async with open_bus(Module("m").bind_request(Lookup, lookup), id_factory=ids()) as bus:
        await bus.invoke(Lookup())
        await bus.invoke(Lookup())
    assert seen == [
        MessageContext(
            message_id="m1",
            correlation_id="m1",
            causation_id=None,
            message_name=f"{__name__}.Lookup",
            headers={},
            reply_to=None,
        ),
        MessageContext(
            message_id="m2",
            correlation_id="m2",
            causation_id=None,
            message_name=f"{__name__}.Lookup",
            headers={},
            reply_to=None,
        ),
    ]


async def test_message_ids_are_unique_by_default() -> None:
    seen: list[str] = []

    async def lookup(request: Lookup) -> str:
        seen.append(context().message_id)
        return ""

    async with open_bus(Module("m").bind_request(Lookup, lookup)) as bus:
        for _ in range(50):
            await bus.invoke(Lookup())
    assert len(set(seen)) == 50
    assert all(isinstance(i, str) and i for i in seen)


async def test_correlation_and_causation_follow_a_chain() -> None:
    seen: dict[str, MessageContext] = {}

    async def start(command: Start) -> None:
        seen["start"] = context()
        await bus.send(Middle())

    async def middle(command: Middle) -> None:
        seen["middle"] = context()
        await bus.invoke(Lookup())
        await bus.publish(End())

    async def lookup(request: Lookup) -> str:
        seen["lookup"] = context()
        return ""

    async def end(event: End) -> None:
        seen["end"] = context()

    module = (
        Module("m")
        .bind_request(Start, start)
        .bind_request(Middle, middle)
        .bind_request(Lookup, lookup)
        .bind_event(End, [end])
    )
    async with open_bus(module, id_factory=ids()) as bus:
        await bus.send(Start())
        await bus.wait_quiet()
    root = seen["start"].message_id
    assert seen["start"].correlation_id == root
    assert seen["start"].causation_id is None
    for name in ("middle", "lookup", "end"):
        assert seen[name].correlation_id == root, name
    assert seen["middle"].causation_id == root
    assert seen["lookup"].causation_id == seen["middle"].message_id
    assert seen["end"].causation_id == seen["middle"].message_id
    ids_seen = [seen[n].message_id for n in ("start", "middle", "lookup", "end")]
    assert len(set(ids_seen)) == 4


async def test_a_caller_can_continue_a_chain_with_correlation_id_and_headers() -> None:
    seen: dict[str, MessageContext] = {}

    async def start(command: Start) -> None:
        seen["start"] = context()
        await bus.send(Middle(), headers={"step": "2"})

    async def middle(command: Middle) -> None:
        seen["middle"] = context()
        await bus.publish(End())

    async def end(event: End) -> None:
        seen["end"] = context()

    module = (
        Module("m").bind_request(Start, start).bind_request(Middle, middle).bind_event(End, [end])
    )
    async with open_bus(module, id_factory=ids()) as bus:
        await bus.send(Start(), correlation_id="outside-1", headers={"tenant": "acme", "step": "1"})
        await bus.wait_quiet()
    assert [seen[n].correlation_id for n in ("start", "middle", "end")] == ["outside-1"] * 3
    assert seen["start"].message_id != "outside-1"
    assert seen["start"].headers == {"tenant": "acme", "step": "1"}
    # Headers are kept along the chain; a handler may add or override some.
    assert seen["middle"].headers == {"tenant": "acme", "step": "2"}
    assert seen["end"].headers == {"tenant": "acme", "step": "2"}


async def test_headers_and_correlation_id_on_invoke_and_publish() -> None:
    seen: list[MessageContext] = []

    async def lookup(request: Lookup) -> str:
        seen.append(context())
        return ""

    async def end(event: End) -> None:
        seen.append(context())

    module = Module("m").bind_request(Lookup, lookup).bind_event(End, [end])
    async with open_bus(module, id_factory=ids()) as bus:
        await bus.invoke(Lookup(), headers={"a": "1"}, correlation_id="c-1")
        await bus.publish(End(), headers={"b": "2"}, correlation_id="c-2")
        await bus.wait_quiet()
    assert [(c.correlation_id, dict(c.headers)) for c in seen] == [
        ("c-1", {"a": "1"}),
        ("c-2", {"b": "2"}),
    ]


async def test_reply_to_is_visible_to_the_handler() -> None:
    seen: list[str | None] = []

    async def lookup(request: Lookup) -> str:
        seen.append(context().reply_to)
        return ""

    async def start(command: Start) -> None:
        seen.append(context().reply_to)

    async def end(event: End) -> None:
        seen.append(context().reply_to)

    module = (
        Module("m").bind_request(Lookup, lookup).bind_request(Start, start).bind_event(End, [end])
    )
    async with open_bus(module) as bus:
        await bus.invoke(Lookup(), reply_to="r1")
        await bus.send(Start(), reply_to="r2")
        await bus.publish(End(), reply_to="r3")
        await bus.wait_quiet()
        await bus.invoke(Lookup())
    assert seen == ["r1", "r2", "r3", None]


async def test_one_published_event_is_one_message_with_one_id() -> None:
    seen: list[tuple[str, str]] = []

    async def one(event: End) -> None:
        seen.append((context().message_id, context().correlation_id))

    async def two(event: End) -> None:
        seen.append((context().message_id, context().correlation_id))

    async def three(event: End) -> None:
        seen.append((context().message_id, context().correlation_id))

    a = Module("a").bind_event(End, [one, two])
    b = Module("b").bind_event(End, [three])
    async with open_bus(a, b, id_factory=ids()) as bus:
        await bus.publish(End())
        await bus.wait_quiet()
    assert seen == [("m1", "m1")] * 3


async def test_one_published_event_on_several_endpoints_has_one_id() -> None:
    seen: list[tuple[str, str, str | None]] = []

    async def start(command: Start) -> None:
        await bus.publish(End())

    def listener() -> Callable[[End], object]:
        async def on_end(event: End) -> None:
            ctx = context()
            seen.append((ctx.message_id, ctx.correlation_id, ctx.causation_id))

        return on_end

    a = Module("a").bind_event(End, [listener()]).bind_request(Start, start)
    b = Module("b").bind_event(End, [listener()])
    c = Module("c").bind_event(End, [listener()])
    async with open_bus(
        a,
        b,
        c,
        endpoints=[local_queue("b"), local_queue("c")],
        routing=[route_module(b).to("b"), route_module(c).to("c")],
        id_factory=ids(),
    ) as bus:
        await bus.send(Start())
        await bus.wait_quiet()
    assert len(seen) == 3
    assert len(set(seen)) == 1
    message_id, correlation_id, causation_id = seen[0]
    assert correlation_id == "m1"  # the Start command's id
    assert causation_id == "m1"
    assert message_id != "m1"


async def test_a_failed_message_is_dead_lettered_with_its_context() -> None:
    async def start(command: Start) -> None:
        raise RuntimeError("no")

    async with open_bus(
        Module("m").bind_request(Start, start),
        endpoints=[local_queue("default", retries=0)],
        id_factory=ids(),
    ) as bus:
        await bus.send(Start(), headers={"k": "v"}, correlation_id="corr")
        await bus.wait_quiet()
        [letter] = bus.dead_letters
    assert letter.reason is DeadLetterReason.FAILED
    assert letter.context is not None
    assert letter.context["message_id"] == "m1"
    assert letter.context["correlation_id"] == "corr"
    assert letter.context["headers"] == {"k": "v"}


async def test_the_context_of_a_retried_message_keeps_its_id() -> None:
    seen: list[str] = []

    async def start(command: Start) -> None:
        seen.append(context().message_id)
        if len(seen) < 3:
            raise RuntimeError("again")

    async with open_bus(Module("m").bind_request(Start, start), id_factory=ids()) as bus:
        await bus.send(Start())
        await bus.wait_quiet()
    assert seen == ["m1", "m1", "m1"]


@pytest.mark.parametrize("depth", [1, 3, 6])
async def test_correlation_is_kept_along_a_long_chain(depth: int) -> None:
    @attrs.frozen
    class Hop(Command):
        left: int

    seen: list[MessageContext] = []

    async def hop(command: Hop) -> None:
        seen.append(context())
        if command.left:
            await bus.send(Hop(command.left - 1))

    async with open_bus(Module("m").bind_request(Hop, hop), id_factory=ids()) as bus:
        await bus.send(Hop(depth))
        await bus.wait_quiet()
    assert len(seen) == depth + 1
    assert {c.correlation_id for c in seen} == {seen[0].message_id}
    assert [c.causation_id for c in seen] == [None] + [c.message_id for c in seen[:-1]]
