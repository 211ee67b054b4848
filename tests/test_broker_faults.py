"""Faults at the edge, on the real brokers: bad input injected with the raw client, and
RabbitMQ dropping every connection mid-stream.
"""

from __future__ import annotations

import collections
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio
from broker_messages import PlaceOrder
from broker_worker import CRASH, LIMIT, POISON
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker_helpers import eventually
from test_broker_processes import Workers, make_transport, once_each, sender
from triobus.transports import Flow, Subscription, Topology, Verdict, shared_asyncio_bridge


@pytest.fixture(scope="module", params=["rabbitmq", "kafka"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Workers]:
    """One worker process for the whole module, per broker."""
    if request.param == "rabbitmq":
        address: str = request.getfixturevalue("rabbitmq_url")
    else:
        address = request.getfixturevalue("kafka_bootstrap")
    workers = Workers(
        (request.param, address),
        f"faults-{uuid.uuid4().hex[:8]}",
        tmp_path_factory.mktemp("faults") / "effects.db",
    )

    async def start() -> None:
        await workers.started()

    try:
        trio.run(start)
        yield workers
    finally:
        workers.stop_all()


async def inject(workers: Workers, bodies: list[bytes]) -> None:
    """Put raw bytes where PlaceOrder commands go, with the broker's own client."""
    async with shared_asyncio_bridge() as bridge:
        await bridge.run(_inject, workers, bodies)


async def _inject(workers: Workers, bodies: list[bytes]) -> None:
    kind, address = workers.broker
    if kind == "rabbitmq":
        import aio_pika

        connection = await aio_pika.connect(address)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            for body in bodies:
                await channel.default_exchange.publish(
                    aio_pika.Message(body), routing_key=workers.uri
                )
        return
    import aiokafka  # type: ignore[import-untyped]

    producer = aiokafka.AIOKafkaProducer(bootstrap_servers=address, acks="all")
    await producer.start()
    try:
        for body in bodies:
            await producer.send_and_wait(f"{workers.uri}.{PlaceOrder.message_name}", body)
    finally:
        await producer.stop()


Letter = tuple[bytes, dict[str, str]]


async def read_dead_letters(
    workers: Workers, until: Callable[[list[Letter]], bool]
) -> list[Letter]:
    """Dead letters from the broker's dead-letter destination, read (and acked) until
    ``until(letters)``. Kafka may hand earlier tests' letters back (it commits per
    partition): callers pick theirs.
    """
    transport = make_transport(workers.broker)
    await transport.connect()
    try:
        name = f"{workers.uri}.dead-letters"
        letters = Subscription(Flow.DEAD_LETTER, workers.uri, name)
        await transport.declare(Topology(workers.uri, (), (), (letters,)))
        consumer = await transport.subscribe(letters)
        taken: list[Letter] = []
        with trio.fail_after(60):
            while not until(taken):
                batch = await consumer.fetch(64)
                await consumer.settle([(message, Verdict.ACK) for message in batch])
                taken.extend((bytes(m.body), dict(m.headers)) for m in batch)
        await consumer.close()
    finally:
        await transport.close()
    return taken


def with_reason(reason: str) -> Callable[[list[Letter]], bool]:
    return lambda letters: any(h["triobus-dead-letter-reason"] == reason for _, h in letters)


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    bodies=st.lists(
        st.one_of(
            st.binary(min_size=1, max_size=64),
            st.text(min_size=1, max_size=40).map(str.encode),
            st.just(b'{"message_name": "nope", "message_version": 1}'),
            st.just(b"{}"),
            st.just(b"x" * (LIMIT + 1)),  # more than the worker's codec takes
        ),
        min_size=1,
        max_size=5,
    )
)
def test_malformed_payloads_are_dead_letters_with_reasons_while_good_messages_flow(
    served: Workers, bodies: list[bytes]
) -> None:
    async def main() -> None:
        before = len(served.effects("place"))
        await inject(served, bodies)
        async with sender(served.broker, served.uri) as bus:
            await bus.send(PlaceOrder(len(bodies)))
        wanted = collections.Counter(bodies)

        def all_in(letters: list[Letter]) -> bool:
            return not wanted - collections.Counter(body for body, _ in letters)

        # Every injected body is a dead letter (with its reason; an equal body an
        # earlier example injected may come with them).
        letters = [
            (body, h) for body, h in await read_dead_letters(served, all_in) if body in wanted
        ]
        await eventually(lambda: len(served.effects("place")) == before + 1, timeout=60)
        for _, headers in letters:
            assert headers["triobus-dead-letter-reason"] == "undecodable"
            assert headers["triobus-error"]

    trio.run(main)


def _close_all_connections() -> None:
    subprocess.run(
        ["rabbitmqctl", "close_all_connections", "test: drop every connection"],
        check=True,
        capture_output=True,
        timeout=60,
    )


async def test_rabbitmq_dropping_every_connection_mid_stream_loses_nothing(
    rabbitmq_url: str, tmp_path: Path
) -> None:
    workers = Workers(("rabbitmq", rabbitmq_url), f"drop-{uuid.uuid4().hex[:8]}", tmp_path / "e.db")
    try:
        await workers.started()
        accepted: list[int] = []
        async with sender(workers.broker, workers.uri) as bus:
            for n in range(600):
                if n == 200:
                    await trio.to_thread.run_sync(_close_all_connections)
                with trio.fail_after(60):
                    while True:
                        try:
                            await bus.send(PlaceOrder(n))
                        except Exception as exc:  # the sender's connection dropped too
                            assert "was not sent" in str(exc)
                            await trio.sleep(0.1)
                            continue
                        accepted.append(n)
                        break
            await eventually(
                lambda: {n for _, _, n, _ in workers.effects("place")} >= set(accepted), timeout=120
            )
        effects = workers.effects("place")
        assert once_each(effects)
        # (A send that failed may have reached the broker anyway: it is another message.)
        assert {n for _, _, n, _ in effects} == set(accepted)
    finally:
        workers.stop_all()


def test_a_poison_message_is_dead_lettered_after_its_attempts(served: Workers) -> None:
    async def main() -> None:
        async with sender(served.broker, served.uri) as bus:
            await bus.send(PlaceOrder(POISON))
        letters = await read_dead_letters(served, with_reason("failed"))
        (headers,) = [h for _, h in letters if h["triobus-dead-letter-reason"] == "failed"]
        assert headers["triobus-exception-type"] == "ValueError"
        assert headers["triobus-error"] == "poison order"
        assert headers["triobus-attempts"] == "3"  # counted on the envelope: 3 handler calls

    trio.run(main)


async def test_a_message_that_kills_its_consumer_every_time_is_interrupted(
    rabbitmq_url: str, tmp_path: Path
) -> None:
    """Counted by RabbitMQ's delivery count, across the processes it killed."""
    workers = Workers(
        ("rabbitmq", rabbitmq_url), f"crash-{uuid.uuid4().hex[:8]}", tmp_path / "e.db"
    )
    try:
        await workers.started()
        async with sender(workers.broker, workers.uri) as bus:
            await bus.send(PlaceOrder(CRASH))
            deaths = 0
            async with trio.open_nursery() as nursery:

                async def restart_the_dead() -> None:
                    nonlocal deaths
                    while True:
                        worker = workers.running[-1]
                        if await trio.to_thread.run_sync(worker.wait, abandon_on_cancel=True) == 3:
                            deaths += 1
                        await workers.started()

                nursery.start_soon(restart_the_dead)
                ((_, headers),) = await read_dead_letters(workers, with_reason("interrupted"))
                nursery.cancel_scope.cancel()
            await bus.send(PlaceOrder(1))  # the consumer that took over goes on
            await eventually(lambda: workers.effects("place"), timeout=60)
        assert headers["triobus-dead-letter-reason"] == "interrupted"
        assert deaths == 3  # the error policy's 3 attempts, each cut off
        assert [n for _, _, n, _ in workers.effects("place")] == [1]
    finally:
        workers.stop_all()
