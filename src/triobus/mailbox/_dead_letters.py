"""Dead letters: where every message that could not be delivered ends up.

A bounded ring of frozen records. Nothing triobus refuses, drops or fails
is dropped silently: it is recorded here with the reason, logged, and
handed to every subscriber.

Logging: each dead letter is one WARNING line on the ``triobus.dead_letters``
logger (recipient, reason, message type, message id when known, and the
message's repr capped by :func:`~triobus._errors.short_repr`; the exception,
if any, as ``exc_info``). What an actor dead-letters when it stops for good
is logged as one WARNING summary line per actor with the count instead.
"""

from __future__ import annotations

import abc
import enum
import logging
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any, final

import attrs
import trio

from .._errors import short_repr

#: Where dead letters are logged (WARNING); see the module docstring.
logger = logging.getLogger("triobus.dead_letters")

DEFAULT_DEAD_LETTER_CAPACITY = 10_000


class DeadLetterReason(enum.StrEnum):
    """Why a message became a dead letter."""

    #: Sent to an actor (or endpoint) that was already stopped.
    STOPPED = "stopped"
    #: Still queued (or in hand) when its actor stopped for good.
    SHUTDOWN = "shutdown"
    #: Its handler raised; the exception is attached.
    CRASHED = "crashed"
    #: Dropped by the mailbox's ``drop_oldest`` / ``drop_newest`` policy.
    MAILBOX_FULL = "mailbox_full"
    #: A reply that arrived after its ask had timed out, been cancelled or
    #: already been answered.
    LATE_REPLY = "late_reply"
    #: Every delivery attempt failed; the last exception is attached.
    FAILED = "failed"
    #: A message released by a handler could not be delivered.
    UNDELIVERABLE = "undeliverable"
    #: Its bytes do not decode (malformed, unknown name, newer version, oversize).
    UNDECODABLE = "undecodable"
    #: It decoded, but no handler for it is bound at the endpoint it reached.
    NO_HANDLER = "no_handler"
    #: Its handler was cut off (the process died) on every attempt it had.
    INTERRUPTED = "interrupted"


@final
@attrs.frozen
class DeadLetter:
    """One message that could not be delivered."""

    #: The message itself (never the internal wrapper around an ask).
    message: object
    #: The path of the actor or endpoint the message was meant for.
    recipient: str
    #: Why it could not be delivered.
    reason: DeadLetterReason
    #: The exception that made it a dead letter, if one did.
    exception: BaseException | None = None
    #: The message context (ids, headers) when the bus knows it.
    context: Mapping[str, Any] | None = None
    #: ``trio.current_time()`` when it was recorded (``None`` outside trio).
    time: float | None = None


Subscriber = Callable[[DeadLetter], None]


class Carrier(abc.ABC):
    """Base of the internal wrappers that carry a user message through a mailbox.

    A dead letter records the carried message and its context, never the
    wrapper; :meth:`dead_lettered` lets the wrapper's owner account for it.
    """

    __slots__ = ()

    @abc.abstractmethod
    def carried(self) -> tuple[object, Mapping[str, Any] | None]:
        """The user message and its context."""

    def carried_message(self) -> object:
        """The user message alone (cheaper than :meth:`carried`)."""
        return self.carried()[0]

    def dead_lettered(self, reason: DeadLetterReason) -> None:  # noqa: B027 - optional hook
        """Called once the carried message is recorded as a dead letter."""

    def left_over(self) -> bool:
        """Its actor stopped for good with it still queued: does the owner keep it?

        ``True`` means the owner keeps it for a later delivery (a durable
        store), so it is no dead letter; the default is ``False``.
        """
        return False


def _log(letter: DeadLetter) -> None:
    message_id = letter.context.get("message_id") if letter.context else None
    logger.warning(
        "dead letter to %s (reason %s): %s%s: %s",
        letter.recipient,
        letter.reason.value,
        type(letter.message).__qualname__,
        "" if message_id is None else f" id={message_id}",
        short_repr(letter.message),
        exc_info=letter.exception,
    )


def _now() -> float | None:
    try:
        return trio.current_time()
    except RuntimeError:
        return None


@final
class DeadLetters:
    """A bounded ring of :class:`DeadLetter` records.

    When the ring is full the oldest record is evicted and counted in
    :attr:`evicted`; :attr:`total` counts every record ever made.
    Subscribers are plain callables called synchronously with each record;
    a subscriber that raises is logged and kept.
    """

    __slots__ = ("_records", "_subscribers", "evicted", "total")

    def __init__(self, capacity: int = DEFAULT_DEAD_LETTER_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"dead letter capacity must be at least 1, got {capacity!r}")
        self._records: deque[DeadLetter] = deque(maxlen=capacity)
        self._subscribers: list[Subscriber] = []
        #: Records pushed out of the full ring.
        self.evicted = 0
        #: Records made since the ring was created.
        self.total = 0

    @property
    def capacity(self) -> int:
        """How many records the ring keeps."""
        maxlen = self._records.maxlen
        assert maxlen is not None
        return maxlen

    def record(
        self,
        message: object,
        recipient: str,
        reason: DeadLetterReason,
        exception: BaseException | None = None,
        context: Mapping[str, Any] | None = None,
        *,
        log: bool = True,
    ) -> DeadLetter:
        """Record one dead letter, log it (WARNING) and tell the subscribers.

        A :class:`Carrier` is recorded as the message it carries, with its context.
        ``log=False`` records without a log line, for a caller that records
        many at once and then calls :meth:`log_summary`.
        """
        carrier = message if isinstance(message, Carrier) else None
        if carrier is not None:
            message, carried_context = carrier.carried()
            if carried_context is not None:
                context = {**carried_context, **context} if context else carried_context
        letter = DeadLetter(message, recipient, reason, exception, context, _now())
        if len(self._records) == self._records.maxlen:
            self.evicted += 1
        self._records.append(letter)
        self.total += 1
        if log and logger.isEnabledFor(logging.WARNING):
            _log(letter)
        for subscriber in tuple(self._subscribers):
            try:
                subscriber(letter)
            except Exception:
                logger.exception("dead letter subscriber %r raised", subscriber)
        if carrier is not None:
            carrier.dead_lettered(reason)
        return letter

    def log_summary(self, recipient: str, count: int, reason: DeadLetterReason) -> None:
        """Log one WARNING line for ``count`` dead letters recorded with ``log=False``.

        The line reads ``"<recipient>: N message(s) dead-lettered at shutdown
        (reason ...)"``; nothing is logged when ``count`` is 0.
        """
        if count:
            logger.warning(
                "%s: %d message(s) dead-lettered at shutdown (reason %s)",
                recipient,
                count,
                reason.value,
            )

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call ``subscriber`` with every new record; returns the unsubscribe call."""
        self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

        return unsubscribe

    def clear(self) -> None:
        """Forget every kept record (the counters stay)."""
        self._records.clear()

    def __iter__(self) -> Iterator[DeadLetter]:
        return iter(tuple(self._records))

    def __len__(self) -> int:
        return len(self._records)

    def __repr__(self) -> str:
        return f"<DeadLetters kept={len(self)} total={self.total} evicted={self.evicted}>"
