"""PostgreSQL: the durable store shared by many processes.

psycopg's async connection runs only on asyncio, so this module uses its
sync connections from worker threads: a :class:`psycopg_pool.ConnectionPool`
serves the jobs, batched writes go through one connection at a time (as
on SQLite), and a trio cancellation of a job cancels its query on the
server (``cancel_safe``), so no connection is left stuck in a query.

Several processes share one store (a schema of its own, ``triobus`` by
default). Each process is a *consumer* with a lease it renews (a row of
``triobus_consumers`` stamped with the server's clock); claims and outbox
rows of a consumer whose lease ran out are taken over by the living.
Claims skip rows another process is claiming (``FOR UPDATE SKIP LOCKED``),
and a stored message wakes the other processes' feeders through
``LISTEN/NOTIFY`` (one listening connection per process, in a thread of its
own), with polling as the fallback.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar, Final, TypeVar, final

import outcome
import psycopg
import psycopg_pool
import trio
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus

from .._errors import StoreError
from ._database import BUSY_TIMEOUT, DEFAULT_BATCH_SIZE, Database, SqlConnection
from ._store import DEFAULT_INBOX_RETENTION, SCHEMA_VERSION, SqlStore

T = TypeVar("T")

logger = logging.getLogger("triobus.durability")

#: Seconds a process's claims stay its own without a renewal (renewed every third).
DEFAULT_LEASE: Final = 30.0
#: Connections in a process's pool, at most (the listening connection apart).
DEFAULT_POOL_SIZE: Final = 4
#: The schema the tables live in, by default.
DEFAULT_SCHEMA: Final = "triobus"

#: The server's clock, in seconds since the epoch.
_SERVER_NOW: Final = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"

_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

_DDL: Final = """
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.triobus_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS {schema}.triobus_queue (
    seq BIGSERIAL PRIMARY KEY,
    endpoint TEXT NOT NULL,
    message_id TEXT NOT NULL,
    message_name TEXT NOT NULL,
    step TEXT NOT NULL DEFAULT '',
    due DOUBLE PRECISION NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    progress INTEGER NOT NULL DEFAULT 0,
    claimed_by TEXT,
    suspect INTEGER NOT NULL DEFAULT 0,
    counted_by TEXT,
    partition_key TEXT,
    body BYTEA NOT NULL
);
CREATE INDEX IF NOT EXISTS triobus_queue_next ON {schema}.triobus_queue (endpoint, claimed_by, seq);
CREATE INDEX IF NOT EXISTS triobus_queue_partition
    ON {schema}.triobus_queue (endpoint, partition_key, seq);
CREATE INDEX IF NOT EXISTS triobus_queue_message
    ON {schema}.triobus_queue (endpoint, message_id, step);
CREATE TABLE IF NOT EXISTS {schema}.triobus_inbox (
    endpoint TEXT NOT NULL,
    message_id TEXT NOT NULL,
    step TEXT NOT NULL,
    handled_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (endpoint, message_id, step)
);
CREATE INDEX IF NOT EXISTS triobus_inbox_age ON {schema}.triobus_inbox (handled_at);
CREATE TABLE IF NOT EXISTS {schema}.triobus_dead_letters (
    seq BIGSERIAL,
    letter_id TEXT PRIMARY KEY,
    endpoint TEXT NOT NULL,
    recipient TEXT NOT NULL,
    reason TEXT NOT NULL,
    message_id TEXT,
    message_name TEXT,
    step TEXT NOT NULL DEFAULT '',
    exception_type TEXT,
    error TEXT,
    traceback TEXT,
    attempts INTEGER,
    recorded_at DOUBLE PRECISION NOT NULL,
    decodes INTEGER NOT NULL,
    body BYTEA NOT NULL
);
CREATE INDEX IF NOT EXISTS triobus_dead_letters_age
    ON {schema}.triobus_dead_letters (endpoint, recorded_at, seq);
CREATE TABLE IF NOT EXISTS {schema}.triobus_outbox (
    seq BIGSERIAL PRIMARY KEY,
    endpoint TEXT NOT NULL,
    message_id TEXT NOT NULL,
    message_name TEXT NOT NULL,
    step TEXT NOT NULL DEFAULT '',
    due DOUBLE PRECISION,
    body BYTEA NOT NULL,
    owner TEXT
);
CREATE TABLE IF NOT EXISTS {schema}.triobus_consumers (
    owner TEXT PRIMARY KEY,
    seen_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS {schema}.triobus_members (
    endpoint TEXT NOT NULL,
    owner TEXT NOT NULL,
    PRIMARY KEY (endpoint, owner)
);
"""


def checked_schema(schema: object) -> str:
    """``schema`` if it is a plain SQL identifier (letters, digits, ``_``)."""
    if not isinstance(schema, str) or not _SCHEMA_NAME.fullmatch(schema):
        raise ValueError(
            f"schema must be a plain SQL identifier (a letter or _, then letters, digits "
            f"or _, at most 63), got {schema!r}"
        )
    return schema


def describe_url(url: str) -> str:
    """``url`` as messages name it: user, host, port and database, never the password."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise ValueError(f"not a PostgreSQL connection URL ({exc}): {url!r}") from None
    user = parts.get("user", "")
    where = f"{parts.get('host', 'localhost')}:{parts.get('port', 5432)}"
    return f"postgresql://{user}{'@' if user else ''}{where}/{parts.get('dbname', '')}"


@functools.lru_cache(maxsize=512)
def _translated(statement: str, schema: str) -> str:
    """A statement of the store (``?`` placeholders, bare table names) for ``schema``."""
    return statement.replace("?", "%s").replace("triobus_", f'"{schema}".triobus_')


@final
class RunningQuery:
    """The connection a worker thread runs a query on, to cancel it from another thread."""

    __slots__ = ("_lock", "_running")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: psycopg.Connection[Any] | None = None

    @contextlib.contextmanager
    def on(self, connection: psycopg.Connection[Any]) -> Iterator[None]:
        """While the block runs, :meth:`cancel` cancels ``connection``'s query."""
        with self._lock:
            self._running = connection
        try:
            yield
        finally:
            with self._lock:
                self._running = None

    def cancel(self) -> None:
        """Cancel the query on the server, if one still runs (never a later one)."""
        with self._lock:
            if self._running is not None:
                self._running.cancel_safe()


async def run_cancellable(run: Callable[[], T], cancel: Callable[[], None] | None) -> T:
    """Run ``run()`` in a worker thread and return what it returns.

    A trio cancellation calls ``cancel`` (in another thread) and waits for
    ``run`` to end: when it ends with ``QueryCanceled`` the caller sees
    ``Cancelled``; when it ends otherwise its outcome stands, and the
    cancellation arrives at the caller's next checkpoint. Without
    ``cancel``, ``run`` always runs to its end.
    """
    task = trio.lowlevel.current_task()
    token = trio.lowlevel.current_trio_token()
    cancelled: list[Callable[[], Any]] = []

    def deliver(result: outcome.Outcome[T]) -> None:
        # The outcome itself is what the wait returns (to tell a cancelled query).
        token.run_sync_soon(trio.lowlevel.reschedule, task, outcome.Value(result))

    def abort(raise_cancel: Callable[[], Any]) -> trio.lowlevel.Abort:
        if cancel is not None:
            cancelled.append(raise_cancel)
            trio.lowlevel.start_thread_soon(cancel, lambda _: None)
        return trio.lowlevel.Abort.FAILED

    trio.lowlevel.start_thread_soon(run, deliver)
    result: outcome.Outcome[T] = await trio.lowlevel.wait_task_rescheduled(abort)
    stopped = isinstance(result, outcome.Error) and isinstance(
        result.error, psycopg.errors.QueryCanceled
    )
    if cancelled and stopped:
        cancelled[0]()  # raises Cancelled
    return result.unwrap()


@final
class PgConnection:
    """A psycopg connection as a :class:`~._database.SqlConnection` of one schema."""

    __slots__ = ("_notified", "raw", "schema")

    def __init__(self, raw: psycopg.Connection[Any], schema: str) -> None:
        self.raw = raw
        self.schema = schema
        self._notified: set[tuple[str, str]] = set()

    def execute(self, statement: str, parameters: Sequence[Any] = (), /) -> psycopg.Cursor[Any]:
        if statement == "BEGIN":
            self._notified.clear()
        return self.raw.execute(_translated(statement, self.schema), parameters)

    def executemany(
        self, statement: str, parameters: Iterable[Sequence[Any]], /
    ) -> psycopg.Cursor[Any]:
        cursor = self.raw.cursor()
        cursor.executemany(_translated(statement, self.schema), parameters)
        return cursor

    @property
    def in_transaction(self) -> bool:
        return self.raw.info.transaction_status != TransactionStatus.IDLE

    def notify(self, channel: str, payload: str) -> None:
        """``pg_notify`` once per transaction and payload (sent when it commits)."""
        if (channel, payload) not in self._notified:
            self._notified.add((channel, payload))
            self.raw.execute("SELECT pg_notify(%s, %s)", (channel, payload))


@final
class PostgresDatabase(Database):
    """One PostgreSQL database, reached through a pool of connections in worker threads."""

    begin: ClassVar[str] = "BEGIN"
    errors: ClassVar[tuple[type[Exception], ...]] = (StoreError, OSError, psycopg.Error)

    def __init__(
        self,
        url: str,
        *,
        schema: str = DEFAULT_SCHEMA,
        pool_size: int = DEFAULT_POOL_SIZE,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_delay: float = 0.0,
    ) -> None:
        self.url = url
        self.schema = checked_schema(schema)
        super().__init__(
            f"{describe_url(url)} (schema {schema!r})", batch_size=batch_size, max_delay=max_delay
        )
        if not isinstance(pool_size, int) or isinstance(pool_size, bool) or pool_size < 2:
            raise ValueError(f"pool_size must be an int >= 2, got {pool_size!r}")
        self.pool_size = pool_size
        self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] | None = None

    @property
    def is_open(self) -> bool:
        return self._pool is not None

    async def open(self) -> None:
        """Connect (nothing more when it is open).

        Raises:
            StoreError: the server cannot be reached, refuses the credentials,
                or has no such database (its own words quoted).
        """
        if self._pool is not None:
            return
        self._pool = await trio.to_thread.run_sync(self._connect)

    def _connect(self) -> psycopg_pool.ConnectionPool[psycopg.Connection[Any]]:
        try:  # one plain connection first: the pool's own errors hide the reason
            psycopg.connect(self.url, connect_timeout=10).close()
        except psycopg.Error as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
            raise StoreError(
                f"cannot connect to the PostgreSQL database {self.location}: {reason}; check "
                "the URL (host, port, user, password, database name) and that the server runs"
            ) from exc
        pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] = psycopg_pool.ConnectionPool(
            self.url,
            min_size=1,
            max_size=self.pool_size,
            kwargs={"autocommit": True, "application_name": f"triobus {self.schema}"},
            open=False,
            timeout=BUSY_TIMEOUT,
            name=f"triobus {self.location}",
        )
        pool.open(wait=True, timeout=BUSY_TIMEOUT)
        return pool

    async def close(self) -> None:
        """Commit what is queued and close the pool (nothing when it is closed)."""
        if self._pool is None:
            return
        await self._flush_all()
        pool, self._pool = self._pool, None
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(pool.close)

    async def _call(self, job: Callable[[Any], T], *, cancellable: bool) -> T:
        """Run ``job`` on a pooled connection in a worker thread.

        ``cancellable``: a trio cancellation cancels the running query on
        the server, and the job's thread returns the connection to the
        pool before the caller sees ``Cancelled``. A job whose connection
        turns out lost (a server restart) fails, and the pool replaces its
        other lost connections before the next job, so one job fails, not
        one per pooled connection.
        """
        pool = self._pool
        if pool is None:
            raise StoreError(f"the database {self.location} is not open")
        schema = self.schema
        query = RunningQuery()

        def run() -> T:
            lost = False
            try:
                with pool.connection() as raw, query.on(raw):
                    try:
                        return job(PgConnection(raw, schema))
                    finally:
                        lost = raw.broken
            finally:
                if lost:
                    pool.check()

        return await run_cancellable(run, query.cancel if cancellable else None)

    async def ddl(self, script: str) -> None:
        """Run ``script`` (``{schema}`` filled in) in one transaction, under the schema's lock."""
        schema = self.schema
        statement = sql.SQL(script).format(schema=sql.Identifier(schema))

        def job(connection: PgConnection) -> None:
            with connection.raw.transaction():
                connection.raw.execute(
                    "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"triobus:{schema}",)
                )
                connection.raw.execute(statement)

        await self.read(job)


@final
class PostgresStore(SqlStore):
    """The durable tables in one PostgreSQL schema, shared by many processes."""

    letter_order: ClassVar[str] = "seq"
    lock_claimed: ClassVar[str] = " FOR UPDATE OF q SKIP LOCKED"
    lock_taken: ClassVar[str] = " FOR UPDATE SKIP LOCKED"

    def __init__(
        self,
        url: str,
        *,
        schema: str = DEFAULT_SCHEMA,
        lease: float = DEFAULT_LEASE,
        pool_size: int = DEFAULT_POOL_SIZE,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_delay: float = 0.0,
        inbox_retention: float = DEFAULT_INBOX_RETENTION,
    ) -> None:
        if not (isinstance(lease, int | float) and 0 < lease < float("inf")):
            raise ValueError(f"lease must be a finite number of seconds > 0, got {lease!r}")
        database = PostgresDatabase(
            url, schema=schema, pool_size=pool_size, batch_size=batch_size, max_delay=max_delay
        )
        super().__init__(database, inbox_retention=inbox_retention)
        self.pg = database
        self.lease = float(lease)
        self.recovery_interval = self.lease / 2
        self.channel = f"triobus_{schema}"
        self._watchers: dict[str, set[Callable[[], None]]] = {}
        self._heartbeat: trio.CancelScope | None = None
        self._listener: _Listener | None = None
        #: (host, port, database) as the server's connections report them.
        self.identity: tuple[str, int, str] | None = None

    # ------------------------------------------------------------ life cycle

    async def _prepare(self) -> None:
        # Tables of this version are used as they are: running the DDL again would
        # take locks that deadlock with the writes of processes already running.
        if await self.pg.read(self._version) != SCHEMA_VERSION:
            await self.pg.ddl(_DDL)
            await self.pg.read(self._check_version)
        await self.database.read(self._beat)
        self.identity = await self.pg.read(_identity)
        self._listener = _Listener(self.pg.url, self.channel, self._notified)
        await self._listener.start()
        self._heartbeat = trio.CancelScope()
        trio.lowlevel.spawn_system_task(self._beat_forever, self._heartbeat)

    def _version(self, connection: PgConnection) -> int | None:
        """The version of the schema's tables (``None``: not made yet)."""
        (table,) = connection.raw.execute(
            "SELECT to_regclass(%s)", (f'"{self.pg.schema}".triobus_schema',)
        ).fetchone() or (None,)
        if table is None:
            return None
        row = connection.execute("SELECT version FROM triobus_schema").fetchone()
        return None if row is None else int(row[0])

    def _check_version(self, connection: PgConnection) -> None:
        with connection.raw.transaction():
            row = connection.execute("SELECT version FROM triobus_schema").fetchone()
            if row is None:
                connection.execute(
                    "INSERT INTO triobus_schema (version) VALUES (?)", (SCHEMA_VERSION,)
                )
            elif row[0] != SCHEMA_VERSION:
                raise StoreError(
                    f"the triobus tables in {self.location} are at schema version {row[0]}, "
                    f"this triobus knows {SCHEMA_VERSION}: upgrade triobus, or use another schema"
                )

    async def _closing(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        if self._listener is not None:
            listener, self._listener = self._listener, None
            with trio.CancelScope(shield=True):
                await listener.stop(self)
        with trio.CancelScope(shield=True):
            # Leaving cleanly: nothing of ours stays claimed; the lease goes too.
            await self.database.write(self._leave)

    def _beat(self, connection: SqlConnection) -> None:
        connection.execute(
            "INSERT INTO triobus_consumers (owner, seen_at) "
            f"VALUES (?, {_SERVER_NOW}) "
            "ON CONFLICT (owner) DO UPDATE SET seen_at = excluded.seen_at",
            (self.owner,),
        )

    def _leave(self, connection: SqlConnection) -> None:
        connection.execute("DELETE FROM triobus_consumers WHERE owner = ?", (self.owner,))
        # Leases (and memberships) of processes gone for long are forgotten.
        connection.execute(
            f"DELETE FROM triobus_consumers WHERE seen_at < {_SERVER_NOW} - ?",
            (self.lease * 100,),
        )
        connection.execute(
            "DELETE FROM triobus_members AS m WHERE m.owner = ? OR NOT EXISTS "
            "(SELECT 1 FROM triobus_consumers AS c WHERE c.owner = m.owner)",
            (self.owner,),
        )

    async def _beat_forever(self, scope: trio.CancelScope) -> None:
        # Paced in real time, as the server's clock measures the lease: trio's clock
        # may be a MockClock, which stands still (the lease would run out) or jumps
        # to each deadline (a renewal due every lease/3 lets it leap at every store call).
        stopped = threading.Event()
        limiter = trio.CapacityLimiter(1)  # not one of the default limiter's threads
        with scope:
            try:
                while True:
                    await trio.to_thread.run_sync(
                        stopped.wait, self.lease / 3, abandon_on_cancel=True, limiter=limiter
                    )
                    try:
                        await self.database.read(self._beat)
                    except Exception as exc:  # a system task: logged, never raised
                        logger.warning("%s: could not renew the lease (%r)", self.location, exc)
            finally:
                stopped.set()  # the abandoned wait ends now

    # ------------------------------------------------------------ the living

    def _dead_owner(self, column: str) -> tuple[str, tuple[Any, ...]]:
        condition = (
            f"({column} IS NULL OR ({column} <> ? AND NOT EXISTS (SELECT 1 FROM "
            f"triobus_consumers AS c WHERE c.owner = {column} AND c.seen_at >= {_SERVER_NOW} - ?)))"
        )
        return condition, (self.owner, self.lease)

    # ------------------------------------------------------------ notifications

    def _notify(self, connection: SqlConnection, endpoint: str) -> None:
        assert isinstance(connection, PgConnection)
        connection.notify(self.channel, endpoint)

    def _my_share(self, connection: SqlConnection, endpoint: str) -> tuple[str, tuple[Any, ...]]:
        """Claims of ``endpoint`` take turns; the living members share its keys by hash."""
        connection.execute(
            "SELECT pg_advisory_xact_lock(hashtext(?))",
            (f"triobus-claim:{self.channel}:{endpoint}",),
        )
        members = [
            owner
            for (owner,) in connection.execute(
                "SELECT m.owner FROM triobus_members AS m JOIN triobus_consumers AS c "
                f"ON c.owner = m.owner WHERE m.endpoint = ? AND c.seen_at >= {_SERVER_NOW} - ? "
                "ORDER BY m.owner",
                (endpoint, self.lease),
            ).fetchall()
        ]
        if self.owner not in members or len(members) < 2:
            return "", ()
        return (
            " AND mod(hashtext(q.partition_key)::bigint & 2147483647, ?) = ?",
            (len(members), members.index(self.owner)),
        )

    async def join(self, endpoint: str) -> None:
        def job(connection: SqlConnection) -> None:
            connection.execute(
                "INSERT INTO triobus_members (endpoint, owner) VALUES (?, ?) "
                "ON CONFLICT (endpoint, owner) DO NOTHING",
                (endpoint, self.owner),
            )

        await self.database.write(job)

    async def leave(self, endpoint: str) -> None:
        def job(connection: SqlConnection) -> None:
            connection.execute(
                "DELETE FROM triobus_members WHERE endpoint = ? AND owner = ?",
                (endpoint, self.owner),
            )

        await self.database.write(job)

    def watch(self, endpoint: str, wake: Callable[[], None]) -> Callable[[], None]:
        watchers = self._watchers.setdefault(endpoint, set())
        watchers.add(wake)
        return lambda: watchers.discard(wake)

    def _notified(self, endpoint: str) -> None:
        for wake in list(self._watchers.get(endpoint, ())):
            wake()


def _identity(connection: PgConnection) -> tuple[str, int, str]:
    return identity_of(connection.raw)


def identity_of(connection: psycopg.Connection[Any]) -> tuple[str, int, str]:
    """(host, port, database) of ``connection``: which server and database it reaches."""
    info = connection.info
    return (info.host, info.port, info.dbname)


@final
class _Listener:
    """One LISTEN connection in a thread of its own; each notification wakes trio."""

    def __init__(self, url: str, channel: str, notified: Callable[[str], None]) -> None:
        self._url = url
        self._channel = channel
        self._notified = notified
        self._stop = threading.Event()
        self._stop_payload = f"stop {id(self)}"
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        token = trio.lowlevel.current_trio_token()
        listening = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(token, listening), name="triobus-pg-listen", daemon=True
        )
        self._thread.start()
        # The first LISTEN is in place before any claim (or it failed: polling remains).
        await trio.to_thread.run_sync(listening.wait, BUSY_TIMEOUT)

    async def stop(self, store: PostgresStore) -> None:
        self._stop.set()
        payload = self._stop_payload
        channel = self._channel

        def wake_listener(connection: PgConnection) -> None:
            connection.notify(channel, payload)

        with contextlib.suppress(*store.database.errors):  # else it ends at its next wait
            await store.pg.read(wake_listener)
        if self._thread is not None:
            await trio.to_thread.run_sync(self._thread.join, 2 * BUSY_TIMEOUT)

    def _run(self, token: trio.lowlevel.TrioToken, listening: threading.Event) -> None:
        while not self._stop.is_set():
            try:
                self._listen(token, listening)
            except psycopg.Error as exc:
                logger.warning(
                    "listening for new rows failed (%r); polling until it reconnects", exc
                )
            except trio.RunFinishedError:
                return
            finally:
                listening.set()
            self._stop.wait(1.0)

    def _listen(self, token: trio.lowlevel.TrioToken, listening: threading.Event) -> None:
        with psycopg.connect(self._url, autocommit=True, connect_timeout=10) as connection:
            connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
            listening.set()
            for notification in connection.notifies():
                if self._stop.is_set() or notification.payload == self._stop_payload:
                    return
                token.run_sync_soon(self._notified, notification.payload)
