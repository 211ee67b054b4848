"""Local queues: the in-process endpoint kind (buffered delivery).

A local queue is a supervised actor (or, with ``partition_by``, a small
pool of them) whose trio memory-channel mailbox holds the deliveries. It
accepts by putting a delivery in the mailbox, answers an ask with an actor
ask, and settles by counting: nothing outlives the process.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, final

import trio

from .._checks import endpoint_uri, positive_int, positive_seconds
from .._errors import ActorStopped, MailboxFull, PartitionKeyError
from ..actors import ActorRef
from ..mailbox import DEFAULT_MAILBOX_CAPACITY, DeadLetterReason, MailboxSpec, Overflow
from ..supervision import Backoff
from ._policy import ErrorPolicy
from ._seam import HANDLED, TRIED_AGAIN, Delivery, DeliveryMode, EndpointHost, Settlement


def _not_running() -> None:
    raise RuntimeError("the endpoint is not running: it counts deliveries once started")


def _actor_name(uri: str) -> str:
    return uri.replace("/", "%2F")


@final
class LocalQueue:
    """An in-process queue endpoint; declare one with :func:`local_queue`.

    Implements :class:`~triobus.Endpoint`. One declared queue runs in one
    bus at a time.
    """

    delivery_mode = DeliveryMode.BUFFERED

    def __init__(
        self,
        uri: str,
        *,
        mailbox: MailboxSpec,
        max_concurrency: int,
        errors: ErrorPolicy,
        shutdown: float,
        partition_by: Callable[[Any], Hashable] | None,
    ) -> None:
        self._uri = endpoint_uri(uri)
        self.mailbox = mailbox
        self.max_concurrency = positive_int("max_concurrency", max_concurrency)
        self._errors = errors
        self.shutdown = positive_seconds("shutdown", shutdown)
        self.partition_by = partition_by
        if partition_by is not None and self.max_concurrency < 2:
            raise ValueError(
                f"endpoint {uri!r}: partition_by needs max_concurrency >= 2 "
                "(one partition is just an ordered queue)"
            )
        #: The running actors (one, or one per partition); empty until started.
        self.refs: tuple[ActorRef, ...] = ()
        #: The only actor, when the queue is not partitioned and running.
        self._only: ActorRef | None = None
        self._host: EndpointHost | None = None
        # The host's counters, bound at start.
        self._accepted: Callable[[], None] = _not_running
        self._settled: Callable[[], None] = _not_running
        #: Deliveries waiting for their ``due`` moment, and what cancels the wait.
        self._waiting: dict[Delivery, trio.CancelScope] = {}
        #: The same deliveries by (due, order taken): ties go in the order taken.
        self._due: list[tuple[float, int, Delivery]] = []
        self._taken = itertools.count()
        #: One release at a time, so what falls due is queued in order.
        self._releasing = trio.Lock()
        #: A final stop is under way: nothing starts waiting any more.
        self._stopping = False

    @property
    def uri(self) -> str:
        return self._uri

    @property
    def errors(self) -> ErrorPolicy:
        return self._errors

    # ------------------------------------------------------------ life cycle

    async def start(self, host: EndpointHost) -> None:
        if self._host is not None:
            raise RuntimeError(f"endpoint {self._uri!r} is running in a bus already")
        self._host = host
        self._accepted = host.accepted
        self._settled = host.settled
        supervisor = host.supervisor
        name = _actor_name(self._uri)
        path = f"{supervisor.path}/{name}"

        def factory() -> Any:
            return host.handler_actor(self, path)

        if self.partition_by is None:
            names = [name]
            concurrency = self.max_concurrency
        else:
            names = [f"{name}#{index}" for index in range(self.max_concurrency)]
            concurrency = 1
        refs = []
        for actor_name in names:
            refs.append(
                await supervisor.spawn(
                    factory,
                    name=actor_name,
                    mailbox=self.mailbox,
                    max_concurrency=concurrency,
                    shutdown=self.shutdown,
                )
            )
        self.refs = tuple(refs)
        if self.partition_by is None:
            self._only = self.refs[0]

    async def stop(self) -> None:
        self._stopping = True
        try:
            self._drop_waiting()
            for ref in reversed(self.refs):
                await ref.stop()
        finally:
            self._stopping = False
            self._host = None
            self._only = None
            self.refs = ()

    # ------------------------------------------------------------ deliveries

    def pick(self, message: object) -> ActorRef:
        """The actor that takes ``message`` (by its partition key, if any).

        Raises:
            PartitionKeyError: ``partition_by`` raised, or gave an unhashable key.
        """
        if not self.refs:
            raise ActorStopped(f"endpoint {self._uri!r} is not running")
        if self.partition_by is None:
            return self.refs[0]
        try:
            key = hash(self.partition_by(message))
        except Exception as exc:
            raise PartitionKeyError(
                f"endpoint {self._uri!r}: partition_by failed on {type(message).__qualname__} "
                f"({exc!r}); it must return a hashable key for every message routed here"
            ) from exc
        return self.refs[key % len(self.refs)]

    def accept_nowait(self, delivery: Delivery) -> None:
        ref = self._only or self.pick(delivery.message)
        self._accepted()
        if delivery.due is not None:
            self._wait(delivery)
            return
        try:
            ref.tell_nowait(delivery)
        except ActorStopped:
            raise  # a dead letter already, which settled it
        except BaseException:
            self._settled()
            raise

    async def accept(self, delivery: Delivery) -> None:
        ref = self._only or self.pick(delivery.message)
        self._accepted()
        if delivery.due is not None:
            self._wait(delivery)
            return
        try:
            await ref.tell(delivery)
        except ActorStopped:
            raise  # a dead letter already, which settled it
        except BaseException:
            self._settled()
            raise

    def ask(self, delivery: Delivery, timeout: float | None) -> Awaitable[Any]:
        ref = self._only or self.pick(delivery.message)
        return ref.post_ask(delivery, timeout)

    def settle(self, delivery: Delivery, settlement: Settlement) -> None:
        # (HANDLED first: an identity test is far cheaper than hashing an enum member.)
        if settlement is not HANDLED and settlement in TRIED_AGAIN and self._host is not None:
            self._wait(delivery)  # still in flight: tried again at its due moment
            return
        self._settled()

    def keep(self, delivery: Delivery) -> bool:
        return False  # in memory only: a final stop dead-letters the backlog

    # ------------------------------------------------------------ scheduled

    def _wait(self, delivery: Delivery) -> None:
        """Hold ``delivery`` (counted in flight) until ``delivery.due``, then queue it.

        During a final stop (a retry asked for, or a scheduled message
        released, while the backlog drains) it is dead-lettered at once
        instead: the bus's nursery would cancel the wait, losing it.
        """
        assert self._host is not None and delivery.due is not None
        if self._stopping:
            self._host_dead_letters(delivery, DeadLetterReason.SHUTDOWN, None)
            return
        scope = trio.CancelScope()
        self._waiting[delivery] = scope
        heapq.heappush(self._due, (delivery.due, next(self._taken), delivery))
        seconds = max(0.0, delivery.due - self._host.wall_clock())
        self._host.nursery.start_soon(self._deliver_at, delivery, scope, seconds)

    async def _deliver_at(
        self, delivery: Delivery, scope: trio.CancelScope, seconds: float
    ) -> None:
        """Wait until ``delivery`` is due, then queue it with every other one due by then.

        Waits that end in one instant end in any order (trio's scheduler);
        the release takes what is due in order of (due, order taken), so
        messages due at one moment are handled in the order they were sent.
        """
        host = self._host
        assert host is not None and delivery.due is not None
        with scope:
            await trio.sleep(seconds)
        async with self._releasing:
            if delivery not in self._waiting:
                return  # queued with an earlier one, or dead-lettered by a final stop
            now = max(delivery.due, host.wall_clock())
            while self._due and self._due[0][0] <= now:
                _, _, due = heapq.heappop(self._due)
                wait = self._waiting.pop(due, None)
                if wait is not None:
                    wait.cancel()  # its own task has nothing left to do
                    await self._queue(host, due)

    async def _queue(self, host: EndpointHost, delivery: Delivery) -> None:
        """Put a delivery that fell due in its actor's mailbox, or in dead letters."""
        delivery.due = None
        try:
            ref = self._only or self.pick(delivery.message)
        except ActorStopped as exc:  # the queue stopped meanwhile
            host.dead_letters.record(delivery, self._uri, DeadLetterReason.STOPPED, exc)
            return
        except Exception as exc:
            host.dead_letters.record(delivery, self._uri, DeadLetterReason.UNDELIVERABLE, exc)
            return
        try:
            try:
                ref.tell_nowait(delivery)
            except MailboxFull:
                await ref.tell(delivery)  # ``block``: wait for room
        except MailboxFull as exc:  # ``fail``: refused, and no caller left to tell
            host.dead_letters.record(delivery, self._uri, DeadLetterReason.MAILBOX_FULL, exc)
        except ActorStopped:
            pass  # a dead letter already (the endpoint stopped), which settled it

    def _drop_waiting(self) -> None:
        """A final stop: what waits for its moment is dead-lettered (reason ``shutdown``)."""
        waiting, self._waiting = self._waiting, {}
        self._due = []
        for delivery, scope in waiting.items():
            scope.cancel()
            self._host_dead_letters(delivery, DeadLetterReason.SHUTDOWN, None)

    def _host_dead_letters(
        self, delivery: Delivery, reason: DeadLetterReason, error: Exception | None
    ) -> None:
        assert self._host is not None
        self._host.dead_letters.record(delivery, self._uri, reason, error)

    def __repr__(self) -> str:
        return f"<LocalQueue {self._uri!r} actors={len(self.refs)}>"


def local_queue(
    uri: str,
    *,
    capacity: float = DEFAULT_MAILBOX_CAPACITY,
    max_concurrency: int = 1,
    overflow: Overflow | str = Overflow.BLOCK,
    retries: int = 2,
    backoff: Backoff | None = None,
    errors: ErrorPolicy | None = None,
    shutdown: float = 5.0,
    partition_by: Callable[[Any], Hashable] | None = None,
) -> LocalQueue:
    """Declare an in-process queue endpoint (buffered delivery).

    Args:
        uri: the name routes refer to.
        capacity: messages that may wait (``math.inf`` for unbounded).
        max_concurrency: messages handled at once (1 keeps order).
        overflow: what a full queue does (see :class:`Overflow`).
        retries: retries after a handler failure, before dead letters.
        backoff: the wait between retries (none by default: at once, in
            place); with one, the message leaves the queue while it waits.
        errors: a full :class:`ErrorPolicy` (rules per exception type);
            replaces ``retries`` and ``backoff``.
        shutdown: seconds to drain at shutdown before the rest is dead-lettered.
        partition_by: with ``max_concurrency > 1``, a key function: messages
            with one key are handled in order, different keys at once.

    Raises:
        ValueError: a value out of range (named in the message).
    """
    return LocalQueue(
        uri,
        mailbox=MailboxSpec(capacity=capacity, overflow=overflow),
        max_concurrency=max_concurrency,
        errors=errors if errors is not None else ErrorPolicy.retries(retries, backoff),
        shutdown=shutdown,
        partition_by=partition_by,
    )
