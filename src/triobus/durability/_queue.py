"""Durable queues: an endpoint kind whose backlog lives in a database (SQLite or PostgreSQL).

A durable queue is still a supervised actor with a trio memory-channel
mailbox; the mailbox is its prefetch buffer, fed by a feeder task that
claims due rows from the store in FIFO order. ``send`` and ``publish``
return once the message is stored. A delivery is acknowledged (its row
deleted, its id marked in the inbox) only once its handler succeeded or the
error policy settled it; a retry later goes back to the store with its due
moment; a dead letter goes to the store's dead-letter table. A final stop
leaves the backlog in the store.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, Final, final

import trio

from .._checks import endpoint_uri, positive_int, positive_seconds, wire_partition_key
from .._errors import ActorStopped, EnvelopeError, MailboxFull, PartitionKeyError, StoreError
from ..actors import ActorRef
from ..bus import (
    TRIED_AGAIN,
    Delivery,
    DeliveryMode,
    EndpointHost,
    ErrorPolicy,
    Settlement,
    Step,
    hand_over,
)
from ..mailbox import DeadLetterReason, DeadLetters, MailboxSpec, exception_type_name, new_letter_id
from ._codec import Codec, MessageTypes
from ._dead_letters import DurableDeadLetters
from ._store import (
    DEFAULT_INBOX_RETENTION,
    Counts,
    OutboxRow,
    SqliteStore,
    SqlStore,
    StoredLetter,
    StoredRow,
)

logger = logging.getLogger("triobus.durability")

#: Deliveries a durable queue holds in memory (its mailbox) at most, by default.
DEFAULT_PREFETCH: Final = 64
#: How often an idle feeder looks at the store for rows it was not told about.
DEFAULT_POLL_INTERVAL: Final = 1.0
#: How often handled ids older than the inbox retention are purged.
INBOX_PURGE_INTERVAL: Final = 60.0

_stores: dict[tuple[str, trio.lowlevel.TrioToken], SqlStore] = {}


def _store_key(location: str) -> tuple[str, trio.lowlevel.TrioToken]:
    return (location, trio.lowlevel.current_trio_token())


def _sqlite_location(path: str) -> str:
    return f"sqlite:{os.path.realpath(path)}"


def _shared_store(location: str, make: Callable[[], SqlStore]) -> SqlStore:
    """One store per database (and schema) per trio run: one connection thread or pool."""
    key = _store_key(location)
    store = _stores.get(key)
    if store is None or not store.is_open:
        store = _stores[key] = make()
    return store


def store_for(path: str) -> SqlStore | None:
    """The open store of SQLite file ``path`` in this trio run, if a durable queue opened it."""
    return _open_store(_sqlite_location(path))


def _open_store(location: str) -> SqlStore | None:
    store = _stores.get(_store_key(location))
    return store if store is not None and store.is_open else None


def open_stores() -> list[SqlStore]:
    """The stores durable queues opened in this trio run."""
    token = trio.lowlevel.current_trio_token()
    return [store for (_, run), store in _stores.items() if run is token and store.is_open]


def store_errors(store: SqlStore | None) -> tuple[type[Exception], ...]:
    """What ``store`` raises for an ordinary failure (to log and try again)."""
    return store.database.errors if store is not None else (StoreError, OSError)


def _release_store(store: SqlStore) -> None:
    if not store.is_open:
        for key, known in list(_stores.items()):
            if known is store:
                del _stores[key]


@final
class Receipt:
    """What a durable queue needs to settle one delivery: its stored row."""

    __slots__ = ("acked", "counted", "done", "row")

    def __init__(self, row: StoredRow, counted: bool) -> None:
        self.row = row
        #: Whether this process counted the attempt (to give it back if it never ran).
        self.counted = counted
        #: Acknowledged by the handler's unit of work, with its writes.
        self.acked = False
        #: Handlers of an event marked done in the store by their units of work
        #: (the row's progress): a redelivery starts after them.
        self.done = 0


@final
class DurableQueue:
    """A queue endpoint stored in SQLite or PostgreSQL; declare one with :func:`durable_queue`.

    Implements :class:`~triobus.Endpoint` with :attr:`DeliveryMode.DURABLE`.
    """

    delivery_mode = DeliveryMode.DURABLE

    def __init__(
        self,
        uri: str,
        *,
        location: str,
        make_store: Callable[[], SqlStore],
        errors: ErrorPolicy,
        prefetch: int,
        shutdown: float,
        poll_interval: float,
        types: MessageTypes | None,
        partition_by: Callable[[Any], object] | None = None,
    ) -> None:
        self._uri = endpoint_uri(uri)
        #: The database this queue is stored in, as messages name it.
        self.location = location
        self._make_store = make_store
        self._errors = errors
        self.prefetch = positive_int("prefetch", prefetch)
        self.shutdown = positive_seconds("shutdown", shutdown)
        self.poll_interval = positive_seconds("poll_interval", poll_interval)
        self._types = types
        #: The partition key of a message (see :func:`durable_queue`), if any.
        self.partition_by = partition_by
        self._host: EndpointHost | None = None
        self._store: SqlStore | None = None
        self._unwatch: Callable[[], None] = lambda: None
        self._codec: Codec | None = None
        self._ref: ActorRef | None = None
        self._feeder: trio.CancelScope | None = None
        self._tasks_done = trio.Event()
        #: Where a message sent after a stop is recorded (the last bus's dead letters).
        self._last_dead_letters: DeadLetters | None = None
        self._wake = trio.Event()
        #: Deliveries fed to the mailbox and not settled yet.
        self._outstanding = 0
        self._idle = trio.Event()
        #: Set when a settlement waits for its commit.
        self._settled_soon = trio.Event()
        #: Settlements queued for the next commit (each still counted in flight).
        self._unflushed = 0
        self._next_purge = 0.0

    @property
    def uri(self) -> str:
        return self._uri

    @property
    def errors(self) -> ErrorPolicy:
        return self._errors

    @property
    def store(self) -> SqlStore:
        """The store this queue uses (while it runs)."""
        if self._store is None:
            raise StoreError(f"durable endpoint {self._uri!r} is not running")
        return self._store

    @property
    def codec(self) -> Codec:
        if self._codec is None:
            raise StoreError(f"durable endpoint {self._uri!r} is not running")
        return self._codec

    @property
    def dead_letters(self) -> DurableDeadLetters:
        """This endpoint's durable dead letters (a :class:`~triobus.DeadLetterStore`).

        Raises:
            StoreError: the endpoint is not running (read its letters while
                a bus runs it: they stay in its database meanwhile).
        """
        host, store, codec = self._host, self._store, self._codec
        if host is None or store is None or codec is None:
            raise StoreError(
                f"durable endpoint {self._uri!r} is not running: its dead letters stay in "
                f"{self.location}; read them through queue.dead_letters inside the open_bus "
                "that runs this endpoint"
            )
        return DurableDeadLetters(self._uri, store, codec, host.wall_clock, self._requeue)

    # ------------------------------------------------------------ life cycle

    async def start(self, host: EndpointHost) -> None:
        if self._host is not None:
            raise RuntimeError(f"endpoint {self._uri!r} is running in a bus already")
        types = self._types or MessageTypes.from_modules(host.modules)
        self._codec = Codec(types)
        store = _shared_store(self.location, self._make_store)
        try:
            await store.open()
        except StoreError as exc:
            raise StoreError(f"durable endpoint {self._uri!r} cannot start: {exc}") from exc
        if store.codec is None:
            store.codec = self._codec
        try:
            if self.partition_by is not None:
                await store.join(self._uri)
            await self._recover_claims(store, "were in hand when the process last stopped")
            supervisor = host.supervisor
            name = self._uri.replace("/", "%2F")
            path = f"{supervisor.path}/{name}"
            self._ref = await supervisor.spawn(
                lambda: host.handler_actor(self, path),
                name=name,
                mailbox=MailboxSpec(capacity=self.prefetch),
                shutdown=self.shutdown,
            )
        except BaseException:
            await store.close()
            _release_store(store)
            raise
        self._host = host
        self._last_dead_letters = host.dead_letters
        self._store = store
        self._unwatch = store.watch(self._uri, self._wake_up)
        self._feeder = trio.CancelScope()
        self._tasks_done = trio.Event()
        host.nursery.start_soon(self._run_tasks, self._feeder)

    async def stop(self) -> None:
        try:
            if self._feeder is not None:
                # The feeder unclaims what it took and did not hand over.
                self._feeder.cancel()
                # Not shielded, no deadline: the feeder ends as soon as its store call
                # returns (a thread job, bounded by the database's lock timeouts); a firm stop
                # (cancelled) goes on at once and may leave claims for the next start.
                await self._tasks_done.wait()
            if self._ref is not None:
                await self._ref.stop()
        finally:
            store, self._store = self._store, None
            host, self._host = self._host, None
            self._unwatch()
            self._ref = None
            if store is not None:
                if self.partition_by is not None:
                    with contextlib.suppress(*store.database.errors):  # else its lease ends it
                        await store.leave(self._uri)
                await store.close()  # commits what is queued
                _release_store(store)
            if host is not None:
                for _ in range(self._unflushed):
                    host.settled()
                self._unflushed = 0

    # ------------------------------------------------------------ accept

    def accept_nowait(self, delivery: Delivery) -> None:
        """A durable queue stores before it accepts: always ``trio.WouldBlock``."""
        raise trio.WouldBlock

    async def accept(self, delivery: Delivery) -> None:
        """Store ``delivery``; returns once it is committed.

        Raises:
            EnvelopeError: the message cannot be encoded (not registered, too big).
            PartitionKeyError: ``partition_by`` failed on the message.
            ActorStopped: the endpoint is not running.
            StoreError: the database failed (down, full): the message is not stored.
        """
        host = self._host
        store = self._store
        if host is None or store is None:
            raise self._stopped(delivery)
        key = self._partition_key(delivery.message)
        body = self.codec.encode(delivery.envelope())
        due = host.wall_clock() if delivery.due is None else delivery.due
        try:
            await self._enqueue(
                host, store, delivery.message_id, delivery.plan.name, due, body, key
            )
        except StoreError:
            raise
        except store.database.errors as exc:
            raise StoreError(
                f"durable endpoint {self._uri!r} could not store {delivery.plan.name} "
                f"id={delivery.message_id} in {store.location} ({exc!r}): it was not sent; "
                "send it again once the database is back"
            ) from exc

    def _partition_key(self, message: object) -> str | None:
        """The partition key of ``message`` (see :func:`wire_partition_key`)."""
        return wire_partition_key(f"durable endpoint {self._uri!r}", self.partition_by, message)

    async def _enqueue(
        self,
        host: EndpointHost,
        store: SqlStore,
        message_id: str,
        name: str,
        due: float,
        body: bytes,
        partition_key: str | None,
    ) -> None:
        """Store one whole delivery's row (a replayed dead letter may name one handler).

        Due now, it is counted in flight before it is stored (the feeder may
        take it at once); the row says so, so its claim does not count it
        again. A duplicate is not stored (skipped quietly).
        """
        counted = due <= host.wall_clock()
        if counted:
            host.accepted()
        stored = False
        try:
            stored = await store.enqueue(
                self._uri, message_id, name, "", due, body, counted, partition_key
            )
        finally:
            if counted and not stored:
                host.settled()  # not stored (a duplicate), or failed
        self._wake.set()

    def _stopped(self, delivery: Delivery) -> ActorStopped:
        """``delivery`` came after a stop: recorded as a dead letter (``stopped``); the error."""
        error = ActorStopped(
            f"durable endpoint {self._uri!r} is not running: start it with its bus "
            "(the message is a dead letter, reason stopped)"
        )
        if self._last_dead_letters is not None:
            self._last_dead_letters.record(delivery, self._uri, DeadLetterReason.STOPPED, error)
        return error

    async def deliver_raw(self, data: bytes) -> None:
        """Take bytes as a transport would: decode, then store; a bad envelope is a dead letter.

        A payload that does not decode, or names a message no handler here
        takes, goes to the dead-letter store at once (no retry), with the
        raw bytes and the reason.

        Raises:
            PartitionKeyError: ``partition_by`` failed on the decoded message
                (nothing stored: the caller keeps the bytes).
        """
        host = self._host
        store = self._store
        if host is None or store is None:
            raise ActorStopped(f"durable endpoint {self._uri!r} is not running")
        data = bytes(data)
        try:
            envelope = self.codec.decode(data)
        except EnvelopeError as exc:
            await store.dead_letter(self._bad_letter(data, exc, exc.message_id, None))
            return
        plan = host.plan_for(self._uri, envelope.message_name, envelope.message_version)
        if plan is None:
            await store.dead_letter(
                self._letter_for_envelope(data, envelope.message_id, envelope.message_name)
            )
            return
        key = self._partition_key(envelope.message)
        await self._enqueue(
            host, store, envelope.message_id, envelope.message_name, host.wall_clock(), data, key
        )

    async def _requeue(self, letter: StoredLetter) -> bool:
        """Replay ``letter``: its message is queued again, counted in flight, the feeder woken.

        Returns ``False`` when the letter was no longer stored (nothing queued).
        """
        host, store = self._host, self._store
        if host is None or store is None:
            raise ActorStopped(f"durable endpoint {self._uri!r} is not running")
        key = self._partition_key(self.codec.decode(letter.body).message)
        host.accepted()  # before it is stored, as accept() does: the row says so
        requeued = False
        try:
            requeued = await store.requeue_letter(letter, host.wall_clock(), True, key)
        finally:
            if not requeued:
                host.settled()
        self._wake.set()
        return requeued

    def ask(self, delivery: Delivery, timeout: float | None) -> Awaitable[Any]:
        """An invoke is not stored: its caller waits for the answer (and dies with it)."""
        if self._ref is None:
            raise ActorStopped(f"durable endpoint {self._uri!r} is not running")
        return self._ref.post_ask(delivery, timeout=timeout)

    # ------------------------------------------------------------ feeding

    async def _run_tasks(self, scope: trio.CancelScope) -> None:
        """The feeder and the settlement flusher, until :meth:`stop` cancels ``scope``."""
        try:
            with scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._flush_settled)
                    await self._feed()
        finally:
            self._tasks_done.set()

    async def _feed(self) -> None:
        next_recovery = -math.inf
        while self._host is not None:  # None once stopped (a stop waits for this task)
            # Store calls are not cancellation points: look for the stop here.
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                if trio.current_time() >= next_recovery:
                    await self._recover(first=next_recovery == -math.inf)
                    next_recovery = trio.current_time() + self.store.recovery_interval
                await self._feed_once()
            except store_errors(self._store) as exc:
                # An ordinary store failure (a full disk, a lock held too long):
                # never a crash of the bus's nursery.
                logger.error("%s: the store failed (%r); trying again in 1 s", self._uri, exc)
                await trio.sleep(1.0)
            except ActorStopped:
                # The handler actor stopped for good (a firm stop, a supervisor that
                # gave up): nothing to feed; what is stored stays for the next start.
                return

    async def _flush_settled(self) -> None:
        """Commit settlements (acks, retries, dead letters) as they come, in batches."""
        while True:
            await self._settled_soon.wait()
            self._settled_soon = trio.Event()
            store, host = self._store, self._host
            if store is None or host is None:
                continue
            count = self._unflushed
            await store.database.flush()
            # Counted only once committed (a stop that cuts the flush off settles
            # what is left after it closed the store).
            self._unflushed -= count
            for _ in range(count):
                host.settled()  # in flight until its settlement is committed

    async def _feed_once(self) -> None:
        host = self._host
        store = self._store
        ref = self._ref
        if host is None or store is None or ref is None:
            return  # stopped meanwhile
        now = host.wall_clock()
        if now >= self._next_purge:
            store.purge_inbox_soon(now)
            self._next_purge = now + INBOX_PURGE_INTERVAL
        self._wake = trio.Event()
        rows, duplicates = await store.claim(
            self._uri, now, self.prefetch, self.partition_by is not None
        )
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
        except BaseException:
            for row in rows:  # stopped while claiming: unclaim, uncounted
                store.release_soon(row.seq, 0 if row.suspect else 1, row.progress)
            raise
        for _ in range(duplicates):
            host.settled()  # skipped: its message was handled already
        if not rows:
            await self._wait_for_rows(store, host)
            return
        index = 0
        delivery: Delivery | None = None
        try:
            for index, row in enumerate(rows):
                delivery = await self._delivery(row, store, host)
                if delivery is None:
                    continue
                self._outstanding += 1
                try:
                    await ref.tell(delivery)
                except ActorStopped:
                    # The handler actor is gone (the bus is going down): the delivery
                    # was kept for redelivery by its dead letter's settlement.
                    delivery = None
                    index += 1
                    raise
                delivery = None
        except BaseException:
            # Stopped (or failed) with claimed rows not handed over: unclaim them.
            if delivery is not None:
                self._outstanding -= 1
                self._settle_soon()
            for row in rows[index:]:
                store.release_soon(row.seq, 0 if row.suspect else 1, row.progress)
            raise

    async def _recover(self, first: bool) -> None:
        """Take over what processes that died left: claims (the start took its own) and
        outbox rows.
        """
        if not first:
            store = self._store
            if store is None:
                return
            await self._recover_claims(store, "were in the hand of a process whose lease ran out")
        await self._relay_outbox()

    async def _recover_claims(self, store: SqlStore, why: str) -> None:
        """Claims of processes that died become suspect (and are said in the log)."""
        suspect = await store.recover(self._uri)
        if suspect:
            logger.warning(
                "%s: %d message(s) %s; each is handled alone now, its attempt counted first",
                self._uri,
                suspect,
                why,
            )

    def _wake_up(self) -> None:
        """New rows are stored (by this process or, told by the store, another)."""
        self._wake.set()

    async def _wait_for_rows(self, store: SqlStore, host: EndpointHost) -> None:
        due = await store.next_due(self._uri)
        wait = self.poll_interval
        if due is not None:
            wait = min(wait, max(0.0, due - host.wall_clock()))
        with trio.move_on_after(wait) as waited:
            await self._wake.wait()
        if waited.cancelled_caught:
            await self._relay_outbox()

    async def _delivery(
        self, row: StoredRow, store: SqlStore, host: EndpointHost
    ) -> Delivery | None:
        """The delivery of a claimed row, or ``None`` when it was dead-lettered instead."""
        if not row.counted_here:
            host.accepted()
        try:
            envelope = self.codec.decode(row.body)
        except EnvelopeError as exc:
            self._dead_row(row, self._bad_letter(row.body, exc, row.message_id, row))
            return None
        plan = host.plan_for(self._uri, envelope.message_name, envelope.message_version, row.step)
        if plan is None:
            letter = self._letter_for_envelope(
                row.body, row.message_id, envelope.message_name, row.step
            )
            self._dead_row(row, letter)
            return None
        limit = self._errors.max_attempts
        attempts = row.attempts + (1 if row.suspect else 0)
        if attempts > limit:
            self._dead_row(row, self._interrupted_letter(row, envelope.message_name, limit))
            return None
        if row.suspect:
            # In hand when the process died: alone, after everything before it
            # is settled, with its attempt committed before its handler runs.
            try:
                await self._settled_and_flushed(store)
                await store.started(row.seq)
            except BaseException:
                if not row.counted_here:
                    host.settled()  # not handed over: its next claim counts it again
                raise
        delivery = Delivery.of(envelope, plan)
        delivery.attempt = attempts
        delivery.progress = row.progress
        delivery.receipt = Receipt(row, counted=True)
        return delivery

    async def _settled_and_flushed(self, store: SqlStore) -> None:
        while self._outstanding:
            self._idle = trio.Event()
            await self._idle.wait()
        await store.database.flush()

    def _dead_row(self, row: StoredRow, letter: StoredLetter) -> None:
        assert self._store is not None and self._host is not None
        self._store.dead_letter_soon(letter, row.seq)
        self._settle_soon()
        logger.warning(
            "dead letter at %s (reason %s): id=%s %s",
            self._uri,
            letter.reason,
            letter.message_id,
            letter.error,
        )

    # ------------------------------------------------------------ settle

    def settle(self, delivery: Delivery, settlement: Settlement) -> None:
        host = self._host
        store = self._store
        receipt = delivery.receipt
        if host is None or store is None or not isinstance(receipt, Receipt):
            if host is not None:
                host.settled()
            return
        row = receipt.row
        now = host.wall_clock()
        failed = delivery.failures is not None
        for step, error, attempts in delivery.failures or ():
            if _committed(delivery, receipt, step):
                continue  # failed after its unit of work committed: handled (and logged)
            store.dead_letter_soon(self._failed_letter(delivery, step.label, error, attempts), None)
        delivery.failures = None
        if receipt.acked:
            pass  # acknowledged by the handler's unit of work, with its writes: handled
        elif settlement is Settlement.HANDLED or (
            settlement is Settlement.DEAD_LETTERED and failed
        ):
            store.ack_soon(self._uri, row.seq, row.message_id, row.step, now)
        elif settlement is Settlement.DEAD_LETTERED:
            # Dead-lettered in memory without a handler failure (its actor crashed
            # with it in hand): an interrupted attempt. It stays stored, its attempt
            # counted, so the attempt limit ends it as a durable `interrupted` letter.
            store.release_soon(row.seq, 0, max(delivery.progress, receipt.done))
        elif settlement in TRIED_AGAIN:
            due = now if delivery.due is None else delivery.due
            # Due now: still in flight (as a send is); due later: in the store only.
            again_now = due <= now
            store.retry_soon(
                row.seq,
                due,
                delivery.attempt - 1,
                max(delivery.progress, receipt.done),
                to_tail=settlement is Settlement.REQUEUE,
                counted=again_now,
            )
            self._wake.set()
            if again_now:
                self._outstanding -= 1
                if not self._outstanding:
                    self._idle.set()
                self._settled_soon.set()  # committed soon, not settled
                return
        else:  # left for redelivery: the attempt it was counted did not run
            progress = max(delivery.progress, receipt.done)
            store.release_soon(row.seq, 1 if receipt.counted else 0, progress)
        self._outstanding -= 1
        if not self._outstanding:
            self._idle.set()
        self._settle_soon()

    def _settle_soon(self) -> None:
        """One settlement is queued: counted settled once it is committed."""
        self._unflushed += 1
        self._settled_soon.set()

    def keep(self, delivery: Delivery) -> bool:
        return isinstance(delivery.receipt, Receipt)

    # ------------------------------------------------------------ letters

    def _letter(
        self,
        reason: DeadLetterReason,
        body: bytes,
        *,
        message_id: str | None,
        message_name: str | None,
        step: str,
        attempts: int | None,
        error: str,
        exception: BaseException | None = None,
        decodes: bool = True,
    ) -> StoredLetter:
        """A dead letter of this queue, stamped now."""
        assert self._host is not None
        return StoredLetter(
            letter_id=new_letter_id(),
            endpoint=self._uri,
            recipient=self._uri,
            reason=reason.value,
            message_id=message_id,
            message_name=message_name,
            step=step,
            exception_type=None if exception is None else exception_type_name(type(exception)),
            error=error,
            traceback=(
                "".join(traceback.format_exception(exception))
                if exception is not None and exception.__traceback__ is not None
                else None
            ),
            attempts=attempts,
            recorded_at=self._host.wall_clock(),
            decodes=decodes,
            body=body,
        )

    def _failed_letter(
        self, delivery: Delivery, step: str, error: Exception, attempts: int
    ) -> StoredLetter:
        receipt = delivery.receipt
        assert isinstance(receipt, Receipt)
        # One handler of several (or of a replayed one) is named, to be replayed alone.
        alone = len(delivery.plan.steps) > 1 or bool(receipt.row.step)
        return self._letter(
            DeadLetterReason.FAILED,
            receipt.row.body,
            message_id=delivery.message_id,
            message_name=delivery.plan.name,
            step=step if alone else "",
            attempts=attempts,
            error=str(error),
            exception=error,
        )

    def _bad_letter(
        self, data: bytes, error: EnvelopeError, message_id: str | None, row: StoredRow | None
    ) -> StoredLetter:
        return self._letter(
            DeadLetterReason.UNDECODABLE,
            data,
            message_id=message_id,
            message_name=None,
            step=row.step if row is not None else "",
            attempts=row.attempts if row is not None else 0,
            error=f"{error.reason}: {error}",
            exception=error,
            decodes=False,
        )

    def _letter_for_envelope(
        self, data: bytes, message_id: str, name: str, step: str = ""
    ) -> StoredLetter:
        return self._letter(
            DeadLetterReason.NO_HANDLER,
            data,
            message_id=message_id,
            message_name=name,
            step=step,
            attempts=0,
            error=f"no handler for {name!r} is bound at endpoint {self._uri!r}",
        )

    def _interrupted_letter(self, row: StoredRow, name: str, limit: int) -> StoredLetter:
        return self._letter(
            DeadLetterReason.INTERRUPTED,
            row.body,
            message_id=row.message_id,
            message_name=name,
            step=row.step,
            attempts=limit,
            error=(
                f"its handler was started {limit} time(s), the most the error policy allows, "
                "and the process stopped (was killed or crashed) before it finished each time"
            ),
        )

    def wall_clock(self) -> float:
        """Now, by the bus's wall clock (seconds since the epoch)."""
        if self._host is None:
            raise ActorStopped(f"durable endpoint {self._uri!r} is not running")
        return self._host.wall_clock()

    # ------------------------------------------------------------ outbox relay

    async def _relay_outbox(self) -> None:
        """Relay outbox rows left by a process that died between commit and relay.

        Rows bound for this queue are relayed here; so are rows bound for
        endpoints that are not durable queues, by the first queue on this
        database. What is not relayed here (another queue's, an endpoint
        that refuses, one this bus does not run) is given back for the next
        pass or another process. Rows of living processes' units of work are
        theirs to relay.
        """
        after = 0
        while True:  # page by page: rows skipped here must not hide the ones after them
            store, host, codec = self._store, self._host, self._codec
            if store is None or host is None or codec is None:
                return  # stopped meanwhile
            rows = await store.take_outbox(limit=500, after=after)
            if not rows:
                return
            after = rows[-1].seq
            await self._relay_rows(rows, store, host, codec)

    async def _relay_rows(
        self, rows: list[OutboxRow], store: SqlStore, host: EndpointHost, codec: Codec
    ) -> None:
        done: list[int] = []
        try:
            for row in rows:
                try:
                    envelope = codec.decode(row.body)
                except EnvelopeError as exc:
                    await store.dead_letter(self._bad_letter(row.body, exc, row.message_id, None))
                    done.append(row.seq)
                    continue
                plan = host.plan_for(
                    row.endpoint, envelope.message_name, envelope.message_version, row.step
                )
                if plan is None:
                    continue  # bound for an endpoint this bus does not run
                target = plan.endpoint
                if isinstance(target, DurableQueue) and target is not self:
                    continue  # that queue relays its own rows
                if not isinstance(target, DurableQueue) and store.relayer not in (None, self):
                    continue
                store.relayer = self
                delivery = Delivery.of(envelope, plan)
                delivery.due = row.due
                try:
                    await hand_over(target, delivery)
                except ActorStopped:
                    continue
                except (MailboxFull, PartitionKeyError) as exc:
                    if isinstance(target, DurableQueue):
                        raise  # not refusals of this queue: the feeder logs and tries again
                    self._refused_relay(host, target.uri, delivery, exc)
                done.append(row.seq)
        finally:
            if done:
                await store.relayed(done)
            relayed = set(done)
            left = [row.seq for row in rows if row.seq not in relayed]
            if left:
                await store.release_outbox(left)

    @staticmethod
    def _refused_relay(host: EndpointHost, uri: str, delivery: Delivery, error: Exception) -> None:
        """An in-memory endpoint refused a relayed row: a dead letter there (no caller to tell)."""
        reason = (
            DeadLetterReason.MAILBOX_FULL
            if isinstance(error, MailboxFull)
            else DeadLetterReason.UNDELIVERABLE
        )
        host.accepted()  # the letter settles it through its endpoint
        host.dead_letters.record(delivery, uri, reason, error)

    # ------------------------------------------------------------ introspection

    async def counts(self) -> Counts:
        """How many messages this endpoint has stored: incoming, scheduled, dead letters, outbox."""
        host = self._host
        now = host.wall_clock() if host is not None else 0.0
        return await self.store.counts(self._uri, now)

    def __repr__(self) -> str:
        return f"<DurableQueue {self._uri!r} in {self.location}>"


def _committed(delivery: Delivery, receipt: Receipt, step: Step) -> bool:
    """Whether ``step``'s unit of work marked it handled in the store, with its writes.

    Such a handler's later failure is no dead letter: a replay would apply
    its writes again.
    """
    steps = delivery.plan.steps
    index = steps.index(step)
    return index < receipt.done or (receipt.acked and index == len(steps) - 1)


def durable_queue(
    uri: str,
    *,
    path: str | os.PathLike[str] | None = None,
    url: str | None = None,
    schema: str = "triobus",
    retries: int = 2,
    errors: ErrorPolicy | None = None,
    prefetch: int = DEFAULT_PREFETCH,
    shutdown: float = 5.0,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    batch_size: int = 500,
    max_delay: float = 0.0,
    inbox_retention: float = DEFAULT_INBOX_RETENTION,
    lease: float = 30.0,
    pool_size: int = 4,
    partition_by: Callable[[Any], str | int] | None = None,
    types: MessageTypes | None = None,
) -> DurableQueue:
    """Declare a durable queue endpoint, stored in SQLite (``path``) or PostgreSQL (``url``).

    Args:
        uri: the name routes refer to.
        path: a SQLite database file (created if missing), for one process;
            several durable queues may share one file (and its one
            connection thread).
        url: a PostgreSQL URL (``postgresql://user:password@host:port/database``),
            for queues shared by many processes; needs ``triobus[postgresql]``.
        schema: the PostgreSQL schema of the tables (created on first start).
        retries: retries at once after a handler failure, before dead letters.
        errors: a full :class:`~triobus.ErrorPolicy`; replaces ``retries``.
        prefetch: deliveries held in memory at most (the mailbox's capacity).
        shutdown: seconds a final stop lets the handler finish its prefetched
            messages; what is left stays in the store.
        poll_interval: how often an idle queue looks for rows it was not told of.
        batch_size: writes committed in one transaction at most.
        max_delay: how long a write may wait for its batch to fill (0: as soon
            as the database is free).
        inbox_retention: seconds handled message ids are remembered.
        lease: PostgreSQL: seconds a process's claims stay its own after its
            last renewal (every third of it); then other processes take
            them over, and its unrelayed outbox rows.
        pool_size: PostgreSQL: connections per process, at most.
        partition_by: a key function (a str or an int per message): while a
            message of one key is in a process's hands, no other process
            takes a later message of that key, so each key is handled in
            order even with several consumers. Without it, several
            consumers share the queue in no order between them.
        types: the message types the codec accepts (default: every type the
            bus's modules bind).

    Raises:
        ValueError: neither or both of ``path`` and ``url``, a URL that is not
            PostgreSQL's, or a bad option (named).
    """
    if (path is None) == (url is None):
        raise ValueError(
            f"durable_queue({uri!r}) needs exactly one of path= (a SQLite file) or url= "
            "(a postgresql:// URL)"
        )
    if url is not None:
        location, make_store = _postgres_store(
            url,
            schema=schema,
            lease=lease,
            pool_size=pool_size,
            batch_size=batch_size,
            max_delay=max_delay,
            inbox_retention=inbox_retention,
        )
    else:
        assert path is not None
        file = os.fspath(path)
        location = _sqlite_location(file)

        def make_store() -> SqlStore:
            return SqliteStore(
                file, batch_size=batch_size, max_delay=max_delay, inbox_retention=inbox_retention
            )

    make_store()  # checks the options now
    return DurableQueue(
        uri,
        location=location,
        make_store=make_store,
        errors=errors if errors is not None else ErrorPolicy.retries(retries),
        prefetch=prefetch,
        shutdown=shutdown,
        poll_interval=poll_interval,
        types=types,
        partition_by=partition_by,
    )


def _postgres_store(url: str, **options: Any) -> tuple[str, Callable[[], SqlStore]]:
    if not isinstance(url, str) or not url.startswith(("postgresql://", "postgres://")):
        raise ValueError(
            f"url must be a PostgreSQL URL (postgresql://user:password@host:port/database), "
            f"got {url!r}"
        )
    try:
        from ._postgres import PostgresStore, describe_url
    except ImportError as exc:
        raise ImportError(
            f"PostgreSQL durable queues need psycopg and psycopg_pool ({exc}): "
            "pip install 'triobus[postgresql]'"
        ) from exc
    location = f"{describe_url(url)} (schema {options['schema']!r})"

    def make_store() -> SqlStore:
        return PostgresStore(url, **options)

    return location, make_store
