"""Message brokers publish integration events: to nowhere (tests), RabbitMQ and Kafka."""

from __future__ import annotations

import logging
import secrets
import uuid
from typing import Any

import orjson
import pytest
import trio

from broker_helpers import kafka_records
from triobus import BridgeClosed
from triobus.transports import (
    AmqpMessageBroker,
    BrokerMessage,
    DevnullMessageBroker,
    KafkaMessageBroker,
    MessageBroker,
    shared_asyncio_bridge,
)


def placed(n: int, topic: str = "orders.placed") -> BrokerMessage:
    return BrokerMessage("OrderPlaced", topic, {"order": n}, headers={"tenant": "t1"})


async def test_devnull_keeps_each_message_and_warns_that_it_went_nowhere(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = DevnullMessageBroker()
    with caplog.at_level(logging.WARNING, logger="triobus.transports"):
        await broker.send_message(placed(1))
        await broker.send_message(placed(2))
    assert [message.payload for message in broker.sent] == [{"order": 1}, {"order": 2}]
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "OrderPlaced" in warnings[0].getMessage()


async def test_a_broker_of_your_own_is_a_message_broker_by_its_send_message() -> None:
    class Printer:
        def __init__(self) -> None:
            self.topics: list[str] = []

        async def send_message(self, message: BrokerMessage) -> None:
            self.topics.append(message.topic)

    assert isinstance(Printer(), MessageBroker)
    assert isinstance(DevnullMessageBroker(), MessageBroker)
    assert not isinstance(object(), MessageBroker)


def test_the_wire_carries_the_payload_as_json_and_the_name_and_id_as_headers() -> None:
    message = placed(7)
    assert orjson.loads(message.body()) == {"order": 7}
    assert message.wire_headers() == {
        "tenant": "t1",
        "message_name": "OrderPlaced",
        "message_id": str(message.message_id),
    }
    raw = BrokerMessage("Blob", "blobs", None, payload_bytes=b"\x00\x01")
    assert raw.body() == b"\x00\x01"
    assert isinstance(raw.message_id, uuid.UUID)


async def test_a_broker_used_outside_its_async_with_says_so() -> None:
    broker = AmqpMessageBroker("amqp://guest:guest@127.0.0.1:5672/", "events")
    with pytest.raises(BridgeClosed, match="async with broker"):
        await broker.send_message(placed(1))


async def test_the_amqp_broker_publishes_to_a_topic_exchange_by_routing_key(
    rabbitmq_url: str,
) -> None:
    import aio_pika

    exchange = f"triobus-test-{secrets.token_hex(4)}"

    async def bind_queue() -> tuple[Any, Any]:
        connection = await aio_pika.connect(rabbitmq_url)
        channel = await connection.channel()
        declared = await channel.declare_exchange(
            exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(declared, routing_key="orders.*")
        return connection, queue

    async def take(queue: Any, count: int) -> list[Any]:
        taken = []
        async with queue.iterator() as messages:
            async for message in messages:
                await message.ack()
                taken.append(message)
                if len(taken) == count:
                    return taken
        return taken  # pragma: no cover

    async def remove(connection: Any) -> None:
        channel = await connection.channel()
        await channel.exchange_delete(exchange)
        await connection.close()

    async with shared_asyncio_bridge() as bridge:
        connection, queue = await bridge.run(bind_queue)
        try:
            async with AmqpMessageBroker(rabbitmq_url, exchange) as broker:
                sent = [placed(1), placed(2, "orders.paid"), placed(3, "users.created")]
                async with trio.open_nursery() as nursery:
                    for message in sent:
                        nursery.start_soon(broker.send_message, message)
            with trio.fail_after(20):
                received = await bridge.run(take, queue, 2)
        finally:
            await bridge.run(remove, connection)
    by_id = {message.message_id: message for message in received}
    assert set(by_id) == {str(sent[0].message_id), str(sent[1].message_id)}  # not users.*
    first = by_id[str(sent[0].message_id)]
    assert orjson.loads(first.body) == {"order": 1}
    assert first.headers["message_name"] == "OrderPlaced"
    assert first.headers["tenant"] == "t1"


async def test_the_kafka_broker_publishes_to_the_topic_keyed_by_message_id(
    kafka_bootstrap: str,
) -> None:
    topic = f"triobus-test-{secrets.token_hex(4)}"
    sent = [placed(n, topic) for n in range(20)]

    async with KafkaMessageBroker(kafka_bootstrap) as broker:
        async with trio.open_nursery() as nursery:
            for message in sent:
                nursery.start_soon(broker.send_message, message)
        async with shared_asyncio_bridge() as bridge:
            with trio.fail_after(60):
                records = await bridge.run(kafka_records, kafka_bootstrap, topic, len(sent))
    assert sorted(orjson.loads(record.value)["order"] for record in records) == list(range(20))
    record = next(r for r in records if r.key == str(sent[3].message_id).encode())
    assert orjson.loads(record.value) == {"order": 3}
    assert dict(record.headers)["message_name"] == b"OrderPlaced"


async def test_a_broker_endpoint_publishes_through_a_message_broker() -> None:
    """Integration events of a bus go out through a MessageBroker (here the test double)."""
    import attrs

    from triobus import Command, Event, broker_endpoint, open_bus, route
    from triobus.transports import message_broker_transport

    @attrs.frozen
    class OrderPlaced(Event):
        message_name = "orders.placed"
        order_id: str

    @attrs.frozen
    class ShipOrder(Command):
        message_name = "shipping.ship"
        order_id: str

    broker = DevnullMessageBroker()
    endpoint = broker_endpoint("integration", message_broker_transport(broker))
    routing = [route(OrderPlaced).to("integration"), route(ShipOrder).to("integration")]
    async with open_bus(endpoints=[endpoint], routing=routing) as bus:
        await bus.publish(OrderPlaced("A-1"), headers={"tenant": "t-1"})
        await bus.send(ShipOrder("A-1"))
    assert [(m.message_name, m.topic) for m in broker.sent] == [
        ("orders.placed", "orders.placed"),
        ("shipping.ship", "shipping.ship"),
    ]
    first = broker.sent[0]
    assert first.headers["tenant"] == "t-1"
    assert first.wire_headers()["message_id"] == first.headers["triobus-message-id"]
    assert b'"A-1"' in first.body()


async def test_a_publish_only_endpoint_refuses_handlers_with_what_to_do() -> None:
    import attrs

    from triobus import Command, Module, broker_endpoint, open_bus, route_module
    from triobus.transports import message_broker_transport

    @attrs.frozen
    class ShipOrder(Command):
        order_id: str

    async def ship(command: ShipOrder) -> None: ...

    shipping = Module("shipping").bind_request(ShipOrder, ship)
    endpoint = broker_endpoint("integration", message_broker_transport(DevnullMessageBroker()))
    with pytest.raises(TypeError, match="only publishes"):
        async with open_bus(
            shipping, endpoints=[endpoint], routing=[route_module(shipping).to("integration")]
        ):
            pass
