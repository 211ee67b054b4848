"""Transports: what the broker endpoints share to reach their clients.

Broker clients (RabbitMQ, Kafka, NATS) are asyncio libraries, and no
asyncio client runs under ``trio.run``. They run on one asyncio event loop
in one dedicated thread, reached from trio through an
:class:`AsyncioBridge`: :func:`shared_asyncio_bridge` gives every endpoint
of a trio run the same one; :func:`open_asyncio_bridge` opens one of its own.

Broker endpoints (:func:`broker_endpoint`) reach their broker through a
:class:`BrokerTransport`: :func:`rabbitmq_transport` (RabbitMQ, aio-pika),
:func:`kafka_transport` (Kafka, aiokafka), or a :class:`MemoryBroker`'s in
tests.

Message brokers (:class:`MessageBroker`) publish integration events
(:class:`BrokerMessage`) to a RabbitMQ exchange or a Kafka topic.
"""

from ._bridge import AsyncioBridge as AsyncioBridge
from ._bridge import BridgeStatistics as BridgeStatistics
from ._bridge import open_asyncio_bridge as open_asyncio_bridge
from ._bridge import shared_asyncio_bridge as shared_asyncio_bridge
from ._brokers import AmqpMessageBroker as AmqpMessageBroker
from ._brokers import BrokerMessage as BrokerMessage
from ._brokers import DevnullMessageBroker as DevnullMessageBroker
from ._brokers import KafkaMessageBroker as KafkaMessageBroker
from ._brokers import MessageBroker as MessageBroker
from ._brokers import MessageBrokerTransport as MessageBrokerTransport
from ._brokers import message_broker_transport as message_broker_transport
from ._endpoint import BrokerEndpoint as BrokerEndpoint
from ._endpoint import broker_endpoint as broker_endpoint
from ._kafka import KafkaTransport as KafkaTransport
from ._kafka import kafka_endpoint as kafka_endpoint
from ._kafka import kafka_transport as kafka_transport
from ._memory import MemoryBroker as MemoryBroker
from ._memory import MemoryTransport as MemoryTransport
from ._memory import topic_matches as topic_matches
from ._rabbitmq import RabbitMQTransport as RabbitMQTransport
from ._rabbitmq import rabbitmq_endpoint as rabbitmq_endpoint
from ._rabbitmq import rabbitmq_transport as rabbitmq_transport
from ._transport import BrokerTransport as BrokerTransport
from ._transport import Consumer as Consumer
from ._transport import Flow as Flow
from ._transport import IncomingMessage as IncomingMessage
from ._transport import OutgoingMessage as OutgoingMessage
from ._transport import Subscription as Subscription
from ._transport import Topology as Topology
from ._transport import Verdict as Verdict

__all__ = [
    "AmqpMessageBroker",
    "AsyncioBridge",
    "BrokerMessage",
    "DevnullMessageBroker",
    "KafkaMessageBroker",
    "MessageBroker",
    "MessageBrokerTransport",
    "message_broker_transport",
    "MemoryBroker",
    "BrokerEndpoint",
    "broker_endpoint",
    "MemoryTransport",
    "RabbitMQTransport",
    "rabbitmq_transport",
    "rabbitmq_endpoint",
    "KafkaTransport",
    "kafka_transport",
    "kafka_endpoint",
    "BrokerTransport",
    "Consumer",
    "Flow",
    "IncomingMessage",
    "OutgoingMessage",
    "Subscription",
    "Topology",
    "Verdict",
    "topic_matches",
    "BridgeStatistics",
    "open_asyncio_bridge",
    "shared_asyncio_bridge",
]
