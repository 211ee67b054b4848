"""One SQLite database: a dedicated connection thread, batched writes.

Every statement the durable layer runs on a database goes through one
:class:`Database`: one connection, owned by one thread, fed jobs from trio.
Writes are batched (group commit): a write waits in a batch, and a batch is
committed as one transaction when it is full (``batch_size``) or its oldest
write has waited ``max_delay`` seconds (by default 0: as soon as the
connection is free, so under load the writes that arrive during one commit
form the next batch). There is no debounce timer: a steady stream of writes
never postpones a commit.

WAL journal mode, ``synchronous=NORMAL``: a commit survives a crash of the
process (SIGKILL included); the last commits may be lost only when the
machine itself loses power.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, Final, TypeVar, final

import outcome
import trio

from .._checks import positive_int
from .._errors import StoreError

T = TypeVar("T")

logger = logging.getLogger("triobus.durability")

#: Writes committed together at most.
DEFAULT_BATCH_SIZE: Final = 500
#: How long SQLite waits for another connection's write lock, in seconds.
BUSY_TIMEOUT: Final = 30.0

Job = Callable[[sqlite3.Connection], Any]


@final
class _Write:
    __slots__ = ("job", "result", "unwatched")

    def __init__(self, job: Job, unwatched: bool = False) -> None:
        self.job = job
        self.result: outcome.Outcome[Any] | None = None
        #: Nobody waits for this write's outcome: a failure is logged.
        self.unwatched = unwatched


def _connect(path: str) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
    mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if path != ":memory:" and str(mode).lower() != "wal":
        raise StoreError(f"SQLite database {path!r} refused WAL journal mode (got {mode!r})")
    connection.execute("PRAGMA synchronous = NORMAL")
    return connection


def _commit_batch(connection: sqlite3.Connection, writes: list[_Write]) -> None:
    """Run ``writes`` in one transaction; each write gets its own outcome.

    When one write fails, the batch is rolled back and each write is run
    again in a transaction of its own, so one bad write fails alone.
    """
    jobs = [write.job for write in writes]
    results = _transaction(connection, jobs)
    if len(jobs) > 1 and any(isinstance(result, outcome.Error) for result in results):
        results = [_transaction(connection, [job])[0] for job in jobs]
    for write, result in zip(writes, results, strict=True):
        write.result = result


def _transaction(connection: sqlite3.Connection, jobs: list[Job]) -> list[outcome.Outcome[Any]]:
    """Run ``jobs`` in one transaction: committed when every one succeeded, else rolled back."""
    try:
        connection.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        return [outcome.Error(exc) for _ in jobs]
    results: list[outcome.Outcome[Any]] = [outcome.capture(job, connection) for job in jobs]
    try:
        if any(isinstance(result, outcome.Error) for result in results):
            connection.execute("ROLLBACK")
        else:
            connection.execute("COMMIT")
    except sqlite3.Error as exc:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        return [outcome.Error(exc) for _ in jobs]
    return results


@final
class Database:
    """One SQLite database file, reached through one connection thread.

    Open it with :meth:`open` inside a trio run and :meth:`close` it in the
    same run. :meth:`read` runs a job on the connection; :meth:`write` runs
    a job inside a batched transaction and returns once it is committed.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_delay: float = 0.0,
    ) -> None:
        if not isinstance(max_delay, int | float) or max_delay < 0:
            raise ValueError(f"max_delay must be a number of seconds >= 0, got {max_delay!r}")
        self.path = os.fspath(path)
        self.batch_size = positive_int("batch_size", batch_size)
        self.max_delay = float(max_delay)
        self._jobs: queue.SimpleQueue[tuple[Job, Callable[[outcome.Outcome[Any]], None]] | None]
        self._jobs = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._pending: list[_Write] = []
        self._oldest = 0.0
        self._flushing = False
        self._flushed = trio.lowlevel.ParkingLot()
        self._users = 0

    # ------------------------------------------------------------ life cycle

    @property
    def is_open(self) -> bool:
        return self._thread is not None

    async def open(self) -> None:
        """Start the connection thread and connect (a second open only counts a user).

        Raises:
            StoreError: the file cannot be opened as a SQLite database.
        """
        self._users += 1
        if self._thread is not None:
            return
        self._token = trio.lowlevel.current_trio_token()
        ready: list[BaseException | None] = []
        started = threading.Event()
        thread = threading.Thread(
            target=self._serve,
            args=(ready, started),
            name=f"triobus-sqlite {self.path}",
            daemon=True,
        )
        thread.start()
        await trio.to_thread.run_sync(started.wait)
        if ready[0] is not None:
            self._users -= 1
            thread.join()
            raise StoreError(
                f"cannot open the SQLite database {self.path!r}: {ready[0]}; check the path "
                "and that its folder exists and is writable"
            ) from ready[0]
        self._thread = thread

    async def close(self) -> None:
        """Let go of one :meth:`open`; the last one flushes and stops the thread."""
        if self._users == 0:
            return
        self._users -= 1
        if self._users or self._thread is None:
            return
        with trio.CancelScope(shield=True, deadline=trio.current_time() + BUSY_TIMEOUT):
            while self._pending or self._flushing:
                await self._flush_or_wait()
            thread, self._thread = self._thread, None
            self._jobs.put(None)
            await trio.to_thread.run_sync(thread.join)

    def _serve(self, ready: list[BaseException | None], started: threading.Event) -> None:
        try:
            connection = _connect(self.path)
        except (sqlite3.Error, StoreError, OSError) as exc:
            ready.append(exc)
            started.set()
            return
        ready.append(None)
        started.set()
        try:
            while True:
                item = self._jobs.get()
                if item is None:
                    return
                job, done = item
                done(outcome.capture(job, connection))
        finally:
            connection.close()

    # ------------------------------------------------------------ jobs

    async def read(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``job(connection)`` on the connection thread and return what it returns.

        The job runs alone on the connection (between batches); it begins
        and commits its own transaction if it writes. It cannot be
        cancelled once queued (it is short).
        """
        if self._thread is None:
            raise StoreError(f"the SQLite database {self.path!r} is not open")
        task = trio.lowlevel.current_task()
        token = self._token
        assert token is not None

        def done(result: outcome.Outcome[Any]) -> None:
            token.run_sync_soon(trio.lowlevel.reschedule, task, result)

        self._jobs.put((job, done))

        def abort(raise_cancel: Any) -> trio.lowlevel.Abort:
            return trio.lowlevel.Abort.FAILED

        return await trio.lowlevel.wait_task_rescheduled(abort)  # type: ignore[no-any-return]

    async def write(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``job(connection)`` inside a batched transaction; return once it is committed.

        Raises what the job raised (the rest of its batch is committed
        without it), or :class:`StoreError` when the database is closed.
        Like :meth:`read`, it cannot be cancelled once queued: a write that
        is queued is committed, so a caller that sees ``Cancelled`` knows it
        did not happen (a cancellation arrives at the caller's next
        checkpoint instead).
        """
        if self._thread is None:
            raise StoreError(f"the SQLite database {self.path!r} is not open")
        write = self._queue(_Write(job))
        # No deadline: the wait is for the batches queued before this one and
        # its own, each a job on the connection thread that cannot be abandoned
        # (bounded by SQLite's busy timeout); a deadline on an autojumping
        # MockClock would fire while the thread commits.
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
            # the connection thread commits.
            if self.max_delay and len(self._pending) < self.batch_size:
                with trio.CancelScope(shield=True, deadline=trio.current_time() + BUSY_TIMEOUT):
                    await trio.sleep_until(self._oldest + self.max_delay)
            batch = self._pending[: self.batch_size]
            del self._pending[: self.batch_size]
            if self._pending:
                self._oldest = trio.current_time()
            try:
                await self.read(lambda connection: _commit_batch(connection, batch))
            except Exception as exc:
                # The batch's job itself failed: each of its writes fails (its
                # waiter would otherwise find nothing to flush and spin).
                for write in batch:
                    if write.result is None:
                        error = StoreError(f"a batch of writes to {self.path!r} failed: {exc!r}")
                        error.__cause__ = exc
                        write.result = outcome.Error(error)
            for write in batch:
                if write.unwatched and isinstance(write.result, outcome.Error):
                    logger.error(
                        "a queued write to %s failed", self.path, exc_info=write.result.error
                    )
        finally:
            self._flushing = False
            self._flushed.unpark_all()

    def __repr__(self) -> str:
        state = "open" if self._thread is not None else "closed"
        return f"<Database {self.path!r} {state} pending={len(self._pending)}>"
