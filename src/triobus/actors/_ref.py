"""``ActorRef``: the address of an actor, and the only way to reach it."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, final

import trio
from trio.lowlevel import wait_task_rescheduled

from .._errors import ActorStopped, MailboxClosed
from ..mailbox import DeadLetterReason
from ._ask import DEFAULT_ASK_TIMEOUT, Ask, current_frame

if TYPE_CHECKING:
    from ._cell import ActorCell


def _bad_timeout(timeout: object) -> ValueError:
    return ValueError(f"ask timeout must be a positive number of seconds or None, got {timeout!r}")


@final
class ActorRef:
    """The address of an actor: ``tell``, ``ask`` and ``stop``.

    A ref stays valid across restarts of its actor and of the actor's
    supervisors; once the actor is stopped for good, every message sent to
    it raises :class:`ActorStopped` and is recorded in dead letters.
    """

    __slots__ = ("_cell", "_send_nowait")

    def __init__(self, cell: ActorCell) -> None:
        self._cell = cell
        # The mailbox's send_nowait; while the actor is dormant, the call that
        # also starts its task.
        self._send_nowait: Callable[[Any], None] = cell.mailbox.send_nowait

    @property
    def name(self) -> str:
        """The actor's name, unique among its siblings."""
        return self._cell.name

    @property
    def path(self) -> str:
        """The actor's full path from the system root, e.g. ``/app/workers/w1``."""
        return self._cell.path

    @property
    def stopped(self) -> bool:
        """Whether the actor is stopped for good (its mailbox is closed)."""
        return self._cell.mailbox.closed

    def tell_nowait(self, message: object) -> None:
        """Put ``message`` in the actor's mailbox without waiting.

        Raises:
            MailboxFull: the mailbox is full and its policy is ``block`` or ``fail``.
            ActorStopped: the actor is stopped (the message is a dead letter).
        """
        try:
            self._send_nowait(message)
        except trio.WouldBlock:
            self._cell.mailbox.apply_overflow(message)
        except trio.ClosedResourceError:
            raise self._refused(message) from None

    async def tell(self, message: object) -> None:
        """Put ``message`` in the actor's mailbox; with the ``block`` policy wait for room.

        With room this returns without a schedule point.

        Raises:
            MailboxFull: the mailbox is full and its policy is ``fail``.
            ActorStopped: the actor is (or got) stopped; the message is a dead letter.
        """
        try:
            self._send_nowait(message)
            return
        except trio.WouldBlock:
            pass
        except trio.ClosedResourceError:
            raise self._refused(message) from None
        try:
            await self._cell.mailbox.put(message)
        except MailboxClosed:
            raise self._refused(message) from None

    async def ask(self, message: object, *, timeout: float | None = DEFAULT_ASK_TIMEOUT) -> Any:
        """Send ``message`` and wait for the actor's reply (what ``receive`` returned).

        Args:
            timeout: seconds to wait for the reply (default 30); ``None`` waits
                for ever.

        Raises:
            AskTimeout: no reply within ``timeout`` (also a ``TimeoutError``).
            ActorStopped: the actor is stopped, or stopped before it replied.
            DeadlockError: the actor is waiting on this very ask (directly or
                through a chain of asks) and has no free capacity.
            MailboxFull: the mailbox refused or evicted the ask.
            Exception: whatever ``receive`` raised for this message.
        """
        return await self.post_ask(message, timeout)

    def post_ask(
        self, message: object, timeout: float | None = DEFAULT_ASK_TIMEOUT
    ) -> Awaitable[Any]:
        """Send ``message`` as an ask now; return the awaitable of the reply.

        This is :meth:`ask` without a coroutine layer of its own, for a layer
        that hands the awaitable up (an endpoint's ``ask``). The checks raise
        here; the calling task must await the result at once: it is the
        asker, and the actor wakes it with the reply.

        Raises:
            DeadlockError, ValueError, ActorStopped: as :meth:`ask` (at the call).
        """
        cell = self._cell
        frame = current_frame.get()
        if frame is None:
            chain: tuple[ActorCell, ...] = ()
            if cell.starter is not None and cell.starter is trio.lowlevel.current_task():
                raise cell.deadlock(())  # asked from its own start hook: it cannot run yet
        else:
            chain = (*frame.chain, frame.cell)
            if cell in chain and cell.saturated():
                raise cell.deadlock(chain)
        if timeout is not None and not timeout > 0:
            raise _bad_timeout(timeout)
        ask = Ask(message, cell, chain, timeout)
        try:
            self._send_nowait(ask)
        except trio.WouldBlock:
            return self._ask_waiting(ask, timeout)
        except trio.ClosedResourceError:
            raise self._refused(message) from None
        ask.parked = True
        if timeout is not None:
            cell.runtime.timer.add(ask, timeout)
        # Awaited by the caller at once (see above): no coroutine layer of ours.
        return wait_task_rescheduled(ask._abort)  # noqa: ASYNC105

    async def _ask_waiting(self, ask: Ask, timeout: float | None) -> Any:
        """The rest of an ask that found the mailbox full.

        With the ``block`` policy the wait for room counts against the
        timeout; the other policies settle the ask at once (refused or
        dropped).
        """
        cell = self._cell
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        try:
            with trio.move_on_at(deadline):
                await cell.mailbox.put(ask)
        except MailboxClosed:
            raise self._refused(ask.message) from None
        if not ask.done and timeout is not None:
            if deadline <= trio.current_time():
                ask.expire()  # never queued: the asker times out now
            else:
                cell.runtime.timer.add_at(ask, deadline)
        return await ask.wait()

    def _would_deadlock(self) -> bool:
        """Whether an ask from the current task would wait on itself (see ``ask``)."""
        frame = current_frame.get()
        if frame is None:
            return False
        cell = self._cell
        return (cell is frame.cell or cell in frame.chain) and cell.saturated()

    async def stop(self) -> None:
        """Stop the actor for good and remove it from its supervisor.

        The backlog is handled within the actor's shutdown deadline; what is
        left goes to dead letters. Stopping a stopped actor does nothing.
        """
        frame = current_frame.get()
        if frame is not None and frame.cell is self._cell:
            # From its own handler: waiting for itself would deadlock.
            self._cell.request_removal()
            return
        await self._cell.parent.remove_child(self._cell)

    def _refused(self, message: object) -> ActorStopped:
        cell = self._cell
        cell.dead_letter(message, DeadLetterReason.STOPPED)
        error = ActorStopped(
            f"{cell.path} is stopped and takes no messages; "
            f"the {type(message).__qualname__} is in dead letters"
        )
        error.__cause__ = cell.last_error
        return error

    def __repr__(self) -> str:
        return f"<ActorRef {self.path}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorRef) and other._cell is self._cell

    def __hash__(self) -> int:
        return id(self._cell)
