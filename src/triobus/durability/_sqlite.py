"""One SQLite database: a dedicated connection thread, batched writes.

Every statement the durable layer runs on a SQLite file goes through one
:class:`SqliteDatabase`: one connection, owned by one thread, fed jobs from
trio, in order. Writes are batched as :class:`~._database.Database` says.

WAL journal mode, ``synchronous=NORMAL``: a commit survives a crash of the
process (SIGKILL included); the last commits may be lost only when the
machine itself loses power.
"""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar, final

import outcome
import trio

from .._errors import StoreError
from ._database import BUSY_TIMEOUT, DEFAULT_BATCH_SIZE, Database

T = TypeVar("T")


def _connect(path: str) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
    mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if path != ":memory:" and str(mode).lower() != "wal":
        raise StoreError(f"SQLite database {path!r} refused WAL journal mode (got {mode!r})")
    connection.execute("PRAGMA synchronous = NORMAL")
    return connection


@final
class SqliteDatabase(Database):
    """One SQLite database file, reached through one connection thread.

    Open it with :meth:`open` inside a trio run and :meth:`close` it in the
    same run. Jobs run one at a time, in the order they were given; none can
    be cancelled once queued (each is short).
    """

    begin: ClassVar[str] = "BEGIN IMMEDIATE"
    errors: ClassVar[tuple[type[Exception], ...]] = (StoreError, OSError, sqlite3.Error)

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_delay: float = 0.0,
    ) -> None:
        self.path = os.fspath(path)
        super().__init__(repr(self.path), batch_size=batch_size, max_delay=max_delay)
        self._jobs: queue.SimpleQueue[tuple[Callable[[Any], Any], Callable[..., None]] | None]
        self._jobs = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None

    # ------------------------------------------------------------ life cycle

    @property
    def is_open(self) -> bool:
        return self._thread is not None

    async def open(self) -> None:
        """Start the connection thread and connect (nothing more when it is open).

        Raises:
            StoreError: the file cannot be opened as a SQLite database.
        """
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
            thread.join()
            raise StoreError(
                f"cannot open the SQLite database {self.path!r}: {ready[0]}; check the path "
                "and that its folder exists and is writable"
            ) from ready[0]
        self._thread = thread

    async def close(self) -> None:
        """Commit what is queued and stop the thread (nothing when it is closed)."""
        if self._thread is None:
            return
        await self._flush_all()
        with trio.CancelScope(shield=True):
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

    async def _call(self, job: Callable[[Any], T], *, cancellable: bool) -> T:
        """Run ``job`` on the connection thread, after the jobs queued before it.

        Never cancelled once queued (``cancellable`` or not): a SQLite job is
        short, and bounded by the busy timeout.
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
