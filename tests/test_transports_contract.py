"""The BrokerTransport contract, proved on every transport.

Each test runs on the in-memory test double and on every real broker's
transport (the servers' fixtures skip them, or fail them under CI=true,
when a server is missing).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import trio

import triobus
from broker_helpers import RecordedTransport, delete_rabbitmq_topologies
from triobus.transports import (
    BrokerTransport,
    Flow,
    IncomingMessage,
    OutgoingMessage,
    Subscription,
    Topology,
    Verdict,
)

TransportFactory = Callable[[], BrokerTransport]

#: How long a broker may take to hand over what was published.
PATIENCE = 20.0


@pytest.fixture
def memory_factory() -> TransportFactory:
    broker = triobus.MemoryBroker()
    return broker.transport


@pytest.fixture
def rabbitmq_factory(rabbitmq_url: str) -> Iterator[TransportFactory]:
    declared: list[Topology] = []

    def make() -> BrokerTransport:
        return RecordedTransport(triobus.rabbitmq_transport(rabbitmq_url), declared)

    yield make
    delete_rabbitmq_topologies(rabbitmq_url, declared)


@pytest.fixture
def kafka_factory(kafka_bootstrap: str) -> TransportFactory:
    return functools.partial(triobus.kafka_transport, kafka_bootstrap)


@pytest.fixture(params=["memory", "rabbitmq", "kafka"])
def make_transport(request: pytest.FixtureRequest) -> TransportFactory:
    """A factory of transports to one broker (each call: one more connection, as a process)."""
    factory: TransportFactory = request.getfixturevalue(f"{request.param}_factory")
    return factory


@pytest.fixture
async def transport(make_transport: TransportFactory) -> AsyncIterator[BrokerTransport]:
    transport = make_transport()
    await transport.connect()
    try:
        yield transport
    finally:
        await transport.close()


def _uri() -> str:
    return f"contract-{uuid.uuid4().hex[:10]}"


def _message(flow: Flow, uri: str, name: str, index: int, **extra: str) -> OutgoingMessage:
    return OutgoingMessage(
        flow=flow,
        endpoint=uri,
        message_name=name,
        message_id=f"id-{index}",
        body=f"body {index}".encode(),
        headers={"triobus-message-id": f"id-{index}", "triobus-message-name": name},
        **extra,  # type: ignore[arg-type]
    )


async def _fetch(consumer: triobus.transports.Consumer, count: int) -> list[IncomingMessage]:
    taken: list[IncomingMessage] = []
    with trio.fail_after(PATIENCE):
        while len(taken) < count:
            taken.extend(await consumer.fetch(count - len(taken)))
    return taken


async def _nothing_more(consumer: triobus.transports.Consumer, wait: float = 1.0) -> None:
    with trio.move_on_after(wait):
        extra = await consumer.fetch(10)
        pytest.fail(f"expected nothing more, got {[m.body for m in extra]}")


async def test_work_messages_reach_one_consumer_with_their_headers(
    transport: BrokerTransport,
) -> None:
    uri = _uri()
    work = Subscription(Flow.WORK, uri, uri, message_names=("PlaceOrder",), prefetch=16)
    await transport.declare(Topology(uri, ("PlaceOrder",), (), (work,)))
    await transport.publish([_message(Flow.WORK, uri, "PlaceOrder", i) for i in range(10)])
    consumer = await transport.subscribe(work)
    taken = await _fetch(consumer, 10)
    assert sorted(m.body for m in taken) == sorted(f"body {i}".encode() for i in range(10))
    assert all(m.headers["triobus-message-name"] == "PlaceOrder" for m in taken)
    await consumer.settle([(m, Verdict.ACK) for m in taken])
    await _nothing_more(consumer)
    await consumer.close()


async def test_events_fan_out_to_every_matching_subscription(
    transport: BrokerTransport,
) -> None:
    uri = _uri()
    exact = Subscription(Flow.EVENT, uri, f"{uri}.billing", message_names=("orders.placed",))
    star = Subscription(Flow.EVENT, uri, f"{uri}.audit", patterns=("orders.*",))
    hashed = Subscription(Flow.EVENT, uri, f"{uri}.all", patterns=("#",))
    other = Subscription(Flow.EVENT, uri, f"{uri}.stock", patterns=("stock.#",))
    names = ("orders.placed", "orders.shipped")
    await transport.declare(Topology(uri, (), names, (exact, star, hashed, other)))
    consumers = {s.name: await transport.subscribe(s) for s in (exact, star, hashed, other)}
    await transport.publish([_message(Flow.EVENT, uri, name, i) for i, name in enumerate(names)])
    got = {}
    for name, count in (
        (exact.name, 1),
        (star.name, 2),
        (hashed.name, 2),
    ):
        got[name] = sorted(
            m.headers["triobus-message-name"] for m in await _fetch(consumers[name], count)
        )
        await _nothing_more(consumers[name], 0.5)
    assert got == {
        exact.name: ["orders.placed"],
        star.name: ["orders.placed", "orders.shipped"],
        hashed.name: ["orders.placed", "orders.shipped"],
    }
    await _nothing_more(consumers[other.name], 0.5)
    for consumer in consumers.values():
        await consumer.close()


async def test_unsettled_messages_come_back_after_close(
    make_transport: TransportFactory,
) -> None:
    uri = _uri()
    work = Subscription(Flow.WORK, uri, uri, message_names=("PlaceOrder",), prefetch=8)
    first = make_transport()
    await first.connect()
    await first.declare(Topology(uri, ("PlaceOrder",), (), (work,)))
    await first.publish([_message(Flow.WORK, uri, "PlaceOrder", i) for i in range(3)])
    consumer = await first.subscribe(work)
    taken = await _fetch(consumer, 3)
    await consumer.settle([(taken[0], Verdict.ACK)])
    await consumer.close()
    await first.close()
    second = make_transport()
    await second.connect()
    try:
        await second.declare(Topology(uri, ("PlaceOrder",), (), (work,)))
        again = await second.subscribe(work)
        back = await _fetch(again, 2)
        assert sorted(m.body for m in back) == sorted(m.body for m in taken[1:])
        await again.settle([(m, Verdict.ACK) for m in back])
        await again.close()
    finally:
        await second.close()


async def test_requeued_messages_are_delivered_again(transport: BrokerTransport) -> None:
    uri = _uri()
    work = Subscription(Flow.WORK, uri, uri, message_names=("PlaceOrder",), prefetch=8)
    await transport.declare(Topology(uri, ("PlaceOrder",), (), (work,)))
    await transport.publish([_message(Flow.WORK, uri, "PlaceOrder", 1)])
    consumer = await transport.subscribe(work)
    (first,) = await _fetch(consumer, 1)
    await consumer.settle([(first, Verdict.REQUEUE)])
    (again,) = await _fetch(consumer, 1)
    assert again.body == first.body
    assert again.redeliveries is None or again.redeliveries >= 1
    await consumer.settle([(again, Verdict.ACK)])
    await consumer.close()


async def test_replies_retries_and_dead_letters_reach_their_addresses(
    transport: BrokerTransport,
) -> None:
    uri = _uri()
    reply = Subscription(Flow.REPLY, uri, f"{uri}.replies.{uuid.uuid4().hex[:6]}")
    events = Subscription(Flow.EVENT, uri, f"{uri}.billing", message_names=("orders.placed",))
    other = Subscription(Flow.EVENT, uri, f"{uri}.audit", message_names=("orders.placed",))
    dead = Subscription(Flow.DEAD_LETTER, uri, f"{uri}.dead-letters")
    await transport.declare(Topology(uri, (), ("orders.placed",), (reply, events, other, dead)))
    consumers = {s.name: await transport.subscribe(s) for s in (reply, events, other, dead)}
    await transport.publish(
        [
            _message(Flow.REPLY, uri, "Receipt", 1, address=reply.name),
            _message(Flow.RETRY, uri, "orders.placed", 2, address=events.name),
            _message(Flow.DEAD_LETTER, uri, "orders.placed", 3),
        ]
    )
    for subscription, body in ((reply, b"body 1"), (events, b"body 2"), (dead, b"body 3")):
        (got,) = await _fetch(consumers[subscription.name], 1)
        assert got.body == body
        await consumers[subscription.name].settle([(got, Verdict.ACK)])
    await _nothing_more(consumers[other.name], 0.5)  # a retry goes to its subscription alone
    for consumer in consumers.values():
        await consumer.close()


async def test_fetch_stops_at_the_prefetch_limit_until_settled(
    transport: BrokerTransport,
) -> None:
    uri = _uri()
    work = Subscription(Flow.WORK, uri, uri, message_names=("PlaceOrder",), prefetch=2)
    await transport.declare(Topology(uri, ("PlaceOrder",), (), (work,)))
    await transport.publish([_message(Flow.WORK, uri, "PlaceOrder", i) for i in range(4)])
    consumer = await transport.subscribe(work)
    taken = await _fetch(consumer, 2)
    await _nothing_more(consumer, 0.5)
    await consumer.settle([(m, Verdict.ACK) for m in taken])
    rest = await _fetch(consumer, 2)
    await consumer.settle([(m, Verdict.ACK) for m in rest])
    assert len({m.body for m in (*taken, *rest)}) == 4
    await consumer.close()


async def test_a_lost_connection_fails_fetch_and_publish_with_broker_unavailable() -> None:
    broker = triobus.MemoryBroker()
    transport = broker.transport()
    await transport.connect()
    uri = _uri()
    work = Subscription(Flow.WORK, uri, uri, message_names=("PlaceOrder",))
    await transport.declare(Topology(uri, ("PlaceOrder",), (), (work,)))
    consumer = await transport.subscribe(work)
    async with trio.open_nursery() as nursery:

        async def fetch() -> None:
            with pytest.raises(triobus.BrokerUnavailable):
                await consumer.fetch(1)

        nursery.start_soon(fetch)
        await trio.testing.wait_all_tasks_blocked()
        broker.go_down()
    with pytest.raises(triobus.BrokerUnavailable):
        await transport.publish([_message(Flow.WORK, uri, "PlaceOrder", 1)])
    broker.come_back()
    await transport.connect()
    await transport.publish([_message(Flow.WORK, uri, "PlaceOrder", 1)])


async def test_acking_later_messages_leaves_an_earlier_one_to_come_back(
    make_transport: TransportFactory,
) -> None:
    uri = _uri()
    work = Subscription(Flow.WORK, uri, uri, message_names=("PlaceOrder",), prefetch=8)
    first = make_transport()
    await first.connect()
    await first.declare(Topology(uri, ("PlaceOrder",), (), (work,)))
    await first.publish([_message(Flow.WORK, uri, "PlaceOrder", i) for i in range(3)])
    consumer = await first.subscribe(work)
    taken = sorted(await _fetch(consumer, 3), key=lambda message: message.body)
    await consumer.settle([(taken[1], Verdict.ACK), (taken[2], Verdict.ACK)])
    await consumer.close()
    await first.close()
    second = make_transport()
    await second.connect()
    try:
        await second.declare(Topology(uri, ("PlaceOrder",), (), (work,)))
        again = await second.subscribe(work)
        back = await _fetch(again, 1)
        # (Kafka commits offsets: the acked ones after it may come back too.)
        assert taken[0].body in {message.body for message in back}
        await again.settle([(message, Verdict.ACK) for message in back])
        await again.close()
    finally:
        await second.close()
