"""The endpoint seam: the protocol every endpoint kind implements.

The bus's dispatch knows endpoints through :class:`Endpoint` alone: it looks
up the :class:`Plan` of a message (which handlers run on which endpoint),
makes a :class:`Delivery` and hands it to the endpoint, which accepts it
(now, or once there is room), answers an ask, and settles each delivery
once: handled, dead-lettered, or left for redelivery. What an endpoint gets
from the bus at start is an :class:`EndpointHost`.

A :class:`Delivery` is the runtime side of one message on one endpoint; the
wire side, what a codec writes, is its :class:`~triobus.Envelope`.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Protocol, final, runtime_checkable

import attrs
import trio

from .._errors import MailboxFull
from ..mailbox import Carrier, DeadLetterReason
from ._envelope import Envelope, MessageContext
from ._handlers import Callee, handler_call, run_pipeline
from ._policy import ErrorPolicy
from ._protocols import IMessageBus

if TYPE_CHECKING:
    from ..actors import Actor
    from ..mailbox import DeadLetters, Replay
    from ..supervision import SupervisorRef
    from ._module import Module
    from ._plugins import DispatchEvent

_EMPTY: Mapping[str, str] = MappingProxyType({})


class DeliveryMode(enum.StrEnum):
    """What an endpoint kind promises about a message it accepted."""

    #: Handled in the caller's ask: the caller sees the outcome.
    INLINE = "inline"
    #: Held in memory: at most once across a crash of the process.
    BUFFERED = "buffered"
    #: Stored before it is accepted: at least once, deduplicated by id.
    DURABLE = "durable"


class Settlement(enum.StrEnum):
    """How one delivery ended (see :meth:`Endpoint.settle`)."""

    #: Its handlers ran (a durable endpoint acknowledges it).
    HANDLED = "handled"
    #: It is in dead letters with the reason (a durable endpoint moves it there).
    DEAD_LETTERED = "dead_lettered"
    #: Not handled here: it stays where it is stored, for a later delivery.
    LEFT_FOR_REDELIVERY = "left_for_redelivery"
    #: Its handler failed and the error policy tries again: deliver it again
    #: at ``delivery.due``, as attempt ``delivery.attempt``, from handler
    #: ``delivery.progress`` on (a store keeps its place in the queue; a
    #: memory queue puts it at the tail).
    RETRY = "retry"
    #: As :attr:`RETRY`, but at the tail of the queue (the error policy's requeue).
    REQUEUE = "requeue"


#: The settlements that deliver a message again (module constants: read per message).
TRIED_AGAIN: Final = frozenset({Settlement.RETRY, Settlement.REQUEUE})
HANDLED: Final = Settlement.HANDLED


async def _no_handler(message: Any) -> Any:
    raise RuntimeError("this step's handler is resolved by a plugin at delivery time")


@final
class Step:
    """One handler and the behaviors around it: one delivery of an event."""

    __slots__ = ("behaviors", "call", "factory", "handler", "label", "module", "raw")

    def __init__(
        self,
        handler: Callee | None,
        behaviors: tuple[Callee, ...],
        raw: Any = None,
        module: str = "",
    ) -> None:
        #: The bound handler; ``None`` when a plugin routed the message to ``raw``
        #: (a handler, or a string id that a locate plugin resolves).
        self.handler = handler
        self.behaviors = behaviors
        self.raw = raw
        #: The name of the module that bound it ("" for a plugin's handler): a
        #: broker endpoint gives each module's event handlers their own subscription.
        self.module = module
        self.label = handler.label if handler is not None else repr(raw)
        #: Runs the handler inside its behaviors on one message (made once, here).
        self.call: Callable[[Any], Awaitable[Any]] = _no_handler
        #: The handler class, when ``call`` is just ``factory().handle(message)``:
        #: the handling then makes that coroutine itself (one frame less).
        self.factory: Callable[[], Any] | None = None
        if handler is not None:
            if not behaviors and isinstance(handler.target, type) and not handler.direct:
                self.factory = handler.target
            inner = handler_call(handler)
            if behaviors:
                self.call = lambda message: run_pipeline(behaviors, message, lambda: inner(message))
            else:
                self.call = inner

    def __repr__(self) -> str:
        return f"<Step {self.label}>"


class ReplaySource(Protocol):
    """What replays a plan's dead letters (the bus's host)."""

    def replayer(self, delivery: Delivery, plan: Plan) -> Replay:
        """What delivers ``delivery``'s message again, under ``plan``, for a replay."""


class PlanKind(enum.StrEnum):
    REQUEST = "request"
    EVENT = "event"


@final
class Plan:
    """The handlers of one message identity on one endpoint, computed once."""

    __slots__ = (
        "bus",
        "endpoint",
        "host",
        "kind",
        "name",
        "new_id",
        "single",
        "steps",
        "version",
    )

    def __init__(
        self,
        bus: IMessageBus,
        new_id: Callable[[], str],
        name: str,
        version: int,
        kind: PlanKind,
        endpoint: Endpoint,
        steps: Sequence[Step],
        host: ReplaySource | None = None,
    ) -> None:
        #: The bus whose handlers this plan runs (what ``current_bus()`` gives).
        self.bus = bus
        #: What the bus shares with its endpoints: it replays this plan's dead
        #: letters (``None``: a plan made outside a bus, not replayable).
        self.host = host
        #: Makes message ids.
        self.new_id = new_id
        self.name = name
        self.version = version
        self.kind = kind
        self.endpoint = endpoint
        self.steps = tuple(steps)
        #: The only step, or ``None`` when there are several (an event's subscribers).
        self.single = self.steps[0] if len(self.steps) == 1 else None

    def only(self, step: Step, endpoint: Endpoint | None = None) -> Plan:
        """This plan with ``step`` alone (on ``endpoint``, when given)."""
        return self.with_steps([step], endpoint)

    def with_steps(self, steps: Sequence[Step], endpoint: Endpoint | None = None) -> Plan:
        """This plan with ``steps`` instead (on ``endpoint``, when given)."""
        return Plan(
            self.bus,
            self.new_id,
            self.name,
            self.version,
            self.kind,
            endpoint or self.endpoint,
            steps,
            self.host,
        )

    def __repr__(self) -> str:
        labels = ", ".join(step.label for step in self.steps)
        return f"<Plan {self.name} v{self.version} -> {self.endpoint.uri}: {labels}>"


#: ``Delivery.held`` once the handling ended: later sends go out directly.
CLOSED: list[Any] = []


@final
class Delivery(Carrier):
    """One message on its way to, and through, one endpoint.

    It holds the envelope's fields (the envelope itself is made on demand:
    a frozen object per message would cost a third of a ``send``) and the
    runtime state of this delivery: its plan, attempt, progress, and what
    its handler sent, held until the handling succeeded.
    """

    __slots__ = (
        "_correlation_id",
        "_id",
        "asked",
        "attempt",
        "causation_id",
        "created_at",
        "dispatch",
        "due",
        "ending",
        "failures",
        "headers",
        "held",
        "message",
        "plan",
        "progress",
        "receipt",
        "reply_to",
    )

    message: Any
    plan: Plan
    _id: str | None
    _correlation_id: str | None
    #: The id of the message whose handler sent this one (``None`` for a root).
    causation_id: str | None
    headers: Mapping[str, str]
    reply_to: str | None
    #: Wall-clock time the message was made.
    created_at: float
    #: Handlers of this delivery already done (events: one per subscription).
    progress: int
    #: The attempt of the handler now running (1 = first).
    attempt: int
    #: True for an ask (invoke): one attempt, the outcome goes to the caller.
    asked: bool
    #: The plugins' view of this dispatch, when plugins are attached.
    dispatch: DispatchEvent | None
    #: What the handler sent while running, held until it succeeded
    #: (``None``: nothing yet; :data:`CLOSED`: the handling ended).
    held: list[tuple[Endpoint, Delivery]] | None
    #: When to handle it (seconds since the epoch, the bus's wall clock), or
    #: ``None`` for now: a scheduled send, or the next try of a failed one.
    due: float | None
    #: How the handling ended, for :meth:`Endpoint.settle`.
    ending: Settlement
    #: The handlers dead-lettered during this delivery: (step, exception, attempts).
    failures: list[tuple[Step, Exception, int]] | None
    #: What the endpoint needs to settle it (a store row, a broker's delivery tag).
    receipt: Any

    def __init__(
        self,
        message: object,
        plan: Plan,
        parent: Delivery | None,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        asked: bool = False,
    ) -> None:
        self.message = message
        self.plan = plan
        self._id = None
        if parent is None:
            self._correlation_id = correlation_id
            self.causation_id = None
            self.headers = headers or _EMPTY
        else:
            self._correlation_id = correlation_id or parent.correlation_id
            self.causation_id = parent.message_id
            self.headers = {**parent.headers, **headers} if headers else parent.headers
        self.reply_to = reply_to
        self.created_at = time.time()
        self.progress = 0
        self.attempt = 1
        self.asked = asked
        self.dispatch = None
        self.held = None
        self.due = None
        self.ending = HANDLED
        self.failures = None
        self.receipt = None

    @classmethod
    def of(cls, envelope: Envelope, plan: Plan) -> Delivery:
        """A delivery of a decoded ``envelope`` (ids and context kept)."""
        delivery = cls(
            envelope.message,
            plan,
            None,
            envelope.headers,
            envelope.correlation_id,
            envelope.reply_to,
        )
        delivery._id = envelope.message_id
        delivery.causation_id = envelope.causation_id
        delivery.created_at = envelope.created_at
        return delivery

    @property
    def message_id(self) -> str:
        if self._id is None:
            self._id = self.plan.new_id()
        return self._id

    @property
    def correlation_id(self) -> str:
        if self._correlation_id is None:
            self._correlation_id = self.message_id
        return self._correlation_id

    @property
    def endpoint(self) -> Endpoint:
        """The endpoint this delivery was routed to."""
        return self.plan.endpoint

    def envelope(self) -> Envelope:
        """The wire envelope of this message."""
        return Envelope(
            message_id=self.message_id,
            message_name=self.plan.name,
            message_version=self.plan.version,
            correlation_id=self.correlation_id,
            causation_id=self.causation_id,
            headers=self.headers,
            reply_to=self.reply_to,
            created_at=self.created_at,
            message=self.message,
        )

    def same_message(self, plan: Plan) -> Delivery:
        """Another delivery of this message (same id, context and due moment) under ``plan``."""
        copy = Delivery(self.message, plan, None, self.headers, self.correlation_id, self.reply_to)
        copy._id = self.message_id
        copy.causation_id = self.causation_id
        copy.created_at = self.created_at
        copy.asked = self.asked
        copy.dispatch = self.dispatch
        copy.due = self.due  # a copy of a scheduled message is not handled early either
        return copy

    def again(self, plan: Plan) -> Delivery:
        """A fresh delivery of this message under ``plan``, for a replay.

        The same id and context, and a fresh attempt budget; under the same
        plan, the handlers already done stay done.
        """
        copy = self.same_message(plan)
        if plan is self.plan:
            copy.progress = self.progress
        return copy

    def context(self) -> MessageContext:
        return MessageContext(
            message_id=self.message_id,
            correlation_id=self.correlation_id,
            causation_id=self.causation_id,
            message_name=self.plan.name,
            headers=dict(self.headers),
            reply_to=self.reply_to,
        )

    def carried_message(self) -> object:
        return self.message

    def carried(self) -> tuple[object, Mapping[str, Any] | None]:
        return self.message, attrs.asdict(self.context())

    def endpoint_uri(self) -> str | None:
        return self.plan.endpoint.uri

    def replayer(self) -> Replay | None:
        host = self.plan.host
        if self.asked or host is None:
            return None  # an ask's caller has its outcome, or gave up
        if self.receipt is not None:
            return None  # its endpoint stores it, and its dead letter: replay it there
        return host.replayer(self, self.plan)

    def dead_lettered(self, reason: DeadLetterReason) -> None:
        if self.asked:
            return
        endpoint = self.plan.endpoint
        if reason is DeadLetterReason.STOPPED and endpoint.keep(self):
            # It reached a stopped actor: an endpoint that stores it keeps it.
            endpoint.settle(self, Settlement.LEFT_FOR_REDELIVERY)
            return
        endpoint.settle(self, Settlement.DEAD_LETTERED)

    def left_over(self) -> bool:
        if self.asked:
            return False
        endpoint = self.plan.endpoint
        if not endpoint.keep(self):
            return False
        endpoint.settle(self, Settlement.LEFT_FOR_REDELIVERY)
        return True

    def __repr__(self) -> str:
        return f"<Delivery {self.plan.name} id={self.message_id}>"


@runtime_checkable
class EndpointHost(Protocol):
    """What the bus hands an endpoint when it starts it."""

    @property
    def supervisor(self) -> SupervisorRef:
        """The bus's supervisor: start the endpoint's actors under it."""

    @property
    def dead_letters(self) -> DeadLetters:
        """Where undeliverable messages go."""

    @property
    def nursery(self) -> trio.Nursery:
        """A nursery that lives as long as the bus, for an endpoint's own tasks."""

    def wall_clock(self) -> float:
        """Now, in seconds since the epoch, as the bus schedules (follows trio's clock)."""

    @property
    def modules(self) -> tuple[Module, ...]:
        """The modules the bus binds (what a codec registers)."""

    def plan_for(self, uri: str, name: str, version: int, step: str = "") -> Plan | None:
        """The plan of message ``(name, version)`` on endpoint ``uri`` (handler ``step``
        alone, by its label, when given), or ``None`` when no handler there takes it.
        """

    def plans_on(self, uri: str) -> tuple[Plan, ...]:
        """Every plan routed to endpoint ``uri``: with this bus's handlers, or none
        (a remote route: the handlers live in another process).
        """

    @property
    def remote_types(self) -> tuple[type, ...]:
        """The message classes routed to endpoints without a handler here (for a codec)."""

    def accepted(self) -> None:
        """Count one delivery in flight (the bus is quiet when none is)."""

    def settled(self) -> None:
        """One delivery counted by :meth:`accepted` is settled."""

    def handler_actor(self, endpoint: Endpoint, path: str) -> Actor:
        """A fresh actor (an incarnation) that runs the handlers of ``endpoint``'s deliveries.

        Its mailbox takes :class:`Delivery` objects (told) and asks whose
        message is a :class:`Delivery`.
        """


@runtime_checkable
class Endpoint(Protocol):
    """An endpoint kind: declared once, started by the bus, handed deliveries.

    Every endpoint kind (the in-process :func:`~triobus.local_queue`, durable
    and broker endpoints) implements this, and the bus's dispatch uses
    nothing else. Each delivery the endpoint accepted is settled exactly
    once, through :meth:`settle`; the endpoint counts it in flight with its
    host from accept to settle.
    """

    @property
    def uri(self) -> str:
        """The name routes refer to."""

    @property
    def delivery_mode(self) -> DeliveryMode:
        """What the endpoint promises about a message it accepted."""

    @property
    def errors(self) -> ErrorPolicy:
        """What the handling does when a handler fails on a told message."""

    async def start(self, host: EndpointHost) -> None:
        """Start under ``host.supervisor``; deliveries are accepted from now on."""

    async def stop(self) -> None:
        """Stop for good: the backlog is handled within the endpoint's deadline.

        What is left is settled through :meth:`keep` (kept for redelivery)
        or dead-lettered with reason ``shutdown``.
        """

    def accept_nowait(self, delivery: Delivery) -> None:
        """Take ``delivery`` now (stored or queued), without waiting.

        Raises:
            MailboxFull: no room (the caller may wait with :meth:`accept`).
            ActorStopped: the endpoint is stopped (the delivery is a dead letter).
        """

    async def accept(self, delivery: Delivery) -> None:
        """Take ``delivery``, waiting for room when the endpoint applies backpressure.

        Raises:
            MailboxFull: refused (the endpoint's policy is not to wait).
            ActorStopped: the endpoint is stopped (the delivery is a dead letter).
        """

    def ask(self, delivery: Delivery, timeout: float | None) -> Awaitable[Any]:
        """Deliver ``delivery`` (``delivery.asked``); await the result for its handler's response.

        An ``async def`` implements this; a plain method may return the
        awaitable of a lower layer instead (no coroutine layer of its own).

        Raises (from the call or the await):
            AskTimeout: no response within ``timeout`` seconds.
            Exception: whatever the handler raised.
        """

    def settle(self, delivery: Delivery, settlement: Settlement) -> None:
        """``delivery``, accepted earlier and told (not asked), is done: see :class:`Settlement`."""

    def keep(self, delivery: Delivery) -> bool:
        """At a final stop ``delivery`` is still queued: keep it for a later start?

        Returns ``True`` when the endpoint keeps it (settled as left for
        redelivery), ``False`` to let it be dead-lettered (reason ``shutdown``).
        """


@runtime_checkable
class CrossProcessEndpoint(Protocol):
    """An endpoint that other processes consume too (a broker endpoint).

    A route to such an endpoint may name a message type that no module of
    this bus binds: its handler lives in another process. Start-up
    validation accepts the route, and the endpoint carries the message
    there.
    """

    @property
    def cross_process(self) -> bool:
        """Whether messages routed here may be handled in another process."""


def takes_remote_routes(endpoint: Endpoint) -> bool:
    """Whether a route to ``endpoint`` may name a type with no handler in this process."""
    return isinstance(endpoint, CrossProcessEndpoint) and endpoint.cross_process


async def hand_over(endpoint: Endpoint, delivery: Delivery) -> None:
    """Give ``delivery`` to ``endpoint``: at once when it can take it, else waiting.

    Raises what :meth:`Endpoint.accept` raises.
    """
    try:
        endpoint.accept_nowait(delivery)
    except (MailboxFull, trio.WouldBlock):
        await endpoint.accept(delivery)
