"""Broker endpoints: an endpoint kind whose messages travel through a message broker.

A broker endpoint is still a supervised actor with a trio memory-channel
mailbox: the mailbox is a prefetch buffer fed by the broker's consumers.
``send`` and ``publish`` return once the broker confirmed the message;
``invoke`` waits for the reply on this process's reply subscription. A
consumed message is acknowledged only after its handler succeeded or the
error policy settled it: a retry is published again (its attempt counted in
the headers) before the original is acked, a dead letter goes to the
broker's dead-letter destination with its reason, and what a stop leaves is
given back to the broker.

Everything broker-specific is behind :class:`~triobus.BrokerTransport`.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import traceback
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, final

import attrs
import orjson
import outcome
import trio

from .._checks import endpoint_uri, positive_int, positive_seconds, wire_partition_key
from .._errors import (
    ActorStopped,
    AskTimeout,
    BrokerUnavailable,
    EnvelopeError,
    RemoteHandlerError,
    StoreError,
)
from ..actors import Actor, ActorRef
from ..bus import (
    Delivery,
    DeliveryMode,
    EndpointHost,
    Envelope,
    ErrorPolicy,
    Plan,
    PlanKind,
    Settlement,
    default_message_name,
    message_version,
)
from ..durability import Codec, DurableInbox, Limits, MessageTypes
from ..mailbox import Carrier, DeadLetterReason, MailboxSpec, exception_type_name
from ..supervision import Backoff, SupervisorRef
from ._batching import PublishBatcher
from ._transport import (
    HEADER_PREFIX,
    BrokerTransport,
    Consumer,
    Flow,
    IncomingMessage,
    OutgoingMessage,
    Subscription,
    Topology,
    Verdict,
    context_headers,
)

logger = logging.getLogger("triobus.transports")

#: Deliveries a broker endpoint holds unsettled at most, by default.
DEFAULT_PREFETCH: Final = 64
#: Handled message ids are remembered this long (seconds) to drop redeliveries.
DEFAULT_INBOX_RETENTION: Final = 300.0
#: What a broker endpoint's codec accepts unless told otherwise.
DEFAULT_LIMITS: Final = Limits()
#: What the connection's supervisor waits between reconnections.
DEFAULT_RECONNECT = Backoff(initial=0.5, maximum=10.0, reset_after=60.0)

ATTEMPT = f"{HEADER_PREFIX}attempt"
PROGRESS = f"{HEADER_PREFIX}progress"
DUE = f"{HEADER_PREFIX}due"
REPLY_ADDRESS = f"{HEADER_PREFIX}reply-address"
IN_REPLY_TO = f"{HEADER_PREFIX}in-reply-to"
OUTCOME = f"{HEADER_PREFIX}outcome"
REASON = f"{HEADER_PREFIX}dead-letter-reason"
ERROR = f"{HEADER_PREFIX}error"
EXCEPTION_TYPE = f"{HEADER_PREFIX}exception-type"
ATTEMPTS = f"{HEADER_PREFIX}attempts"
#: At most this much of a traceback travels in a header.
TRACEBACK_LIMIT: Final = 4000


@final
class _Receipt:
    """What a broker endpoint needs to settle one consumed message."""

    __slots__ = ("consumer", "incoming", "subscription")

    def __init__(
        self, subscription: Subscription, consumer: Consumer, incoming: IncomingMessage
    ) -> None:
        self.subscription = subscription
        self.consumer = consumer
        self.incoming = incoming


@final
@attrs.define(eq=False)
class _Settling:
    """One settlement queued for the settler: what to publish first, then the verdict."""

    receipt: _Receipt
    verdict: Verdict
    publish: OutgoingMessage | None
    #: Counted in flight with the host (settled once done).
    counted: bool


@final
class _Inbox:
    """Ids handled lately per subscription: a redelivery of one is acked, not handled again."""

    def __init__(self, retention: float) -> None:
        self.retention = retention
        self._until: collections.OrderedDict[tuple[str, str], float] = collections.OrderedDict()

    def seen(self, key: tuple[str, str], now: float) -> bool:
        until = self._until.get(key)
        return until is not None and until > now

    def mark(self, key: tuple[str, str], now: float) -> None:
        self._until[key] = now + self.retention
        self._until.move_to_end(key)
        while self._until:
            first, until = next(iter(self._until.items()))
            if until > now:
                break
            del self._until[first]


@final
class _Waiting:
    """An invoke waiting for its reply."""

    __slots__ = ("done", "result")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: outcome.Outcome[Any] | None = None


def _failure_body(error: BaseException, message: str, remote_traceback: str) -> bytes:
    """An ``error`` reply's body: the exception's type name, ``message`` and its traceback."""
    return orjson.dumps(
        {
            "type": exception_type_name(type(error)),
            "message": message,
            "traceback": remote_traceback[-TRACEBACK_LIMIT:],
        }
    )


def _cause(error: Exception) -> Exception:
    """What ended the fetch loops: a lost connection, if any of them saw one."""
    if not isinstance(error, ExceptionGroup):
        return error
    leaves = [_cause(inner) for inner in error.exceptions]
    lost = [leaf for leaf in leaves if isinstance(leaf, BrokerUnavailable)]
    return (lost or leaves)[0]


@final
class _Lost(Carrier):
    """Told to the link when its connection is lost: it exits, and its supervisor starts it
    again (with backoff). Its owner keeps it: never a dead letter.
    """

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def carried(self) -> tuple[object, Mapping[str, Any] | None]:
        return f"connection lost: {self.error}", None

    def left_over(self) -> bool:
        return True


class _Link(Actor):
    """The endpoint's connection to its broker, supervised.

    Each incarnation consumes (in a task of the bus's nursery) until the
    connection is lost; then it exits and its supervisor starts it again,
    with backoff: the new incarnation reconnects, declares the topology
    again and resumes consuming. A reconnection that fails is a failed
    restart, tried again later.
    """

    def __init__(self, endpoint: BrokerEndpoint) -> None:
        self.endpoint = endpoint
        self.restarted = False

    async def on_restart(self, error: BaseException | None) -> None:
        self.restarted = True

    async def on_start(self) -> None:
        if self.restarted:
            await self.endpoint._reconnect()
        self.endpoint._start_consuming(self.ref)

    async def receive(self, message: Any) -> Any:
        if isinstance(message, _Lost):
            self.stop_self()


@final
class BrokerEndpoint:
    """An endpoint whose messages travel through a broker; declare one with
    :func:`~triobus.broker_endpoint` (or :func:`~triobus.rabbitmq_endpoint`,
    :func:`~triobus.kafka_endpoint`).

    Implements :class:`~triobus.Endpoint` with :attr:`DeliveryMode.DURABLE`.
    Routes to it may name types that no module here binds: their handlers
    live in other processes.
    """

    delivery_mode = DeliveryMode.DURABLE
    cross_process = True

    def __init__(
        self,
        uri: str,
        transport: BrokerTransport,
        *,
        errors: ErrorPolicy,
        prefetch: int,
        shutdown: float,
        types: MessageTypes | None,
        partition_by: Callable[[Any], str | int] | None,
        patterns: Mapping[str, Sequence[str]],
        reconnect: Backoff,
        inbox_retention: float,
        inbox: DurableInbox | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self._uri = endpoint_uri(uri)
        self.transport = transport
        self._errors = errors
        self.prefetch = positive_int("prefetch", prefetch)
        self.shutdown = positive_seconds("shutdown", shutdown)
        self._types = types
        #: What the codec accepts (a bigger message is a dead letter, reason undecodable).
        self.limits = limits
        self.partition_by = partition_by
        self.patterns = {module: tuple(p) for module, p in patterns.items()}
        self.reconnect = reconnect
        self._inbox = _Inbox(positive_seconds("inbox_retention", inbox_retention))
        #: Where handled messages are marked across restarts (``None``: in memory only).
        self.inbox = inbox
        self._host: EndpointHost | None = None
        self._codec: Codec | None = None
        self._supervisor: SupervisorRef | None = None
        self._handler: ActorRef | None = None
        self._link: ActorRef | None = None
        self.topology: Topology | None = None
        self._reply: Subscription | None = None
        self._consumers: dict[str, Consumer] = {}
        self._plans: dict[tuple[str, str, int], Plan | None] = {}
        self._waiting: dict[str, _Waiting] = {}
        #: Consumed messages waiting for their due moment, and what cancels each wait.
        self._due: dict[_Receipt, trio.CancelScope] = {}
        self._settle_send: trio.MemorySendChannel[_Settling] | None = None
        #: Publishes what is sent and invoked here, in batches (while running).
        self._batcher: PublishBatcher | None = None
        self._publishing = trio.CancelScope()
        self._settler_done = trio.Event()
        #: Around the fetch loops while the link consumes; set when they ended.
        self._fetching: trio.CancelScope | None = None
        self._fetched = trio.Event()
        self._fetched.set()
        self._stopping = False

    @property
    def uri(self) -> str:
        return self._uri

    @property
    def errors(self) -> ErrorPolicy:
        return self._errors

    @property
    def codec(self) -> Codec:
        if self._codec is None:
            raise ActorStopped(f"broker endpoint {self._uri!r} is not running")
        return self._codec

    def __repr__(self) -> str:
        return f"<BrokerEndpoint {self._uri!r} on {self.transport.description}>"

    # ------------------------------------------------------------ life cycle

    async def start(self, host: EndpointHost) -> None:
        if self._host is not None:
            raise RuntimeError(f"endpoint {self._uri!r} is running in a bus already")
        types = self._types or MessageTypes.from_modules(host.modules, also=host.remote_types)
        self._codec = Codec(types, limits=self.limits)
        self.topology = self._topology(host)
        self._plans = {}
        try:
            await self.transport.connect()
            await self.transport.declare(self.topology)
            await self._subscribe()
        except BrokerUnavailable as exc:
            await self._close_transport()
            raise BrokerUnavailable(f"broker endpoint {self._uri!r} cannot start: {exc}") from exc
        if self.inbox is not None:
            try:
                await self.inbox.open(self._codec)
            except StoreError as exc:
                await self._close_transport()
                raise StoreError(f"broker endpoint {self._uri!r} cannot start: {exc}") from exc
        self._host = host
        name = self._uri.replace("/", "%2F")
        try:
            self._supervisor = supervisor = await host.supervisor.spawn_supervisor(
                name, max_restarts=1_000, within=60.0, backoff=self.reconnect
            )
            path = f"{supervisor.path}/handlers"
            self._handler = await supervisor.spawn(
                lambda: host.handler_actor(self, path),
                name="handlers",
                mailbox=MailboxSpec(capacity=self.prefetch),
                shutdown=self.shutdown,
            )
            self._link = await supervisor.spawn(lambda: _Link(self), name="link")
        except BaseException:
            self._host = None
            if self._supervisor is not None:
                await self._supervisor.stop()
            await self._close_transport()
            if self.inbox is not None:
                await self.inbox.close()
            raise
        send, receive = trio.open_memory_channel[_Settling](math.inf)
        self._settle_send = send
        self._settler_done = trio.Event()
        host.nursery.start_soon(self._settle, receive)
        self._batcher = PublishBatcher(self.transport.publish)
        self._publishing = trio.CancelScope()
        host.nursery.start_soon(self._run_batcher, self._batcher, self._publishing)

    @staticmethod
    async def _run_batcher(batcher: PublishBatcher, scope: trio.CancelScope) -> None:
        with scope:
            await batcher.run()

    async def stop(self) -> None:
        host = self._host
        if host is None:
            return
        try:
            # No more fetching; the consumers stay open to settle what is in hand.
            self._stopping = True
            if self._fetching is not None:
                self._fetching.cancel()
            await self._fetched.wait()
            if self._link is not None:
                await self._link.stop()
            for scope in list(self._due.values()):
                scope.cancel()
            if self._handler is not None:
                await self._handler.stop()  # the backlog: handled, or given back (keep)
            for receipt in list(self._due):
                self._queue(_Settling(receipt, Verdict.REQUEUE, None, True))
            self._due.clear()
            send, self._settle_send = self._settle_send, None
            if send is not None:
                await send.aclose()  # the settler sends what is queued, then ends
                await self._settler_done.wait()
        finally:
            for waiting in self._waiting.values():
                waiting.result = outcome.Error(
                    ActorStopped(f"broker endpoint {self._uri!r} stopped before the reply came")
                )
                waiting.done.set()
            self._waiting.clear()
            if self._supervisor is not None:
                await self._supervisor.stop()
            self._publishing.cancel()
            self._batcher = None
            self._host = None
            self._supervisor = self._handler = self._link = None
            self._settle_send = None
            await self._close_transport()
            if self.inbox is not None:
                await self.inbox.close()

    async def _close_transport(self) -> None:
        consumers, self._consumers = self._consumers, {}
        with trio.CancelScope(shield=True):
            for consumer in consumers.values():
                # Gone with its connection, it fails: the broker gives back what was unsettled.
                with contextlib.suppress(BrokerUnavailable):
                    await consumer.close()
            try:
                await self.transport.close()
            except BrokerUnavailable as exc:
                logger.debug(
                    "%s: closing %s failed: %r", self._uri, self.transport.description, exc
                )

    async def _reconnect(self) -> None:
        """Connect again after a lost connection: declare the topology, consume again."""
        assert self.topology is not None
        await self._close_transport()
        try:
            await self.transport.connect()
            await self.transport.declare(self.topology)
            await self._subscribe()
        except BrokerUnavailable as exc:
            logger.warning(
                "%s: reconnecting to %s failed: %s", self._uri, self.transport.description, exc
            )
            raise
        logger.warning("%s: reconnected to %s", self._uri, self.transport.description)

    async def _subscribe(self) -> None:
        assert self.topology is not None
        for subscription in self.topology.subscriptions:
            self._consumers[subscription.name] = await self.transport.subscribe(subscription)

    # ------------------------------------------------------------ topology

    def _topology(self, host: EndpointHost) -> Topology:
        plans = host.plans_on(self._uri)
        requests = [plan for plan in plans if plan.kind is PlanKind.REQUEST]
        events = [plan for plan in plans if plan.kind is PlanKind.EVENT]
        handled = sorted({plan.name for plan in requests if plan.steps})
        subscriptions: list[Subscription] = []
        if handled:
            subscriptions.append(
                Subscription(Flow.WORK, self._uri, self._uri, tuple(handled), (), self.prefetch)
            )
        modules: dict[str, set[str]] = {}
        for plan in events:
            for step in plan.steps:
                modules.setdefault(step.module, set()).add(plan.name)
        unknown = sorted(set(self.patterns) - set(modules))
        if unknown:
            raise ValueError(
                f"broker endpoint {self._uri!r}: patterns= names module(s) {unknown} with no event "
                f"handler routed here (modules with one: {sorted(modules)})"
            )
        for module, names in sorted(modules.items()):
            subscriptions.append(
                Subscription(
                    Flow.EVENT,
                    self._uri,
                    f"{self._uri}.{module}",
                    tuple(sorted(names)),
                    self.patterns.get(module, ()),
                    self.prefetch,
                )
            )
        self._reply = None
        if requests:
            self._reply = Subscription(
                Flow.REPLY,
                self._uri,
                f"{self._uri}.replies.{uuid.uuid4().hex[:12]}",
                (),
                (),
                self.prefetch,
            )
            subscriptions.append(self._reply)
        return Topology(
            self._uri,
            tuple(sorted({plan.name for plan in requests})),
            tuple(sorted({plan.name for plan in events})),
            tuple(subscriptions),
        )

    # ------------------------------------------------------------ sending

    def accept_nowait(self, delivery: Delivery) -> None:
        """A broker endpoint accepts once the broker confirmed: always ``trio.WouldBlock``."""
        raise trio.WouldBlock

    async def accept(self, delivery: Delivery) -> None:
        """Publish ``delivery``; return once the broker confirmed it.

        Raises:
            BrokerUnavailable: the broker is away: the message was not sent.
            EnvelopeError: the message cannot be encoded (not registered, too big).
            PartitionKeyError: ``partition_by`` failed on the message.
            ActorStopped: the endpoint is not running.
        """
        if self._host is None:
            raise ActorStopped(
                f"broker endpoint {self._uri!r} is not running: start it with its bus"
            )
        flow = Flow.EVENT if delivery.plan.kind is PlanKind.EVENT else Flow.WORK
        await self._publish(delivery, self._outgoing(delivery, flow))

    async def _publish(self, delivery: Delivery, message: OutgoingMessage) -> None:
        batcher = self._batcher
        if batcher is None:
            raise ActorStopped(f"broker endpoint {self._uri!r} is not running")
        try:
            await batcher.publish(message)
        except BrokerUnavailable as exc:
            raise BrokerUnavailable(
                f"broker endpoint {self._uri!r} could not send {delivery.plan.name} "
                f"id={delivery.message_id} ({exc}): it was not sent; send it again once "
                f"{self.transport.description} is back"
            ) from exc

    def _outgoing(
        self,
        delivery: Delivery,
        flow: Flow,
        *,
        address: str | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> OutgoingMessage:
        headers = context_headers(
            message_id=delivery.message_id,
            message_name=delivery.plan.name,
            correlation_id=delivery.correlation_id,
            causation_id=delivery.causation_id,
            reply_to=delivery.reply_to,
            attempt=delivery.attempt,
            own=delivery.headers,
            extra=extra,
        )
        if delivery.due is not None:
            headers[DUE] = repr(delivery.due)
        if delivery.progress:
            headers[PROGRESS] = str(delivery.progress)
        return OutgoingMessage(
            flow=flow,
            endpoint=self._uri,
            message_name=delivery.plan.name,
            message_id=delivery.message_id,
            body=self.codec.encode(delivery.envelope()),
            headers=headers,
            key=self._partition_key(delivery.message),
            address=address,
        )

    def _partition_key(self, message: object) -> str | None:
        """The partition key of ``message`` (see :func:`wire_partition_key`)."""
        return wire_partition_key(f"broker endpoint {self._uri!r}", self.partition_by, message)

    # ------------------------------------------------------------ invoke

    def ask(self, delivery: Delivery, timeout: float | None) -> Awaitable[Any]:
        return self._ask(delivery, timeout)

    async def _ask(self, delivery: Delivery, timeout: float | None) -> Any:
        """Publish the request with this process's reply address and wait for the reply.

        Raises:
            AskTimeout: no reply within ``timeout``.
            RemoteHandlerError: the handler in the other process raised.
            BrokerUnavailable: the request could not be sent.
        """
        reply = self._reply
        if self._host is None or reply is None:
            raise ActorStopped(f"broker endpoint {self._uri!r} is not running")
        if delivery.plan.kind is PlanKind.EVENT:
            raise ValueError(
                f"broker endpoint {self._uri!r} cannot wait for an event's handlers "
                "(collect_listener_exceptions): they run in whichever process consumes them; "
                "open the bus without collect_listener_exceptions=True"
            )
        waiting = self._waiting[delivery.message_id] = _Waiting()
        try:
            message = self._outgoing(delivery, Flow.WORK, extra={REPLY_ADDRESS: reply.name})
            await self._publish(delivery, message)
            with trio.move_on_after(math.inf if timeout is None else timeout):
                await waiting.done.wait()
            if waiting.result is None:
                raise AskTimeout(
                    f"no reply to {delivery.plan.name} id={delivery.message_id} from broker "
                    f"endpoint {self._uri!r} within {timeout} s: is a process with its handler "
                    "running and consuming there? (a reply that comes later is a dead letter)"
                )
            return waiting.result.unwrap()
        finally:
            self._waiting.pop(delivery.message_id, None)

    def _take_reply(self, incoming: IncomingMessage) -> None:
        headers = incoming.headers
        request_id = headers.get(IN_REPLY_TO, "")
        waiting = self._waiting.pop(request_id, None)
        result: outcome.Outcome[Any]
        kind = headers.get(OUTCOME)
        try:
            if kind == "error":
                failure = orjson.loads(incoming.body)
                result = outcome.Error(
                    RemoteHandlerError(
                        f"{failure['type']}: {failure['message']} (raised by the handler of "
                        f"request id={request_id} in another process; its traceback is in "
                        ".remote_traceback)",
                        failure["type"],
                        failure["message"],
                        failure["traceback"],
                    )
                )
            elif kind == "none":
                result = outcome.Value(None)
            else:
                result = outcome.Value(self.codec.decode(incoming.body).message)
        except (EnvelopeError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
            result = outcome.Error(exc)
        if waiting is None:
            assert self._host is not None
            message = result.value if isinstance(result, outcome.Value) else incoming.body
            self._host.dead_letters.record(
                message,
                self._uri,
                DeadLetterReason.LATE_REPLY,
                None,
                {"in_reply_to": request_id},
                endpoint=self._uri,
            )
            return
        waiting.result = result
        waiting.done.set()

    async def _answer(self, delivery: Delivery, receipt: _Receipt, address: str) -> None:
        """Run an invoke from another process and publish its reply, then ack the request."""
        assert self._handler is not None
        headers = {IN_REPLY_TO: delivery.message_id}
        try:
            result = await self._handler.post_ask(delivery, None)
        except ActorStopped:
            # Stopping before it ran: another consumer answers it.
            self._queue(_Settling(receipt, Verdict.REQUEUE, None, True))
            return
        except Exception as exc:
            headers[OUTCOME] = "error"
            body = _failure_body(exc, str(exc), "".join(traceback.format_exception(exc)))
        else:
            if result is None:
                headers[OUTCOME] = "none"
                body = b""
            else:
                headers[OUTCOME] = "ok"
                body = self._reply_body(delivery, result, headers)
        reply = OutgoingMessage(
            flow=Flow.REPLY,
            endpoint=self._uri,
            message_name=delivery.plan.name,
            message_id=delivery.plan.new_id(),
            body=body,
            headers=headers,
            address=address,
        )
        self._queue(_Settling(receipt, Verdict.ACK, reply, True))

    def _reply_body(self, delivery: Delivery, result: object, headers: dict[str, str]) -> bytes:
        assert self._host is not None
        envelope = Envelope(
            message_id=delivery.plan.new_id(),
            message_name=default_message_name(result),
            message_version=message_version(result),
            correlation_id=delivery.correlation_id,
            causation_id=delivery.message_id,
            headers={},
            reply_to=None,
            created_at=self._host.wall_clock(),
            message=result,
        )
        try:
            return self.codec.encode(envelope)
        except EnvelopeError as exc:
            headers[OUTCOME] = "error"
            return _failure_body(exc, f"the response could not be encoded: {exc}", "")

    # ------------------------------------------------------------ consuming

    def _start_consuming(self, link: ActorRef) -> None:
        """Fetch from every subscription (a task of the bus's nursery) until a stop; a lost
        connection is told to ``link``.
        """
        if self._stopping or self._host is None:
            return
        self._fetching = trio.CancelScope()
        self._fetched = trio.Event()
        self._host.nursery.start_soon(self._consume, link, self._fetching, self._fetched)

    async def _consume(self, link: ActorRef, scope: trio.CancelScope, done: trio.Event) -> None:
        try:
            with scope:
                async with trio.open_nursery() as nursery:
                    for name, consumer in list(self._consumers.items()):
                        subscription = self._subscription(name)
                        nursery.start_soon(self._fetch_loop, subscription, consumer)
        except Exception as exc:
            lost = _cause(exc)
            if isinstance(lost, BrokerUnavailable):
                logger.warning(
                    "%s: lost %s (%s); reconnecting", self._uri, self.transport.description, lost
                )
            else:
                logger.error("%s: consuming failed; reconnecting", self._uri, exc_info=lost)
            with contextlib.suppress(ActorStopped):  # stopping
                link.tell_nowait(_Lost(lost))
        finally:
            if self._fetching is scope:
                self._fetching = None
            done.set()

    def _subscription(self, name: str) -> Subscription:
        assert self.topology is not None
        return next(s for s in self.topology.subscriptions if s.name == name)

    async def _fetch_loop(self, subscription: Subscription, consumer: Consumer) -> None:
        while True:
            batch = await consumer.fetch(subscription.prefetch)
            for incoming in batch:
                await self._take(subscription, consumer, incoming)

    async def _take(
        self, subscription: Subscription, consumer: Consumer, incoming: IncomingMessage
    ) -> None:
        host = self._host
        handler = self._handler
        if host is None or handler is None:
            return  # stopping: unsettled, it goes back to the broker
        receipt = _Receipt(subscription, consumer, incoming)
        if subscription.flow is Flow.REPLY:
            self._take_reply(incoming)
            self._queue(_Settling(receipt, Verdict.ACK, None, False))
            return
        try:
            envelope = self.codec.decode(incoming.body)
            attempt = int(incoming.headers.get(ATTEMPT, "1")) + (incoming.redeliveries or 0)
            progress = int(incoming.headers.get(PROGRESS, "0"))
            due = float(incoming.headers.get(DUE, "-inf"))
        except EnvelopeError as exc:
            self._dead(receipt, DeadLetterReason.UNDECODABLE, f"{exc.reason}: {exc}", exc)
            return
        except ValueError as exc:
            self._dead(receipt, DeadLetterReason.UNDECODABLE, f"bad context header: {exc}", exc)
            return
        plan = self._plan_for(host, subscription, envelope)
        if plan is None:
            self._dead(
                receipt,
                DeadLetterReason.NO_HANDLER,
                f"no handler for {envelope.message_name!r} is bound at endpoint "
                f"{self._uri!r} ({subscription.name})",
                None,
                envelope,
            )
            return
        now = host.wall_clock()
        if self._inbox.seen((subscription.name, envelope.message_id), now) or (
            self.inbox is not None
            and await self.inbox.handled((subscription.name, envelope.message_id, ""))
        ):
            logger.info(
                "%s: %s id=%s was handled already (a redelivery)",
                self._uri,
                envelope.message_name,
                envelope.message_id,
            )
            self._queue(_Settling(receipt, Verdict.ACK, None, False))
            return
        limit = self._errors.max_attempts
        if attempt > limit:
            self._dead(
                receipt,
                DeadLetterReason.INTERRUPTED,
                f"delivered {attempt} times, more than the {limit} attempt(s) the error policy "
                "allows: its handler was cut off (the process died) on each",
                None,
                envelope,
            )
            return
        delivery = Delivery.of(envelope, plan)
        delivery.attempt = max(1, attempt)
        delivery.progress = progress
        delivery.receipt = receipt
        host.accepted()
        address = incoming.headers.get(REPLY_ADDRESS)
        if address is not None:
            delivery.asked = True
            host.nursery.start_soon(self._answer, delivery, receipt, address)
        elif due > now:
            scope = self._due[receipt] = trio.CancelScope()
            host.nursery.start_soon(self._tell_at, delivery, scope, due - now)
        else:
            await handler.tell(delivery)

    async def _tell_at(self, delivery: Delivery, scope: trio.CancelScope, seconds: float) -> None:
        with scope:
            await trio.sleep(seconds)
            handler = self._handler
            if handler is not None and self._due.pop(delivery.receipt, None) is not None:
                await handler.tell(delivery)

    def _plan_for(
        self, host: EndpointHost, subscription: Subscription, envelope: Envelope
    ) -> Plan | None:
        key = (subscription.name, envelope.message_name, envelope.message_version)
        if key in self._plans:
            return self._plans[key]
        plan = host.plan_for(self._uri, envelope.message_name, envelope.message_version)
        if plan is not None:
            if subscription.flow is Flow.WORK and plan.kind is not PlanKind.REQUEST:
                plan = None
            elif subscription.flow is Flow.EVENT:
                module = subscription.name[len(self._uri) + 1 :]
                steps = [step for step in plan.steps if step.module == module]
                plan = plan.with_steps(steps) if steps and plan.kind is PlanKind.EVENT else None
        self._plans[key] = plan
        return plan

    # ------------------------------------------------------------ settling

    def settle(self, delivery: Delivery, settlement: Settlement) -> None:
        host = self._host
        receipt = delivery.receipt
        if not isinstance(receipt, _Receipt):
            if host is not None:
                host.settled()  # a held send the endpoint refused (counted by the outbox)
            return
        failures, delivery.failures = delivery.failures, None
        if host is None:
            return
        now = host.wall_clock()
        if settlement is Settlement.HANDLED:
            self._mark_handled(receipt, delivery, now)
            self._queue(_Settling(receipt, Verdict.ACK, None, True))
        elif settlement is Settlement.DEAD_LETTERED and failures:
            self._mark_handled(receipt, delivery, now)
            _, error, attempts = failures[-1]
            letter = self._dead_letter_message(
                receipt, DeadLetterReason.FAILED, str(error), error, attempts
            )
            self._queue(_Settling(receipt, Verdict.ACK, letter, True))
        elif settlement in (Settlement.RETRY, Settlement.REQUEUE):
            again = self._outgoing(delivery, Flow.RETRY, address=receipt.subscription.name)
            self._queue(_Settling(receipt, Verdict.ACK, again, True))
        else:
            # Left for redelivery (a stop), or cut off in hand: the broker delivers it again.
            self._queue(_Settling(receipt, Verdict.REQUEUE, None, True))

    def keep(self, delivery: Delivery) -> bool:
        return isinstance(delivery.receipt, _Receipt)

    def _mark_handled(self, receipt: _Receipt, delivery: Delivery, now: float) -> None:
        """Remember ``delivery`` as done (acked after the mark is committed)."""
        self._inbox.mark((receipt.subscription.name, delivery.message_id), now)
        if self.inbox is not None:
            self.inbox.mark_soon((receipt.subscription.name, delivery.message_id, ""), now)

    def inbox_key(
        self, delivery: Delivery
    ) -> tuple[DurableInbox, tuple[str, str, str], float] | None:
        """The durable inbox's key of the handler running on ``delivery`` (for a unit of work)."""
        receipt = delivery.receipt
        if self.inbox is None or self._host is None or not isinstance(receipt, _Receipt):
            return None
        steps = delivery.plan.steps
        step = "" if len(steps) == 1 else steps[delivery.progress].label
        key = (receipt.subscription.name, delivery.message_id, step)
        return self.inbox, key, self._host.wall_clock()

    def _queue(self, settling: _Settling) -> None:
        send = self._settle_send
        if send is None:
            # Stopped: unsettled, the broker delivers it again.
            if settling.counted and self._host is not None:
                self._host.settled()
            return
        send.send_nowait(settling)

    def _dead(
        self,
        receipt: _Receipt,
        reason: DeadLetterReason,
        error: str,
        exception: BaseException | None,
        envelope: Envelope | None = None,
    ) -> None:
        """A consumed message no handler here takes: a dead letter, in memory and on the broker."""
        assert self._host is not None
        incoming = receipt.incoming
        self._host.dead_letters.record(
            envelope.message if envelope is not None else bytes(incoming.body),
            self._uri,
            reason,
            exception,
            {
                "message_id": envelope.message_id
                if envelope
                else incoming.headers.get(f"{HEADER_PREFIX}message-id"),
                "subscription": receipt.subscription.name,
                "error": error,
            },
            endpoint=self._uri,
        )
        letter = self._dead_letter_message(receipt, reason, error, exception, 0)
        self._queue(_Settling(receipt, Verdict.ACK, letter, False))

    def _dead_letter_message(
        self,
        receipt: _Receipt,
        reason: DeadLetterReason,
        error: str,
        exception: BaseException | None,
        attempts: int,
    ) -> OutgoingMessage:
        incoming = receipt.incoming
        headers = {
            **incoming.headers,
            REASON: reason.value,
            ERROR: error[:TRACEBACK_LIMIT],
            ATTEMPTS: str(attempts),
            f"{HEADER_PREFIX}subscription": receipt.subscription.name,
        }
        if exception is not None:
            headers[EXCEPTION_TYPE] = exception_type_name(type(exception))
        return OutgoingMessage(
            flow=Flow.DEAD_LETTER,
            endpoint=self._uri,
            message_name=incoming.headers.get(f"{HEADER_PREFIX}message-name", ""),
            message_id=incoming.headers.get(f"{HEADER_PREFIX}message-id", ""),
            body=bytes(incoming.body),
            headers=headers,
        )

    async def _settle(self, receive: trio.MemoryReceiveChannel[_Settling]) -> None:
        """Settle what handling finished, in batches: publish first, then ack or requeue."""
        try:
            async with receive:
                async for first in receive:
                    batch = [first]
                    while True:
                        try:
                            batch.append(receive.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    await self._settle_batch(batch)
        finally:
            self._settler_done.set()

    async def _settle_batch(self, batch: list[_Settling]) -> None:
        host = self._host
        if self.inbox is not None:
            try:
                await self.inbox.flush()  # the marks of what is acked now
            except self.inbox.store.database.errors as exc:
                logger.warning("%s: the inbox could not be written (%r)", self._uri, exc)
        publish = [item.publish for item in batch if item.publish is not None]
        published = True
        if publish:
            try:
                await self.transport.publish(publish)
            except BrokerUnavailable as exc:
                published = False
                logger.warning(
                    "%s: could not publish %d retry/dead-letter/reply message(s) (%s): their "
                    "originals are not acked, so the broker delivers them again",
                    self._uri,
                    len(publish),
                    exc,
                )
        by_consumer: dict[int, tuple[Consumer, list[tuple[IncomingMessage, Verdict]]]] = {}
        for item in batch:
            if item.publish is not None and not published:
                continue
            consumer = item.receipt.consumer
            entry = by_consumer.setdefault(id(consumer), (consumer, []))
            entry[1].append((item.receipt.incoming, item.verdict))
        for consumer, outcomes in by_consumer.values():
            try:
                await consumer.settle(outcomes)
            except BrokerUnavailable as exc:
                logger.info(
                    "%s: %d settlement(s) not sent (%s): the broker delivers them again",
                    self._uri,
                    len(outcomes),
                    exc,
                )
        if host is not None:
            for item in batch:
                if item.counted:
                    host.settled()


def broker_endpoint(
    uri: str,
    transport: BrokerTransport,
    *,
    retries: int = 2,
    errors: ErrorPolicy | None = None,
    prefetch: int = DEFAULT_PREFETCH,
    shutdown: float = 5.0,
    partition_by: Callable[[Any], str | int] | None = None,
    patterns: Mapping[str, Sequence[str]] | None = None,
    reconnect: Backoff = DEFAULT_RECONNECT,
    inbox: DurableInbox | None = None,
    inbox_retention: float = DEFAULT_INBOX_RETENTION,
    types: MessageTypes | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> BrokerEndpoint:
    """Declare an endpoint whose messages travel through a broker, over ``transport``.

    Commands and requests routed here go to the endpoint's work queue, which
    every process that binds their handlers consumes (competing consumers);
    events go to every subscription: one per module with event handlers
    here, in every process. A route here may name a type that no module of
    this bus binds (route it by its class): its handler lives in another
    process.

    Args:
        uri: the name routes refer to; the broker's queues, exchanges and
            topics are named after it.
        transport: the broker (:func:`~triobus.rabbitmq_transport`,
            :func:`~triobus.kafka_transport`, a :class:`~triobus.MemoryBroker`'s,
            or your own :class:`~triobus.BrokerTransport`).
        retries: retries after a handler failure, before dead letters.
        errors: a full :class:`~triobus.ErrorPolicy`; replaces ``retries``.
            Each retry is published again with its attempt in the headers.
        prefetch: messages consumed and not settled, at most, per subscription.
        shutdown: seconds a stop lets the handlers finish what they hold;
            the rest goes back to the broker.
        partition_by: a key per message (Kafka's record key).
        patterns: per module name, extra topic patterns its event
            subscription takes (``*`` one word, ``#`` zero or more).
        reconnect: the backoff between reconnections after a lost connection.
        inbox: a :func:`~triobus.durability.durable_inbox`: handled messages
            are marked there before they are acked, and a redelivery of one
            is acked without running its handler again, across restarts.
            A handler's :func:`~triobus.durability.unit_of_work` on the
            inbox's database marks it with the handler's own writes.
        inbox_retention: seconds a handled message id is remembered in
            memory (and by default in ``inbox``, set there), so a redelivery
            of it is acked without running its handler again.
        types: the message types the codec accepts (default: every type the
            bus's modules bind or route).
        limits: what the codec accepts (sizes, header counts); a message over
            them is a dead letter (``undecodable``), and cannot be sent.
    """
    return BrokerEndpoint(
        uri,
        transport,
        errors=errors if errors is not None else ErrorPolicy.retries(retries),
        prefetch=prefetch,
        shutdown=shutdown,
        types=types,
        partition_by=partition_by,
        patterns=patterns or {},
        reconnect=reconnect,
        inbox_retention=inbox_retention,
        inbox=inbox,
        limits=limits,
    )
