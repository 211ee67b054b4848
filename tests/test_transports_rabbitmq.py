"""The RabbitMQ transport beyond the contract: errors that name the broker, lost
connections, confirmed batches, counted redeliveries, RabbitMQ's own dead letters.

The contract every transport keeps is proved in test_transports_contract.py.
"""

from __future__ import annotations

import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import trio
import trio.testing

import triobus
from broker_helpers import RecordedTransport, delete_rabbitmq_topologies
from triobus.transports import (
    Consumer,
    Flow,
    IncomingMessage,
    OutgoingMessage,
    RabbitMQTransport,
    Subscription,
    Topology,
    Verdict,
    rabbitmq_transport,
    shared_asyncio_bridge,
)

PATIENCE = 20.0

Factory = Callable[..., Any]


@pytest.fixture
def make_transport(rabbitmq_url: str) -> Iterator[Factory]:
    """Transports to the test RabbitMQ (each a connection); their topologies are deleted after."""
    declared: list[Topology] = []

    def make(**options: Any) -> Any:
        return RecordedTransport(rabbitmq_transport(rabbitmq_url, **options), declared)

    yield make
    delete_rabbitmq_topologies(rabbitmq_url, declared)


@pytest.fixture
async def transport(make_transport: Factory) -> AsyncIterator[Any]:
    transport = make_transport()
    await transport.connect()
    try:
        yield transport
    finally:
        await transport.close()


def _uri() -> str:
    return f"rabbit-{uuid.uuid4().hex[:10]}"


def _work(uri: str, prefetch: int = 64) -> Subscription:
    return Subscription(Flow.WORK, uri, uri, message_names=("PlaceOrder",), prefetch=prefetch)


def _message(flow: Flow, uri: str, index: int, name: str = "PlaceOrder", **extra: Any) -> Any:
    return OutgoingMessage(
        flow=flow,
        endpoint=uri,
        message_name=name,
        message_id=f"id-{index}",
        body=f"body {index}".encode(),
        headers={"triobus-message-id": f"id-{index}"},
        **extra,
    )


async def _fetch(consumer: Consumer, count: int) -> list[IncomingMessage]:
    taken: list[IncomingMessage] = []
    with trio.fail_after(PATIENCE):
        while len(taken) < count:
            taken.extend(await consumer.fetch(count - len(taken)))
    return taken


def _with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or 'guest'}:{password}@{host}"))


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ---------------------------------------------------------------- connecting


async def test_wrong_credentials_fail_connect_naming_the_broker_without_the_password(
    rabbitmq_url: str,
) -> None:
    transport = rabbitmq_transport(_with_password(rabbitmq_url, "not-the-password"))
    with pytest.raises(triobus.BrokerUnavailable) as caught:
        await transport.connect()
    text = str(caught.value)
    assert transport.description in text
    assert "credentials" in text and "user name and password" in text
    assert "not-the-password" not in text
    await transport.close()


async def test_a_closed_port_fails_connect_naming_the_broker() -> None:
    port = _closed_port()
    transport = rabbitmq_transport(f"amqp://guest:secret@127.0.0.1:{port}/")
    assert transport.description == f"RabbitMQ at amqp://guest@127.0.0.1:{port}/"
    with pytest.raises(triobus.BrokerUnavailable) as caught:
        await transport.connect()
    text = str(caught.value)
    assert transport.description in text
    assert "cannot be reached" in text and "server runs" in text
    assert "secret" not in text
    with pytest.raises(triobus.BrokerUnavailable, match="not connected"):
        await transport.publish([_message(Flow.WORK, "x", 1)])


async def test_a_missing_virtual_host_fails_connect_saying_what_to_check(
    rabbitmq_url: str,
) -> None:
    transport = rabbitmq_transport(rabbitmq_url.rstrip("/") + "/no-such-vhost")
    with pytest.raises(triobus.BrokerUnavailable, match="virtual host") as caught:
        await transport.connect()
    assert transport.description in str(caught.value)


async def test_a_url_that_is_not_amqp_fails_connect() -> None:
    transport = rabbitmq_transport("http://guest:guest@127.0.0.1:5672/")
    with pytest.raises(triobus.BrokerUnavailable, match="not an AMQP URL"):
        await transport.connect()


async def test_connect_twice_keeps_the_connection_and_close_twice_is_harmless(
    make_transport: Factory,
) -> None:
    transport = make_transport()
    assert "closed" in repr(transport.transport) and "guest@" in repr(transport.transport)
    await transport.connect()
    await transport.connect()
    assert "connected" in repr(transport.transport)
    uri = _uri()
    await transport.declare(Topology(uri, (), ("orders.placed",), ()))
    await transport.publish([_message(Flow.EVENT, uri, 1, "orders.placed")])
    await transport.close()
    await transport.close()
    with pytest.raises(triobus.BrokerUnavailable, match="not connected"):
        await transport.publish([_message(Flow.EVENT, uri, 2, "orders.placed")])


def test_bad_options_are_refused_at_once() -> None:
    with pytest.raises(ValueError, match="queue_type"):
        rabbitmq_transport(queue_type="lazy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reply_expiry"):
        rabbitmq_transport(reply_expiry=0)
    assert isinstance(rabbitmq_transport(), RabbitMQTransport)
    assert isinstance(rabbitmq_transport(), triobus.BrokerTransport)


# ---------------------------------------------------------------- a lost connection


async def _close_connection_named(name: str) -> None:
    """Have RabbitMQ close the connection named ``name`` (and only that one)."""
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not on PATH: it closes the connection from the server side")
    listed = await trio.run_process(
        ["rabbitmqctl", "-q", "list_connections", "--no-table-headers", "pid", "client_properties"],
        capture_stdout=True,
    )
    # One line per connection: its pid, a tab, its client properties (the name among them).
    pids = [
        line.split("\t", 1)[0]
        for line in listed.stdout.decode().splitlines()
        if f'"{name}"' in line
    ]
    assert len(pids) == 1, listed.stdout
    await trio.run_process(["rabbitmqctl", "-q", "close_connection", pids[0], "test"])


async def test_a_lost_connection_fails_fetch_and_publish_with_broker_unavailable(
    make_transport: Factory,
) -> None:
    name = f"triobus-test-{uuid.uuid4().hex[:8]}"
    transport = make_transport(connection_name=name)
    await transport.connect()
    try:
        uri = _uri()
        work = _work(uri)
        await transport.declare(Topology(uri, ("PlaceOrder",), (), (work,)))
        await transport.publish([_message(Flow.WORK, uri, 1)])
        consumer = await transport.subscribe(work)
        (unsettled,) = await _fetch(consumer, 1)
        with trio.fail_after(PATIENCE):
            async with trio.open_nursery() as nursery:

                async def fetch() -> None:
                    with pytest.raises(triobus.BrokerUnavailable, match="lost"):
                        await consumer.fetch(1)

                nursery.start_soon(fetch)
                await trio.testing.wait_all_tasks_blocked()
                await _close_connection_named(name)
        with pytest.raises(triobus.BrokerUnavailable, match="connection is lost") as caught:
            await transport.publish([_message(Flow.WORK, uri, 2)])
        assert transport.description in str(caught.value)
        with pytest.raises(triobus.BrokerUnavailable):
            await consumer.settle([(unsettled, Verdict.ACK)])
        await consumer.close()

        await transport.connect()
        await transport.publish([_message(Flow.WORK, uri, 2)])
        again = await transport.subscribe(work)
        back = await _fetch(again, 2)
        assert sorted(m.body for m in back) == [b"body 1", b"body 2"]
        first = next(m for m in back if m.body == b"body 1")
        assert first.redeliveries == 1  # given back when the connection dropped
        await again.settle([(m, Verdict.ACK) for m in back])
        await again.close()
    finally:
        await transport.close()


async def test_closing_the_transport_wakes_a_waiting_fetch(make_transport: Factory) -> None:
    transport = make_transport()
    await transport.connect()
    uri = _uri()
    await transport.declare(Topology(uri, ("PlaceOrder",), (), (_work(uri),)))
    consumer = await transport.subscribe(_work(uri))
    with trio.fail_after(PATIENCE):
        async with trio.open_nursery() as nursery:

            async def fetch() -> None:
                with pytest.raises(triobus.BrokerUnavailable):
                    await consumer.fetch(1)

            nursery.start_soon(fetch)
            await trio.testing.wait_all_tasks_blocked()
            await transport.close()
    await consumer.close()  # after its transport: does nothing


async def test_a_cancelled_fetch_takes_nothing(transport: Any) -> None:
    uri = _uri()
    await transport.declare(Topology(uri, ("PlaceOrder",), (), (_work(uri),)))
    consumer = await transport.subscribe(_work(uri))
    with trio.move_on_after(0.3) as scope:
        await consumer.fetch(1)
    assert scope.cancelled_caught
    await transport.publish([_message(Flow.WORK, uri, 1)])
    (got,) = await _fetch(consumer, 1)
    assert got.body == b"body 1"
    await consumer.settle([(got, Verdict.ACK), (got, Verdict.ACK)])  # the second is skipped
    await consumer.close()


# ---------------------------------------------------------------- publishing


async def test_a_batch_of_500_is_published_in_one_crossing_and_all_confirmed(
    transport: Any,
) -> None:
    uri = _uri()
    work = _work(uri, prefetch=500)
    await transport.declare(Topology(uri, ("PlaceOrder",), (), (work,)))
    async with shared_asyncio_bridge() as bridge:
        before = bridge.statistics().calls
        await transport.publish([_message(Flow.WORK, uri, i) for i in range(500)])
        assert bridge.statistics().calls == before + 1
        # Confirmed means queued: a passive declare counts them at once.
        count = await bridge.run(_queue_length, transport.transport.url, uri)
    assert count == 500
    consumer = await transport.subscribe(work)
    taken = await _fetch(consumer, 500)
    assert sorted(m.body for m in taken) == sorted(f"body {i}".encode() for i in range(500))
    await consumer.settle([(m, Verdict.ACK) for m in taken])
    await consumer.close()


async def _queue_length(url: str, queue: str) -> int:
    import aio_pika

    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)
    finally:
        await connection.close()


async def test_work_to_a_missing_queue_is_refused_and_publishing_goes_on(
    transport: Any,
) -> None:
    uri = _uri()
    with pytest.raises(triobus.BrokerUnavailable, match="could not route") as caught:
        await transport.publish([_message(Flow.WORK, f"{uri}-undeclared", 1)])
    assert "declare the endpoint's topology" in str(caught.value)
    await transport.declare(Topology(uri, ("PlaceOrder",), (), (_work(uri),)))
    await transport.publish([_message(Flow.WORK, uri, 2)])


async def test_an_event_to_a_missing_exchange_is_refused_and_publishing_goes_on(
    transport: Any,
) -> None:
    uri = _uri()
    # RabbitMQ closes the publishing channel (NOT_FOUND); the next publish opens another.
    with pytest.raises(triobus.BrokerUnavailable, match="no exchange"):
        await transport.publish([_message(Flow.EVENT, f"{uri}-undeclared", 1, "orders.placed")])
    await transport.declare(Topology(uri, ("PlaceOrder",), (), (_work(uri),)))
    await transport.publish([_message(Flow.WORK, uri, 2)])


async def test_events_without_subscriptions_and_replies_to_gone_callers_are_dropped(
    transport: Any,
) -> None:
    uri = _uri()
    await transport.declare(Topology(uri, (), ("orders.placed",), ()))
    await transport.publish(
        [
            _message(Flow.EVENT, uri, 1, "orders.placed"),
            _message(Flow.REPLY, uri, 2, "Receipt", address=f"{uri}.replies.gone"),
        ]
    )


# ---------------------------------------------------------------- consuming


async def test_subscribing_to_a_queue_never_declared_is_refused(transport: Any) -> None:
    with pytest.raises(triobus.BrokerUnavailable, match="NOT_FOUND") as caught:
        await transport.subscribe(_work(f"{_uri()}-undeclared"))
    assert transport.description in str(caught.value)


async def test_quorum_queues_count_redeliveries(transport: Any) -> None:
    uri = _uri()
    work = _work(uri)
    await transport.declare(Topology(uri, ("PlaceOrder",), (), (work,)))
    await transport.publish([_message(Flow.WORK, uri, 1)])
    consumer = await transport.subscribe(work)
    counts = []
    for _ in range(3):
        (got,) = await _fetch(consumer, 1)
        counts.append(got.redeliveries)
        await consumer.settle([(got, Verdict.REQUEUE)])
    (got,) = await _fetch(consumer, 1)
    counts.append(got.redeliveries)
    await consumer.close()  # unsettled: it goes back, and that counts too
    again = await transport.subscribe(work)
    (got,) = await _fetch(again, 1)
    await again.settle([(got, Verdict.ACK)])
    await again.close()
    assert [*counts, got.redeliveries] == [0, 1, 2, 3, 4]
    assert got.headers["triobus-message-id"] == "id-1"


async def test_classic_queues_flag_redeliveries_without_a_count(make_transport: Factory) -> None:
    transport = make_transport(queue_type="classic")
    await transport.connect()
    try:
        uri = _uri()
        work = _work(uri)
        await transport.declare(Topology(uri, ("PlaceOrder",), (), (work,)))
        await transport.publish([_message(Flow.WORK, uri, 1)])
        consumer = await transport.subscribe(work)
        (first,) = await _fetch(consumer, 1)
        await consumer.settle([(first, Verdict.REQUEUE)])
        (again,) = await _fetch(consumer, 1)
        await consumer.settle([(again, Verdict.ACK)])
        await consumer.close()
        assert (first.redeliveries, again.redeliveries) == (0, None)
    finally:
        await transport.close()


async def test_a_queue_declared_with_another_type_is_refused_saying_so(
    make_transport: Factory,
) -> None:
    quorum, classic = make_transport(), make_transport(queue_type="classic")
    await quorum.connect()
    await classic.connect()
    try:
        uri = _uri()
        topology = Topology(uri, ("PlaceOrder",), (), (_work(uri),))
        await quorum.declare(topology)
        with pytest.raises(triobus.BrokerUnavailable, match="PRECONDITION_FAILED") as caught:
            await classic.declare(topology)
        assert classic.description in str(caught.value)
        await classic.publish([_message(Flow.WORK, uri, 1)])  # the connection is still good
    finally:
        await quorum.close()
        await classic.close()


async def test_what_rabbitmq_itself_rejects_lands_in_the_dead_letters(transport: Any) -> None:
    uri = _uri()
    work = _work(uri)
    dead = Subscription(Flow.DEAD_LETTER, uri, f"{uri}.dead-letters")
    await transport.declare(Topology(uri, ("PlaceOrder",), (), (work, dead)))
    await transport.publish([_message(Flow.WORK, uri, 1)])
    async with shared_asyncio_bridge() as bridge:
        await bridge.run(_reject_one, transport.transport.url, uri)
    consumer = await transport.subscribe(dead)
    (got,) = await _fetch(consumer, 1)
    assert got.body == b"body 1"
    assert got.headers["x-first-death-reason"] == "rejected"
    await consumer.settle([(got, Verdict.ACK)])
    await consumer.close()


async def _reject_one(url: str, queue: str) -> None:
    """Take one message of ``queue`` and reject it without requeueing, as a foreign client."""
    import aio_pika

    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        declared = await channel.get_queue(queue, ensure=False)
        async with declared.iterator() as messages:
            async for message in messages:
                await message.reject(requeue=False)
                break
    finally:
        await connection.close()
