"""Units of work on the user's SQLite connection: a transactional outbox and inbox.

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

The transaction begins deferred: nothing holds SQLite's write lock until
the first write. Statements run on a worker thread, one at a time per
connection; open the connection with ``check_same_thread=False``.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any, final

import trio

from .._errors import ActorStopped, MailboxFull, PartitionKeyError, StoreError
from ..bus import Delivery, Endpoint, delivery_in_hand, enlisting, hand_over
from ._queue import DurableQueue, Receipt, store_for
from ._store import SqliteStore, ack, advance, outbox_insert

logger = logging.getLogger("triobus.durability")


def _database_file(connection: sqlite3.Connection) -> str:
    for _, name, path in connection.execute("PRAGMA database_list").fetchall():
        if name == "main":
            return str(path)
    return ""


@final
class UnitOfWork:
    """One transaction on the user's connection; what is sent inside it is written with it."""

    def __init__(self, connection: sqlite3.Connection, store: SqliteStore) -> None:
        self.connection = connection
        self._store = store
        self._lock = trio.Lock()
        #: (endpoint, delivery) sent inside the unit, in order.
        self._sent: list[tuple[Endpoint, Delivery]] = []
        self._seqs: list[int] = []

    async def execute(self, sql: str, parameters: Iterable[Any] = ()) -> list[Any]:
        """Run one statement in this transaction; return its rows (``fetchall``)."""
        params = tuple(parameters)

        def run() -> list[Any]:
            return self.connection.execute(sql, params).fetchall()

        async with self._lock:
            return await trio.to_thread.run_sync(run)

    async def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> None:
        """Run one statement for each of ``rows`` in this transaction."""
        batch = [tuple(row) for row in rows]
        async with self._lock:
            await trio.to_thread.run_sync(self.connection.executemany, sql, batch)

    def enlist(self, endpoint: Endpoint, delivery: Delivery) -> None:
        self._sent.append((endpoint, delivery))

    # ------------------------------------------------------------ commit

    async def _commit(self) -> bool:
        """Write the outbox rows (and the inbox mark) and commit; ``False``: a duplicate."""
        rows = [self._outbox_row(endpoint, delivery) for endpoint, delivery in self._sent]
        handled = _handled_here(self._store)

        def commit() -> tuple[bool, list[int]]:
            connection = self.connection
            if handled is not None:
                uri, row, now, through = handled
                if through is None:
                    marked = ack(connection, uri, row.seq, row.message_id, row.step, now)
                else:
                    marked = advance(connection, row.seq, through)
                if not marked:
                    connection.execute("ROLLBACK")
                    return False, []
            seqs = []
            for row_values in rows:
                outbox_insert(connection, *row_values)
                seqs.append(connection.execute("SELECT last_insert_rowid()").fetchone()[0])
            connection.execute("COMMIT")
            return True, seqs

        async with self._lock:
            committed, seqs = await trio.to_thread.run_sync(commit)
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


def _handled_here(store: SqliteStore) -> tuple[str, Any, float, int | None] | None:
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


@asynccontextmanager
async def unit_of_work(connection: sqlite3.Connection) -> AsyncIterator[UnitOfWork]:
    """A transaction on ``connection`` that carries what is sent inside it; see the module.

    Raises:
        StoreError: ``connection`` is in a transaction already, was not opened
            with ``check_same_thread=False``, or its database is not the file of
            a running durable queue (the outbox relays through one).
    """
    key = id(connection)
    if key in _open_units:
        raise StoreError(
            "a unit of work is open on this connection already: a connection runs one "
            "transaction at a time; finish that unit first, or open another connection"
        )
    _open_units.add(key)  # before the first await: two tasks cannot both pass
    try:
        async with _unit_on(connection) as uow:
            yield uow
    finally:
        _open_units.discard(key)


#: The connections (by id: sqlite3 connections take no weak references) with a
#: unit of work open; the unit holds its connection, so an id is not reused meanwhile.
_open_units: set[int] = set()


@asynccontextmanager
async def _unit_on(connection: sqlite3.Connection) -> AsyncIterator[UnitOfWork]:
    path = await trio.to_thread.run_sync(_checked_file, connection)
    store = store_for(path)
    if store is None:
        raise StoreError(
            f"no durable queue of a running bus uses {path!r}: a unit of work writes its "
            "outbox there and relays through it; declare durable_queue(..., path=...) on "
            "that file (or open the unit on a durable queue's database)"
        )
    uow = UnitOfWork(connection, store)
    level = connection.isolation_level
    connection.isolation_level = None
    try:
        await trio.to_thread.run_sync(connection.execute, "BEGIN DEFERRED")
        try:
            with enlisting(uow):
                yield uow
            # Inside the rollback's reach: an outbox row that cannot be encoded, a
            # failed COMMIT or a cancellation at the lock must not leave the
            # transaction open (holding SQLite's write lock), nor let an
            # autocommit connection commit the writes without their rows.
            committed = await uow._commit()
        except BaseException:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + 30):
                async with uow._lock:  # after a statement still running on its thread
                    await trio.to_thread.run_sync(_rollback, connection)
            raise
    finally:
        connection.isolation_level = level
    if committed:
        await uow._relay()


def _rollback(connection: sqlite3.Connection) -> None:
    if connection.in_transaction:
        connection.execute("ROLLBACK")


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
