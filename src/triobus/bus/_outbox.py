"""What a handler sent: held while its handling runs, released after it succeeded.

Messages a handler sends or publishes are held in its delivery and handed
to their endpoints, in order, once its whole pipeline succeeded; if it
fails they are dropped with it (a retry sends them again). A release never
blocks the releasing actor: what does not fit now goes out, in order, from
the bus's release task. A task that outlives its handler sends directly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol, final, runtime_checkable

import trio

from .._errors import ActorStopped, MailboxFull
from ..mailbox import DeadLetterReason, DeadLetters
from ._accounting import Accounting
from ._seam import CLOSED, Delivery, Endpoint

Held = list[tuple[Endpoint, Delivery]]


@runtime_checkable
class Enlistment(Protocol):
    """A unit of work that takes what is sent inside it (a transactional outbox).

    While one is current (:func:`enlisting`), ``send`` and ``publish`` hand
    their deliveries to it instead of to their endpoints; it writes them
    with its transaction and hands them to their endpoints after commit.
    """

    def enlist(self, endpoint: Endpoint, delivery: Delivery) -> None:
        """Take ``delivery``, bound for ``endpoint``, into this unit of work."""


#: The unit of work that takes what is sent here, if any.
current_unit: ContextVar[Enlistment | None] = ContextVar("triobus_current_unit", default=None)


@contextmanager
def enlisting(unit: Enlistment) -> Iterator[None]:
    """Inside the block, what is sent or published goes to ``unit``."""
    token = current_unit.set(unit)
    try:
        yield
    finally:
        current_unit.reset(token)


@final
class Outbox:
    """Holds, drops and releases what handlers sent; runs the release task."""

    __slots__ = ("_accounting", "_dead_letters", "_later")

    def __init__(self, accounting: Accounting, dead_letters: DeadLetters) -> None:
        self._accounting = accounting
        self._dead_letters = dead_letters
        self._later: trio.MemorySendChannel[Held] | None = None

    @staticmethod
    def holding(handling: Delivery | None) -> bool:
        """Whether what is sent now, with ``handling`` in context, is held (see :meth:`hold`)."""
        return current_unit.get() is not None or (
            handling is not None and handling.held is not CLOSED
        )

    def hold(self, handling: Delivery | None, endpoint: Endpoint, delivery: Delivery) -> None:
        """Give ``delivery`` to the current unit of work, or keep it (counted in
        flight) until ``handling`` succeeded.
        """
        unit = current_unit.get()
        if unit is not None:
            unit.enlist(endpoint, delivery)
            return
        assert handling is not None
        if handling.held is None:
            handling.held = []
        handling.held.append((endpoint, delivery))
        self._accounting.accepted()

    def drop(self, handling: Delivery) -> None:
        """The handler failed: what it sent is dropped with it."""
        held = handling.held
        if held:
            handling.held = None
            for _ in held:
                self._accounting.settled()

    def release(self, handling: Delivery) -> None:
        """Deliver, in order, what the handler of ``handling`` sent, without blocking."""
        held = handling.held
        assert held  # the caller checked
        handling.held = None
        for index, (endpoint, delivery) in enumerate(held):
            try:
                endpoint.accept_nowait(delivery)
            except (MailboxFull, trio.WouldBlock):
                # Full (or stored first): the rest goes out in order from the release task, so
                # this actor (which may be the target) is never blocked.
                self._release_later(held[index:])
                return
            except ActorStopped:
                pass  # a dead letter already
            except Exception as exc:
                self._undeliverable(endpoint, delivery, exc)
                continue
            self._accounting.settled()  # the hold's count: the endpoint counts it now

    def _undeliverable(self, endpoint: Endpoint, delivery: Delivery, error: Exception) -> None:
        """``endpoint`` refused ``delivery`` with ``error``: a dead letter (which settles it)."""
        self._dead_letters.record(delivery, endpoint.uri, DeadLetterReason.UNDELIVERABLE, error)

    def _release_later(self, items: Held) -> None:
        if self._later is None:
            self._shutdown(items)
            return
        self._later.send_nowait(items)

    def _shutdown(self, items: Held) -> None:
        """Dead-letter ``items`` at shutdown: recorded each, logged as one line per endpoint."""
        counts: dict[str, int] = {}
        for endpoint, delivery in items:
            self._dead_letters.record(delivery, endpoint.uri, DeadLetterReason.SHUTDOWN, log=False)
            counts[endpoint.uri] = counts.get(endpoint.uri, 0) + 1
        for uri, count in counts.items():
            self._dead_letters.log_summary(uri, count, DeadLetterReason.SHUTDOWN)

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The release task: delivers late releases one batch after another, waiting for room."""
        send, receive = trio.open_memory_channel[Held](math.inf)
        self._later = send
        task_status.started()
        try:
            async for items in receive:
                await self._deliver_in_order(items)
        finally:
            self._later = None
            # Shutdown: whatever was still queued for release is a dead letter.
            left: Held = []
            while True:
                try:
                    left.extend(receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            self._shutdown(left)

    async def _deliver_in_order(self, items: Held) -> None:
        for index, (endpoint, delivery) in enumerate(items):
            try:
                await endpoint.accept(delivery)
            except ActorStopped:
                pass  # a dead letter already
            except Exception as exc:
                self._undeliverable(endpoint, delivery, exc)
                continue
            except BaseException:
                # Shutdown: what was not delivered yet is a dead letter, never lost.
                self._shutdown(items[index:])
                raise
            self._accounting.settled()
