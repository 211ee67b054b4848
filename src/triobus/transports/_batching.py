"""Publishing in groups: messages published at once by many tasks travel in one batch.

A broker confirms what it was given; one ``publish`` call per message makes
each message pay a crossing to the broker's client and a wait for its own
confirm. The :class:`PublishBatcher` gathers what callers hand it while a
batch is in flight into the next one (a group commit, as a database's), so
64 concurrent senders make a few calls, not 64.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Final, final

import trio

from .._errors import ActorStopped
from ._transport import OutgoingMessage

#: Messages published in one call at most.
BATCH_LIMIT: Final = 1024


@final
class _Slot:
    __slots__ = ("done", "error", "message")

    def __init__(self, message: OutgoingMessage) -> None:
        self.message = message
        self.done = trio.Event()
        #: What publishing its batch raised (``None``: confirmed).
        self.error: BaseException | None = None


@final
class PublishBatcher:
    """Publishes through ``publish`` in batches: each caller waits for its own message.

    :meth:`run` is the task that publishes (one per batcher); a message
    whose batch failed gets that batch's exception. A caller cancelled while
    its message is in a batch does not wait for it, and it may still be
    published.
    """

    def __init__(
        self,
        publish: Callable[[Sequence[OutgoingMessage]], Awaitable[None]],
        *,
        limit: int = BATCH_LIMIT,
    ) -> None:
        self._publish = publish
        self._limit = limit
        self._pending: list[_Slot] = []
        self._wake = trio.Event()
        self._closed: BaseException | None = None

    async def publish(self, message: OutgoingMessage) -> None:
        """Publish ``message`` in the next batch; return once the broker confirmed it.

        Raises:
            Exception: what publishing its batch raised.
            ActorStopped: the batcher was closed before its batch went out.
        """
        if self._closed is not None:
            raise self._closed
        slot = _Slot(message)
        self._pending.append(slot)
        self._wake.set()
        await slot.done.wait()
        if slot.error is not None:
            raise slot.error  # (one error for the whole batch)

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Publish batches as messages come, until cancelled (then :meth:`close`)."""
        task_status.started()
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                while self._pending:
                    batch = self._pending[: self._limit]
                    del self._pending[: self._limit]
                    error: Exception | None = None
                    try:
                        await self._publish([slot.message for slot in batch])
                    except Exception as exc:
                        error = exc
                    for slot in batch:
                        slot.error = error
                        slot.done.set()
        finally:
            self.close(ActorStopped("the endpoint stopped before the message was published"))

    def close(self, error: BaseException) -> None:
        """Refuse new messages with ``error``; fail those not published yet with it."""
        self._closed = error
        pending, self._pending = self._pending, []
        for slot in pending:
            slot.error = error
            slot.done.set()
