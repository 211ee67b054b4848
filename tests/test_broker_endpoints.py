"""Broker endpoints on the in-memory broker: several buses in one trio run stand for
several processes sharing one broker.

What only a real broker shows (its own redelivery, its own dead-letter
exchange, a killed process) is proved against RabbitMQ and Kafka in
test_broker_rabbitmq.py and test_broker_kafka.py.
"""

from __future__ import annotations

import collections
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from trio.testing import MockClock

import triobus
from broker_helpers import eventually
from triobus import (
    Command,
    Event,
    MemoryBroker,
    MessageBus,
    Module,
    Request,
    broker_endpoint,
    open_bus,
    route,
    route_module,
)
from triobus.durability import durable_inbox, unit_of_work

URI = "orders"


@attrs.frozen
class Quote:
    sku: str
    price: int


@attrs.frozen
class GetQuote(Request[Quote]):
    sku: str


@attrs.frozen
class PlaceOrder(Command):
    order_id: int


@attrs.frozen
class OrderPlaced(Event):
    message_name = "orders.placed"
    order_id: int


@attrs.frozen
class OrderShipped(Event):
    message_name = "orders.shipped"
    order_id: int


class Seen:
    """What the handlers of one test saw, across every process."""

    def __init__(self) -> None:
        self.handled: collections.Counter[tuple[str, object]] = collections.Counter()
        self.changed = trio.Event()

    def add(self, what: str, key: object) -> None:
        self.handled[(what, key)] += 1
        self.changed.set()
        self.changed = trio.Event()

    async def until(self, check: Callable[[], bool], timeout: float = 30.0) -> None:
        with trio.fail_after(timeout):
            while not check():
                await self.changed.wait()

    def count(self, what: str) -> int:
        return sum(n for (kind, _), n in self.handled.items() if kind == what)


def never(order: int) -> bool:
    return False


def orders_module(seen: Seen, name: str = "orders", fail: Callable[[int], bool] = never) -> Module:
    async def quote(request: GetQuote) -> Quote:
        if request.sku == "boom":
            raise ValueError(f"no price for {request.sku}")
        return Quote(request.sku, 42)

    async def place(command: PlaceOrder) -> None:
        seen.add("place", command.order_id)
        if fail(command.order_id):
            raise RuntimeError(f"order {command.order_id} failed")

    return Module(name).bind_request(GetQuote, quote).bind_request(PlaceOrder, place)


def subscriber(seen: Seen, name: str, *events: type) -> Module:
    module = Module(name)
    for event in events:

        async def handle(event: Any, name: str = name) -> None:
            seen.add(name, (type(event).__name__, event.order_id))

        module.bind_event(event, [handle])
    return module


@asynccontextmanager
async def process(
    broker: MemoryBroker,
    *modules: Module,
    remote: tuple[type, ...] = (),
    **options: Any,
) -> AsyncIterator[MessageBus]:
    """A bus standing for one process: its modules routed to the broker endpoint."""
    endpoint = broker_endpoint(URI, broker.transport(), **options)
    routing = [route_module(m).to(URI) for m in modules] + [route(t).to(URI) for t in remote]
    async with open_bus(*modules, endpoints=[endpoint], routing=routing) as bus:
        yield bus


# ---------------------------------------------------------------- routes


async def test_a_route_to_a_broker_endpoint_needs_no_local_handler() -> None:
    broker = MemoryBroker()
    async with process(broker, remote=(PlaceOrder, GetQuote, OrderPlaced)) as bus:
        assert "(handled in another process)" in bus.topology()


async def test_a_remote_route_by_name_is_refused_with_what_to_do() -> None:
    endpoint = broker_endpoint(URI, MemoryBroker().transport())
    with pytest.raises(triobus.WiringError, match="route it by its class"):
        async with open_bus(endpoints=[endpoint], routing=[route("PlaceOrder").to(URI)]):
            pass


async def test_a_route_to_a_local_queue_still_needs_a_handler() -> None:
    with pytest.raises(triobus.WiringError, match="no module binds a handler"):
        async with open_bus(
            endpoints=[triobus.local_queue("q")], routing=[route(PlaceOrder).to("q")]
        ):
            pass


async def test_a_process_without_handlers_consumes_nothing() -> None:
    broker = MemoryBroker()
    transport = broker.transport()
    endpoint = broker_endpoint(URI, transport)
    async with open_bus(endpoints=[endpoint], routing=[route(PlaceOrder).to(URI)]):
        (topology,) = transport.declared
        assert topology.work_names == (f"{PlaceOrder.__module__}.PlaceOrder",)
        assert [s.flow for s in topology.subscriptions] == [triobus.transports.Flow.REPLY]


# ---------------------------------------------------------------- round trips


async def test_send_reaches_the_handler_in_another_process() -> None:
    broker, seen = MemoryBroker(), Seen()
    async with process(broker, orders_module(seen)), process(broker, remote=(PlaceOrder,)) as a:
        for order in range(5):
            await a.send(PlaceOrder(order))
        await seen.until(lambda: seen.count("place") == 5)
    assert set(seen.handled.values()) == {1}


async def test_invoke_gets_the_typed_response_from_another_process() -> None:
    broker = MemoryBroker()
    async with process(broker, orders_module(Seen())), process(broker, remote=(GetQuote,)) as a:
        assert await a.invoke(GetQuote("apple"), timeout=10) == Quote("apple", 42)


async def test_a_remote_failure_comes_back_as_a_typed_error_with_its_traceback() -> None:
    broker = MemoryBroker()
    async with process(broker, orders_module(Seen())), process(broker, remote=(GetQuote,)) as a:
        with pytest.raises(triobus.RemoteHandlerError) as info:
            await a.invoke(GetQuote("boom"), timeout=10)
    error = info.value
    assert error.exception_type == "ValueError"
    assert error.remote_message == "no price for boom"
    assert "in quote" in error.remote_traceback
    assert "ValueError: no price for boom" in str(error)


async def test_an_invoke_with_no_consumer_times_out_and_its_late_reply_is_a_dead_letter(
    autojump_clock: MockClock,
) -> None:
    broker = MemoryBroker()
    async with process(broker, remote=(GetQuote,)) as a:
        with pytest.raises(triobus.AskTimeout, match=r"no reply to .*GetQuote.* within 2 s"):
            await a.invoke(GetQuote("apple"), timeout=2)
        async with process(broker, orders_module(Seen())):
            await eventually(lambda: list(a.dead_letters), 10)
    (letter,) = list(a.dead_letters)
    assert letter.reason is triobus.DeadLetterReason.LATE_REPLY
    assert letter.message == Quote("apple", 42)


async def test_publish_fans_out_to_each_module_once_across_processes() -> None:
    broker, seen = MemoryBroker(), Seen()
    modules = lambda: (  # noqa: E731
        subscriber(seen, "billing", OrderPlaced),
        subscriber(seen, "audit", OrderPlaced),
    )
    async with (
        process(broker, *modules()),
        process(broker, *modules()),  # a second instance of the same service
        process(broker, remote=(OrderPlaced,)) as publisher,
    ):
        for order in range(20):
            await publisher.publish(OrderPlaced(order))
        await seen.until(lambda: seen.count("billing") == 20 and seen.count("audit") == 20)
        await trio.sleep(0.2)
    assert set(seen.handled.values()) == {1}  # each module once, shared by its instances


async def test_a_module_subscribes_by_wildcard_pattern() -> None:
    broker, seen = MemoryBroker(), Seen()
    audit = subscriber(seen, "audit", OrderPlaced, OrderShipped)
    billing = subscriber(seen, "billing", OrderPlaced)
    async with (
        process(broker, audit, billing, patterns={"audit": ["orders.#"]}),
        process(broker, remote=(OrderPlaced, OrderShipped)) as publisher,
    ):
        await publisher.publish(OrderPlaced(1))
        await publisher.publish(OrderShipped(1))
        await seen.until(lambda: seen.count("audit") == 2 and seen.count("billing") == 1)
    bindings = broker.bindings[URI]
    assert ("orders.#", f"{URI}.audit") in bindings


async def test_competing_consumers_share_the_work_and_handle_each_message_once() -> None:
    broker, seen = MemoryBroker(), Seen()
    async with (
        process(broker, orders_module(seen), prefetch=4),
        process(broker, orders_module(seen), prefetch=4),
        process(broker, remote=(PlaceOrder,)) as sender,
    ):
        for order in range(200):
            await sender.send(PlaceOrder(order))
        await seen.until(lambda: seen.count("place") == 200)
    assert set(seen.handled.values()) == {1}


# ---------------------------------------------------------------- failures


async def test_retries_are_published_again_with_their_attempt_then_handled() -> None:
    broker, seen = MemoryBroker(), Seen()
    failing = collections.Counter[int]()

    def fail(order: int) -> bool:
        failing[order] += 1
        return failing[order] < 3

    async with (
        process(broker, orders_module(seen, fail=fail), retries=2),
        process(broker, remote=(PlaceOrder,)) as sender,
    ):
        await sender.send(PlaceOrder(7))
        await seen.until(lambda: seen.handled[("place", 7)] == 3)
        await trio.sleep(0.1)
    attempts = [
        m.headers["triobus-attempt"] for m in broker.published if m.message_id and m.flow == "retry"
    ]
    assert attempts == ["2", "3"]
    assert not broker.queue(f"{URI}.dead-letters")


async def test_a_poison_message_ends_in_the_brokers_dead_letters_with_its_reason() -> None:
    broker, seen = MemoryBroker(), Seen()
    async with (
        process(broker, orders_module(seen, fail=lambda order: True), retries=2) as consumer,
        process(broker, remote=(PlaceOrder,)) as sender,
    ):
        await sender.send(PlaceOrder(9))
        await eventually(lambda: broker.queue(f"{URI}.dead-letters"), 10)
        (letter,) = list(consumer.dead_letters)
    assert seen.handled[("place", 9)] == 3
    (headers,) = broker.queue_headers(f"{URI}.dead-letters")
    assert headers["triobus-dead-letter-reason"] == "failed"
    assert headers["triobus-exception-type"] == "RuntimeError"
    assert headers["triobus-error"] == "order 9 failed"
    assert headers["triobus-attempts"] == "3"
    assert letter.reason is triobus.DeadLetterReason.FAILED


async def test_a_message_delivered_more_often_than_its_attempts_is_interrupted() -> None:
    broker, seen = MemoryBroker(), Seen()
    async with process(broker, orders_module(seen), retries=2) as consumer:
        codec = consumer.endpoints[URI].codec  # type: ignore[attr-defined]
        body = codec.encode(
            triobus.Envelope(
                "m-1",
                f"{PlaceOrder.__module__}.PlaceOrder",
                1,
                "m-1",
                None,
                {},
                None,
                0.0,
                PlaceOrder(1),
            )
        )
        broker.inject(URI, body, {"triobus-attempt": "3", "triobus-message-id": "m-1"})
        broker.queues[URI].ready[0].redeliveries = 1  # the broker's count: a fourth delivery
        await eventually(lambda: broker.queue(f"{URI}.dead-letters"), 10)
    assert seen.count("place") == 0
    (headers,) = broker.queue_headers(f"{URI}.dead-letters")
    assert headers["triobus-dead-letter-reason"] == "interrupted"


@attrs.frozen
class Malformed:
    body: bytes


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=64),
            st.builds(lambda s: s.encode(), st.text(max_size=40)),
            st.just(b'{"name": "nope", "version": 1}'),
            st.just(b"{}"),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_bad_input_goes_to_dead_letters_while_good_messages_flow(bodies: list[bytes]) -> None:
    async def main() -> None:
        broker, seen = MemoryBroker(), Seen()
        async with (
            process(broker, orders_module(seen)) as consumer,
            process(broker, remote=(PlaceOrder,)) as sender,
        ):
            for index, body in enumerate(bodies):
                broker.inject(URI, body)
                await sender.send(PlaceOrder(index))
            await seen.until(lambda: seen.count("place") == len(bodies))
            await eventually(lambda: len(broker.queue(f"{URI}.dead-letters")) >= len(bodies), 10)
            letters = list(consumer.dead_letters)
        assert {letter.reason for letter in letters} == {triobus.DeadLetterReason.UNDECODABLE}
        assert len(letters) == len(bodies)
        assert broker.queue(f"{URI}.dead-letters") == bodies
        assert all(
            h["triobus-dead-letter-reason"] == "undecodable"
            for h in broker.queue_headers(f"{URI}.dead-letters")
        )
        assert not broker.queue(URI)

    trio.run(main)


# ---------------------------------------------------------------- connection faults


async def test_a_broker_down_at_start_is_one_error_naming_the_endpoint() -> None:
    broker = MemoryBroker()
    broker.go_down()
    with pytest.raises(triobus.BrokerUnavailable, match="broker endpoint 'orders' cannot start"):
        async with process(broker, remote=(PlaceOrder,)):
            pass


async def test_a_lost_connection_fails_sends_clearly_then_reconnects_and_resumes() -> None:
    broker, seen = MemoryBroker(), Seen()
    async with (
        process(
            broker, orders_module(seen), reconnect=triobus.Backoff(initial=0.05, maximum=0.1)
        ) as consumer,
        process(
            broker, remote=(PlaceOrder,), reconnect=triobus.Backoff(initial=0.05, maximum=0.1)
        ) as sender,
    ):
        for order in range(10):
            await sender.send(PlaceOrder(order))
        broker.go_down()
        with pytest.raises(triobus.BrokerUnavailable, match="it was not sent"):
            await sender.send(PlaceOrder(99))
        broker.come_back()
        accepted = 10
        with trio.fail_after(20):
            while accepted < 20:
                try:
                    await sender.send(PlaceOrder(accepted))
                except triobus.BrokerUnavailable:
                    await trio.sleep(0.05)  # the sender's link is reconnecting too
                    continue
                accepted += 1
        await seen.until(
            lambda: len({key for (what, key) in seen.handled if what == "place"}) == 20
        )
        letters = [*consumer.dead_letters, *sender.dead_letters]
    assert ("place", 99) not in seen.handled
    assert letters == []


# ---------------------------------------------------------------- the durable inbox


def _place_order_body(bus: MessageBus, message_id: str, order: int) -> bytes:
    codec: triobus.Codec = bus.endpoints[URI].codec  # type: ignore[attr-defined]
    name = f"{PlaceOrder.__module__}.PlaceOrder"
    envelope = triobus.Envelope(
        message_id, name, 1, message_id, None, {}, None, 0.0, PlaceOrder(order)
    )
    return codec.encode(envelope)


async def test_a_message_handled_before_a_restart_is_not_handled_again(store_at: Any) -> None:
    broker, seen = MemoryBroker(), Seen()
    inbox = durable_inbox(**store_at.options())
    async with process(broker, orders_module(seen), inbox=inbox) as first:
        body = _place_order_body(first, "m-1", 1)
        broker.inject(URI, body)
        await seen.until(lambda: seen.count("place") == 1)
    # The ack was lost (a crash): the broker delivers it again, to a fresh process.
    broker.inject(URI, body)
    async with process(broker, orders_module(seen), inbox=inbox):
        await eventually(lambda: not broker.queue(URI) and not _unacked(broker))
    assert seen.count("place") == 1
    assert store_at.rows("SELECT endpoint, message_id FROM triobus_inbox") == [(URI, "m-1")]


def _unacked(broker: MemoryBroker) -> int:
    return sum(len(consumer.unacked) for consumer in broker._consumers)


async def test_a_unit_of_work_commits_a_redelivered_message_once(tmp_path: Any) -> None:
    """Two copies handled at once (both passed the inbox look-up): one commits its writes."""
    broker = MemoryBroker()
    path = tmp_path / "effects.db"
    inbox = durable_inbox(path=path)
    setup = sqlite3.connect(path)
    setup.execute("CREATE TABLE effects (n INTEGER)")
    setup.commit()
    started, release = Seen(), trio.Event()

    def module() -> Module:
        # Each process has its own connection, as two processes would.
        connection = sqlite3.connect(path, check_same_thread=False, timeout=30)

        async def place(command: PlaceOrder) -> None:
            started.add("place", command.order_id)
            await release.wait()
            async with unit_of_work(connection) as uow:
                await uow.execute("INSERT INTO effects (n) VALUES (?)", (command.order_id,))

        return Module("orders").bind_request(PlaceOrder, place)

    async with (
        process(broker, module(), inbox=inbox, prefetch=1) as one,
        process(broker, module(), inbox=inbox, prefetch=1),
    ):
        body = _place_order_body(one, "m-2", 2)
        broker.inject(URI, body)
        broker.inject(URI, body)
        await started.until(lambda: started.count("place") == 2)
        release.set()
        await eventually(lambda: not broker.queue(URI) and not _unacked(broker))
    assert setup.execute("SELECT n FROM effects").fetchall() == [(2,)]


async def test_the_context_travels_in_broker_headers() -> None:
    broker, seen = MemoryBroker(), Seen()
    async with process(broker, orders_module(seen)), process(broker, remote=(PlaceOrder,)) as a:
        await a.send(PlaceOrder(1), headers={"traceparent": "00-abc-01"}, correlation_id="c-1")
        await seen.until(lambda: seen.count("place") == 1)
    (sent,) = [m for m in broker.published if m.flow == "work"]
    headers = sent.headers
    assert headers["traceparent"] == "00-abc-01"
    assert headers["triobus-correlation-id"] == "c-1"
    assert headers["triobus-message-id"] == sent.message_id
    assert headers["triobus-message-name"] == f"{PlaceOrder.__module__}.PlaceOrder"
    assert headers["triobus-attempt"] == "1"
