"""Property tests of the bus: random modules, routes, messages and dispatch chains.

Each example runs its own deterministic ``trio.run`` (``triobus.testing.run``,
a ``MockClock`` that jumps), so a hang shows up as an ``AskTimeout`` after the
mock 30 s or a ``QuietTimeout`` after the mock 10 s, not as a stuck test.
Every example runs twice: once under a tracked session (``session.wait_quiet``,
and its records cross-checked), and once untracked, because a session's probe
takes other code paths in the bus (the observed receive, releases from a bus
task) than production does.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any, Literal

import attrs
import trio
import trio.lowlevel
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from triobus import (
    Command,
    Endpoint,
    Event,
    MessageContext,
    Module,
    Request,
    Route,
    current_context,
    local_queue,
    route,
    route_module,
    testing,
)
from triobus.testing import Record, RecordKind, TrackedSession, strategies, tracked

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


#: How long the untracked run may take to be quiet (mock seconds) before it fails.
QUIET_LIMIT = 10.0


def endpoint_uri(record: Record) -> str:
    """The uri of the endpoint a handling record names (its actor path ends with it)."""
    assert record.endpoint is not None
    return record.endpoint.rsplit("/", 1)[-1]


def message_class(base: type, name: str) -> type:
    """A message class named ``name`` (its own ``message_name``) carrying a ``seq``."""

    def __init__(self: Any, seq: int) -> None:
        self.seq = seq

    return type(name.replace(".", "_"), (base,), {"message_name": name, "__init__": __init__})


# ---------------------------------------------------------------- random wiring


@attrs.frozen
class Wiring:
    n_modules: int
    endpoints: tuple[tuple[str, int], ...]  # (uri, max_concurrency)
    request_module: tuple[int, ...]  # request i is bound in this module
    subscribers: tuple[tuple[int, ...], ...]  # event j: one subscriber per listed module
    request_routes: tuple[int | None, ...]  # route(Req i).to(endpoint k)
    event_routes: tuple[int | None, ...]  # route(Ev j).to(endpoint k)
    module_routes: tuple[int | None, ...]  # route_module(M m).to(endpoint k)
    messages: tuple[tuple[str, int], ...]  # ("invoke" | "send" | "publish", index)


@attrs.frozen
class Dispatch:
    """One call of the generated traffic: how, and which message type.

    ``pick`` chooses among the request types (invoke, send) or the event types
    (publish), modulo their number, which is only known once the wiring is drawn.
    """

    how: Literal["invoke", "send", "publish"]
    pick: int


DISPATCHES = strategies.message_sequences(Dispatch, min_size=1, max_size=15)


@st.composite
def wirings(draw: st.DrawFn) -> Wiring:
    n_modules = draw(st.integers(1, 3))
    n_endpoints = draw(st.integers(0, 3))
    endpoints = tuple((f"ep{k}", draw(st.integers(1, 3))) for k in range(n_endpoints))
    n_requests = draw(st.integers(1, 4))
    n_events = draw(st.integers(1, 4))
    module_index = st.integers(0, n_modules - 1)
    target = st.none() | st.integers(0, n_endpoints - 1) if n_endpoints else st.none()
    request_module = tuple(draw(module_index) for _ in range(n_requests))
    subscribers = tuple(draw(st.lists(module_index, max_size=4)) for _ in range(n_events))
    request_routes = tuple(draw(target) for _ in range(n_requests))
    # Only events with a subscriber may be routed (else it is a wiring error).
    event_routes = tuple(draw(target) if subs else None for subs in subscribers)
    module_routes = tuple(draw(target) for _ in range(n_modules))
    messages = tuple(
        (d.how, d.pick % (n_events if d.how == "publish" else n_requests)) for d in draw(DISPATCHES)
    )
    return Wiring(
        n_modules,
        endpoints,
        request_module,
        tuple(tuple(s) for s in subscribers),
        request_routes,
        event_routes,
        module_routes,
        messages,
    )


@given(wirings())
@SETTINGS
def test_each_message_reaches_exactly_its_handlers(wiring: Wiring) -> None:
    requests = [message_class(Request, f"prop.req{i}") for i in range(len(wiring.request_module))]
    events = [message_class(Event, f"prop.ev{j}") for j in range(len(wiring.subscribers))]
    modules = [Module(f"mod{m}") for m in range(wiring.n_modules)]
    calls: Counter[tuple[Any, ...]] = Counter()

    def request_handler(i: int) -> Callable[[Any], Any]:
        async def handle(message: Any) -> tuple[str, int, int]:
            calls["req", i, message.seq] += 1
            await trio.lowlevel.checkpoint()
            return ("req", i, message.seq)

        handle.__qualname__ = f"req_handler_{i}"
        return handle

    def event_handler(j: int, k: int) -> Callable[[Any], Any]:
        async def handle(message: Any) -> None:
            calls["ev", j, k, message.seq] += 1
            await trio.lowlevel.checkpoint()

        handle.__qualname__ = f"ev_handler_{j}_{k}"
        return handle

    for i, m in enumerate(wiring.request_module):
        modules[m].bind_request(requests[i], request_handler(i))
    for j, subs in enumerate(wiring.subscribers):
        for k, m in enumerate(subs):
            modules[m].bind_event(events[j], [event_handler(j, k)])

    uris = [uri for uri, _ in wiring.endpoints]
    endpoints: list[Endpoint] = [local_queue(uri, max_concurrency=c) for uri, c in wiring.endpoints]
    routing: list[Route] = []
    for i, k in enumerate(wiring.request_routes):
        if k is not None:
            routing.append(route(requests[i]).to(uris[k]))
    for j, k in enumerate(wiring.event_routes):
        if k is not None:
            routing.append(route(events[j]).to(uris[k]))
    for m, k in enumerate(wiring.module_routes):
        if k is not None:
            routing.append(route_module(modules[m]).to(uris[k]))

    def expected_endpoint(type_route: int | None, module: int, default: str) -> str:
        if type_route is not None:
            return uris[type_route]
        if wiring.module_routes[module] is not None:
            return uris[wiring.module_routes[module]]  # type: ignore[index]
        return default

    expected_routes = set()
    for i, m in enumerate(wiring.request_module):
        uri = expected_endpoint(wiring.request_routes[i], m, "requests")
        expected_routes.add(("request", f"prop.req{i}", uri, f"req_handler_{i}"))
    for j, subs in enumerate(wiring.subscribers):
        for k, m in enumerate(subs):
            uri = expected_endpoint(wiring.event_routes[j], m, "default")
            expected_routes.add(("event", f"prop.ev{j}", uri, f"ev_handler_{j}_{k}"))

    expected_calls: Counter[tuple[Any, ...]] = Counter()
    expected_handled: Counter[tuple[str, str, str, int]] = Counter()
    expected_published: Counter[tuple[str, str, int]] = Counter()
    for seq, (how, index) in enumerate(wiring.messages):
        if how in ("invoke", "send"):
            expected_calls["req", index, seq] += 1
            uri = expected_endpoint(
                wiring.request_routes[index], wiring.request_module[index], "requests"
            )
            expected_handled[f"prop.req{index}", uri, f"req_handler_{index}", seq] += 1
        else:
            event_uris = set()
            for k, m in enumerate(wiring.subscribers[index]):
                expected_calls["ev", index, k, seq] += 1
                uri = expected_endpoint(wiring.event_routes[index], m, "default")
                expected_handled[f"prop.ev{index}", uri, f"ev_handler_{index}_{k}", seq] += 1
                event_uris.add(uri)
            for uri in event_uris:  # one delivery per endpoint with subscribers
                expected_published[f"prop.ev{index}", uri, seq] += 1
    expected_results = [
        ("req", index, seq) for seq, (how, index) in enumerate(wiring.messages) if how == "invoke"
    ]

    def check_records(session: TrackedSession) -> None:
        def dispatched(how: str) -> list[tuple[str, int]]:
            return [
                (f"prop.req{index}", seq)
                for seq, (kind, index) in enumerate(wiring.messages)
                if kind == how
            ]

        assert [(r.message_name, r.message.seq) for r in session.sent()] == dispatched("send")
        assert [(r.message_name, r.message.seq) for r in session.invoked()] == dispatched("invoke")
        published = Counter(
            (r.message_name, r.endpoint, r.message.seq) for r in session.published()
        )
        assert published == expected_published
        # Each handling happened once, by the right handler, on the right endpoint.
        handled = Counter(
            (r.message_name, endpoint_uri(r), r.handler, r.message.seq) for r in session.handled()
        )
        assert handled == expected_handled
        assert {r.attempt for r in session.handled()} <= {1}
        dispatched_ids = {r.message_id for r in session.records if r.kind is not RecordKind.HANDLED}
        assert {r.message_id for r in session.handled()} <= dispatched_ids
        assert session.failed() == []
        assert session.dead_letters == []

    async def main(observed: bool) -> list[Any]:
        results: list[Any] = []
        async with testing.open_test_bus(*modules, endpoints=endpoints, routing=routing) as bus:
            routes = set()
            for line in bus.topology().splitlines():
                head, labels = line.split(": ", 1)
                kind, name, _version, _arrow, uri = head.split(" ")
                for label in labels.split(", "):
                    routes.add((kind, name, uri, label))
            assert routes == expected_routes

            async def dispatch_all() -> None:
                for seq, (how, index) in enumerate(wiring.messages):
                    if how == "invoke":
                        results.append(await bus.invoke(requests[index](seq)))
                    elif how == "send":
                        await bus.send(requests[index](seq))
                    else:
                        await bus.publish(events[index](seq))

            if observed:
                async with tracked(bus) as session:
                    await dispatch_all()
                    await session.wait_quiet()
                check_records(session)
            else:
                await dispatch_all()
                with trio.fail_after(QUIET_LIMIT):
                    await bus.wait_quiet()
            assert bus.in_flight == 0
            assert list(bus.dead_letters) == []
        return results

    for observed in (True, False):
        calls.clear()
        results = testing.run(main, observed)
        assert calls == expected_calls
        assert results == expected_results


# ---------------------------------------------------------------- dispatch chains


@attrs.frozen
class Node:
    how: str  # "send" | "publish" | "invoke"
    children: tuple[Node, ...]


def nodes() -> st.SearchStrategy[Node]:
    kinds = st.sampled_from(["send", "publish", "invoke"])
    return st.recursive(
        st.builds(Node, kinds, st.just(())),
        lambda children: st.builds(Node, kinds, st.lists(children, max_size=3).map(tuple)),
        max_leaves=10,
    )


@attrs.frozen
class HopCommand(Command):
    node: int


@attrs.frozen
class HopRequest(Request[int]):
    node: int


@attrs.frozen
class HopEvent(Event):
    node: int


@given(
    tree=nodes(),
    layout=st.sampled_from(["one endpoint", "spread"]),
    spread=st.tuples(st.sampled_from(["default", "e1", "e2"]), st.sampled_from(["default", "e1"])),
    correlation_id=st.none() | st.just("outside-correlation"),
    headers=st.none() | st.just({"tenant": "t1"}),
)
@SETTINGS
def test_correlation_and_causation_are_kept_along_generated_chains(
    tree: Node,
    layout: str,
    spread: tuple[str, str],
    correlation_id: str | None,
    headers: dict[str, str] | None,
) -> None:
    # Number the nodes depth first: index -> (how, parent index, children indexes).
    flat: list[tuple[str, int | None, list[int]]] = []

    def number(node: Node, parent: int | None) -> int:
        index = len(flat)
        flat.append((node.how, parent, []))
        for child in node.children:
            flat[index][2].append(number(child, index))
        return index

    number(tree, None)
    seen: dict[int, list[MessageContext]] = defaultdict(list)

    async def dispatch(index: int, **kwargs: Any) -> None:
        how = flat[index][0]
        if how == "send":
            await bus.send(HopCommand(index), **kwargs)
        elif how == "publish":
            await bus.publish(HopEvent(index), **kwargs)
        else:
            assert await bus.invoke(HopRequest(index), **kwargs) == index

    async def hop(message: Any) -> int:
        context = current_context()
        assert context is not None
        seen[message.node].append(context)
        for child in flat[message.node][2]:
            await dispatch(child)
        return int(message.node)

    module = (
        Module("hops")
        .bind_request(HopCommand, hop)
        .bind_request(HopRequest, hop)
        .bind_event(HopEvent, [hop])
    )
    if layout == "one endpoint":
        # Every hop on one endpoint, one at a time: invokes inside handlers
        # are re-entrant and must run inline.
        endpoints = [local_queue("solo")]
        routing = [route_module(module).to("solo")]
    else:
        # Requests on the concurrent default request endpoint, the rest spread.
        endpoints = [local_queue("e1"), local_queue("e2")]
        routing = [route(HopCommand).to(spread[0]), route(HopEvent).to(spread[1])]
    sessions: list[TrackedSession] = []

    async def main(observed: bool) -> None:
        nonlocal bus
        async with testing.open_test_bus(module, endpoints=endpoints, routing=routing) as bus:
            if observed:
                async with tracked(bus) as session:
                    await dispatch(0, correlation_id=correlation_id, headers=headers)
                    await session.wait_quiet()
                sessions.append(session)
            else:
                await dispatch(0, correlation_id=correlation_id, headers=headers)
                with trio.fail_after(QUIET_LIMIT):
                    await bus.wait_quiet()
            assert bus.in_flight == 0
            assert list(bus.dead_letters) == []

    bus: Any = None
    for observed in (True, False):
        seen.clear()
        testing.run(main, observed)

        assert sorted(seen) == list(range(len(flat)))
        assert all(len(contexts) == 1 for contexts in seen.values())
        contexts = {index: contexts[0] for index, contexts in seen.items()}
        root = contexts[0]
        chain_id = correlation_id if correlation_id is not None else root.message_id
        assert root.causation_id is None
        for index, (_how, parent, _children) in enumerate(flat):
            context = contexts[index]
            assert context.correlation_id == chain_id
            assert context.headers == (headers or {})
            if parent is not None:
                assert context.causation_id == contexts[parent].message_id
        assert len({c.message_id for c in contexts.values()}) == len(flat)
        if observed:
            tracked_chain_id = chain_id

    # The records of the tracked run tell the same story as the handlers saw.
    [session] = sessions
    kinds = {"send": RecordKind.SENT, "publish": RecordKind.PUBLISHED, "invoke": RecordKind.INVOKED}
    dispatched = [r for r in session.records if r.kind in kinds.values()]
    assert sorted(r.message.node for r in dispatched) == list(range(len(flat)))
    ids = {}
    for record in dispatched:
        node = record.message.node
        how, parent, _children = flat[node]
        assert record.kind is kinds[how]
        assert record.correlation_id == tracked_chain_id
        assert record.causation_id == (None if parent is None else ids[parent])
        ids[node] = record.message_id
    assert len(set(ids.values())) == len(flat)
    # Every hop was handled once, inline re-entrant invokes included.
    assert sorted(r.message.node for r in session.handled()) == list(range(len(flat)))
    assert all(r.correlation_id == tracked_chain_id for r in session.handled())
    assert session.failed() == []
    assert session.dead_letters == []
