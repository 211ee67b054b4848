"""The mailbox: a bounded trio memory channel plus a system lane.

User messages travel through a trio memory channel whose buffer is the
mailbox capacity (messages waiting, not the one in hand). System signals
(stop, restart) go to a small lane that the owner checks before each user
message, so they overtake any backlog. What happens when the channel is full
is the mailbox's overflow policy.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, final

import attrs
import trio

from .._choices import parse_choice
from .._errors import MailboxClosed, MailboxFull

DEFAULT_MAILBOX_CAPACITY = 1_000


class Overflow(enum.StrEnum):
    """What a full mailbox does with one more message."""

    #: Backpressure: ``await put`` waits for room; ``put_nowait`` raises
    #: :class:`MailboxFull`.
    BLOCK = "block"
    #: Refuse the new message with :class:`MailboxFull`.
    FAIL = "fail"
    #: Evict the oldest waiting message to dead letters, then take the new one.
    DROP_OLDEST = "drop_oldest"
    #: Send the new message to dead letters and keep the backlog.
    DROP_NEWEST = "drop_newest"


def _to_overflow(value: Overflow | str) -> Overflow:
    return parse_choice(Overflow, value, "overflow policy")


def _check_capacity(instance: object, attribute: object, value: float) -> None:
    if value != math.inf and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"mailbox capacity must be a whole number >= 1 or math.inf, got {value!r}")


@final
@attrs.frozen
class MailboxSpec:
    """How an actor's mailbox is built: its capacity and overflow policy."""

    #: Messages that may wait (the one being handled does not count).
    capacity: float = attrs.field(default=DEFAULT_MAILBOX_CAPACITY, validator=_check_capacity)
    #: What a full mailbox does with one more message.
    overflow: Overflow = attrs.field(default=Overflow.BLOCK, converter=_to_overflow)


@final
@attrs.frozen
class MailboxStatistics:
    """A snapshot of one mailbox."""

    #: User messages waiting.
    depth: int
    #: System signals waiting.
    system_depth: int
    #: The capacity the mailbox was built with.
    capacity: float
    #: The overflow policy.
    overflow: Overflow
    #: Messages dropped by ``drop_oldest`` / ``drop_newest`` so far.
    dropped: int
    #: Whether the mailbox still takes messages.
    closed: bool


DropHandler = Callable[[object, MailboxFull], None]


@final
class Mailbox:
    """A bounded mailbox with a system lane and an overflow policy.

    ``on_drop(message, error)`` is called with every message that the
    ``drop_oldest`` or ``drop_newest`` policy throws out; the owner sends it
    to dead letters (and fails its asker). Once :meth:`close` is called,
    every ``put`` raises :class:`MailboxClosed`; what is still queued stays
    readable with :meth:`get_nowait` until it is drained.
    """

    __slots__ = (
        "_on_drop",
        "_recv",
        "_send",
        "_system",
        "closed",
        "dropped",
        "spec",
    )

    def __init__(self, spec: MailboxSpec, on_drop: DropHandler) -> None:
        self.spec = spec
        send, recv = trio.open_memory_channel[Any](spec.capacity)
        self._send = send
        self._recv = recv
        # The system lane is made on first use: most mailboxes never see a signal.
        self._system: deque[object] | None = None
        self._on_drop = on_drop
        #: Whether :meth:`close` was called.
        self.closed = False
        #: Messages dropped by the overflow policy so far.
        self.dropped = 0

    # ------------------------------------------------------------ user lane

    # The owner's hot path calls the channel's own methods (fetched once,
    # kept in locals): no layer of ours, and no bound method kept per mailbox.

    @property
    def send_nowait(self) -> Callable[[object], None]:
        """Enqueue without the overflow policy (the channel's ``send_nowait``).

        It raises ``trio.WouldBlock`` when full (then :meth:`apply_overflow`)
        and ``trio.ClosedResourceError`` once closed. :meth:`put_nowait` is
        the same with the policy applied.
        """
        return self._send.send_nowait

    @property
    def get_nowait(self) -> Callable[[], object]:
        """Take the oldest user message (the channel's ``receive_nowait``).

        It raises ``trio.WouldBlock`` when nothing waits and
        ``trio.EndOfChannel`` when the mailbox is closed and empty.
        """
        return self._recv.receive_nowait

    @property
    def get(self) -> Callable[[], Awaitable[object]]:
        """Wait for the oldest user message and take it (the channel's ``receive``).

        A schedule point. It raises ``trio.EndOfChannel`` when the mailbox
        is closed and empty.
        """
        return self._recv.receive

    def put_nowait(self, message: object) -> None:
        """Enqueue ``message`` without waiting, applying the overflow policy.

        Raises:
            MailboxFull: the mailbox is full and its policy is ``block`` or ``fail``.
            MailboxClosed: the mailbox was closed.
        """
        try:
            self._send.send_nowait(message)
        except trio.WouldBlock:
            self.apply_overflow(message)
        except trio.ClosedResourceError:
            raise self._closed_error() from None

    async def put(self, message: object) -> None:
        """Enqueue ``message``; with the ``block`` policy wait for room.

        With room this returns without a schedule point, like
        ``MemorySendChannel.send_nowait``.

        Raises:
            MailboxFull: the mailbox is full and its policy is ``fail``.
            MailboxClosed: the mailbox was closed (also while waiting for room).
        """
        try:
            self._send.send_nowait(message)
            return
        except trio.WouldBlock:
            if self.spec.overflow is not Overflow.BLOCK:
                self.apply_overflow(message)
                return
        except trio.ClosedResourceError:
            raise self._closed_error() from None
        try:
            await self._send.send(message)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise self._closed_error() from None

    def apply_overflow(self, message: object) -> None:
        """Apply the overflow policy to ``message``, which found the mailbox full.

        ``drop_oldest`` evicts the oldest waiting message and enqueues this
        one; ``drop_newest`` drops this one. The dropped message goes to the
        drop handler.

        Raises:
            MailboxFull: the policy is ``block`` or ``fail``.
        """
        policy = self.spec.overflow
        if policy is Overflow.BLOCK or policy is Overflow.FAIL:
            raise MailboxFull(
                f"mailbox is full ({self.spec.capacity} waiting, policy {policy.value!r}): "
                "slow down the sender, raise the capacity, or pick a drop policy"
            )
        error = MailboxFull(
            f"message dropped by the {policy.value!r} policy of a full mailbox "
            f"(capacity {self.spec.capacity})"
        )
        self.dropped += 1
        if policy is Overflow.DROP_NEWEST:
            self._on_drop(message, error)
            return
        oldest = self._recv.receive_nowait()
        self._send.send_nowait(message)
        self._on_drop(oldest, error)

    def _closed_error(self) -> MailboxClosed:
        return MailboxClosed("the mailbox is closed and takes no more messages")

    # ------------------------------------------------------------ system lane

    def post_system(self, signal: object) -> None:
        """Queue a system signal; it is served before any user message."""
        if self._system is None:
            self._system = deque()
        self._system.append(signal)

    def take_system(self) -> object | None:
        """Take the oldest system signal, or ``None``."""
        if self._system:
            return self._system.popleft()
        return None

    @property
    def system_waiting(self) -> bool:
        """Whether a system signal waits."""
        return bool(self._system)

    def clear_system(self) -> None:
        """Drop every waiting system signal."""
        if self._system:
            self._system.clear()

    # ------------------------------------------------------------ life cycle

    def close(self) -> None:
        """Refuse new messages from now on; queued ones stay readable.

        Senders blocked waiting for room get :class:`MailboxClosed`.
        """
        if not self.closed:
            self.closed = True
            self._send.close()

    def drain(self) -> list[object]:
        """Close the mailbox and take every message still queued, oldest first."""
        self.close()
        taken: list[object] = []
        while True:
            try:
                taken.append(self._recv.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                return taken

    def __len__(self) -> int:
        return self._send.statistics().current_buffer_used

    @property
    def receivers_waiting(self) -> int:
        """Tasks waiting in :attr:`get` for a message (the owner's idle workers)."""
        return self._recv.statistics().tasks_waiting_receive

    def statistics(self) -> MailboxStatistics:
        """A snapshot of depth, capacity, policy, drops and state."""
        return MailboxStatistics(
            depth=len(self),
            system_depth=len(self._system) if self._system else 0,
            capacity=self.spec.capacity,
            overflow=self.spec.overflow,
            dropped=self.dropped,
            closed=self.closed,
        )

    def __repr__(self) -> str:
        return (
            f"<Mailbox depth={len(self)} capacity={self.spec.capacity} "
            f"overflow={self.spec.overflow.value} closed={self.closed}>"
        )
