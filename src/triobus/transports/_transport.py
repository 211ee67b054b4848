"""The broker transport protocol: what a broker endpoint needs from one broker.

A broker endpoint (:func:`~triobus.broker_endpoint`) runs handlers, keeps
the bus's promises (acks after handling, dead letters with reasons, retries
counted on the envelope, request-reply) and knows nothing of any broker's
client. A :class:`BrokerTransport` is the other half: it declares the
endpoint's topology, publishes confirmed messages and hands back what it
consumed, and acknowledges it. RabbitMQ (:func:`~triobus.rabbitmq_transport`),
Kafka (:func:`~triobus.kafka_transport`) and the in-memory test double
(:class:`~triobus.MemoryBroker`) implement it; a broker of your own plugs in
the same way, as an httpx transport does.

Addresses are given in the endpoint's terms (:class:`Flow`, endpoint uri,
message name, subscription name); each transport maps them onto its
broker: see :class:`Flow`.

Every method is called from the trio run that runs the bus. A transport
built on an asyncio client crosses to it through the run's shared
:class:`~triobus.AsyncioBridge`, grouping concurrent calls.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, final, runtime_checkable

import attrs


class Flow(enum.StrEnum):
    """Which way a message goes: where it is published and who consumes it.

    For an endpoint with uri ``U``:

    - ``WORK``: a command or a request (``send``, ``invoke``) for ``U``;
      exactly one consumer of ``U``'s work subscription takes it
      (competing consumers). RabbitMQ: the durable queue ``U``; Kafka: the
      topic of the message name, consumer group ``U``.
    - ``EVENT``: an event (``publish``) on ``U``: every event subscription
      of ``U`` whose names or patterns match gets a copy. RabbitMQ: the
      topic exchange ``U``, routing key the message name, one queue per
      subscription; Kafka: the topic of the message name, one consumer
      group per subscription.
    - ``REPLY``: the response to an invoke, to the caller's reply address
      (one per process and endpoint).
    - ``RETRY``: a message the error policy tries again, back to the one
      subscription (``address``) that failed it: only that subscription
      handles it again.
    - ``DEAD_LETTER``: a message that is done with, kept by the broker
      with its reason (RabbitMQ: the endpoint's dead-letter exchange
      ``U.dead-letters`` and queue; Kafka: the topic ``U.dead-letters``).
    """

    WORK = "work"
    EVENT = "event"
    REPLY = "reply"
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"


@final
@attrs.frozen
class OutgoingMessage:
    """One message to publish: the codec's bytes, the context as headers, and where it goes."""

    flow: Flow
    #: The endpoint's uri: the namespace of queues, exchanges and topics.
    endpoint: str
    #: The message's name (the routing key of an event; the topic on Kafka).
    message_name: str
    message_id: str
    body: bytes
    #: The message context, as strings (see :data:`HEADER_PREFIX`).
    headers: Mapping[str, str]
    #: The partition key (``partition_by``), if any: Kafka's record key.
    key: str | None = None
    #: ``REPLY``: the caller's reply address; ``RETRY``: the subscription's name.
    address: str | None = None


@final
@attrs.frozen
class Subscription:
    """What one consumer takes from an endpoint: its work, one module's events, or replies."""

    flow: Flow
    endpoint: str
    #: The queue (RabbitMQ) or consumer group (Kafka); for replies, the reply address.
    name: str
    #: The message names it takes (bindings on RabbitMQ, topics on Kafka).
    message_names: tuple[str, ...] = ()
    #: Event subscriptions: routing patterns, ``*`` one dot-separated word,
    #: ``#`` zero or more (as RabbitMQ's topic exchanges match).
    patterns: tuple[str, ...] = ()
    #: Messages handed over and not settled, at most.
    prefetch: int = 64


@final
@attrs.frozen
class Topology:
    """What one endpoint declares at start: its destinations and this process's subscriptions.

    A process declares the endpoint's work and event destinations (and its
    dead letters) even when it only publishes to them, so a message sent
    before any consumer started is kept.
    """

    endpoint: str
    #: Names sent or invoked (``WORK``) through this endpoint by this process or its handlers.
    work_names: tuple[str, ...]
    #: Names published (``EVENT``) through this endpoint.
    event_names: tuple[str, ...]
    subscriptions: tuple[Subscription, ...]


class Verdict(enum.StrEnum):
    """How a consumed message is settled with its broker."""

    #: Done with: acknowledge it (handled, or dead-lettered or retried by a
    #: message published first).
    ACK = "ack"
    #: Not handled here: the broker gives it to a consumer again (a stop).
    REQUEUE = "requeue"


@attrs.define(eq=False)
class IncomingMessage:
    """One consumed message, handed over unsettled."""

    body: bytes
    headers: Mapping[str, str]
    #: How many times the broker delivered it before, when the broker counts
    #: (RabbitMQ's ``x-delivery-count``); ``None`` when it does not.
    redeliveries: int | None
    #: What the transport needs to settle it (a delivery tag, an offset).
    receipt: Any = None


@runtime_checkable
class Consumer(Protocol):
    """One subscription's consumer: fetch what arrived, then settle each."""

    async def fetch(self, max_count: int) -> Sequence[IncomingMessage]:
        """Wait for at least one message and return up to ``max_count`` of them.

        Raises:
            BrokerUnavailable: the connection is lost (the endpoint restarts).
        """

    async def settle(self, outcomes: Sequence[tuple[IncomingMessage, Verdict]]) -> None:
        """Settle fetched messages (in one crossing).

        Raises:
            BrokerUnavailable: the connection is lost: what was not settled
                is delivered again by the broker.
        """

    async def close(self) -> None:
        """Stop consuming: what was fetched and not settled goes back to the broker."""


@runtime_checkable
class BrokerTransport(Protocol):
    """How a broker endpoint reaches its broker; implement it to add one."""

    @property
    def description(self) -> str:
        """The broker, for errors and logs (``"RabbitMQ at amqp://guest@host:5672/"``)."""

    async def connect(self) -> None:
        """Open the connection (again, after :meth:`close`).

        Raises:
            BrokerUnavailable: the broker is down, the URL or the credentials are wrong.
        """

    async def close(self) -> None:
        """Close the connection; its consumers stop."""

    async def declare(self, topology: Topology) -> None:
        """Declare what ``topology`` needs (idempotent: done again at every start).

        Raises:
            BrokerUnavailable: the broker refused or is away.
        """

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish ``messages``; return once the broker has every one (confirmed).

        Raises:
            BrokerUnavailable: not all were confirmed (the caller tries
                again or reports the send as failed: never a silent drop).
        """

    async def subscribe(self, subscription: Subscription) -> Consumer:
        """Start consuming ``subscription`` (declared before).

        Raises:
            BrokerUnavailable: the broker refused or is away.
        """


#: Context headers on the wire are ``triobus-<field>``.
HEADER_PREFIX = "triobus-"


def context_headers(
    *,
    message_id: str,
    message_name: str,
    correlation_id: str,
    causation_id: str | None,
    reply_to: str | None,
    attempt: int,
    own: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The context of one message as broker headers (strings only).

    ``own`` are the message's own headers (``send(..., headers=...)``, kept
    along the chain): they travel under their own names, so tools that read
    broker headers (tracing, routing) see them; the context's
    ``triobus-*`` headers, then ``extra``, win over them.
    """
    headers = dict(own) if own else {}
    headers |= {
        f"{HEADER_PREFIX}message-id": message_id,
        f"{HEADER_PREFIX}message-name": message_name,
        f"{HEADER_PREFIX}correlation-id": correlation_id,
        f"{HEADER_PREFIX}attempt": str(attempt),
    }
    if causation_id is not None:
        headers[f"{HEADER_PREFIX}causation-id"] = causation_id
    if reply_to is not None:
        headers[f"{HEADER_PREFIX}reply-to"] = reply_to
    if extra:
        headers.update((key, str(value)) for key, value in extra.items())
    return headers
