"""Tracked sessions: record everything a bus does, and wait until it is quiet."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, final

import trio

from .._structured import exit_nursery
from ..bus import Delivery, DispatchKind, MessageBus, Step, instrumented
from ..mailbox import DeadLetter
from ._records import QuietTimeout, Record, RecordKind

if TYPE_CHECKING:
    from ._faults import FaultInjector

#: How long :meth:`TrackedSession.wait_quiet` waits by default, in seconds.
DEFAULT_QUIET_TIMEOUT = 10.0


_DISPATCH_KINDS = {
    DispatchKind.SEND: RecordKind.SENT,
    DispatchKind.INVOKE: RecordKind.INVOKED,
    DispatchKind.PUBLISH: RecordKind.PUBLISHED,
}


def _matches(record: Record, message_type: type | str | None) -> bool:
    if message_type is None:
        return True
    if isinstance(message_type, str):
        return record.message_name == message_type
    return isinstance(record.message, message_type)


@final
class TrackedSession:
    """Everything one bus did while the session was open (see :func:`tracked`).

    The bus reports each dispatch, delivery, handling and failure to it
    through its probe, and dead letters arrive by subscription.
    """

    def __init__(
        self,
        bus: MessageBus,
        faults: FaultInjector | None = None,
        quiet_timeout: float = DEFAULT_QUIET_TIMEOUT,
    ) -> None:
        self.bus = bus
        self.faults = faults
        self.quiet_timeout = quiet_timeout
        #: Every record, in the order it happened.
        self.records: list[Record] = []

    # ------------------------------------------------------------ recording

    def record(
        self,
        kind: RecordKind,
        delivery: Delivery,
        *,
        endpoint: str | None = None,
        handler: str | None = None,
        attempt: int | None = None,
        exception: BaseException | None = None,
        **detail: Any,
    ) -> None:
        """Add a record about ``delivery`` (used by the bus probe and fault injector)."""
        self.records.append(
            Record(
                kind=kind,
                message=delivery.message,
                message_name=delivery.plan.name,
                message_id=delivery.message_id,
                correlation_id=delivery.correlation_id,
                causation_id=delivery.causation_id,
                endpoint=endpoint,
                handler=handler,
                attempt=attempt,
                exception=exception,
                time=trio.current_time(),
                detail=detail,
            )
        )

    def _dead_letter(self, letter: DeadLetter) -> None:
        context = dict(letter.context or {})
        self.records.append(
            Record(
                kind=RecordKind.DEAD_LETTERED,
                message=letter.message,
                message_name=context.get("message_name"),
                message_id=context.get("message_id"),
                correlation_id=context.get("correlation_id"),
                causation_id=context.get("causation_id"),
                endpoint=letter.recipient,
                handler=context.get("handler"),
                attempt=context.get("attempts"),
                exception=letter.exception,
                time=letter.time or 0.0,
                detail={"reason": letter.reason},
            )
        )

    # ------------------------------------------------------------ waiting

    async def wait_quiet(self, timeout: float | None = None) -> None:
        """Return once no message is in flight anywhere on the bus.

        In flight means queued, being handled, held by a handler, waiting
        for a retry, or delayed or held back by an injected fault: cascades
        a handler starts are waited for too.

        Raises:
            QuietTimeout: still busy after ``timeout`` seconds (default
                :attr:`quiet_timeout`); an ``AssertionError``, so the test fails.
        """
        limit = self.quiet_timeout if timeout is None else timeout
        with trio.move_on_after(limit) as scope:
            await self.bus.wait_quiet()
        if scope.cancelled_caught:
            last = [f"{r.kind} {r.message_name}" for r in self.records[-5:]]
            raise QuietTimeout(
                f"the bus was not quiet after {limit} s: {self.bus.in_flight} message(s) "
                f"still in flight; the last records: {last}"
            )

    # ------------------------------------------------------------ queries

    def of_kind(self, kind: RecordKind, message_type: type | str | None = None) -> list[Record]:
        """The records of ``kind`` (about ``message_type``, a class or a name, if given)."""
        return [r for r in self.records if r.kind is kind and _matches(r, message_type)]

    def messages(self, kind: RecordKind, message_type: type | str | None = None) -> list[Any]:
        """The messages of the records of ``kind``, in order."""
        return [r.message for r in self.of_kind(kind, message_type)]

    def sent(self, message_type: type | str | None = None) -> list[Record]:
        return self.of_kind(RecordKind.SENT, message_type)

    def invoked(self, message_type: type | str | None = None) -> list[Record]:
        return self.of_kind(RecordKind.INVOKED, message_type)

    def published(self, message_type: type | str | None = None) -> list[Record]:
        return self.of_kind(RecordKind.PUBLISHED, message_type)

    def handled(self, message_type: type | str | None = None) -> list[Record]:
        return self.of_kind(RecordKind.HANDLED, message_type)

    def failed(self, message_type: type | str | None = None) -> list[Record]:
        return self.of_kind(RecordKind.FAILED, message_type)

    def retried(self, message_type: type | str | None = None) -> list[Record]:
        return self.of_kind(RecordKind.RETRIED, message_type)

    def faults_injected(self) -> list[Record]:
        """The records of every injected fault, in order."""
        kinds = {
            RecordKind.DROPPED,
            RecordKind.DUPLICATED,
            RecordKind.DELAYED,
            RecordKind.REORDERED,
            RecordKind.CRASHED,
        }
        return [r for r in self.records if r.kind in kinds]

    @property
    def dead_letters(self) -> list[Record]:
        """The dead letters recorded while the session was open."""
        return self.of_kind(RecordKind.DEAD_LETTERED)

    def chain(self, correlation_id: str) -> list[Record]:
        """Every record of one chain of messages."""
        return [r for r in self.records if r.correlation_id == correlation_id]

    def __repr__(self) -> str:
        return f"<TrackedSession records={len(self.records)} in_flight={self.bus.in_flight}>"


@final
class _SessionProbe:
    """The bus's probe: reports what the bus does to a session and its faults."""

    def __init__(self, session: TrackedSession) -> None:
        self.session = session
        self.bus = session.bus
        self.faults = session.faults

    def dispatched(self, kind: DispatchKind, delivery: Delivery) -> None:
        self.session.record(_DISPATCH_KINDS[kind], delivery, endpoint=delivery.plan.endpoint.uri)

    def before_receive(self, delivery: Delivery, endpoint: str) -> None:
        if self.faults is not None:
            self.faults.before_receive(self.session, delivery, endpoint)

    def before_handle(self, delivery: Delivery, step: Step, endpoint: str) -> None:
        if self.faults is not None:
            self.faults.before_handle(self.session, delivery, step, endpoint)

    def handled(self, delivery: Delivery, step: Step, endpoint: str) -> None:
        self.session.record(
            RecordKind.HANDLED,
            delivery,
            endpoint=endpoint,
            handler=step.label,
            attempt=delivery.attempt,
        )

    def failed(
        self, delivery: Delivery, step: Step, endpoint: str, error: Exception, retrying: bool
    ) -> None:
        self.session.record(
            RecordKind.FAILED,
            delivery,
            endpoint=endpoint,
            handler=step.label,
            attempt=delivery.attempt,
            exception=error,
        )
        if retrying:
            self.session.record(
                RecordKind.RETRIED,
                delivery,
                endpoint=endpoint,
                handler=step.label,
                attempt=delivery.attempt + 1,
            )


@asynccontextmanager
async def tracked(
    bus: MessageBus,
    *,
    faults: FaultInjector | None = None,
    quiet_timeout: float = DEFAULT_QUIET_TIMEOUT,
) -> AsyncIterator[TrackedSession]:
    """Record everything ``bus`` does inside the block.

    ``faults`` injects drops, duplicates, delays, reorders and crashes. On a
    normal exit the session waits until the bus is quiet (so nothing leaks
    into the next session), then detaches.

    Raises:
        RuntimeError: another session is tracking this bus.
        QuietTimeout: the bus did not become quiet on exit.
    """
    if not quiet_timeout > 0 or math.isnan(quiet_timeout):
        raise ValueError(
            f"quiet_timeout must be a positive number of seconds, got {quiet_timeout!r}"
        )
    session = TrackedSession(bus, faults, quiet_timeout)
    probe = _SessionProbe(session)
    # Delayed and held-back deliveries run in a nursery of the session's,
    # entered by hand so that what the body raises leaves unwrapped.
    manager = trio.open_nursery()
    nursery = await manager.__aenter__()
    try:
        wrap = None if faults is None else faults.wrap(session, nursery)
        with instrumented(bus, probe, wrap):
            unsubscribe = bus.dead_letters.subscribe(session._dead_letter)
            try:
                yield session
                await session.wait_quiet()
            except BaseException:
                # Left by an error: still let what this session started settle
                # (within the timeout, even when cancelled), so none of it
                # reaches the next one; with no more faults (hypothesis' data
                # may be finished).
                probe.faults = session.faults = None
                with trio.CancelScope(shield=True, deadline=trio.current_time() + quiet_timeout):
                    await bus.wait_quiet()
                raise
            finally:
                unsubscribe()
    finally:
        nursery.cancel_scope.cancel()
        internal = await exit_nursery(manager)
    if internal is not None:
        raise internal
