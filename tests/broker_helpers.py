"""Helpers of the broker tests: reading back what was published, with the raw client."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio


async def kafka_records(bootstrap: str, topic: str, count: int) -> list[Any]:
    """Read ``count`` records of ``topic`` from its start, as a new consumer group (on the loop)."""
    import aiokafka

    consumer = aiokafka.AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"{topic}-group",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    await consumer.start()
    try:
        records: list[Any] = []
        while len(records) < count:
            batch = await consumer.getmany(timeout_ms=500)
            records += [record for got in batch.values() for record in got]
        await consumer.commit()
        return records
    finally:
        await consumer.stop()


async def eventually(
    check: Callable[[], object], timeout: float = 20.0, poll: float = 0.01
) -> None:
    """Wait until ``check()`` is true, looking every ``poll`` seconds (fails after ``timeout``)."""
    with trio.fail_after(timeout):
        while True:
            if check():
                return
            await trio.sleep(poll)


class RecordedTransport:
    """A transport that notes each topology it declares, so a test can delete them after."""

    def __init__(self, transport: Any, declared: list[Any]) -> None:
        self.transport = transport
        self.declared = declared

    @property
    def description(self) -> str:
        return str(self.transport.description)

    async def connect(self) -> None:
        await self.transport.connect()

    async def close(self) -> None:
        await self.transport.close()

    async def declare(self, topology: Any) -> None:
        self.declared.append(topology)
        await self.transport.declare(topology)

    async def publish(self, messages: Any) -> None:
        await self.transport.publish(messages)

    async def subscribe(self, subscription: Any) -> Any:
        return await self.transport.subscribe(subscription)


def delete_rabbitmq_topologies(url: str, topologies: list[Any]) -> None:
    """Delete the queues and exchanges of ``topologies`` (plain asyncio, after the trio test)."""
    import asyncio

    import aio_pika

    if not topologies:
        return

    async def delete() -> None:
        connection = await aio_pika.connect(url)
        try:
            channel = await connection.channel()
            for topology in topologies:
                uri = topology.endpoint
                queues = {uri, f"{uri}.dead-letters"}
                queues.update(subscription.name for subscription in topology.subscriptions)
                for queue in sorted(queues):
                    await channel.queue_delete(queue)
                for exchange in (uri, f"{uri}.dead-letters"):
                    await channel.exchange_delete(exchange)
        finally:
            await connection.close()

    asyncio.run(delete())
