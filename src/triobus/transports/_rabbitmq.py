"""RabbitMQ: the :class:`~triobus.BrokerTransport` on aio-pika.

:func:`rabbitmq_transport` makes a :class:`RabbitMQTransport`: one AMQP
connection per transport (per process and bus), opened with aio-pika on the
trio run's shared asyncio bridge. For an endpoint with uri ``U`` it maps the
flows (:class:`~triobus.transports.Flow`) onto RabbitMQ so:

- ``WORK``: the durable queue ``U``, published through the default exchange.
- ``EVENT``: the durable topic exchange ``U``, the message name its routing
  key; each event subscription is a durable queue of its own name, bound to
  ``U`` by each message name and each pattern (``*`` and ``#`` as RabbitMQ
  matches them).
- ``REPLY``: a queue named by the caller's reply address, not durable,
  deleted by RabbitMQ once unused for ``reply_expiry`` seconds (so it goes
  away with its process, but lives through an endpoint's restart).
- ``RETRY``: the default exchange, to the queue of the one subscription.
- ``DEAD_LETTER``: the fanout exchange ``U.dead-letters`` and its durable
  queue ``U.dead-letters``. Every work and event queue names that exchange
  as its ``x-dead-letter-exchange``, so what RabbitMQ itself rejects lands
  there too.

Durable queues are quorum queues by default: RabbitMQ counts their
deliveries (``x-delivery-count``), which become
:attr:`~triobus.transports.IncomingMessage.redeliveries`.

Every message is published with publisher confirms (persistent, except
replies); :meth:`RabbitMQTransport.publish` returns once RabbitMQ confirmed
each message of the batch, published concurrently in one crossing to the
loop. A consumer is a channel of its own with its prefetch as ``basic.qos``.

The connection is not robust: when it is lost, every call fails with
:class:`~triobus.BrokerUnavailable` (a waiting fetch wakes with it) and the
endpoint's supervisor connects again. Nothing here reconnects by itself.

Every aio-pika object lives on the bridge's loop and is touched there only:
the trio side holds the bridge and hands calls over; the ``_Link`` and
``_LoopConsumer`` objects run on the loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import (
    TYPE_CHECKING,
    Any,
    Final,
    Literal,
    TypeVar,
    TypeVarTuple,
    Unpack,
    cast,
    final,
)
from urllib.parse import urlsplit, urlunsplit

import trio

from .._errors import BridgeClosed, BrokerUnavailable
from ._bridge import AsyncioBridge, shared_asyncio_bridge
from ._endpoint import BrokerEndpoint, broker_endpoint
from ._transport import (
    Flow,
    IncomingMessage,
    OutgoingMessage,
    Subscription,
    Topology,
    Verdict,
)

if TYPE_CHECKING:
    from collections.abc import Coroutine

    import aio_pika.abc
    import aiormq.abc
    from pamqp.common import FieldTable

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

#: The local RabbitMQ with its default user.
DEFAULT_URL: Final = "amqp://guest:guest@127.0.0.1:5672/"

#: How long closing a connection may take under cancellation.
_CLOSE_DEADLINE: Final = 10.0

QueueType = Literal["quorum", "classic"]


def rabbitmq_transport(
    url: str = DEFAULT_URL,
    *,
    queue_type: QueueType = "quorum",
    reply_expiry: float = 60.0,
    connect_timeout: float = 10.0,
    connection_name: str | None = None,
) -> RabbitMQTransport:
    """A transport to the RabbitMQ at ``url`` (``amqp://user:password@host:port/vhost``).

    Args:
        url: the broker; ``amqps://`` for TLS, query options as aio-pika takes them.
        queue_type: the type of the durable queues (work, event subscriptions,
            dead letters). ``"quorum"`` (RabbitMQ 3.8 and later) counts
            redeliveries; ``"classic"`` only flags them. A queue keeps the type
            it was first declared with: a transport of the other type fails
            its :meth:`~RabbitMQTransport.declare`.
        reply_expiry: seconds after which RabbitMQ deletes a reply queue nobody
            consumes (its process is gone).
        connect_timeout: seconds :meth:`~RabbitMQTransport.connect` waits for
            the broker.
        connection_name: the connection's name in RabbitMQ's management UI and
            ``rabbitmqctl list_connections client_properties``.

    Needs ``triobus[rabbitmq]`` (aio-pika).

    Raises:
        ValueError: ``queue_type``, ``reply_expiry`` or ``connect_timeout`` is invalid.
    """
    return RabbitMQTransport(
        url,
        queue_type=queue_type,
        reply_expiry=reply_expiry,
        connect_timeout=connect_timeout,
        connection_name=connection_name,
    )


def rabbitmq_endpoint(
    uri: str, *, url: str = DEFAULT_URL, queue_type: QueueType = "quorum", **options: Any
) -> BrokerEndpoint:
    """A broker endpoint on the RabbitMQ at ``url``: ``broker_endpoint(uri,
    rabbitmq_transport(url, queue_type=queue_type), **options)``.

    ``options`` are :func:`~triobus.broker_endpoint`'s (``retries``,
    ``errors``, ``prefetch``, ``inbox``, ``patterns``, ...).
    """
    return broker_endpoint(uri, rabbitmq_transport(url, queue_type=queue_type), **options)


def _without_password(url: str) -> str:
    """``url`` with its password left out, for messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        userinfo, _, host = parts.netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        return urlunsplit(parts._replace(netloc=f"{user}@{host}"))
    except ValueError:
        return "<an unreadable URL>"


def _url_problem(url: str) -> str | None:
    """What makes ``url`` no AMQP URL, or ``None``."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (a bad port raises)
    except ValueError as exc:
        return f"it cannot be read ({exc})"
    if parts.scheme not in ("amqp", "amqps"):
        return f"its scheme is {parts.scheme!r}, not amqp or amqps"
    if not parts.hostname:
        return "it names no host"
    return None


@final
class RabbitMQTransport:
    """One AMQP connection to RabbitMQ: a :class:`~triobus.BrokerTransport` (see the module).

    Made by :func:`rabbitmq_transport`. Use it from the trio run that
    connected it; :meth:`connect` again after a :class:`~triobus.BrokerUnavailable`.
    """

    def __init__(
        self,
        url: str,
        *,
        queue_type: QueueType = "quorum",
        reply_expiry: float = 60.0,
        connect_timeout: float = 10.0,
        connection_name: str | None = None,
    ) -> None:
        if queue_type not in ("quorum", "classic"):
            raise ValueError(f"queue_type must be 'quorum' or 'classic', not {queue_type!r}")
        if not (reply_expiry > 0 and math.isfinite(reply_expiry)):
            raise ValueError(
                f"reply_expiry must be a positive number of seconds, not {reply_expiry!r}"
            )
        if not (connect_timeout > 0 and math.isfinite(connect_timeout)):
            raise ValueError(
                f"connect_timeout must be a positive number of seconds, not {connect_timeout!r}"
            )
        self.url = url
        self.queue_type: QueueType = queue_type
        self._description = f"RabbitMQ at {_without_password(url)}"
        self._link = _Link(
            url,
            self._description,
            queue_type=queue_type,
            reply_expiry_ms=round(reply_expiry * 1000),
            connect_timeout=connect_timeout,
            connection_name=connection_name,
        )
        self._bridge: AsyncioBridge | None = None
        self._bridge_user: contextlib.AsyncExitStack | None = None

    @property
    def description(self) -> str:
        """``"RabbitMQ at amqp://user@host:port/vhost"``: the URL without its password."""
        return self._description

    def __repr__(self) -> str:
        state = "connected" if self._bridge is not None else "closed"
        return f"<RabbitMQTransport {_without_password(self.url)} {state}>"

    async def connect(self) -> None:
        """Open the connection (a lost one is replaced; an open one is kept).

        Raises:
            BrokerUnavailable: the URL is no AMQP URL, the broker cannot be
                reached, refused the credentials or the virtual host, or did
                not answer within ``connect_timeout``.
        """
        problem = _url_problem(self.url)
        if problem is not None:
            raise BrokerUnavailable(
                f"{self._description}: the URL is not an AMQP URL: {problem}; "
                "write it as amqp://user:password@host:5672/vhost"
            )
        entered = self._bridge is None
        if entered:
            stack = contextlib.AsyncExitStack()
            self._bridge = await stack.enter_async_context(shared_asyncio_bridge())
            self._bridge_user = stack
        try:
            await self._run(self._link.open)
        except BaseException:
            if entered:
                await self._leave_bridge()
            raise

    async def close(self) -> None:
        """Close the connection; its consumers stop and their unsettled messages go back.

        Finishes under cancellation too, within a deadline.
        """
        bridge = self._bridge
        if bridge is None:
            return
        with trio.move_on_after(_CLOSE_DEADLINE, shield=True):
            try:
                with contextlib.suppress(BridgeClosed):
                    await bridge.run(self._link.close)
            finally:
                await self._leave_bridge()

    async def _leave_bridge(self) -> None:
        stack, self._bridge_user, self._bridge = self._bridge_user, None, None
        if stack is not None:
            await stack.aclose()

    async def declare(self, topology: Topology) -> None:
        """Declare the endpoint's queues, exchanges and bindings (see the module).

        Raises:
            BrokerUnavailable: the connection is lost, or RabbitMQ refused a
                declaration (a queue of that name exists with other settings).
        """
        await self._run(self._link.declare, topology)

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish ``messages`` concurrently; return once RabbitMQ confirmed every one.

        A reply whose queue is gone (its caller's process ended) and an event
        no subscription matches are dropped by RabbitMQ, as they should be.

        Raises:
            BrokerUnavailable: the connection is lost, or RabbitMQ refused or
                could not route a message (a work, retry or dead-letter queue
                is missing: declare the topology first). What was not
                confirmed may still have arrived: the caller sends it again.
        """
        if messages:
            await self._run(self._link.publish, list(messages))

    async def subscribe(self, subscription: Subscription) -> _RabbitMQConsumer:
        """Consume ``subscription``'s queue on a channel of its own, prefetch as ``basic.qos``.

        Raises:
            BrokerUnavailable: the connection is lost, or the queue is missing
                (declare the topology first).
        """
        bridge = self._connected()
        consumer = _LoopConsumer(self._link, subscription)
        await self._run(consumer.start)
        return _RabbitMQConsumer(bridge, consumer, self._description)

    def _connected(self) -> AsyncioBridge:
        if self._bridge is None:
            raise BrokerUnavailable(f"{self._description}: not connected; call connect() first")
        return self._bridge

    async def _run(self, fn: Callable[[Unpack[Ts]], Coroutine[Any, Any, T]], *args: *Ts) -> T:
        return await _cross(self._connected(), self._description, fn, *args)


async def _cross(
    bridge: AsyncioBridge,
    description: str,
    fn: Callable[[Unpack[Ts]], Coroutine[Any, Any, T]],
    *args: *Ts,
) -> T:
    """Run ``fn(*args)`` on the loop; a stopped bridge is a broker out of reach."""
    try:
        return await bridge.run(fn, *args)
    except BridgeClosed as exc:
        raise BrokerUnavailable(
            f"{description}: the asyncio bridge stopped ({exc}); connect() again"
        ) from exc


@final
class _RabbitMQConsumer:
    """One subscription's consumer on RabbitMQ: a :class:`~triobus.transports.Consumer`."""

    def __init__(self, bridge: AsyncioBridge, consumer: _LoopConsumer, description: str) -> None:
        self._bridge = bridge
        self._consumer = consumer
        self._description = description

    def __repr__(self) -> str:
        return f"<RabbitMQ consumer of {self._consumer.queue!r} on {self._description}>"

    async def fetch(self, max_count: int) -> list[IncomingMessage]:
        """Wait for at least one message; return up to ``max_count`` of them (one crossing).

        Raises:
            BrokerUnavailable: the connection or the consumer's channel is lost
                (or the consumer is closed).
        """
        if max_count < 1:
            raise ValueError(f"max_count must be at least 1, not {max_count}")
        return await _cross(self._bridge, self._description, self._consumer.fetch, max_count)

    async def settle(self, outcomes: Sequence[tuple[IncomingMessage, Verdict]]) -> None:
        """Ack or requeue each fetched message, all in one crossing.

        A message settled before, or fetched by another consumer, is skipped.

        Raises:
            BrokerUnavailable: the connection or the channel is lost: RabbitMQ
                delivers what was not settled again.
        """
        if outcomes:
            await _cross(self._bridge, self._description, self._consumer.settle, list(outcomes))

    async def close(self) -> None:
        """Cancel the consumer and close its channel: what was not settled goes back."""
        with trio.move_on_after(_CLOSE_DEADLINE, shield=True), contextlib.suppress(BridgeClosed):
            await self._bridge.run(self._consumer.close)


# ---------------------------------------------------------------- the loop side


def _client_errors() -> tuple[type[BaseException], ...]:
    """What aio-pika and aiormq raise when the broker or the connection fails."""
    try:
        from aio_pika.exceptions import CONNECTION_EXCEPTIONS
    except ImportError as exc:
        raise ImportError(
            "the RabbitMQ transport needs aio-pika: pip install 'triobus[rabbitmq]'"
        ) from exc

    return (*CONNECTION_EXCEPTIONS, asyncio.TimeoutError)


def _reason(exc: BaseException) -> str:
    """What the broker said (its reply text), else the exception itself."""
    frame = getattr(exc, "frame", None)
    for candidate in (frame, *getattr(exc, "args", ())):
        text = getattr(candidate, "reply_text", None)
        if text:
            return str(text)
    return repr(exc) if not str(exc) else str(exc)


def _connect_error(description: str, timeout: float, exc: BaseException) -> BrokerUnavailable:
    from aiormq.exceptions import AuthenticationError, ProbableAuthenticationError

    if isinstance(exc, (AuthenticationError, ProbableAuthenticationError)):
        advice = "check the user name and password in the URL"
        what = "refused the credentials"
    elif isinstance(exc, asyncio.TimeoutError):
        advice = "check the host and port in the URL, or raise connect_timeout"
        what = f"did not answer within {timeout} s"
    elif isinstance(exc, OSError):
        advice = "check that the server runs and that the host and port in the URL are right"
        what = "cannot be reached"
    else:
        advice = "check the virtual host in the URL and the user's permissions on it"
        what = "refused the connection"
    return BrokerUnavailable(f"{description} {what} ({_reason(exc)}): {advice}")


def _headers(raw: Mapping[str, Any] | None) -> dict[str, str]:
    """A message's headers as strings: text as it is, numbers written out, tables left out."""
    if not raw:
        return {}
    headers: dict[str, str] = {}
    for key, value in raw.items():
        if isinstance(value, str):
            headers[key] = value
        elif isinstance(value, bytes):
            headers[key] = value.decode("utf-8", "replace")
        elif isinstance(value, (int, float)):
            headers[key] = str(value)
    return headers


@final
class _Link:
    """The loop side of a transport: the connection and the publishing channel."""

    def __init__(
        self,
        url: str,
        description: str,
        *,
        queue_type: QueueType,
        reply_expiry_ms: int,
        connect_timeout: float,
        connection_name: str | None,
    ) -> None:
        self.url = url
        self.description = description
        self.queue_type: QueueType = queue_type
        self.reply_expiry_ms = reply_expiry_ms
        self.connect_timeout = connect_timeout
        self.connection_name = connection_name
        self.connection: aio_pika.abc.AbstractConnection | None = None
        #: Whether the connection closed (its close callback ran: aio-pika's
        #: ``is_closed`` stays false when the broker closed it).
        self.gone = False
        #: Why it closed.
        self.lost: BaseException | None = None
        self._publisher: aio_pika.abc.AbstractChannel | None = None
        self.errors = _client_errors()

    def failure(self, doing: str, exc: BaseException | None = None) -> BrokerUnavailable:
        """The error of a call that failed while ``doing`` something."""
        if exc is None and self.lost is not None:
            exc = self.lost
        from aiormq.exceptions import AMQPConnectionError

        why = f" ({_reason(exc)})" if exc is not None else ""
        # A channel hears of a lost connection before the connection says it is closed.
        if self.connection is None or self.gone or isinstance(exc, AMQPConnectionError):
            return BrokerUnavailable(
                f"{self.description}: the connection is lost{why} while {doing}; connect() again"
            )
        return BrokerUnavailable(f"{self.description} failed while {doing}{why}")

    def check_open(self, doing: str) -> aio_pika.abc.AbstractConnection:
        connection = self.connection
        if connection is None or self.gone:
            raise self.failure(doing)
        return connection

    async def open(self) -> None:
        import aio_pika
        from yarl import URL

        if self.connection is not None and not self.gone:
            return
        await self.close()
        properties: FieldTable | None = (
            {"connection_name": self.connection_name} if self.connection_name else None
        )
        connection = aio_pika.Connection(URL(self.url), client_properties=properties)
        try:
            await connection.connect(timeout=self.connect_timeout)
        except self.errors as exc:
            await connection.close()
            raise _connect_error(self.description, self.connect_timeout, exc) from exc
        self.gone, self.lost = False, None
        connection.close_callbacks.add(self._on_close)
        self.connection = connection

    def _on_close(self, connection: object, exc: BaseException | None) -> None:
        if connection is self.connection:
            self.gone, self.lost = True, exc

    async def close(self) -> None:
        connection, self.connection = self.connection, None
        self._publisher = None
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(*self.errors):
                await connection.close()

    async def declare(self, topology: Topology) -> None:
        import aio_pika

        connection = self.check_open("declaring a topology")
        uri = topology.endpoint
        dead_letters = f"{uri}.dead-letters"
        durable: FieldTable = {
            "x-queue-type": self.queue_type,
            "x-dead-letter-exchange": dead_letters,
        }
        doing = f"declaring the topology of {uri!r}"
        # A refused declaration closes its channel: one channel for this call alone.
        try:
            channel = await connection.channel(publisher_confirms=False)
        except self.errors as exc:
            raise self.failure(doing, exc) from exc
        try:
            doing = f"declaring the exchange {dead_letters!r}"
            dead_exchange = await channel.declare_exchange(
                dead_letters, aio_pika.ExchangeType.FANOUT, durable=True
            )
            doing = f"declaring the queue {dead_letters!r}"
            dead_queue = await channel.declare_queue(
                dead_letters, durable=True, arguments={"x-queue-type": self.queue_type}
            )
            await dead_queue.bind(dead_exchange, routing_key="")
            doing = f"declaring the queue {uri!r}"
            work = await channel.declare_queue(uri, durable=True, arguments=durable)
            doing = f"declaring the exchange {uri!r}"
            events = await channel.declare_exchange(uri, aio_pika.ExchangeType.TOPIC, durable=True)
            for subscription in topology.subscriptions:
                name = subscription.name
                doing = f"declaring the queue {name!r}"
                if subscription.flow is Flow.REPLY:
                    await channel.declare_queue(
                        name,
                        durable=False,
                        arguments={"x-queue-type": "classic", "x-expires": self.reply_expiry_ms},
                    )
                elif subscription.flow is not Flow.DEAD_LETTER:
                    queue = (
                        work
                        if name == uri
                        else await channel.declare_queue(name, durable=True, arguments=durable)
                    )
                    if subscription.flow is Flow.EVENT:
                        for key in (*subscription.message_names, *subscription.patterns):
                            doing = f"binding the queue {name!r} to {uri!r} by {key!r}"
                            await queue.bind(events, routing_key=key)
        except self.errors as exc:
            raise self.failure(doing, exc) from exc
        finally:
            if not channel.is_closed:
                with contextlib.suppress(*self.errors):
                    await channel.close()

    async def _publisher_channel(self) -> aio_pika.abc.AbstractChannel:
        channel = self._publisher
        if channel is None or channel.is_closed:
            # The first publish, or a channel RabbitMQ closed (e.g. a missing exchange).
            connection = self.check_open("publishing")
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            self._publisher = channel
        return channel

    async def _publish_one(
        self, channel: aio_pika.abc.AbstractChannel, message: OutgoingMessage
    ) -> None:
        """Publish through aiormq's channel itself: an ``aio_pika.Message`` per message cost
        a tenth of the loop's time per publish, and the confirm is what is awaited (not
        the socket write: ``wait=False``).
        """
        import aiormq

        name, key, mandatory = _destination(message)
        # The concrete channel: its basic_publish takes ``wait`` (the abstract one does not).
        underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
        await underlay.basic_publish(
            message.body,
            exchange=name,
            routing_key=key,
            properties=aiormq.spec.Basic.Properties(
                headers=dict(message.headers),
                message_id=message.message_id,
                delivery_mode=1 if message.flow is Flow.REPLY else 2,
            ),
            mandatory=mandatory,
            wait=False,
        )

    async def publish(self, messages: list[OutgoingMessage]) -> None:
        try:
            channel = await self._publisher_channel()
        except self.errors as exc:
            raise self.failure("publishing", exc) from exc
        if len(messages) == 1:
            # The common case (concurrent callers, grouped by the bridge): no task of its own.
            try:
                await self._publish_one(channel, messages[0])
            except self.errors as exc:
                raise self._publish_failure(1, 1, messages[0], exc) from exc
            return
        results = await asyncio.gather(
            *(self._publish_one(channel, message) for message in messages),
            return_exceptions=True,
        )
        failed = [
            (message, result)
            for message, result in zip(messages, results, strict=True)
            if isinstance(result, BaseException)
        ]
        if failed:
            message, first = failed[0]
            if not isinstance(first, (*self.errors, asyncio.CancelledError)):
                raise first  # not the broker's doing
            raise self._publish_failure(len(failed), len(messages), message, first) from first

    def _publish_failure(
        self, failed: int, total: int, message: OutgoingMessage, exc: BaseException
    ) -> BrokerUnavailable:
        from aio_pika.exceptions import PublishError

        exchange, key, _ = _destination(message)
        where = f"exchange {exchange!r}" if exchange else "the default exchange"
        doing = (
            f"publishing {failed} of {total} messages (the first: {message.message_id!r} "
            f"to {where}, routing key {key!r})"
        )
        if isinstance(exc, PublishError):
            return BrokerUnavailable(
                f"{self.description} returned a message it could not route while {doing}: "
                f"no queue is bound; declare the endpoint's topology first"
            )
        if isinstance(exc, asyncio.CancelledError):
            exc = self.lost or exc
        return self.failure(doing, exc)


def _one_ack_for_all(sends: list[tuple[int, Verdict]], unsettled: set[int]) -> bool:
    """Whether one ``multiple`` ack settles ``sends``: all acks, and nothing still
    unsettled on the channel below the highest of them.
    """
    if len(sends) < 2 or any(verdict is not Verdict.ACK for _, verdict in sends):
        return False
    highest = max(tag for tag, _ in sends)
    return not unsettled or min(unsettled) > highest


def _destination(message: OutgoingMessage) -> tuple[str, str, bool]:
    """Where ``message`` goes: exchange, routing key, and whether it must reach a queue.

    An event may match no subscription and a reply's caller may be gone:
    both are dropped; work, retries and dead letters must be routed.
    """
    flow = message.flow
    if flow is Flow.WORK:
        return "", message.endpoint, True
    if flow is Flow.EVENT:
        return message.endpoint, message.message_name, False
    if flow is Flow.DEAD_LETTER:
        return f"{message.endpoint}.dead-letters", "", True
    if message.address is None:
        raise ValueError(f"a {flow} message needs an address ({message.message_id!r})")
    return "", message.address, flow is not Flow.REPLY


@final
class _LoopConsumer:
    """The loop side of a consumer: its channel, what arrived, what is not settled."""

    def __init__(self, link: _Link, subscription: Subscription) -> None:
        self.link = link
        self.subscription = subscription
        self.queue = (
            f"{subscription.endpoint}.dead-letters"
            if subscription.flow is Flow.DEAD_LETTER
            else subscription.name
        )
        self.classic = subscription.flow is Flow.REPLY or link.queue_type == "classic"
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._tag: str | None = None
        #: Delivered and not fetched yet.
        self._ready: collections.deque[aio_pika.abc.AbstractIncomingMessage] = collections.deque()
        #: Delivery tags fetched (or ready) and not settled.
        self._unsettled: set[int] = set()
        self._failure: BrokerUnavailable | None = None
        self._changed: asyncio.Event | None = None

    async def start(self) -> None:
        connection = self.link.check_open(f"subscribing to {self.queue!r}")
        self._changed = asyncio.Event()
        doing = f"subscribing to {self.queue!r}"
        try:
            channel = self._channel = await connection.channel(publisher_confirms=False)
            channel.close_callbacks.add(self._on_channel_close)
            await channel.set_qos(prefetch_count=self.subscription.prefetch)
            queue = await channel.get_queue(self.queue, ensure=False)
            self._tag = await queue.consume(self._on_message, no_ack=False)
        except self.link.errors as exc:
            if self._channel is not None and not self._channel.is_closed:
                with contextlib.suppress(*self.link.errors):
                    await self._channel.close()
            raise self.link.failure(doing, exc) from exc

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        if self._failure is not None:
            return
        assert message.delivery_tag is not None
        self._ready.append(message)
        self._unsettled.add(message.delivery_tag)
        assert self._changed is not None
        self._changed.set()

    def _on_channel_close(self, channel: object, exc: BaseException | None) -> None:
        if self._failure is None:
            doing = f"consuming {self.queue!r}"
            self._failure = (
                BrokerUnavailable(
                    f"{self.link.description}: the consumer of {self.queue!r} is closed"
                )
                if exc is None
                else self.link.failure(doing, exc)
            )
        self._ready.clear()
        self._unsettled.clear()
        if self._changed is not None:
            self._changed.set()

    async def fetch(self, max_count: int) -> list[IncomingMessage]:
        changed = self._changed
        assert changed is not None
        while not self._ready:
            if self._failure is not None:
                raise self._failure
            changed.clear()
            await changed.wait()
        if self._failure is not None:
            raise self._failure
        taken: list[IncomingMessage] = []
        ready = self._ready
        while ready and len(taken) < max_count:
            message = ready.popleft()
            taken.append(
                IncomingMessage(
                    message.body,
                    _headers(message.headers),
                    self._redeliveries(message),
                    message.delivery_tag,
                )
            )
        return taken

    def _redeliveries(self, message: aio_pika.abc.AbstractIncomingMessage) -> int | None:
        if self.classic:
            # A classic queue only flags a redelivery: how many is not known.
            return None if message.redelivered else 0
        count = (message.headers or {}).get("x-delivery-count", 0)
        return count if isinstance(count, int) else None

    async def settle(self, outcomes: list[tuple[IncomingMessage, Verdict]]) -> None:
        if self._failure is not None:
            raise self._failure
        assert self._channel is not None
        doing = f"settling messages of {self.queue!r}"
        unsettled = self._unsettled
        sends: list[tuple[int, Verdict]] = []
        for incoming, verdict in outcomes:
            tag = incoming.receipt
            if tag in unsettled:  # else settled before, or another consumer's
                unsettled.discard(tag)
                sends.append((tag, verdict))
        try:
            channel: aiormq.abc.AbstractChannel = await self._channel.get_underlay_channel()
            if _one_ack_for_all(sends, unsettled):
                # Every delivery up to the highest is acked now: one frame says so.
                await channel.basic_ack(max(tag for tag, _ in sends), multiple=True, wait=True)
                return
            last = len(sends) - 1
            for index, (tag, verdict) in enumerate(sends):
                # Frames go out in order: waiting for the last one's write waits for all.
                if verdict is Verdict.ACK:
                    await channel.basic_ack(tag, wait=index == last)
                else:
                    await channel.basic_nack(tag, requeue=True, wait=index == last)
        except self.link.errors as exc:
            raise self.link.failure(doing, exc) from exc

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if self._failure is None:
            self._failure = BrokerUnavailable(
                f"{self.link.description}: the consumer of {self.queue!r} is closed"
            )
        self._ready.clear()
        self._unsettled.clear()
        if self._changed is not None:
            self._changed.set()
        if channel is None or channel.is_closed:
            return
        with contextlib.suppress(*self.link.errors):
            if self._tag is not None:
                queue = await channel.get_queue(self.queue, ensure=False)
                await queue.cancel(self._tag)
            await channel.close()
