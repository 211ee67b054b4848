"""Local queues: the in-process endpoint kind (buffered delivery).

A local queue is a supervised actor (or, with ``partition_by``, a small
pool of them) whose trio memory-channel mailbox holds the deliveries. It
accepts by putting a delivery in the mailbox, answers an ask with an actor
ask, and settles by counting: nothing outlives the process.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Any, final

from .._errors import ActorStopped, PartitionKeyError
from ..actors import ActorRef
from ..mailbox import DEFAULT_MAILBOX_CAPACITY, MailboxSpec, Overflow
from ..supervision import Backoff
from ._retry import RetryPolicy
from ._seam import Delivery, DeliveryMode, EndpointHost, Settlement


def _positive_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    return value


def _positive_seconds(name: str, value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


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
        retry: RetryPolicy,
        shutdown: float,
        partition_by: Callable[[Any], Hashable] | None,
    ) -> None:
        if not isinstance(uri, str) or not uri:
            raise ValueError(f"an endpoint uri is a non-empty string, got {uri!r}")
        self._uri = uri
        self.mailbox = mailbox
        self.max_concurrency = _positive_int("max_concurrency", max_concurrency)
        self._retry = retry
        self.shutdown = _positive_seconds("shutdown", shutdown)
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

    @property
    def uri(self) -> str:
        return self._uri

    @property
    def retry(self) -> RetryPolicy:
        return self._retry

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
        try:
            for ref in reversed(self.refs):
                await ref.stop()
        finally:
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
        self._settled()

    def keep(self, delivery: Delivery) -> bool:
        return False  # in memory only: a final stop dead-letters the backlog

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
    shutdown: float = 5.0,
    partition_by: Callable[[Any], Hashable] | None = None,
) -> LocalQueue:
    """Declare an in-process queue endpoint (buffered delivery).

    Args:
        uri: the name routes refer to.
        capacity: messages that may wait (``math.inf`` for unbounded).
        max_concurrency: messages handled at once (1 keeps order).
        overflow: what a full queue does (see :class:`Overflow`).
        retries: retries in place after a handler failure, before dead letters.
        backoff: the wait between retries (none by default).
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
        retry=RetryPolicy(retries=retries, backoff=backoff),
        shutdown=shutdown,
        partition_by=partition_by,
    )
