"""The ask pattern: a one-shot reply slot that travels with the message.

The asker parks with ``trio.lowlevel.wait_task_rescheduled`` and the actor
reschedules it with the reply: no channel or event per call. Timeouts are
not a cancel scope per call (that costs more than the ask itself) but FIFO
queues of deadlines, one per timeout value, served by one timer task per system.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol, final

import outcome
import trio
from trio.lowlevel import current_task

from .._errors import ActorStopped, AskTimeout
from ..mailbox import Carrier, DeadLetterReason

if TYPE_CHECKING:
    from ._cell import ActorCell

#: The default ``ask`` timeout in seconds.
DEFAULT_ASK_TIMEOUT = 30.0


@final
class Ask:
    """An ask in flight: the message, the parked asker and its reply slot.

    Exactly one outcome is taken: the first of reply, failure, timeout or
    the asker's cancellation. A later reply is a dead letter.
    """

    deadline: float
    _outcome: outcome.Outcome[Any] | None

    __slots__ = (
        "_outcome",
        "chain",
        "deadline",
        "done",
        "message",
        "parked",
        "target",
        "task",
        "timeout",
    )

    def __init__(
        self,
        message: object,
        target: ActorCell,
        chain: tuple[ActorCell, ...],
        timeout: float | None,
    ) -> None:
        self.message = message
        self.target = target
        self.chain = chain
        self.timeout = timeout
        self.task = current_task()
        self.done = False
        self.parked = False
        self._outcome = None
        # ``deadline`` is set by AskTimer.add, the only reader.

    def _settle(self, result: outcome.Outcome[Any]) -> None:
        self.done = True
        if self.parked:
            trio.lowlevel.reschedule(self.task, result)
        else:
            self._outcome = result

    def reply(self, value: object) -> None:
        """Answer the asker; a reply to a settled ask becomes a dead letter.

        That dead letter records the question, with the reply under
        ``context["reply"]``.
        """
        if self.done:
            # The question is the dead letter; the reply travels in its context.
            self.target.dead_letter(
                self.message, DeadLetterReason.LATE_REPLY, None, {"reply": value}
            )
        else:
            self._settle(outcome.Value(value))

    def fail(self, error: BaseException) -> None:
        """Raise ``error`` in the asker, unless the ask is already settled."""
        if not self.done:
            self._settle(outcome.Error(error))

    def stopped(self, cause: BaseException | None = None) -> None:
        """Tell the asker that the target stopped before replying."""
        if not self.done:
            error = ActorStopped(
                f"{self.target.path} stopped before it replied to {self._message_type()}"
            )
            error.__cause__ = cause
            self._settle(outcome.Error(error))

    def expire(self) -> None:
        """The timeout passed: raise ``AskTimeout`` in the asker (unless settled)."""
        if not self.done:
            self._settle(
                outcome.Error(
                    AskTimeout(
                        f"ask to {self.target.path} with {self._message_type()} "
                        f"got no reply within {self.timeout} s: raise timeout= or look at "
                        "why the actor is slow"
                    )
                )
            )

    def _message_type(self) -> str:
        message = self.message
        if isinstance(message, Carrier):
            message = message.carried_message()
        return type(message).__qualname__

    def _abort(self, raise_cancel: Any) -> trio.lowlevel.Abort:
        # The asker was cancelled: it abandons the reply.
        self.done = True
        return trio.lowlevel.Abort.SUCCEEDED

    async def wait(self) -> Any:
        """Park the asker until the ask is settled, and return its outcome."""
        if self._outcome is not None:
            result, self._outcome = self._outcome, None
            await trio.lowlevel.checkpoint()
            return result.unwrap()
        self.parked = True
        return await trio.lowlevel.wait_task_rescheduled(self._abort)


#: A timeout's queue is pruned of settled asks once it is longer than this.
_PRUNE_AT = 32


class _Queue(deque[Ask]):
    """The asks of one timeout value, in the order they were made (so of their deadlines)."""

    __slots__ = ("limit",)

    def __init__(self) -> None:
        super().__init__()
        #: Pruned when longer than this: twice the asks left by the last
        #: pruning (at least _PRUNE_AT), so pruning costs O(1) per ask.
        self.limit = _PRUNE_AT


@final
class AskTimer:
    """The ask deadlines of a whole system, served by one task.

    Asks with the same timeout expire in the order they were made, so each
    timeout value gets a FIFO queue: adding is an append. Settled asks are
    pruned in batches, when a queue grows past its limit and whenever the
    timer wakes, so a queue holds at most about twice as many entries as
    there are asks in flight (also behind a slow ask at its head). An ask
    whose deadline does not follow that order (it waited for room in a full
    mailbox first) goes to a heap, pruned the same way.
    """

    __slots__ = ("_heap", "_heap_limit", "_now", "_queues", "_scope", "_tiebreak")

    def __init__(self) -> None:
        self._queues: dict[float, _Queue] = {}
        self._heap: list[tuple[float, int, Ask]] = []
        self._heap_limit = _PRUNE_AT
        self._tiebreak = 0
        self._scope: trio.CancelScope | None = None
        #: The run's clock, read directly once the timer task runs.
        self._now: Callable[[], float] = trio.current_time

    def __len__(self) -> int:
        """The asks held: those in flight, and settled ones not pruned yet."""
        return sum(map(len, self._queues.values())) + len(self._heap)

    def add(self, ask: Ask, timeout: float) -> None:
        """Expire ``ask`` (not settled yet) ``timeout`` seconds from now."""
        deadline = ask.deadline = self._now() + timeout
        queue = self._queues.get(timeout)
        if queue is None:
            queue = self._queues[timeout] = _Queue()
        queue.append(ask)
        length = len(queue)
        if length > queue.limit:
            _prune(queue)
        elif length == 1:
            self._lower(deadline)  # the head of a FIFO: maybe the earliest deadline

    def add_at(self, ask: Ask, deadline: float) -> None:
        """Expire ``ask`` at ``deadline``, in no particular order with the others."""
        self._tiebreak += 1
        heap = self._heap
        heapq.heappush(heap, (deadline, self._tiebreak, ask))
        if len(heap) > self._heap_limit:
            heap[:] = [entry for entry in heap if not entry[2].done]
            heapq.heapify(heap)
            self._heap_limit = max(_PRUNE_AT, 2 * len(heap))
        self._lower(deadline)

    def _lower(self, deadline: float) -> None:
        scope = self._scope
        if scope is not None and deadline < scope.deadline:
            scope.deadline = deadline

    def _next_deadline(self) -> float:
        deadline = math.inf
        for timeout, queue in list(self._queues.items()):
            while queue and queue[0].done:
                queue.popleft()
            if not queue:
                del self._queues[timeout]
            elif queue[0].deadline < deadline:
                deadline = queue[0].deadline
        heap = self._heap
        while heap and heap[0][2].done:
            heapq.heappop(heap)
        if heap and heap[0][0] < deadline:
            deadline = heap[0][0]
        return deadline

    async def run(self) -> None:
        """Expire asks at their deadlines, until cancelled."""
        self._now = trio.lowlevel.current_clock().current_time
        while True:
            with trio.CancelScope(deadline=self._next_deadline()) as scope:
                self._scope = scope
                await trio.sleep_forever()
            self._scope = None
            now = trio.current_time()
            for queue in self._queues.values():
                while queue and queue[0].deadline <= now:
                    queue.popleft().expire()
            heap = self._heap
            while heap and heap[0][0] <= now:
                heapq.heappop(heap)[2].expire()


def _prune(queue: _Queue) -> None:
    """Drop the settled asks of ``queue``, keeping the order of the others."""
    while queue[0].done:  # stops at the ask just added, if not before
        queue.popleft()
    if len(queue) > queue.limit:  # a slow ask at the head holds the rest back
        pending = [ask for ask in queue if not ask.done]
        queue.clear()
        queue.extend(pending)
    queue.limit = max(_PRUNE_AT, 2 * len(queue))


@final
class Frame:
    """What an actor's worker task is doing: for deadlock detection, and for its behavior.

    One frame per worker, found through :data:`current_frame` (set once per
    worker, not per message). ``finish`` is the behavior's hand-over hook
    for the message in hand.
    """

    __slots__ = ("cell", "chain", "finish")

    def __init__(self, cell: ActorCell, chain: tuple[ActorCell, ...] = ()) -> None:
        self.cell = cell
        self.chain = chain
        #: Set by a behavior whose ``receive`` handed back its handler's
        #: coroutine: see :class:`Finisher`.
        self.finish: Finisher | None = None


class Finisher(Protocol):
    """What finishes a message whose handler the actor loop awaited itself (see Frame).

    Once the handed-over coroutine returned, or raised anything but an
    ``Exception`` (an interruption), the loop calls ``finished(frame,
    error)``. An ``Exception`` does not crash the actor: for an ask it goes
    to the asker after ``finished(frame, error)``; for a told message the
    loop awaits ``failed(frame, error)`` instead (the behavior's error policy).
    """

    def finished(self, frame: Frame, error: BaseException | None) -> None: ...

    async def failed(self, frame: Frame, error: Exception) -> None: ...


#: The frame of the actor handler running in this task, if any.
current_frame: ContextVar[Frame | None] = ContextVar("triobus_current_frame", default=None)
