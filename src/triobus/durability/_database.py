"""What every durable database shares: jobs run off the trio thread, writes batched.

A :class:`Database` runs *jobs* (plain functions of one connection) on a
worker thread and hands their results back to trio. Writes are batched
(group commit): a write waits in a batch, and a batch is committed as one
transaction when it is full (``batch_size``) or its oldest write has waited
``max_delay`` seconds (by default 0: as soon as the database is free, so
under load the writes that arrive during one commit form the next batch).
There is no debounce timer: a steady stream of writes never postpones a
commit.

Jobs see a :class:`SqlConnection`: ``execute`` with ``?`` placeholders,
``executemany``, and ``in_transaction``. A SQLite connection is one as it
is; a PostgreSQL connection is adapted (see ``_postgres``).
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, Final, Protocol, TypeVar

import outcome
import trio

from .._checks import positive_int
from .._errors import StoreError

T = TypeVar("T")

logger = logging.getLogger("triobus.durability")

#: Writes committed together at most.
DEFAULT_BATCH_SIZE: Final = 500
#: How long a wait for a database lock or a free connection may take, in seconds.
BUSY_TIMEOUT: Final = 30.0


class SqlCursor(Protocol):
    """What a job reads back from one statement."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class SqlConnection(Protocol):
    """The connection a job runs its statements on (``?`` placeholders)."""

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> SqlCursor: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> SqlCursor: ...

    @property
    def in_transaction(self) -> bool: ...


Job = Callable[[Any], Any]


class _Write:
    __slots__ = ("job", "result", "unwatched")

    def __init__(self, job: Job, unwatched: bool = False) -> None:
        self.job = job
        self.result: outcome.Outcome[Any] | None = None
        #: Nobody waits for this write's outcome: a failure is logged.
        self.unwatched = unwatched


def commit_batch(connection: SqlConnection, writes: list[_Write], begin: str) -> None:
    """Run ``writes`` in one transaction; each write gets its own outcome.

    When one write fails, the batch is rolled back and each write is run
    again in a transaction of its own, so one bad write fails alone.
    """
    jobs = [write.job for write in writes]
    results = _transaction(connection, jobs, begin)
    if len(jobs) > 1 and any(isinstance(result, outcome.Error) for result in results):
        results = [_transaction(connection, [job], begin)[0] for job in jobs]
    for write, result in zip(writes, results, strict=True):
        write.result = result


def _transaction(
    connection: SqlConnection, jobs: list[Job], begin: str
) -> list[outcome.Outcome[Any]]:
    """Run ``jobs`` in one transaction: committed when every one succeeded, else rolled back."""
    try:
        connection.execute(begin)
    except Exception as exc:
        return [outcome.Error(exc) for _ in jobs]
    results: list[outcome.Outcome[Any]] = [outcome.capture(job, connection) for job in jobs]
    try:
        if any(isinstance(result, outcome.Error) for result in results):
            connection.execute("ROLLBACK")
        else:
            connection.execute("COMMIT")
    except Exception as exc:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        return [outcome.Error(exc) for _ in jobs]
    return results


class Database(abc.ABC):
    """One database reached from trio: jobs on worker threads, writes batched.

    Subclasses connect (:meth:`open`, :meth:`close`) and run a job on a
    connection (:meth:`_call`); this class batches the writes.
    """

    #: The statement that begins a batch's transaction.
    begin: ClassVar[str] = "BEGIN"
    #: The exceptions the database raises for an ordinary failure (lost
    #: connection, full disk, lock held too long): a feeder logs them and tries again.
    errors: ClassVar[tuple[type[Exception], ...]] = (StoreError, OSError)

    def __init__(self, location: str, *, batch_size: int, max_delay: float) -> None:
        if not isinstance(max_delay, int | float) or max_delay < 0:
            raise ValueError(f"max_delay must be a number of seconds >= 0, got {max_delay!r}")
        #: Where the database is, as error messages name it (no password).
        self.location = location
        self.batch_size = positive_int("batch_size", batch_size)
        self.max_delay = float(max_delay)
        self._pending: list[_Write] = []
        self._oldest = 0.0
        self._flushing = False
        self._flushed = trio.lowlevel.ParkingLot()

    # ------------------------------------------------------------ for subclasses

    @property
    @abc.abstractmethod
    def is_open(self) -> bool: ...

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def _call(self, job: Callable[[Any], T], *, cancellable: bool) -> T:
        """Run ``job(connection)`` on a worker thread and return what it returns.

        ``cancellable``: a trio cancellation stops the job (the database's
        own way); otherwise the job runs to its end and the cancellation is
        delivered at the caller's next checkpoint.
        """

    # ------------------------------------------------------------ jobs

    async def read(self, job: Callable[[Any], T]) -> T:
        """Run ``job(connection)`` outside the batches and return what it returns.

        The job begins and commits its own transaction if it writes.
        """
        self._check_open()
        return await self._call(job, cancellable=True)

    async def write(self, job: Callable[[Any], T]) -> T:
        """Run ``job(connection)`` inside a batched transaction; return once it is committed.

        Raises what the job raised (the rest of its batch is committed
        without it), or :class:`StoreError` when the database is closed.
        It cannot be cancelled once queued: a write that is queued is
        committed, so a caller that sees ``Cancelled`` knows it did not
        happen (a cancellation arrives at the caller's next checkpoint instead).
        """
        self._check_open()
        write = self._queue(_Write(job))
        # No deadline: the wait is for the batches queued before this one and
        # its own, each a job that cannot be abandoned (bounded by the lock
        # timeouts); a deadline on an autojumping MockClock would fire while
        # the worker thread commits.
        with trio.CancelScope(shield=True):
            while write.result is None:
                await self._flush_or_wait()
        assert write.result is not None
        return write.result.unwrap()  # type: ignore[no-any-return]

    def write_soon(self, job: Job) -> None:
        """Queue ``job`` for the next batch without waiting for its commit.

        For acknowledgements whose caller cannot wait: the next
        :meth:`write` or :meth:`flush` commits it. A failure is logged.
        """
        self._queue(_Write(job, unwatched=True))

    def _queue(self, write: _Write) -> _Write:
        """Put ``write`` in the pending batch (whose age runs from its oldest write)."""
        if not self._pending:
            self._oldest = trio.current_time()
        self._pending.append(write)
        return write

    async def flush(self) -> None:
        """Return once every write queued so far is committed."""
        while self._pending or self._flushing:
            await self._flush_or_wait()

    async def _flush_all(self) -> None:
        """Commit what is queued, for a close (shielded, bounded)."""
        with trio.CancelScope(shield=True, deadline=trio.current_time() + BUSY_TIMEOUT):
            await self.flush()

    def _check_open(self) -> None:
        if not self.is_open:
            raise StoreError(f"the database {self.location} is not open")

    async def _flush_or_wait(self) -> None:
        """Commit the pending batch, or wait for the batch being committed."""
        if self._flushing:
            await self._flushed.park()
            return
        if not self._pending:
            return
        self._flushing = True
        try:
            # The writes of other tasks ride on this commit: the wait for the
            # batch to fill is shielded (bounded by max_delay). The commit
            # itself cannot be abandoned once queued (it is short), so it has
            # no deadline: an autojumping MockClock would leap to one while
            # the worker thread commits.
            if self.max_delay and len(self._pending) < self.batch_size:
                with trio.CancelScope(shield=True, deadline=trio.current_time() + BUSY_TIMEOUT):
                    await trio.sleep_until(self._oldest + self.max_delay)
            batch = self._pending[: self.batch_size]
            del self._pending[: self.batch_size]
            if self._pending:
                self._oldest = trio.current_time()
            await self._commit(batch)
        finally:
            self._flushing = False
            self._flushed.unpark_all()

    async def _commit(self, batch: list[_Write]) -> None:
        begin = self.begin
        try:
            await self._call(
                lambda connection: commit_batch(connection, batch, begin), cancellable=False
            )
        except Exception as exc:
            # The batch's job itself failed: each of its writes fails (its
            # waiter would otherwise find nothing to flush and spin).
            for write in batch:
                if write.result is None:
                    error = StoreError(f"a batch of writes to {self.location} failed: {exc!r}")
                    error.__cause__ = exc
                    write.result = outcome.Error(error)
        for write in batch:
            if write.unwatched and isinstance(write.result, outcome.Error):
                logger.error(
                    "a queued write to %s failed", self.location, exc_info=write.result.error
                )

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"<{type(self).__name__} {self.location} {state} pending={len(self._pending)}>"
