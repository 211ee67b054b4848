"""An in-memory broker: the test double of :class:`~triobus.BrokerTransport`.

:class:`MemoryBroker` keeps queues, topic-exchange bindings and unacked
messages in the trio run's memory, as RabbitMQ would, so broker endpoints
are tested without a server (as httpx's ``MockTransport`` tests clients).
Several buses in one trio run, each with its own :meth:`MemoryBroker.transport`,
stand for several processes. :meth:`MemoryBroker.go_down` and
:meth:`MemoryBroker.come_back` simulate a lost broker.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import final

import attrs
import trio

from .._errors import BrokerUnavailable
from ._transport import (
    Flow,
    IncomingMessage,
    OutgoingMessage,
    Subscription,
    Topology,
    Verdict,
)


def topic_matches(pattern: str, routing_key: str) -> bool:
    """Whether ``routing_key`` matches a topic ``pattern`` as RabbitMQ's topic exchanges match.

    Both are dot-separated words; in the pattern ``*`` stands for exactly
    one word and ``#`` for zero or more.
    """
    return _words_match(pattern.split("."), routing_key.split("."))


def _words_match(pattern: list[str], words: list[str]) -> bool:
    if not pattern:
        return not words
    first, rest = pattern[0], pattern[1:]
    if first == "#":
        return any(_words_match(rest, words[skip:]) for skip in range(len(words) + 1))
    if not words:
        return False
    return (first == "*" or first == words[0]) and _words_match(rest, words[1:])


@attrs.define(eq=False)
class _Stored:
    body: bytes
    headers: dict[str, str]
    redeliveries: int = 0


@final
class _Queue:
    def __init__(self, name: str) -> None:
        self.name = name
        self.ready: collections.deque[_Stored] = collections.deque()
        self.changed = trio.Event()

    def put(self, stored: _Stored, *, front: bool = False) -> None:
        if front:
            self.ready.appendleft(stored)
        else:
            self.ready.append(stored)
        self.changed.set()
        self.changed = trio.Event()


@final
class MemoryBroker:
    """Queues and topic bindings in memory; :meth:`transport` connects an endpoint to it."""

    def __init__(self) -> None:
        self.queues: dict[str, _Queue] = {}
        #: Per endpoint: (pattern, queue name) of its event subscriptions.
        self.bindings: dict[str, set[tuple[str, str]]] = {}
        #: Every message published, in order (for tests).
        self.published: list[OutgoingMessage] = []
        self.down = False
        self._consumers: list[_MemoryConsumer] = []

    def transport(self) -> MemoryTransport:
        """A transport to this broker (one per bus, as one connection per process)."""
        return MemoryTransport(self)

    def queue(self, name: str) -> list[bytes]:
        """The bodies ready in queue ``name`` (dead letters are in ``"<uri>.dead-letters"``)."""
        queue = self.queues.get(name)
        return [] if queue is None else [stored.body for stored in queue.ready]

    def queue_headers(self, name: str) -> list[dict[str, str]]:
        """The headers of the messages ready in queue ``name``."""
        queue = self.queues.get(name)
        return [] if queue is None else [dict(stored.headers) for stored in queue.ready]

    def inject(self, queue: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        """Put raw bytes in ``queue``, as a foreign client would."""
        self._queue(queue).put(_Stored(body, dict(headers or {})))

    def go_down(self) -> None:
        """Drop every connection: consumers fail, unacked messages go back to their queues."""
        self.down = True
        for consumer in list(self._consumers):
            consumer.lost()

    def come_back(self) -> None:
        """Take connections again."""
        self.down = False

    def _queue(self, name: str) -> _Queue:
        queue = self.queues.get(name)
        if queue is None:
            queue = self.queues[name] = _Queue(name)
        return queue

    def _check_up(self, what: str) -> None:
        if self.down:
            raise BrokerUnavailable(f"the memory broker is down ({what})")

    def _route(self, message: OutgoingMessage) -> list[str]:
        uri = message.endpoint
        if message.flow is Flow.WORK:
            return [uri]
        if message.flow is Flow.EVENT:
            bound = self.bindings.get(uri, ())
            return sorted(
                {queue for pattern, queue in bound if topic_matches(pattern, message.message_name)}
            )
        if message.flow is Flow.DEAD_LETTER:
            return [f"{uri}.dead-letters"]
        assert message.address is not None, f"a {message.flow} message needs an address"
        return [message.address]


@final
class MemoryTransport:
    """One connection to a :class:`MemoryBroker`."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker
        self.connected = False
        #: Topologies declared through this transport (for tests).
        self.declared: list[Topology] = []

    @property
    def description(self) -> str:
        return "the memory broker"

    async def connect(self) -> None:
        await trio.lowlevel.checkpoint()
        self.broker._check_up("connect")
        self.connected = True

    async def close(self) -> None:
        await trio.lowlevel.checkpoint()
        self.connected = False
        for consumer in list(self.broker._consumers):
            if consumer.transport is self:
                consumer.lost()

    def _check(self, what: str) -> None:
        self.broker._check_up(what)
        if not self.connected:
            raise BrokerUnavailable(f"the memory transport is not connected ({what})")

    async def declare(self, topology: Topology) -> None:
        await trio.lowlevel.checkpoint()
        self._check("declare")
        broker = self.broker
        uri = topology.endpoint
        broker._queue(uri)
        broker._queue(f"{uri}.dead-letters")
        bindings = broker.bindings.setdefault(uri, set())
        for subscription in topology.subscriptions:
            broker._queue(subscription.name)
            if subscription.flow is Flow.EVENT:
                for pattern in (*subscription.message_names, *subscription.patterns):
                    bindings.add((pattern, subscription.name))
        self.declared.append(topology)

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        await trio.lowlevel.checkpoint()
        self._check("publish")
        broker = self.broker
        for message in messages:
            broker.published.append(message)
            for name in broker._route(message):
                broker._queue(name).put(_Stored(message.body, dict(message.headers)))

    async def subscribe(self, subscription: Subscription) -> _MemoryConsumer:
        await trio.lowlevel.checkpoint()
        self._check("subscribe")
        consumer = _MemoryConsumer(
            self, self.broker._queue(subscription.name), subscription.prefetch
        )
        self.broker._consumers.append(consumer)
        return consumer


@final
class _MemoryConsumer:
    def __init__(self, transport: MemoryTransport, queue: _Queue, prefetch: int) -> None:
        self.transport = transport
        self.queue = queue
        self.prefetch = prefetch
        self.unacked: dict[int, _Stored] = {}
        self._tags = iter(range(1, 1 << 62))
        self.closed = False
        self._lost = trio.Event()
        #: Set when a settlement makes room under the prefetch limit.
        self._room = trio.Event()

    def lost(self) -> None:
        """The connection dropped: unacked messages go back, fetch fails."""
        if self.closed:
            return
        self.closed = True
        self._lost.set()
        for stored in reversed(list(self.unacked.values())):
            stored.redeliveries += 1
            self.queue.put(stored, front=True)
        self.unacked.clear()
        if self in self.transport.broker._consumers:
            self.transport.broker._consumers.remove(self)

    def _failed(self) -> BrokerUnavailable:
        return BrokerUnavailable(f"the memory broker's connection for {self.queue.name!r} is lost")

    async def fetch(self, max_count: int) -> list[IncomingMessage]:
        while True:
            if self.closed:
                raise self._failed()
            room = min(max_count, self.prefetch - len(self.unacked))
            if room > 0 and self.queue.ready:
                taken: list[IncomingMessage] = []
                while self.queue.ready and len(taken) < room:
                    stored = self.queue.ready.popleft()
                    tag = next(self._tags)
                    self.unacked[tag] = stored
                    taken.append(
                        IncomingMessage(stored.body, dict(stored.headers), stored.redeliveries, tag)
                    )
                await trio.lowlevel.checkpoint()
                return taken
            changed = self.queue.changed
            async with trio.open_nursery() as nursery:

                async def wait_lost(scope: trio.CancelScope = nursery.cancel_scope) -> None:
                    await self._lost.wait()
                    scope.cancel()

                nursery.start_soon(wait_lost)
                await (changed.wait() if room > 0 else self._room.wait())
                nursery.cancel_scope.cancel()

    async def settle(self, outcomes: Sequence[tuple[IncomingMessage, Verdict]]) -> None:
        await trio.lowlevel.checkpoint()
        if self.closed or self.transport.broker.down:
            raise self._failed()
        for incoming, verdict in outcomes:
            stored = self.unacked.pop(incoming.receipt, None)
            if stored is None:
                continue  # settled before, or given back when the connection dropped
            if verdict is Verdict.REQUEUE:
                stored.redeliveries += 1
                self.queue.put(stored, front=True)
        self._room.set()
        self._room = trio.Event()

    async def close(self) -> None:
        await trio.lowlevel.checkpoint()
        self.lost()
