"""The broker clients run through the asyncio bridge against real servers.

RabbitMQ (aio-pika) on the local server, Kafka (aiokafka) on a Tansu broker
the fixtures start: concurrent trio tasks publish with confirms through one
bridge, their calls cross in groups, and every message comes back.
"""

from __future__ import annotations

import secrets
from typing import Any

import trio

from broker_helpers import kafka_records
from triobus.transports import AsyncioBridge, open_asyncio_bridge

COUNT = 200


async def publish_all(bridge: AsyncioBridge, publish: Any, *args: Any) -> None:
    """``COUNT`` concurrent trio tasks, each publishing one numbered body through ``bridge``."""
    async with trio.open_nursery() as nursery:
        for n in range(COUNT):
            nursery.start_soon(bridge.run, publish, *args, str(n).encode())


async def test_rabbitmq_messages_published_from_trio_tasks_come_back_once_each(
    rabbitmq_url: str,
) -> None:
    import aio_pika

    async def open_queue() -> tuple[Any, Any, Any]:
        connection = await aio_pika.connect(rabbitmq_url)
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(f"triobus-test-{secrets.token_hex(4)}", exclusive=True)
        return connection, channel, queue

    async def publish(channel: Any, routing_key: str, body: bytes) -> None:
        await channel.default_exchange.publish(aio_pika.Message(body), routing_key=routing_key)

    async def take(queue: Any, count: int) -> list[bytes]:
        bodies: list[bytes] = []
        async with queue.iterator() as messages:
            async for message in messages:
                await message.ack()
                bodies.append(message.body)
                if len(bodies) == count:
                    break
        return bodies

    async with open_asyncio_bridge() as bridge:
        connection, channel, queue = await bridge.run(open_queue)
        try:
            await publish_all(bridge, publish, channel, queue.name)
            crossings = bridge.statistics().crossings_to_loop
            with trio.fail_after(30):
                bodies = await bridge.run(take, queue, COUNT)
        finally:
            await bridge.run(connection.close)
    assert sorted(bodies) == sorted(str(n).encode() for n in range(COUNT))
    assert crossings < COUNT // 2  # concurrent calls crossed together


async def test_kafka_messages_produced_from_trio_tasks_come_back_once_each(
    kafka_bootstrap: str,
) -> None:
    import aiokafka

    topic = f"triobus-test-{secrets.token_hex(4)}"

    async def open_producer() -> Any:
        producer = aiokafka.AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        return producer

    async with open_asyncio_bridge() as bridge:
        producer = await bridge.run(open_producer)
        try:
            await publish_all(bridge, producer.send_and_wait, topic)
            crossings = bridge.statistics().crossings_to_loop
        finally:
            await bridge.run(producer.stop)
        with trio.fail_after(60):
            records = await bridge.run(kafka_records, kafka_bootstrap, topic, COUNT)
    bodies = [record.value for record in records]
    assert sorted(bodies) == sorted(str(n).encode() for n in range(COUNT))
    assert crossings < COUNT // 2  # concurrent calls crossed together
