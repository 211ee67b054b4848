"""Units of work on the user's connection: a transactional outbox and inbox.

::

    async with unit_of_work(connection) as uow:
        await uow.execute("INSERT INTO orders (id, total) VALUES (?, ?)", (order.id, total))
        await bus.send(ShipOrder(order.id))     # written as an outbox row, in this transaction

What is sent or published inside the block is written as rows of
``triobus_outbox`` in the user's transaction, and handed to its endpoints
after the commit (same ids, same order). A rollback (an exception leaving
the block) sends nothing. A crash between the commit and the hand-over
leaves the rows, which the next start relays.

Inside a handler of a durable queue on the same database, the commit also
acknowledges the message being handled (its queue row deleted, its id
marked in the inbox): the handler's writes and "handled" are one
transaction, so a redelivery cannot apply them twice. A unit of work whose
message was acknowledged already (by an earlier attempt's commit) rolls
back quietly.

The connection is the user's own: a ``sqlite3.Connection`` to a durable
queue's file (opened with ``check_same_thread=False``; the transaction
begins deferred, so nothing holds SQLite's write lock until the first
write), or a ``psycopg.Connection`` to a durable queue's PostgreSQL
database (the same host, port and database; ``schema=`` picks the store
when several schemas run). Statements run on a worker thread, one at a
time per connection.
"""

from __future__ import annotations

import abc
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, TypeVar, final

import trio

from .._errors import ActorStopped, MailboxFull, PartitionKeyError, StoreError
from ..bus import Delivery, Endpoint, delivery_in_hand, enlisting, hand_over
from ._database import SqlConnection
from ._inbox import InboxEndpoint
from ._queue import DurableQueue, Receipt, open_stores, store_for
from ._store import SqlStore

T = TypeVar("T")

logger = logging.getLogger("triobus.durability")


class _Side(abc.ABC):
    """How a unit drives the user's connection (SQLite or psycopg)."""

    #: The connection as the store's statements see it.
    adapted: SqlConnection

    def __init__(self, connection: Any, store: SqlStore) -> None:
        self.connection = connection
        self.store = store

    @abc.abstractmethod
    def begin(self) -> None: ...

    @abc.abstractmethod
    def commit(self) -> None: ...

    @abc.abstractmethod
    def rollback(self) -> None: ...

    def finish(self) -> None:  # noqa: B027 (a hook: nothing to do by default)
        """The unit is over (committed or rolled back): restore the connection's settings."""

    @abc.abstractmethod
    def run(self, sql: str, parameters: tuple[Any, ...]) -> list[Any]: ...

    @abc.abstractmethod
    def run_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None: ...

    async def statement(self, function: Callable[..., T], *args: Any) -> T:
        """Run the user's statement ``function(*args)`` on a worker thread."""
        return await trio.to_thread.run_sync(function, *args)


@final
class _SqliteSide(_Side):
    def __init__(self, connection: sqlite3.Connection, store: SqlStore) -> None:
        super().__init__(connection, store)
        self.adapted = connection
        self._level = connection.isolation_level

    def begin(self) -> None:
        self.connection.isolation_level = None
        self.connection.execute("BEGIN DEFERRED")

    def commit(self) -> None:
        self.connection.execute("COMMIT")

    def rollback(self) -> None:
        if self.connection.in_transaction:
            self.connection.execute("ROLLBACK")

    def finish(self) -> None:
        self.connection.isolation_level = self._level

    def run(self, sql: str, parameters: tuple[Any, ...]) -> list[Any]:
        return self.connection.execute(sql, parameters).fetchall()  # type: ignore[no-any-return]

    def run_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self.connection.executemany(sql, rows)


@final
class _PostgresSide(_Side):
    def __init__(self, connection: Any, store: SqlStore) -> None:
        from ._postgres import PgConnection, PostgresStore

        super().__init__(connection, store)
        assert isinstance(store, PostgresStore)
        self.adapted = PgConnection(connection, store.pg.schema)

    def begin(self) -> None:
        if self.connection.autocommit:
            self.connection.execute("BEGIN")

    def commit(self) -> None:
        self.connection.commit()

    def rollback(self) -> None:
        self.connection.rollback()

    def run(self, sql: str, parameters: tuple[Any, ...]) -> list[Any]:
        cursor = self.connection.execute(sql, parameters)
        return cursor.fetchall() if cursor.description is not None else []

    def run_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self.connection.cursor().executemany(sql, rows)

    async def statement(self, function: Callable[..., T], *args: Any) -> T:
        """A trio cancellation cancels the statement on the server (then rolls back)."""
        from ._postgres import RunningQuery, run_cancellable

        query = RunningQuery()

        def run() -> T:
            with query.on(self.connection):
                return function(*args)

        return await run_cancellable(run, query.cancel)


@final
class UnitOfWork:
    """One transaction on the user's connection; what is sent inside it is written with it."""

    def __init__(self, side: _Side) -> None:
        self._side = side
        self.connection = side.connection
        self._store = side.store
        self._lock = trio.Lock()
        #: (endpoint, delivery) sent inside the unit, in order.
        self._sent: list[tuple[Endpoint, Delivery]] = []
        self._seqs: list[int] = []

    async def execute(self, sql: str, parameters: Iterable[Any] = ()) -> list[Any]:
        """Run one statement in this transaction; return its rows (``fetchall``).

        ``sql`` is the connection's own dialect (``?`` placeholders on SQLite,
        ``%s`` on psycopg).
        """
        async with self._lock:
            return await self._side.statement(self._side.run, sql, tuple(parameters))

    async def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> None:
        """Run one statement for each of ``rows`` in this transaction."""
        async with self._lock:
            await self._side.statement(self._side.run_many, sql, [tuple(row) for row in rows])

    async def _on_thread(self, function: Callable[..., T], *args: Any) -> T:
        async with self._lock:
            return await trio.to_thread.run_sync(function, *args)

    def enlist(self, endpoint: Endpoint, delivery: Delivery) -> None:
        self._sent.append((endpoint, delivery))

    # ------------------------------------------------------------ commit

    async def _commit(self) -> bool:
        """Write the outbox rows (and the inbox mark) and commit; ``False``: a duplicate."""
        rows = [self._outbox_row(endpoint, delivery) for endpoint, delivery in self._sent]
        handled = _handled_here(self._store)
        inbox = _inbox_mark(self._store)
        side, store = self._side, self._store

        def commit() -> tuple[bool, list[int]]:
            connection = side.adapted
            if inbox is not None and not store.mark_handled(connection, *inbox):
                side.rollback()  # a redelivery of a message handled already
                return False, []
            if handled is not None:
                uri, row, now, through = handled
                if through is None:
                    marked = store.ack(connection, uri, row.seq, row.message_id, row.step, now)
                else:
                    marked = store.advance(connection, row.seq, through)
                if not marked:
                    side.rollback()
                    return False, []
            seqs = [store.outbox_insert(connection, *row_values) for row_values in rows]
            side.commit()
            return True, seqs

        committed, seqs = await self._on_thread(commit)
        if committed and handled is not None:
            delivery = delivery_in_hand()
            assert delivery is not None and isinstance(delivery.receipt, Receipt)
            through = handled[3]
            if through is None:
                delivery.receipt.acked = True
            else:
                delivery.receipt.done = through
        self._seqs = seqs
        return committed

    def _outbox_row(
        self, endpoint: Endpoint, delivery: Delivery
    ) -> tuple[str, str, str, str, float | None, bytes]:
        codec = self._store.codec
        assert codec is not None  # set by the durable queue that opened the store
        return (
            endpoint.uri,
            delivery.message_id,
            delivery.plan.name,
            "",
            delivery.due,
            codec.encode(delivery.envelope()),
        )

    async def _relay(self) -> None:
        """Hand what was sent to its endpoints, in order, then delete its outbox rows."""
        done: list[int] = []
        try:
            for (endpoint, delivery), seq in zip(self._sent, self._seqs, strict=True):
                try:
                    await hand_over(endpoint, delivery)
                except ActorStopped:
                    continue  # left in the outbox: relayed at the next start
                except (MailboxFull, PartitionKeyError) as exc:
                    # The unit committed: its caller is not told it failed. The
                    # row stays in the outbox and is relayed at the next start.
                    logger.warning(
                        "%s refused %s id=%s after its unit of work committed (%r); it "
                        "stays in the outbox and is relayed at the next start",
                        endpoint.uri,
                        delivery.plan.name,
                        delivery.message_id,
                        exc,
                    )
                    continue
                done.append(seq)
        finally:
            if done:
                with trio.CancelScope(shield=True, deadline=trio.current_time() + 30):
                    await self._store.relayed(done)


def _handled_here(store: SqlStore) -> tuple[str, Any, float, int | None] | None:
    """The queue row of the durable delivery in hand, when it is stored in ``store``,
    and what the commit marks: the whole message (``None``: acknowledged), or,
    for a handler of an event that is not the last, the handlers done through it
    (the row's progress): the handlers after it still run, and retry, on their own.
    """
    delivery = delivery_in_hand()
    if delivery is None or not isinstance(delivery.receipt, Receipt):
        return None
    endpoint = delivery.plan.endpoint
    if not isinstance(endpoint, DurableQueue) or endpoint.store is not store:
        return None
    receipt = delivery.receipt
    if receipt.acked:
        return None
    through: int | None = None
    index = delivery.progress  # the handler running (each_step keeps it)
    if index < len(delivery.plan.steps) - 1:
        if receipt.done > index:
            return None  # this handler's mark is committed already
        through = index + 1
    return endpoint.uri, receipt.row, endpoint.wall_clock(), through


def _inbox_mark(store: SqlStore) -> tuple[str, str, str, float] | None:
    """What the commit marks in ``store``'s inbox for the broker delivery in hand, if any."""
    delivery = delivery_in_hand()
    if delivery is None:
        return None
    endpoint = delivery.plan.endpoint
    if not isinstance(endpoint, InboxEndpoint):
        return None
    found = endpoint.inbox_key(delivery)
    if found is None or found[0].store is not store:
        return None
    _, key, now = found
    return (*key, now)


@asynccontextmanager
async def unit_of_work(connection: Any, *, schema: str | None = None) -> AsyncIterator[UnitOfWork]:
    """A transaction on ``connection`` that carries what is sent inside it; see the module.

    Args:
        connection: a ``sqlite3.Connection`` or a ``psycopg.Connection``.
        schema: PostgreSQL: the schema of the durable queues' tables, when
            queues of several schemas run on that database.

    Raises:
        StoreError: ``connection`` is in a transaction already, was not opened
            with ``check_same_thread=False`` (SQLite), or reaches no database of a
            running durable queue (the outbox relays through one).
        TypeError: ``connection`` is neither kind.
    """
    key = id(connection)
    if key in _open_units:
        raise StoreError(
            "a unit of work is open on this connection already: a connection runs one "
            "transaction at a time; finish that unit first, or open another connection"
        )
    _open_units.add(key)  # before the first await: two tasks cannot both pass
    try:
        side = await _side_of(connection, schema)
        async with _unit_on(side) as uow:
            yield uow
    finally:
        _open_units.discard(key)


#: The connections (by id: sqlite3 connections take no weak references) with a
#: unit of work open; the unit holds its connection, so an id is not reused meanwhile.
_open_units: set[int] = set()


@asynccontextmanager
async def _unit_on(side: _Side) -> AsyncIterator[UnitOfWork]:
    uow = UnitOfWork(side)
    try:
        await trio.to_thread.run_sync(side.begin)
        try:
            with enlisting(uow):
                yield uow
            # Inside the rollback's reach: an outbox row that cannot be encoded, a
            # failed COMMIT or a cancellation at the lock must not leave the
            # transaction open (holding a write lock), nor let an autocommit
            # connection commit the writes without their rows.
            committed = await uow._commit()
        except BaseException:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + 30):
                async with uow._lock:  # after a statement still running on its thread
                    await trio.to_thread.run_sync(side.rollback)
            raise
    finally:
        side.finish()
    if committed:
        await uow._relay()


async def _side_of(connection: Any, schema: str | None) -> _Side:
    if isinstance(connection, sqlite3.Connection):
        path = await trio.to_thread.run_sync(_checked_file, connection)
        store = store_for(path)
        if store is None:
            raise StoreError(
                f"no durable queue of a running bus uses {path!r}: a unit of work writes its "
                "outbox there and relays through it; declare durable_queue(..., path=...) on "
                "that file (or open the unit on a durable queue's database)"
            )
        return _SqliteSide(connection, store)
    if type(connection).__module__.startswith("psycopg"):
        return _PostgresSide(connection, await _postgres_store(connection, schema))
    raise TypeError(
        f"unit_of_work takes a sqlite3.Connection or a psycopg.Connection, got {connection!r}"
    )


async def _postgres_store(connection: Any, schema: str | None) -> SqlStore:
    from psycopg.pq import TransactionStatus

    from ._postgres import PostgresStore, identity_of

    if not hasattr(connection, "autocommit") or hasattr(connection, "__aenter__"):
        raise TypeError(
            f"unit_of_work takes psycopg's sync Connection (run on worker threads), got "
            f"{connection!r}"
        )
    if connection.info.transaction_status != TransactionStatus.IDLE:
        raise StoreError(
            "the connection is in a transaction already: commit or roll it back before "
            "opening a unit of work on it"
        )
    identity = identity_of(connection)
    stores = [
        store
        for store in open_stores()
        if isinstance(store, PostgresStore)
        and store.identity == identity
        and schema in (None, store.pg.schema)
    ]
    if len(stores) == 1:
        return stores[0]
    host, port, dbname = identity
    where = f"{host}:{port}/{dbname}" + ("" if schema is None else f" (schema {schema!r})")
    if not stores:
        raise StoreError(
            f"no durable queue of a running bus uses the PostgreSQL database {where}: a unit "
            "of work writes its outbox there and relays through it; declare "
            "durable_queue(..., url=...) on that database (the same host, port and name)"
        )
    schemas = ", ".join(repr(store.pg.schema) for store in stores)
    raise StoreError(
        f"durable queues of several schemas ({schemas}) run on {where}: say which one "
        "the unit writes its outbox to with unit_of_work(connection, schema=...)"
    )


def _checked_file(connection: sqlite3.Connection) -> str:
    if not isinstance(connection, sqlite3.Connection):
        raise TypeError(f"unit_of_work takes a sqlite3.Connection, got {connection!r}")
    try:
        in_transaction = connection.in_transaction
        path = _database_file(connection)  # a statement: checks the thread
    except sqlite3.ProgrammingError as exc:
        raise StoreError(
            f"{exc}: open the connection with sqlite3.connect(..., check_same_thread=False), "
            "since a unit of work runs its statements on worker threads"
        ) from exc
    if in_transaction:
        raise StoreError(
            "the connection is in a transaction already: commit or roll it back before "
            "opening a unit of work on it"
        )
    if not path:
        raise StoreError("a unit of work needs a database file (not :memory:)")
    return os.path.realpath(path)


def _database_file(connection: sqlite3.Connection) -> str:
    for _, name, path in connection.execute("PRAGMA database_list").fetchall():
        if name == "main":
            return str(path)
    return ""
