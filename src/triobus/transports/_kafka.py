"""The Kafka transport: a broker endpoint's flows on Kafka topics and consumer groups.

:func:`kafka_transport` connects a broker endpoint (:func:`~triobus.broker_endpoint`)
to Kafka through aiokafka (``triobus[kafka]``), on the trio run's shared
:class:`~triobus.AsyncioBridge`. For an endpoint with uri ``U`` (``topic``
names a message's topic, ``f"{U}.{name}"`` by default):

- ``WORK``: the topic of the message name; the consumer group ``U`` takes
  each record once (its members share the partitions).
- ``EVENT``: the topic of the message name; one consumer group per event
  subscription, so each subscription gets every record (fan-out by groups).
  Patterns (``orders.*``, ``#``) subscribe to every topic of ``U`` whose
  message name they match, found in the cluster's metadata (topics created
  later are found within ``metadata_max_age`` seconds).
- ``RETRY``: the topic ``<subscription>.retry``, which only that
  subscription's group reads.
- ``REPLY``: the topic named by the reply address (one partition).
- ``DEAD_LETTER``: the topic ``U.dead-letters`` (one partition).

Each record carries its flow in a header of the transport's own
(``triobus-flow``, not handed to the endpoint): a pattern can match a topic
of another flow by its name (a work message's, or ``U.<module>.retry``),
and its subscription passes over what is not an event there.

Concurrent publish calls made in one turn of trio's scheduler cross to the
loop together, as one call of the bridge; each returns once Kafka
acknowledged (``acks="all"``) its own records.

Kafka keeps offsets, not per-message acknowledgements: a consumer commits,
per partition, the offset below which every record was settled, so a record
acknowledged behind an unsettled one is delivered again after a restart or
a rebalance (the endpoint drops what it handled already, by message id).
Commits are made in the background, one at a time, and a consumer's close
waits for the last. A requeued record is fetched again by seeking its
partition back to it; the records after it that were handed out are not
handed out twice. Kafka does not count deliveries:
:attr:`~triobus.transports.IncomingMessage.redeliveries` is ``None``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, final

import trio

from .._errors import BrokerUnavailable
from ._bridge import AsyncioBridge, client_on_bridge
from ._endpoint import BrokerEndpoint, broker_endpoint
from ._transport import (
    HEADER_PREFIX,
    Flow,
    IncomingMessage,
    OutgoingMessage,
    Subscription,
    Topology,
    Verdict,
)

logger = logging.getLogger("triobus.transports")

#: The header that says a record's flow (the transport's own, not handed to the endpoint).
FLOW_HEADER: Final = f"{HEADER_PREFIX}flow"
_FLOW_VALUES: Final = {flow: flow.value.encode() for flow in Flow}
_EVENT: Final = Flow.EVENT.value.encode()

#: Record states of a partition's tracking.
_OUT: Final = 0  # handed to the endpoint, not settled
_DONE: Final = 1  # acknowledged (or not for this consumer): its offset may be committed
_REQUEUED: Final = 2  # given back: its partition was sought back to fetch it again

#: The topic names Kafka takes (and not "." or "..").
_LEGAL_TOPIC: Final = re.compile(r"[a-zA-Z0-9._-]{1,249}")
#: CreateTopics' error code for a topic that is there already.
_TOPIC_ALREADY_EXISTS: Final = 36

#: One record for the producer: topic, value, key, headers.
_Record = tuple[str, bytes, bytes | None, list[tuple[str, bytes]]]

#: How long one fetch waits for records before it looks again (milliseconds).
_POLL_MS: Final = 1000
#: Seconds without records after which a fetch checks that the broker is there.
_PROBE_INTERVAL: Final = 5.0


def _default_topic(endpoint: str, name: str) -> str:
    return f"{endpoint}.{name}"


def pattern_regex(pattern: str) -> str:
    """A regular expression for the names a topic ``pattern`` matches (as :func:`topic_matches`).

    ``*`` is one dot-separated word; ``#`` is zero or more: each ``#`` is
    either left out or any text (one or more words), and the alternatives
    are joined.
    """
    words = pattern.split(".")
    hashes = [i for i, word in enumerate(words) if word == "#"]
    alternatives: set[str] = set()
    for mask in range(1 << len(hashes)):
        kept = [
            word for i, word in enumerate(words) if word != "#" or mask & (1 << hashes.index(i))
        ]
        alternatives.add(
            r"\.".join(".*" if w == "#" else "[^.]*" if w == "*" else re.escape(w) for w in kept)
        )
    return "(?:" + "|".join(sorted(alternatives)) + ")"


@final
class KafkaTransport:
    """A broker endpoint's connection to Kafka: one producer, a consumer per subscription.

    Made by :func:`kafka_transport`; see there and the module's docstring
    for how each flow maps onto topics and consumer groups.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        topic: Callable[[str, str], str] | None = None,
        partitions: int = 4,
        reply_partitions: int = 1,
        replication_factor: int = 1,
        connect_timeout: float = 5.0,
        request_timeout: float = 10.0,
        metadata_max_age: float = 10.0,
        client_options: Mapping[str, Any] | None = None,
        producer_options: Mapping[str, Any] | None = None,
        consumer_options: Mapping[str, Any] | None = None,
    ) -> None:
        for name, value in (
            ("partitions", partitions),
            ("reply_partitions", reply_partitions),
            ("replication_factor", replication_factor),
        ):
            if value < 1:
                raise ValueError(f"kafka_transport({name}=...) must be at least 1, not {value}")
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic or _default_topic
        self.partitions = partitions
        self.reply_partitions = reply_partitions
        self.replication_factor = replication_factor
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.metadata_max_age = metadata_max_age
        self.client_options = dict(client_options or {})
        self.producer_options = dict(producer_options or {})
        self.consumer_options = dict(consumer_options or {})
        self._stack: contextlib.AsyncExitStack | None = None
        self._bridge: AsyncioBridge | None = None
        self._producer: Any = None
        self._admin: Any = None
        self._consumers: set[_KafkaConsumer] = set()
        #: The publish calls of this turn of trio's scheduler, while its first gathers them.
        self._group: list[_Publishing] | None = None
        #: Topics this connection created or found (declare does not ask again).
        self._declared: set[str] = set()

    @property
    def description(self) -> str:
        return f"Kafka at {self.bootstrap_servers}"

    def __repr__(self) -> str:
        state = "connected" if self._bridge is not None else "closed"
        return f"<KafkaTransport {self.bootstrap_servers} {state}>"

    # ------------------------------------------------------------ names

    def topic_of(self, message: OutgoingMessage) -> str:
        """The topic ``message`` is published to."""
        flow = message.flow
        if flow is Flow.WORK or flow is Flow.EVENT:
            return self.topic(message.endpoint, message.message_name)
        if flow is Flow.DEAD_LETTER:
            return self.dead_letter_topic(message.endpoint)
        if message.address is None:
            raise ValueError(f"a {flow.value} message needs an address ({message.message_name})")
        return retry_topic(message.address) if flow is Flow.RETRY else message.address

    @staticmethod
    def dead_letter_topic(endpoint: str) -> str:
        return f"{endpoint}.dead-letters"

    def topics_of(self, subscription: Subscription) -> list[str]:
        """The topics ``subscription`` reads by name (its patterns aside)."""
        flow, uri = subscription.flow, subscription.endpoint
        if flow is Flow.REPLY:
            return [subscription.name]
        if flow is Flow.DEAD_LETTER:
            return [self.dead_letter_topic(uri)]
        if flow is Flow.RETRY:
            return [retry_topic(subscription.name)]
        named = [self.topic(uri, name) for name in subscription.message_names]
        return [*named, retry_topic(subscription.name)]

    def _pattern_of(self, subscription: Subscription) -> str | None:
        """A regular expression of every topic ``subscription`` reads, when it has patterns."""
        if not subscription.patterns:
            return None
        probe = "triobus-probe"
        around = self.topic(subscription.endpoint, probe).split(probe)
        if len(around) != 2 or self.topic(subscription.endpoint, "Probe.x.1") != (
            f"{around[0]}Probe.x.1{around[1]}"
        ):
            raise ValueError(
                f"subscription {subscription.name!r} has topic patterns "
                f"{list(subscription.patterns)}, and they need a topic function that puts the "
                f"message name into the topic as it is (as f'{{endpoint}}.{{name}}' does); "
                f"kafka_transport(topic=...) was given {self.topic!r}"
            )
        named = [re.escape(topic) for topic in self.topics_of(subscription)]
        matched = [
            re.escape(around[0]) + pattern_regex(p) + re.escape(around[1])
            for p in subscription.patterns
        ]
        return "(?:" + "|".join([*named, *matched]) + r")\Z"

    # ------------------------------------------------------------ connection

    def _connected(self, what: str) -> AsyncioBridge:
        if self._bridge is None:
            raise BrokerUnavailable(
                f"the transport to {self.description} is not connected ({what}); "
                "await transport.connect() first"
            )
        return self._bridge

    def _unavailable(self, what: str, exc: BaseException) -> BrokerUnavailable:
        return BrokerUnavailable(
            f"{self.description}: {what} failed ({_describe(exc)}); check that the "
            f"broker runs and that {self.bootstrap_servers!r} (bootstrap_servers) reaches it"
        )

    async def connect(self) -> None:
        """Start the producer and the admin client on the shared bridge.

        Raises:
            BrokerUnavailable: no broker answered at ``bootstrap_servers``
                within ``connect_timeout`` seconds.
        """
        if self._bridge is not None:
            await trio.lowlevel.checkpoint()
            return
        stack = contextlib.AsyncExitStack()
        opened = client_on_bridge(self._open, self._close_clients)
        self._bridge = await stack.enter_async_context(opened)
        self._stack = stack

    async def close(self) -> None:
        """Stop every consumer of this connection, then the producer (within the timeouts)."""
        stack, self._stack, self._bridge = self._stack, None, None
        consumers, self._consumers = list(self._consumers), set()
        for consumer in consumers:
            with contextlib.suppress(BrokerUnavailable):
                await consumer.close()
        if stack is not None:
            await stack.aclose()
        else:
            await trio.lowlevel.checkpoint()
        self._declared.clear()

    def _options(self, **defaults: Any) -> dict[str, Any]:
        return {"bootstrap_servers": self.bootstrap_servers, **defaults, **self.client_options}

    @property
    def _request_timeout_ms(self) -> int:
        return int(self.request_timeout * 1000)

    async def _open(self) -> None:
        import aiokafka  # type: ignore[import-untyped]
        from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]

        producer = aiokafka.AIOKafkaProducer(
            **self._options(
                acks="all", enable_idempotence=False, request_timeout_ms=self._request_timeout_ms
            ),
            **self.producer_options,
        )
        admin = AIOKafkaAdminClient(**self._options(request_timeout_ms=self._request_timeout_ms))
        try:
            async with asyncio.timeout(self.connect_timeout):
                await producer.start()
                await admin.start()
        except (Exception, asyncio.CancelledError) as exc:
            with contextlib.suppress(Exception):
                await producer.stop()
            with contextlib.suppress(Exception):
                await admin.close()
            if isinstance(exc, asyncio.CancelledError):
                raise
            if isinstance(exc, TimeoutError):
                raise BrokerUnavailable(
                    f"{self.description}: no broker answered within {self.connect_timeout} s; "
                    f"check that it runs and that {self.bootstrap_servers!r} "
                    "(bootstrap_servers) reaches it"
                ) from exc
            if _is_kafka_error(exc) or isinstance(exc, OSError):
                raise self._unavailable("connecting", exc) from exc
            raise
        self._producer, self._admin = producer, admin

    async def _close_clients(self) -> None:
        producer, admin, self._producer, self._admin = self._producer, self._admin, None, None
        try:
            async with asyncio.timeout(self.request_timeout):
                if producer is not None:
                    await producer.stop()
        except Exception as exc:
            logger.debug("%s: stopping the producer failed: %r", self.description, exc)
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()

    # ------------------------------------------------------------ topology

    def _topics_to_declare(self, topology: Topology) -> dict[str, int]:
        uri = topology.endpoint
        wanted: dict[str, int] = {self.dead_letter_topic(uri): 1}
        names = {*topology.work_names, *topology.event_names}
        for subscription in topology.subscriptions:
            if subscription.flow is Flow.REPLY:
                wanted[subscription.name] = self.reply_partitions
            elif subscription.flow in (Flow.WORK, Flow.EVENT):
                names.update(subscription.message_names)
                wanted[retry_topic(subscription.name)] = self.partitions
        for name in names:
            wanted[self.topic(uri, name)] = self.partitions
        return wanted

    async def declare(self, topology: Topology) -> None:
        """Create the topics of ``topology`` that do not exist yet.

        Raises:
            BrokerUnavailable: the broker is away, or refused a topic, or a
                topic's name is not one Kafka takes (refused before asking).
        """
        bridge = self._connected("declare")
        topics = self._topics_to_declare(topology)
        illegal = sorted(t for t in topics if not _LEGAL_TOPIC.fullmatch(t) or t in (".", ".."))
        if illegal:
            # Refused here as Kafka would (Tansu takes any name), before anything is made.
            raise BrokerUnavailable(
                f"{self.description} does not take the topic name(s) {illegal} that endpoint "
                f"{topology.endpoint!r} needs. "
                "Kafka topic names take letters, digits, '.', '_' and '-' (249 at most): name "
                "the endpoint and its messages so, or give kafka_transport(topic=...) a "
                "function that maps message names onto such topics"
            )
        wanted = {t: count for t, count in topics.items() if t not in self._declared}
        if wanted:
            await bridge.run(self._create_topics, wanted)
        else:
            await trio.lowlevel.checkpoint()

    async def _create_topics(self, wanted: dict[str, int]) -> None:
        from aiokafka.admin import NewTopic

        try:
            async with asyncio.timeout(self.request_timeout):
                response = await self._admin.create_topics(
                    [NewTopic(t, count, self.replication_factor) for t, count in wanted.items()]
                )
        except (Exception, asyncio.CancelledError) as exc:
            if isinstance(exc, TimeoutError) or _is_kafka_error(exc):
                raise self._unavailable("creating topics", exc) from exc
            raise
        refused = []
        for topic, code, *rest in response.topic_errors:
            if code in (0, _TOPIC_ALREADY_EXISTS):
                self._declared.add(topic)
            else:
                reason = rest[0] if rest and rest[0] else f"error code {code}"
                refused.append(f"{topic!r} ({reason})")
        if refused:
            raise BrokerUnavailable(
                f"{self.description} refused to create the topic(s) {', '.join(refused)}; "
                "check the broker's log and its topic policies (replication_factor= "
                "may be more than it has brokers)"
            )

    # ------------------------------------------------------------ publishing

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish ``messages`` (``acks="all"``); return once Kafka acknowledged every record.

        Raises:
            BrokerUnavailable: not every record was acknowledged (the broker
                is away, or refused one).
        """
        bridge = self._connected("publish")
        if not messages:
            await trio.lowlevel.checkpoint()
            return
        mine = _Publishing([self._record(m) for m in messages])
        group = self._group
        if group is not None:
            group.append(mine)  # this turn's first publish takes it across
            await mine.done.wait()
        else:
            await self._lead(bridge, mine)
        if mine.failure is not None:
            raise mine.failure

    async def _lead(self, bridge: AsyncioBridge, mine: _Publishing) -> None:
        """Take this turn's publish calls across in one bridge call, and hand out the outcomes.

        The publish calls that trio runs in one turn of its scheduler join the
        first one's group; it waits for the next turn, then sends them all (one
        task on the loop, not one per call). The crossing is shielded from the
        leader's cancellation, which would fail the others' publishing too (the
        producer's request timeout bounds it).
        """
        group = self._group = [mine]
        await trio.lowlevel.cancel_shielded_checkpoint()
        self._group = None
        limit = 2 * self.request_timeout + self.connect_timeout
        failures: list[BaseException | None] | None = None
        try:
            with trio.move_on_after(limit) as scope:
                scope.shield = True
                failures = await bridge.run(self._send_groups, [p.records for p in group])
        except Exception as exc:
            failures = [exc] * len(group)
        finally:
            if failures is None:  # out of time (or interrupted): none is known to be sent
                error = BrokerUnavailable(
                    f"{self.description}: publishing was not acknowledged within {limit} s; "
                    f"check that the broker runs and that {self.bootstrap_servers!r} "
                    "(bootstrap_servers) reaches it"
                )
                failures = [error] * len(group)
            for publishing, failure in zip(group, failures, strict=True):
                publishing.failure = failure
                publishing.done.set()

    def _record(self, message: OutgoingMessage) -> _Record:
        headers = [(name, value.encode()) for name, value in message.headers.items()]
        headers.append((FLOW_HEADER, _FLOW_VALUES[message.flow]))
        key = message.key
        return self.topic_of(message), message.body, None if key is None else key.encode(), headers

    async def _send_groups(self, groups: list[list[_Record]]) -> list[BaseException | None]:
        """Send every group's records; per group, what failed (``None``: all acknowledged)."""
        producer = self._producer
        if producer is None:
            return [
                BrokerUnavailable(f"the transport to {self.description} is closed (publish)")
                for _ in groups
            ]
        futures: list[list[asyncio.Future[Any]]] = [[] for _ in groups]
        errors: list[BaseException | None] = [None] * len(groups)
        try:
            for records, sent, index in zip(groups, futures, range(len(groups)), strict=True):
                try:
                    for topic, body, key, headers in records:
                        sent.append(await producer.send(topic, body, key=key, headers=headers))
                except Exception as exc:
                    errors[index] = exc
            for sent, index in zip(futures, range(len(groups)), strict=True):
                for future in sent:
                    try:
                        await future
                    except Exception as exc:
                        errors[index] = errors[index] or exc
        except BaseException:
            for sent in futures:
                for future in sent:
                    future.add_done_callback(_read_outcome)  # none left with an unread exception
            raise
        return [
            None if error is None else self._publish_failure(len(records), error)
            for records, error in zip(groups, errors, strict=True)
        ]

    def _publish_failure(self, count: int, error: BaseException) -> BaseException:
        if isinstance(error, TimeoutError | OSError) or _is_kafka_error(error):
            failure = self._unavailable(f"publishing {count} record(s)", error)
            failure.__cause__ = error
            return failure
        return error

    # ------------------------------------------------------------ consuming

    async def subscribe(self, subscription: Subscription) -> _KafkaConsumer:
        """Start a consumer in the group ``subscription.name`` (it joins in the background).

        Raises:
            BrokerUnavailable: no broker answered.
            ValueError: the subscription has patterns, and the ``topic``
                function does not keep message names in topic names as they are.
        """
        bridge = self._connected("subscribe")
        pattern = self._pattern_of(subscription)
        topics = self.topics_of(subscription)
        consumer = _KafkaConsumer(self, bridge, subscription, topics)
        await bridge.run(consumer._open, topics, pattern)
        self._consumers.add(consumer)
        return consumer


def retry_topic(subscription: str) -> str:
    """The topic of the retries of subscription ``subscription``."""
    return f"{subscription}.retry"


@final
class _Publishing:
    """One publish call in a group: its records, then what failed (set once ``done``)."""

    __slots__ = ("done", "failure", "records")

    def __init__(self, records: list[_Record]) -> None:
        self.records = records
        self.done = trio.Event()
        self.failure: BaseException | None = None


def _read_outcome(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _describe(exc: BaseException) -> str:
    """``exc`` in words, its kind named once (aiokafka's errors name themselves)."""
    text, kind = str(exc), type(exc).__name__
    return text if text.startswith(kind) else f"{kind}: {text}" if text else kind


def _is_kafka_error(exc: BaseException) -> bool:
    import aiokafka.errors  # type: ignore[import-untyped]

    return isinstance(exc, aiokafka.errors.KafkaError)


@functools.cache
def _listener_class() -> type[Any]:
    import aiokafka

    class Listener(aiokafka.ConsumerRebalanceListener):  # type: ignore[misc]
        """Tells the consumer which partitions it lost and gained (on the loop)."""

        def __init__(self, consumer: _KafkaConsumer) -> None:
            self.consumer = consumer

        async def on_partitions_revoked(self, revoked: Iterable[Any]) -> None:
            await self.consumer._revoked(revoked)

        def on_partitions_assigned(self, assigned: Iterable[Any]) -> None:
            self.consumer._assigned(assigned)

    return Listener


@final
class _Partition:
    """What one consumer handed out of one partition since it was assigned, and committed."""

    __slots__ = ("committed", "epoch", "states")

    def __init__(self, epoch: int) -> None:
        #: Which assignment this is: receipts of an earlier one settle nothing.
        self.epoch = epoch
        #: Offset -> _OUT, _DONE or _REQUEUED, from the last commit up.
        self.states: dict[int, int] = {}
        self.committed = -1

    def advance(self) -> int | None:
        """The offset to commit now (every record below it is done), if it moved."""
        point = None
        for offset in sorted(self.states):
            if self.states[offset] != _DONE:
                break
            point = offset + 1
        if point is None or point <= self.committed:
            return None
        for offset in [o for o in self.states if o < point]:
            del self.states[offset]
        self.committed = point
        return point

    def requeued(self) -> int | None:
        return min((o for o, s in self.states.items() if s == _REQUEUED), default=None)


#: What settles one record: its partition, offset and that partition's assignment epoch.
_Receipt = tuple[Any, int, int]


@final
class _KafkaConsumer:
    """One subscription's consumer group member; its state is touched on the loop only."""

    def __init__(
        self,
        transport: KafkaTransport,
        bridge: AsyncioBridge,
        subscription: Subscription,
        topics: list[str],
    ) -> None:
        self.transport = transport
        self.subscription = subscription
        self._bridge = bridge
        #: Topics whose every record is this subscription's (the others came by a pattern).
        self._named = frozenset(topics)
        self._consumer: Any = None
        self._partitions: dict[Any, _Partition] = {}
        self._epochs = 0
        self._outstanding: set[_Receipt] = set()
        #: Set when a settlement makes room under the prefetch limit.
        self._room: asyncio.Event | None = None
        #: Offsets to commit next, per partition; the commit in flight (one at a time).
        self._to_commit: dict[Any, int] = {}
        self._committing: asyncio.Task[None] | None = None
        #: Why a commit failed (the next fetch or settle raises it).
        self._commit_failure: BaseException | None = None
        self.closed = False

    def __repr__(self) -> str:
        return f"<KafkaConsumer {self.subscription.name!r} on {self.transport.description}>"

    def _failed(self, why: str) -> BrokerUnavailable:
        return BrokerUnavailable(
            f"{self.transport.description}: the consumer of {self.subscription.name!r} {why}"
        )

    # ------------------------------------------------------------ trio side

    async def fetch(self, max_count: int) -> list[IncomingMessage]:
        """Wait for records; return at most ``max_count``, and never more than the
        subscription's prefetch unsettled in all."""
        if self.closed:
            raise self._failed("is closed")
        return await self._bridge.run(self._fetch, max(1, max_count))

    async def settle(self, outcomes: Sequence[tuple[IncomingMessage, Verdict]]) -> None:
        """Take the verdicts: requeued records' partitions are sought back to them, and
        what the acknowledgements allow is committed, in the background (one commit in
        flight; the next carries every offset settled meanwhile, and close waits for it).

        Raises:
            BrokerUnavailable: the consumer is closed, or a commit failed.
        """
        if self.closed:
            raise self._failed("is closed: what it did not settle is delivered again")
        if not outcomes:
            await trio.lowlevel.checkpoint()
            return
        await self._bridge.run(self._settle, [(m.receipt, v) for m, v in outcomes])

    async def close(self) -> None:
        """Leave the group: what was not committed is delivered again to the group."""
        if self.closed:
            await trio.lowlevel.checkpoint()
            return
        self.closed = True
        self.transport._consumers.discard(self)
        await self._bridge.run(self._stop)

    # ------------------------------------------------------------ loop side

    async def _open(self, topics: list[str], pattern: str | None) -> None:
        import aiokafka

        transport = self.transport
        self._room = asyncio.Event()
        # The consumer keeps aiokafka's own request timeout: a JoinGroup request
        # waits for the whole rebalance. Commits and probes are bounded here.
        consumer = aiokafka.AIOKafkaConsumer(
            **transport._options(
                group_id=self.subscription.name,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=6000,
                heartbeat_interval_ms=1000,
                metadata_max_age_ms=int(transport.metadata_max_age * 1000),
            ),
            **transport.consumer_options,
        )
        try:
            async with asyncio.timeout(transport.connect_timeout):
                await consumer.start()
        except (Exception, asyncio.CancelledError) as exc:
            await _stop_quietly(consumer, transport.request_timeout)
            if isinstance(exc, TimeoutError | OSError) or _is_kafka_error(exc):
                raise transport._unavailable(
                    f"subscribing {self.subscription.name!r}", exc
                ) from exc
            raise
        listener = _listener_class()(self)
        if pattern is None:
            consumer.subscribe(topics=topics, listener=listener)
        else:
            consumer.subscribe(pattern=pattern, listener=listener)
        self._consumer = consumer

    async def _revoked(self, revoked: Iterable[Any]) -> None:
        await self._commits_done()  # what was acknowledged is committed while the group waits
        for tp in revoked:
            # Records handed out of it settle nothing now: they come again to its next owner.
            self._partitions.pop(tp, None)

    def _assigned(self, assigned: Iterable[Any]) -> None:
        for tp in assigned:
            self._track(tp)

    def _track(self, tp: Any) -> _Partition:
        partition = self._partitions.get(tp)
        if partition is None:
            self._epochs += 1
            partition = self._partitions[tp] = _Partition(self._epochs)
        return partition

    async def _fetch(self, max_count: int) -> list[IncomingMessage]:
        from aiokafka.errors import ConsumerStoppedError

        consumer = self._consumer
        if consumer is None or self._room is None:
            raise self._failed("is closed")
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        while True:
            if self.closed:
                raise self._failed("is closed")
            self._check_commits()
            room = min(max_count, self.subscription.prefetch - len(self._outstanding))
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            try:
                batch = await consumer.getmany(timeout_ms=_POLL_MS, max_records=room)
            except ConsumerStoppedError as exc:
                raise self._failed("is closed") from exc
            except Exception as exc:
                if _is_kafka_error(exc):
                    raise self._failed(f"failed ({_describe(exc)})") from exc
                raise
            taken, passed = self._take(batch)
            self._commit_soon(passed)
            if taken:
                return taken
            if loop.time() - quiet_since >= _PROBE_INTERVAL:
                await self._probe()
                quiet_since = loop.time()

    def _take(self, batch: Mapping[Any, list[Any]]) -> tuple[list[IncomingMessage], set[Any]]:
        """The records to hand over; the partitions where records were passed over."""
        taken: list[IncomingMessage] = []
        passed: set[Any] = set()
        for tp, records in batch.items():
            partition = self._track(tp)
            states = partition.states
            for record in records:
                offset = record.offset
                state = states.get(offset)
                if state in (_OUT, _DONE) or offset < partition.committed:
                    continue  # in hand or settled already (its partition was sought back)
                headers: dict[str, str] = {}
                flow = None
                for name, value in record.headers:
                    if name == FLOW_HEADER:
                        flow = value
                    else:
                        headers[name] = value.decode("utf-8", "replace")
                if tp.topic not in self._named and flow is not None and flow != _EVENT:
                    # A pattern matched a topic that holds other flows (work, replies).
                    states[offset] = _DONE
                    passed.add(tp)
                    continue
                states[offset] = _OUT
                receipt = (tp, offset, partition.epoch)
                self._outstanding.add(receipt)
                taken.append(IncomingMessage(record.value or b"", headers, None, receipt))
        return taken, passed

    async def _settle(self, outcomes: list[tuple[_Receipt, Verdict]]) -> None:
        if self._consumer is None or self._room is None:
            raise self._failed("is closed: what it did not settle is delivered again")
        self._check_commits()
        touched: set[Any] = set()
        back: set[Any] = set()
        for receipt, verdict in outcomes:
            self._outstanding.discard(receipt)
            tp, offset, epoch = receipt
            partition = self._partitions.get(tp)
            if partition is None or partition.epoch != epoch:
                continue  # its partition went to another member: it comes again there
            if partition.states.get(offset) != _OUT:
                continue  # settled before
            if verdict is Verdict.ACK:
                partition.states[offset] = _DONE
                touched.add(tp)
            else:
                partition.states[offset] = _REQUEUED
                back.add(tp)
        self._room.set()
        assigned = self._consumer.assignment()
        for tp in back:
            lowest = self._partitions[tp].requeued()
            if lowest is not None and tp in assigned:
                self._consumer.seek(tp, lowest)
        self._commit_soon(touched)

    def _commit_soon(self, tps: Iterable[Any]) -> None:
        """Commit what is done on ``tps``, after the commit in flight (which it joins)."""
        for tp in tps:
            partition = self._partitions.get(tp)
            point = None if partition is None else partition.advance()
            if point is not None:
                self._to_commit[tp] = point
        if self._to_commit and self._committing is None:
            self._committing = asyncio.get_running_loop().create_task(self._commit_queued())

    async def _commit_queued(self) -> None:
        from aiokafka.errors import CommitFailedError, IllegalStateError

        try:
            while self._to_commit and self._consumer is not None:
                offsets, self._to_commit = self._to_commit, {}
                assigned = self._consumer.assignment()
                offsets = {tp: point for tp, point in offsets.items() if tp in assigned}
                if not offsets:
                    continue
                try:
                    async with asyncio.timeout(self.transport.request_timeout):
                        await self._consumer.commit(offsets)
                except (CommitFailedError, IllegalStateError) as exc:
                    # A rebalance took the partitions: their records come again to the group.
                    logger.debug("%r: commit not taken (%r)", self, exc)
        except Exception as exc:
            self._commit_failure = exc
        finally:
            self._committing = None

    async def _commits_done(self) -> None:
        """Wait (``request_timeout`` at most) until every queued commit was made."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.transport.request_timeout):
                while self._committing is not None:
                    await asyncio.shield(self._committing)

    def _check_commits(self) -> None:
        failure = self._commit_failure
        if failure is not None:
            raise self._failed(f"could not commit ({_describe(failure)})") from failure

    async def _probe(self) -> None:
        """Ask the cluster for its metadata: a broker that does not answer is lost."""
        try:
            async with asyncio.timeout(self.transport.request_timeout):
                await self._consumer.topics()
        except Exception as exc:
            if isinstance(exc, TimeoutError) or _is_kafka_error(exc):
                raise self._failed(f"lost the broker ({_describe(exc)})") from exc
            raise

    async def _stop(self) -> None:
        self.closed = True
        if self._room is not None:
            self._room.set()
        await self._commits_done()
        consumer, self._consumer = self._consumer, None
        self._partitions.clear()
        self._outstanding.clear()
        if consumer is not None:
            await _stop_quietly(consumer, self.transport.request_timeout)


async def _stop_quietly(consumer: Any, timeout: float) -> None:
    """Stop an aiokafka consumer within ``timeout``, whatever state its connection is in."""
    coordinator: Any = getattr(consumer, "_coordinator", None)
    if getattr(coordinator, "generation", None) == 0 and getattr(coordinator, "member_id", ""):
        # Some brokers (Tansu) number a group's first generation 0, and aiokafka
        # leaves a group only from generation 1 on: without this, the group
        # waits for the stopped member's session to time out before it gives
        # its partitions to the others. LeaveGroup does not carry the generation.
        coordinator.generation = 1
    try:
        async with asyncio.timeout(timeout):
            await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        # aiokafka's fetcher can re-raise the cancellation of a fetch it was
        # retrying after a connection error; what it left open is closed here.
        with contextlib.suppress(Exception):
            await consumer._client.close()
    except Exception as exc:
        logger.debug("stopping a Kafka consumer failed: %r", exc)
        with contextlib.suppress(Exception):
            await consumer._client.close()


def kafka_transport(
    bootstrap_servers: str = "127.0.0.1:9092",
    *,
    topic: Callable[[str, str], str] | None = None,
    partitions: int = 4,
    reply_partitions: int = 1,
    replication_factor: int = 1,
    connect_timeout: float = 5.0,
    request_timeout: float = 10.0,
    metadata_max_age: float = 10.0,
    client_options: Mapping[str, Any] | None = None,
    producer_options: Mapping[str, Any] | None = None,
    consumer_options: Mapping[str, Any] | None = None,
) -> KafkaTransport:
    """A transport to Kafka for :func:`~triobus.broker_endpoint` (needs ``triobus[kafka]``).

    Args:
        bootstrap_servers: ``"host:port"``, or several separated by commas.
        topic: the topic of a work or event message, from the endpoint's uri
            and the message name (default ``f"{uri}.{name}"``). Event
            patterns need one that keeps the name as it is in the topic.
        partitions: the partitions of each work, event and retry topic the
            transport creates (the most consumers of one group that share work).
        reply_partitions: the partitions of each reply topic.
        replication_factor: the replicas of each topic the transport creates.
        connect_timeout: seconds to reach a broker (connect, subscribe).
        request_timeout: seconds a request may take (publish, commit, create topics).
        metadata_max_age: seconds between metadata refreshes (how soon a
            pattern subscription finds a new topic).
        client_options: more aiokafka options for every client (security,
            SASL, ``client_id``).
        producer_options: more ``AIOKafkaProducer`` options (``linger_ms``,
            ``compression_type``); ``acks`` stays ``"all"`` unless given.
        consumer_options: more ``AIOKafkaConsumer`` options
            (``session_timeout_ms``, ``heartbeat_interval_ms``, ``max_poll_interval_ms``).

    Each record is published with ``acks="all"``; the producer is not
    idempotent (a record may be written twice when a send is retried: the
    endpoint drops a message it handled already, by id).
    """
    return KafkaTransport(
        bootstrap_servers,
        topic=topic,
        partitions=partitions,
        reply_partitions=reply_partitions,
        replication_factor=replication_factor,
        connect_timeout=connect_timeout,
        request_timeout=request_timeout,
        metadata_max_age=metadata_max_age,
        client_options=client_options,
        producer_options=producer_options,
        consumer_options=consumer_options,
    )


def kafka_endpoint(
    uri: str,
    *,
    bootstrap_servers: str = "127.0.0.1:9092",
    topic: Callable[[str, str], str] | None = None,
    partitions: int = 4,
    **options: Any,
) -> BrokerEndpoint:
    """A broker endpoint on Kafka: ``broker_endpoint(uri, kafka_transport(bootstrap_servers,
    topic=topic, partitions=partitions), **options)``.

    ``options`` are :func:`~triobus.broker_endpoint`'s (``retries``,
    ``errors``, ``prefetch``, ``partition_by``, ``inbox``, ``patterns``, ...).
    """
    transport = kafka_transport(bootstrap_servers, topic=topic, partitions=partitions)
    return broker_endpoint(uri, transport, **options)
