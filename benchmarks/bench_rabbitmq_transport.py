"""The RabbitMQ transport against raw aio-pika: publish, and fetch + ack.

Run from the project root (RabbitMQ at ``--url``, default ``$TRIOBUS_TEST_RABBITMQ``
else ``amqp://guest:guest@127.0.0.1:5672/``)::

    .venv/bin/python benchmarks/bench_rabbitmq_transport.py            # 3 rounds of 20,000
    .venv/bin/python benchmarks/bench_rabbitmq_transport.py --smoke    # 1 round of 1,000
    .venv/bin/python benchmarks/bench_rabbitmq_transport.py --queue-type classic

**Publish**: N messages of 100 bytes to the work queue of a fresh endpoint
(durable, ``--queue-type``), persistent, publisher confirms on. triobus: K
concurrent trio tasks (64 by default), each calling
``transport.publish([one message])`` until N are sent (the bridge groups
their calls); also one task publishing batches of ``--batch`` messages per
call. Raw: K asyncio tasks on ``asyncio.run``, each awaiting
``exchange.publish`` of an ``aio_pika.Message`` (same body, headers, id,
persistence) on one confirming channel. Time (wall clock) runs from the
first publish until the last confirm; the queue is then checked to hold N.

**Fetch + ack**: N such messages are put in a fresh queue first (untimed),
then consumed with prefetch P (``--prefetch``, 64 by default): triobus loops
``consumer.fetch(P)`` then ``consumer.settle`` of the batch (ACK); raw
aio-pika iterates ``queue.iterator()`` and awaits ``message.ack()`` per
message. Time runs from the subscription until the last ack was sent.

Each measurement has its own connection and (for triobus) its own
``trio.run`` and bridge; the two sides alternate within each round. The
table shows medians over the rounds, messages per second and the process's
CPU time (both threads) per message.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import aio_pika
import trio

import triobus
from triobus.transports import (
    Flow,
    OutgoingMessage,
    Subscription,
    Topology,
    Verdict,
    shared_asyncio_bridge,
)

BODY = b"x" * 100


@dataclass(frozen=True)
class Measurement:
    n: int
    elapsed: float
    cpu: float
    crossings: int = 0

    @property
    def rate(self) -> float:
        return self.n / self.elapsed

    @property
    def cpu_us(self) -> float:
        return self.cpu / self.n * 1e6


def _message(uri: str, i: int) -> OutgoingMessage:
    return OutgoingMessage(
        flow=Flow.WORK,
        endpoint=uri,
        message_name="Bench",
        message_id=f"bench-{i}",
        body=BODY,
        headers={"triobus-message-id": f"bench-{i}", "triobus-message-name": "Bench"},
    )


def _topology(uri: str, prefetch: int) -> tuple[Topology, Subscription]:
    work = Subscription(Flow.WORK, uri, uri, message_names=("Bench",), prefetch=prefetch)
    return Topology(uri, ("Bench",), (), (work,)), work


async def _count_and_delete(url: str, uri: str) -> int:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(uri, passive=True)
        count = int(queue.declaration_result.message_count or 0)
        for name in (uri, f"{uri}.dead-letters"):
            await channel.queue_delete(name)
            await channel.exchange_delete(name)
        return count
    finally:
        await connection.close()


def _fresh_endpoint(url: str, queue_type: str, prefetch: int) -> str:
    """Declare a fresh endpoint (through the transport, so both sides use one queue kind)."""
    uri = f"bench-{uuid.uuid4().hex[:10]}"

    async def declare() -> None:
        transport = triobus.rabbitmq_transport(url, queue_type=queue_type)  # type: ignore[arg-type]
        await transport.connect()
        try:
            await transport.declare(_topology(uri, prefetch)[0])
        finally:
            await transport.close()

    trio.run(declare)
    return uri


def _check(url: str, uri: str, n: int) -> None:
    count = asyncio.run(_count_and_delete(url, uri))
    if count != n:
        raise AssertionError(f"{uri} holds {count} messages, not {n}")


def triobus_publish(url: str, queue_type: str, n: int, tasks: int, batch: int) -> Measurement:
    """``n`` messages by ``tasks`` trio tasks, ``batch`` per call."""
    uri = _fresh_endpoint(url, queue_type, 64)
    messages = [_message(uri, i) for i in range(n)]

    async def main() -> Measurement:
        async with shared_asyncio_bridge() as bridge:
            transport = triobus.rabbitmq_transport(url, queue_type=queue_type)  # type: ignore[arg-type]
            await transport.connect()
            try:
                await transport.publish([_message(uri, -1)])  # warm: the channel is open
                before = bridge.statistics().crossings_to_loop
                batches = [messages[i : i + batch] for i in range(0, n, batch)]

                async def worker(mine: list[list[OutgoingMessage]]) -> None:
                    for one in mine:
                        await transport.publish(one)

                start, cpu = time.perf_counter(), time.process_time()
                async with trio.open_nursery() as nursery:
                    for k in range(tasks):
                        nursery.start_soon(worker, batches[k::tasks])
                elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
                crossings = bridge.statistics().crossings_to_loop - before
            finally:
                await transport.close()
        return Measurement(n, elapsed, cpu, crossings)

    gc.collect()
    result = trio.run(main)
    _check(url, uri, n + 1)
    return result


def raw_publish(url: str, queue_type: str, n: int, tasks: int) -> Measurement:
    uri = _fresh_endpoint(url, queue_type, 64)

    async def main() -> Measurement:
        connection = await aio_pika.connect(url)
        try:
            channel = await connection.channel(publisher_confirms=True)
            exchange = channel.default_exchange

            async def publish(i: int) -> None:
                await exchange.publish(
                    aio_pika.Message(
                        BODY,
                        headers={
                            "triobus-message-id": f"bench-{i}",
                            "triobus-message-name": "Bench",
                        },
                        message_id=f"bench-{i}",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=uri,
                )

            await publish(-1)

            async def worker(numbers: range) -> None:
                for i in numbers:
                    await publish(i)

            start, cpu = time.perf_counter(), time.process_time()
            await asyncio.gather(*(worker(range(k, n, tasks)) for k in range(tasks)))
            return Measurement(n, time.perf_counter() - start, time.process_time() - cpu)
        finally:
            await connection.close()

    gc.collect()
    result = asyncio.run(main())
    _check(url, uri, n + 1)
    return result


def _fill(url: str, uri: str, n: int) -> None:
    async def fill() -> None:
        connection = await aio_pika.connect(url)
        try:
            channel = await connection.channel(publisher_confirms=True)
            for start in range(0, n, 1000):
                await asyncio.gather(
                    *(
                        channel.default_exchange.publish(
                            aio_pika.Message(
                                BODY,
                                headers={"triobus-message-id": f"bench-{i}"},
                                message_id=f"bench-{i}",
                                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            ),
                            routing_key=uri,
                        )
                        for i in range(start, min(n, start + 1000))
                    )
                )
        finally:
            await connection.close()

    asyncio.run(fill())


def triobus_consume(url: str, queue_type: str, n: int, prefetch: int) -> Measurement:
    uri = _fresh_endpoint(url, queue_type, prefetch)
    _fill(url, uri, n)
    work = _topology(uri, prefetch)[1]

    async def main() -> Measurement:
        async with shared_asyncio_bridge() as bridge:
            transport = triobus.rabbitmq_transport(url, queue_type=queue_type)  # type: ignore[arg-type]
            await transport.connect()
            try:
                before = bridge.statistics().crossings_to_loop
                start, cpu = time.perf_counter(), time.process_time()
                consumer = await transport.subscribe(work)
                done = 0
                while done < n:
                    batch = await consumer.fetch(prefetch)
                    await consumer.settle([(m, Verdict.ACK) for m in batch])
                    done += len(batch)
                elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
                crossings = bridge.statistics().crossings_to_loop - before
                await consumer.close()
            finally:
                await transport.close()
        return Measurement(n, elapsed, cpu, crossings)

    gc.collect()
    result = trio.run(main)
    _check(url, uri, 0)
    return result


def raw_consume(url: str, queue_type: str, n: int, prefetch: int) -> Measurement:
    uri = _fresh_endpoint(url, queue_type, prefetch)
    _fill(url, uri, n)

    async def main() -> Measurement:
        connection = await aio_pika.connect(url)
        try:
            start, cpu = time.perf_counter(), time.process_time()
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=prefetch)
            queue = await channel.get_queue(uri, ensure=False)
            done = 0
            async with queue.iterator() as messages:
                async for message in messages:
                    await message.ack()
                    done += 1
                    if done == n:
                        break
            return Measurement(n, time.perf_counter() - start, time.process_time() - cpu)
        finally:
            await connection.close()

    gc.collect()
    result = asyncio.run(main())
    _check(url, uri, 0)
    return result


def median(results: list[Measurement]) -> Measurement:
    return sorted(results, key=lambda result: result.elapsed)[len(results) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("TRIOBUS_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672/"),
    )
    parser.add_argument("--smoke", action="store_true", help="1 round of 1,000 messages")
    parser.add_argument("--rounds", type=int, help="rounds (default 3; 1 with --smoke)")
    parser.add_argument("-n", type=int, help="messages per measurement (default 20,000)")
    parser.add_argument("--tasks", type=int, default=64, help="concurrent publishers")
    parser.add_argument("--batch", type=int, default=100, help="messages per batched publish")
    parser.add_argument("--prefetch", type=int, default=64)
    parser.add_argument("--queue-type", choices=["quorum", "classic"], default="quorum")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.smoke else 3)
    n = args.n or (1_000 if args.smoke else 20_000)
    url, qt, k = args.url, args.queue_type, args.tasks

    rows: list[tuple[str, Callable[[], Measurement]]] = [
        (
            f"publish, triobus, {k} trio tasks x publish([1])",
            lambda: triobus_publish(url, qt, n, k, 1),
        ),
        (f"publish, raw aio-pika, {k} asyncio tasks", lambda: raw_publish(url, qt, n, k)),
        (
            f"publish, triobus, 1 task x publish([{args.batch}])",
            lambda: triobus_publish(url, qt, n, 1, args.batch),
        ),
        (
            f"fetch + ack, triobus, prefetch {args.prefetch}",
            lambda: triobus_consume(url, qt, n, args.prefetch),
        ),
        (
            f"fetch + ack, raw aio-pika, prefetch {args.prefetch}",
            lambda: raw_consume(url, qt, n, args.prefetch),
        ),
    ]
    results: dict[str, list[Measurement]] = {label: [] for label, _ in rows}
    for round_ in range(rounds):
        order = rows if round_ % 2 == 0 else rows[::-1]
        for label, measure in order:
            result = measure()
            results[label].append(result)
            print(
                f"  round {round_ + 1}: {label}: {result.rate:,.0f} msg/s, "
                f"{result.cpu_us:.0f} us CPU/msg, crossings to loop {result.crossings}",
                file=sys.stderr,
            )

    print(f"\n{n:,} messages of 100 bytes, {qt} queues, median of {rounds} round(s)\n")
    print("| measurement | msg/s | CPU/msg | crossings to loop per msg |")
    print("|---|---:|---:|---:|")
    for label, _ in rows:
        result = median(results[label])
        crossings = f"{result.crossings / n:.3f}" if result.crossings else "-"
        print(f"| {label} | {result.rate:,.0f} | {result.cpu_us:.0f} us | {crossings} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
