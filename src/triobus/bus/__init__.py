"""The message bus: invoke, send and publish over supervised endpoints.

``Probe`` and ``instrumented`` are the testing kit's way in (not
re-exported from ``triobus``).
"""

from ._behaviors import TransactionalBehavior as TransactionalBehavior
from ._behaviors import UnitOfWork as UnitOfWork
from ._bus import DEFAULT_DRAIN_TIMEOUT as DEFAULT_DRAIN_TIMEOUT
from ._bus import DEFAULT_INVOKE_TIMEOUT as DEFAULT_INVOKE_TIMEOUT
from ._bus import BusPortal as BusPortal
from ._bus import MessageBus as MessageBus
from ._bus import instrumented as instrumented
from ._context import current_bus as current_bus
from ._context import current_context as current_context
from ._context import delivery_in_hand as delivery_in_hand
from ._envelope import Envelope as Envelope
from ._envelope import MessageContext as MessageContext
from ._handlers import EventHandler as EventHandler
from ._handlers import Next as Next
from ._handlers import PipelineBehavior as PipelineBehavior
from ._handlers import RequestHandler as RequestHandler
from ._local import LocalQueue as LocalQueue
from ._local import local_queue as local_queue
from ._messages import Command as Command
from ._messages import Event as Event
from ._messages import NameDetector as NameDetector
from ._messages import Request as Request
from ._messages import default_message_name as default_message_name
from ._messages import message_version as message_version
from ._module import Module as Module
from ._open import BusRunner as BusRunner
from ._open import open_bus as open_bus
from ._outbox import Enlistment as Enlistment
from ._outbox import enlisting as enlisting
from ._plugins import DispatchEvent as DispatchEvent
from ._plugins import DispatchKind as DispatchKind
from ._plugins import Phase as Phase
from ._plugins import PluginHandle as PluginHandle
from ._policy import ErrorPolicy as ErrorPolicy
from ._policy import RetryMode as RetryMode
from ._probe import Probe as Probe
from ._protocols import IMessageBus as IMessageBus
from ._protocols import IPublisher as IPublisher
from ._protocols import ISender as ISender
from ._routing import DEFAULT_ENDPOINT as DEFAULT_ENDPOINT
from ._routing import DEFAULT_REQUEST_ENDPOINT as DEFAULT_REQUEST_ENDPOINT
from ._routing import Route as Route
from ._routing import route as route
from ._routing import route_module as route_module
from ._seam import TRIED_AGAIN as TRIED_AGAIN
from ._seam import CrossProcessEndpoint as CrossProcessEndpoint
from ._seam import Delivery as Delivery
from ._seam import DeliveryMode as DeliveryMode
from ._seam import Endpoint as Endpoint
from ._seam import EndpointHost as EndpointHost
from ._seam import Plan as Plan
from ._seam import PlanKind as PlanKind
from ._seam import Settlement as Settlement
from ._seam import Step as Step
from ._seam import hand_over as hand_over
from ._seam import takes_remote_routes as takes_remote_routes

__all__ = [
    "DEFAULT_DRAIN_TIMEOUT",
    "DEFAULT_ENDPOINT",
    "DEFAULT_INVOKE_TIMEOUT",
    "DEFAULT_REQUEST_ENDPOINT",
    "BusPortal",
    "BusRunner",
    "Command",
    "TRIED_AGAIN",
    "Delivery",
    "hand_over",
    "takes_remote_routes",
    "CrossProcessEndpoint",
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
    "Plan",
    "PlanKind",
    "PluginHandle",
    "Probe",
    "Request",
    "RequestHandler",
    "Enlistment",
    "enlisting",
    "delivery_in_hand",
    "ErrorPolicy",
    "RetryMode",
    "Route",
    "Settlement",
    "Step",
    "TransactionalBehavior",
    "UnitOfWork",
    "current_bus",
    "current_context",
    "default_message_name",
    "message_version",
    "instrumented",
    "local_queue",
    "open_bus",
    "route",
    "route_module",
]
