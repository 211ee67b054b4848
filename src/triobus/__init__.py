"""triobus: an actor-model message runtime for trio applications.

The public API lives here, layer by layer: mailboxes, actors, supervision
(and, on top of them, the message bus, the durability codec and the
transports' asyncio bridge). Everything else is private.
"""

from ._errors import ActorNameTaken as ActorNameTaken
from ._errors import ActorStartError as ActorStartError
from ._errors import ActorStopped as ActorStopped
from ._errors import AskTimeout as AskTimeout
from ._errors import BridgeClosed as BridgeClosed
from ._errors import BrokerUnavailable as BrokerUnavailable
from ._errors import BusClosed as BusClosed
from ._errors import DeadLetterNotFound as DeadLetterNotFound
from ._errors import DeadlockError as DeadlockError
from ._errors import EnvelopeError as EnvelopeError
from ._errors import EventHandlerAlreadyRegistered as EventHandlerAlreadyRegistered
from ._errors import HandlerNotLocated as HandlerNotLocated
from ._errors import InvalidBody as InvalidBody
from ._errors import InvalidHandler as InvalidHandler
from ._errors import InvalidHeaders as InvalidHeaders
from ._errors import MailboxClosed as MailboxClosed
from ._errors import MailboxFull as MailboxFull
from ._errors import MalformedEnvelope as MalformedEnvelope
from ._errors import MessageTypeAlreadyRegistered as MessageTypeAlreadyRegistered
from ._errors import MessageVersionError as MessageVersionError
from ._errors import ModuleFrozen as ModuleFrozen
from ._errors import NoRouteError as NoRouteError
from ._errors import OversizeEnvelope as OversizeEnvelope
from ._errors import PartitionKeyError as PartitionKeyError
from ._errors import PipelineBehaviorAlreadyRegistered as PipelineBehaviorAlreadyRegistered
from ._errors import PublishError as PublishError
from ._errors import RemoteHandlerError as RemoteHandlerError
from ._errors import ReplayError as ReplayError
from ._errors import RequestHandlerAlreadyRegistered as RequestHandlerAlreadyRegistered
from ._errors import RequestHandlerNotFound as RequestHandlerNotFound
from ._errors import StoreError as StoreError
from ._errors import SupervisorGaveUp as SupervisorGaveUp
from ._errors import SystemClosed as SystemClosed
from ._errors import TriobusError as TriobusError
from ._errors import UnknownMessage as UnknownMessage
from ._errors import UnsupportedMessageType as UnsupportedMessageType
from ._errors import UnsupportedVersion as UnsupportedVersion
from ._errors import UpcasterAlreadyRegistered as UpcasterAlreadyRegistered
from ._errors import WiringError as WiringError
from ._errors import WrongThread as WrongThread
from ._errors import WrongVerb as WrongVerb
from .actors import DEFAULT_ASK_TIMEOUT as DEFAULT_ASK_TIMEOUT
from .actors import Actor as Actor
from .actors import ActorRef as ActorRef
from .bus import DEFAULT_DRAIN_TIMEOUT as DEFAULT_DRAIN_TIMEOUT
from .bus import DEFAULT_ENDPOINT as DEFAULT_ENDPOINT
from .bus import DEFAULT_INVOKE_TIMEOUT as DEFAULT_INVOKE_TIMEOUT
from .bus import DEFAULT_REQUEST_ENDPOINT as DEFAULT_REQUEST_ENDPOINT
from .bus import BusPortal as BusPortal
from .bus import BusRunner as BusRunner
from .bus import Command as Command
from .bus import Delivery as Delivery
from .bus import DeliveryMode as DeliveryMode
from .bus import DispatchEvent as DispatchEvent
from .bus import DispatchKind as DispatchKind
from .bus import Endpoint as Endpoint
from .bus import EndpointHost as EndpointHost
from .bus import Envelope as Envelope
from .bus import ErrorPolicy as ErrorPolicy
from .bus import Event as Event
from .bus import EventHandler as EventHandler
from .bus import IMessageBus as IMessageBus
from .bus import IPublisher as IPublisher
from .bus import ISender as ISender
from .bus import LocalQueue as LocalQueue
from .bus import MessageBus as MessageBus
from .bus import MessageContext as MessageContext
from .bus import Module as Module
from .bus import NameDetector as NameDetector
from .bus import Next as Next
from .bus import Phase as Phase
from .bus import PipelineBehavior as PipelineBehavior
from .bus import PluginHandle as PluginHandle
from .bus import Request as Request
from .bus import RequestHandler as RequestHandler
from .bus import RetryMode as RetryMode
from .bus import Route as Route
from .bus import Settlement as Settlement
from .bus import TransactionalBehavior as TransactionalBehavior
from .bus import UnitOfWork as UnitOfWork
from .bus import current_bus as current_bus
from .bus import current_context as current_context
from .bus import default_message_name as default_message_name
from .bus import local_queue as local_queue
from .bus import open_bus as open_bus
from .bus import route as route
from .bus import route_module as route_module
from .durability import Codec as Codec
from .durability import Counts as Counts
from .durability import DurableDeadLetters as DurableDeadLetters
from .durability import DurableQueue as DurableQueue
from .durability import Limits as Limits
from .durability import MessageTypes as MessageTypes
from .durability import durable_queue as durable_queue
from .mailbox import DeadLetter as DeadLetter
from .mailbox import DeadLetterCriteria as DeadLetterCriteria
from .mailbox import DeadLetterFilter as DeadLetterFilter
from .mailbox import DeadLetterReason as DeadLetterReason
from .mailbox import DeadLetters as DeadLetters
from .mailbox import DeadLetterStore as DeadLetterStore
from .mailbox import Mailbox as Mailbox
from .mailbox import MailboxSpec as MailboxSpec
from .mailbox import MailboxStatistics as MailboxStatistics
from .mailbox import Overflow as Overflow
from .supervision import ActorSystem as ActorSystem
from .supervision import Backoff as Backoff
from .supervision import ChildKind as ChildKind
from .supervision import ChildSpec as ChildSpec
from .supervision import ChildState as ChildState
from .supervision import Restart as Restart
from .supervision import Strategy as Strategy
from .supervision import SupervisorRef as SupervisorRef
from .supervision import SupervisorSpec as SupervisorSpec
from .supervision import TreeNode as TreeNode
from .transports import AsyncioBridge as AsyncioBridge
from .transports import BrokerEndpoint as BrokerEndpoint
from .transports import BrokerTransport as BrokerTransport
from .transports import MemoryBroker as MemoryBroker
from .transports import broker_endpoint as broker_endpoint
from .transports import kafka_endpoint as kafka_endpoint
from .transports import kafka_transport as kafka_transport
from .transports import rabbitmq_endpoint as rabbitmq_endpoint
from .transports import rabbitmq_transport as rabbitmq_transport

__version__ = "0.1.0"

__all__ = [
    # errors
    "TriobusError",
    "MailboxFull",
    "MailboxClosed",
    "ActorStopped",
    "AskTimeout",
    "DeadlockError",
    "ActorNameTaken",
    "ActorStartError",
    "SupervisorGaveUp",
    "SystemClosed",
    "BusClosed",
    "DeadLetterNotFound",
    "ReplayError",
    "EventHandlerAlreadyRegistered",
    "HandlerNotLocated",
    "InvalidHandler",
    "MessageVersionError",
    "ModuleFrozen",
    "NoRouteError",
    "PipelineBehaviorAlreadyRegistered",
    "PublishError",
    "RequestHandlerAlreadyRegistered",
    "RequestHandlerNotFound",
    "WiringError",
    "WrongVerb",
    "WrongThread",
    "PartitionKeyError",
    "InvalidHeaders",
    "EnvelopeError",
    "InvalidBody",
    "MalformedEnvelope",
    "MessageTypeAlreadyRegistered",
    "OversizeEnvelope",
    "UnknownMessage",
    "UnsupportedMessageType",
    "UnsupportedVersion",
    "UpcasterAlreadyRegistered",
    "StoreError",
    "BridgeClosed",
    "BrokerUnavailable",
    "RemoteHandlerError",
    # mailbox
    "Mailbox",
    "MailboxSpec",
    "MailboxStatistics",
    "Overflow",
    "DeadLetter",
    "DeadLetterCriteria",
    "DeadLetterFilter",
    "DeadLetterReason",
    "DeadLetters",
    "DeadLetterStore",
    # actors
    "DEFAULT_ASK_TIMEOUT",
    "Actor",
    "ActorRef",
    # supervision
    "ActorSystem",
    "Backoff",
    "ChildKind",
    "ChildSpec",
    "ChildState",
    "Restart",
    "Strategy",
    "SupervisorRef",
    "SupervisorSpec",
    "TreeNode",
    # bus
    "DEFAULT_DRAIN_TIMEOUT",
    "DEFAULT_ENDPOINT",
    "DEFAULT_INVOKE_TIMEOUT",
    "DEFAULT_REQUEST_ENDPOINT",
    "BusPortal",
    "BusRunner",
    "Command",
    "Delivery",
    "DeliveryMode",
    "DispatchEvent",
    "DispatchKind",
    "Endpoint",
    "EndpointHost",
    "Envelope",
    "Event",
    "EventHandler",
    "IMessageBus",
    "IPublisher",
    "ISender",
    "LocalQueue",
    "MessageBus",
    "MessageContext",
    "Module",
    "NameDetector",
    "Next",
    "Phase",
    "PipelineBehavior",
    "PluginHandle",
    "Request",
    "RequestHandler",
    "ErrorPolicy",
    "RetryMode",
    "Route",
    "Settlement",
    "TransactionalBehavior",
    "UnitOfWork",
    "current_bus",
    "current_context",
    "default_message_name",
    "local_queue",
    "open_bus",
    "route",
    "route_module",
    # durability
    "Codec",
    "Limits",
    "MessageTypes",
    "Counts",
    "DurableQueue",
    "DurableDeadLetters",
    "durable_queue",
    # transports
    "AsyncioBridge",
    "BrokerTransport",
    "BrokerEndpoint",
    "broker_endpoint",
    "kafka_transport",
    "kafka_endpoint",
    "MemoryBroker",
    "rabbitmq_transport",
    "rabbitmq_endpoint",
]


def _rewrite_module_names() -> None:
    # Reprs and docs show triobus.ActorRef, not triobus.actors._ref.ActorRef.
    for name in __all__:
        obj = globals()[name]
        if isinstance(obj, type) and obj.__module__.startswith("triobus."):
            obj.__module__ = "triobus"


_rewrite_module_names()
