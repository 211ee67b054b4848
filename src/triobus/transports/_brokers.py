"""Message brokers: publishing integration events to a topic or an exchange.

A :class:`MessageBroker` takes one :class:`BrokerMessage` at a time
(``await broker.send_message(message)``) and returns once the broker has it:
confirmed by RabbitMQ, acknowledged by every Kafka replica. Three come with
triobus:

- :class:`DevnullMessageBroker`, for tests: it keeps what it was given
  (``sent``) and logs a warning per message, since nothing leaves the process;
- :class:`AmqpMessageBroker`: a topic exchange on RabbitMQ (aio-pika), the
  message's ``topic`` its routing key;
- :class:`KafkaMessageBroker`: a Kafka topic (aiokafka), keyed by the
  message id.

A broker of your own plugs in by having the same ``send_message``. The
asyncio clients run on the trio run's shared :class:`AsyncioBridge`; open a
broker with ``async with`` inside the trio run that uses it.

On the wire the body is the payload as JSON (or ``payload_bytes`` as they
are), and the headers carry ``message_name`` and ``message_id`` (and the
message's own headers).
"""

from __future__ import annotations

import abc
import contextlib
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, Self, final, runtime_checkable

import attrs
import orjson
import trio

from .._errors import BridgeClosed
from ._bridge import AsyncioBridge, client_on_bridge
from ._transport import (
    Consumer,
    Flow,
    IncomingMessage,
    OutgoingMessage,
    Subscription,
    Topology,
    Verdict,
)

logger = logging.getLogger("triobus.transports")


@final
@attrs.frozen
class BrokerMessage:
    """One integration event for a broker: where it goes and what it carries."""

    #: The event's name (a header on the wire).
    message_name: str
    #: The topic (Kafka) or routing key (RabbitMQ) it is published to.
    topic: str
    #: What it carries, written as JSON (unless ``payload_bytes`` is given).
    payload: Any
    #: A UUID by default; a broker endpoint publishing through the broker gives its own id.
    message_id: uuid.UUID | str = attrs.field(factory=uuid.uuid4)
    #: Bytes to send as they are, instead of ``payload`` as JSON.
    payload_bytes: bytes | None = None
    headers: Mapping[str, str] = attrs.field(factory=dict)

    def body(self) -> bytes:
        """The bytes on the wire."""
        if self.payload_bytes is not None:
            return self.payload_bytes
        return orjson.dumps(self.payload, option=orjson.OPT_NON_STR_KEYS)

    def wire_headers(self) -> dict[str, Any]:
        """The headers on the wire: the message's own, its name and its id."""
        return {
            **self.headers,
            "message_name": self.message_name,
            "message_id": str(self.message_id),
        }


@runtime_checkable
class MessageBroker(Protocol):
    """What publishes :class:`BrokerMessage` values; implement it to add a broker."""

    async def send_message(self, message: BrokerMessage) -> None:
        """Publish ``message``; return once the broker has it."""
        ...


@final
class DevnullMessageBroker:
    """A broker for tests: keeps each message in :attr:`sent` and logs a warning, sends nothing."""

    def __init__(self) -> None:
        #: Every message given, in order.
        self.sent: list[BrokerMessage] = []

    async def send_message(self, message: BrokerMessage) -> None:
        self.sent.append(message)
        logger.warning(
            "DevnullMessageBroker: %s id=%s to %r is not sent anywhere",
            message.message_name,
            message.message_id,
            message.topic,
        )


class _BridgedBroker(abc.ABC):
    """A broker whose asyncio client lives on the shared bridge between ``async with``."""

    _bridge: AsyncioBridge | None = None
    _stack: contextlib.AsyncExitStack | None = None

    def _started(self) -> AsyncioBridge:
        if self._bridge is None:
            raise BridgeClosed(
                f"{type(self).__name__} is not open: use it inside `async with broker:`"
            )
        return self._bridge

    async def __aenter__(self) -> Self:
        stack = contextlib.AsyncExitStack()
        self._bridge = await stack.enter_async_context(client_on_bridge(self._open, self._close))
        self._stack = stack
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        stack, self._stack, self._bridge = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def send_message(self, message: BrokerMessage) -> None:
        """Publish ``message``; return once the broker has it."""
        await self._started().run(self._publish, message)

    @abc.abstractmethod
    async def _open(self) -> None:
        """Open the client (on the loop)."""

    @abc.abstractmethod
    async def _close(self) -> None:
        """Close the client (on the loop)."""

    @abc.abstractmethod
    async def _publish(self, message: BrokerMessage) -> None:
        """Publish ``message`` with the client (on the loop)."""


@final
class AmqpMessageBroker(_BridgedBroker):
    """Publishes to a durable topic exchange on RabbitMQ, with publisher confirms.

    Each message's ``topic`` is its routing key; the message is persistent.
    Needs ``triobus[rabbitmq]``.
    """

    def __init__(self, url: str, exchange: str) -> None:
        self.url = url
        self.exchange = exchange
        self._connection: Any = None
        self._exchange: Any = None

    async def _open(self) -> None:
        import aio_pika

        self._connection = await aio_pika.connect_robust(self.url)
        channel = await self._connection.channel(publisher_confirms=True)
        self._exchange = await channel.declare_exchange(
            self.exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )

    async def _close(self) -> None:
        if self._connection is not None:
            await self._connection.close()

    async def _publish(self, message: BrokerMessage) -> None:
        import aio_pika

        await self._exchange.publish(
            aio_pika.Message(
                message.body(),
                headers=dict(message.wire_headers()),
                message_id=str(message.message_id),
                content_type="application/json" if message.payload_bytes is None else None,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=message.topic,
        )


@final
class KafkaMessageBroker(_BridgedBroker):
    """Publishes to Kafka topics with ``acks="all"``, keyed by the message id.

    Needs ``triobus[kafka]``.
    """

    def __init__(self, bootstrap_servers: str | list[str], **producer_options: Any) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.producer_options = {"acks": "all", **producer_options}
        self._producer: Any = None

    async def _open(self) -> None:
        import aiokafka  # type: ignore[import-untyped]

        self._producer = aiokafka.AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers, **self.producer_options
        )
        await self._producer.start()

    async def _close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

    async def _publish(self, message: BrokerMessage) -> None:
        await self._producer.send_and_wait(
            message.topic,
            message.body(),
            key=str(message.message_id).encode(),
            headers=[(key, value.encode()) for key, value in message.wire_headers().items()],
        )


@final
class MessageBrokerTransport:
    """A :class:`~triobus.BrokerTransport` that publishes through a :class:`MessageBroker`.

    Make one with :func:`message_broker_transport`. A broker endpoint on it
    sends and publishes (remote routes) through the message broker, yours
    or one of triobus's; it consumes nothing, so the endpoint binds no
    handler here and cannot invoke (no replies come back).
    """

    def __init__(self, broker: MessageBroker, topic: Callable[[str, str], str]) -> None:
        self.broker = broker
        self._topic = topic

    @property
    def description(self) -> str:
        return f"the message broker {self.broker!r}"

    async def connect(self) -> None:
        """Nothing to open: the message broker is opened (and closed) by its owner."""

    async def close(self) -> None:
        """Nothing to close (see :meth:`connect`)."""

    async def declare(self, topology: Topology) -> None:
        """A message broker declares what it publishes to; only subscriptions are refused.

        Raises:
            TypeError: ``topology`` subscribes (handlers or invokes on this endpoint).
        """
        consuming = [s for s in topology.subscriptions if s.flow is not Flow.REPLY]
        if consuming:
            names = [subscription.name for subscription in consuming]
            raise TypeError(
                f"endpoint {topology.endpoint!r} publishes through {self.broker!r}, which only "
                f"publishes, but it needs to consume {names}: bind no handler there and "
                "invoke nothing through it, or give it a transport that consumes "
                "(rabbitmq_transport, kafka_transport)"
            )

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Hand each message to the message broker, in order."""
        for message in messages:
            await self.broker.send_message(
                BrokerMessage(
                    message_name=message.message_name,
                    topic=self._topic(message.endpoint, message.message_name),
                    payload=None,
                    message_id=message.message_id,
                    payload_bytes=message.body,
                    headers=message.headers,
                )
            )

    async def subscribe(self, subscription: Subscription) -> Consumer:
        """Replies never come (an invoke through this endpoint times out); the rest is
        refused: see :meth:`declare`.
        """
        if subscription.flow is not Flow.REPLY:
            raise TypeError(
                f"{self.description} only publishes: it cannot consume {subscription.name!r}"
            )
        return _NoReplies()


@final
class _NoReplies:
    """The reply consumer of a publish-only transport: nothing ever comes."""

    async def fetch(self, max_count: int) -> Sequence[IncomingMessage]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def settle(self, outcomes: Sequence[tuple[IncomingMessage, Verdict]]) -> None:
        await trio.lowlevel.checkpoint()

    async def close(self) -> None:
        await trio.lowlevel.checkpoint()


def message_broker_transport(
    broker: MessageBroker, *, topic: Callable[[str, str], str] | None = None
) -> MessageBrokerTransport:
    """A transport that publishes what a broker endpoint sends through ``broker``.

    Args:
        topic: the topic (Kafka) or routing key (AMQP) of a message, from the
            endpoint's uri and the message's name (default: the name).
    """
    return MessageBrokerTransport(broker, topic or (lambda endpoint, name: name))
