"""Helpers for the durable tests: the envelope a sender's bus would write, the store of a
``store_at`` (SQLite or PostgreSQL) as another process opens it, and the user's own
connection and tables next to the store's.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, Protocol

from triobus import Envelope
from triobus.durability import Codec, MessageTypes
from triobus.durability._store import SqliteStore, SqlStore


class StoreAt(Protocol):
    """Where a test's durable queues are stored: the ``store_at`` fixture (see conftest)."""

    kind: str
    path: Path
    url: str | None
    schema: str | None

    def options(self) -> dict[str, Any]: ...

    def rows(self, sql: str, parameters: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]: ...


def root_envelope(message: object, message_id: str, name: str, version: int = 1) -> Envelope:
    """The envelope of ``message`` sent as the root of its chain (no cause, no headers), now."""
    return Envelope(
        message_id=message_id,
        message_name=name,
        message_version=version,
        correlation_id=message_id,
        causation_id=None,
        headers={},
        reply_to=None,
        created_at=time.time(),
        message=message,
    )


def store_of(store_at: StoreAt) -> SqlStore:
    """A store on ``store_at``'s database (the conftest fixture), as another process opens it.

    Rows written through it (then closed) are another process's: a sender's,
    or, when it claimed or owned them, a process that died.
    """
    if store_at.kind == "sqlite":
        return SqliteStore(store_at.path)
    from triobus.durability._postgres import PostgresStore

    return PostgresStore(store_at.url, schema=store_at.schema)


def store_failure(store_at: StoreAt) -> Exception:
    """An ordinary failure of ``store_at``'s database driver (a full disk)."""
    if store_at.kind == "sqlite":
        return sqlite3.OperationalError("database or disk is full")
    import psycopg

    return psycopg.errors.DiskFull("could not extend file")


async def leave_in_outbox(store_at: StoreAt, *rows: tuple[str, Any, str, str]) -> None:
    """Outbox rows as units of work write them (``(endpoint, message, name, id)`` each),
    left by a process that died before relaying them.
    """
    encoded = [
        (
            endpoint,
            message_id,
            name,
            Codec(MessageTypes().register(type(message))).encode(
                root_envelope(message, message_id, name)
            ),
        )
        for endpoint, message, name, message_id in rows
    ]
    store = store_of(store_at)

    def write(connection: Any) -> None:
        for endpoint, message_id, name, data in encoded:
            store.outbox_insert(connection, endpoint, message_id, name, "", None, data)

    await store.open()
    try:
        await store.database.write(write)
    finally:
        await store.close()


class UserDatabase:
    """The user's own side of ``store_at``'s database: connections, tables, SQL dialect.

    On SQLite, connections to the queue's file (``check_same_thread=False``);
    on PostgreSQL, ``psycopg`` connections whose ``search_path`` is the test's
    schema, so the test's own tables (``orders``) live next to the store's and
    bare names reach them. Statements are written with ``?`` placeholders and
    turned into the connection's own with :meth:`sql`.
    """

    def __init__(self, store_at: StoreAt) -> None:
        self.kind = store_at.kind
        self._path = store_at.path
        self._url = store_at.url
        self._schema = store_at.schema

    def connect(self, *, autocommit: bool = False, orders: bool = True) -> Any:
        """A user's connection (``autocommit``: no implicit transactions), with an
        ``orders (id INTEGER)`` table made when ``orders``.
        """
        if self.kind == "sqlite":
            connection = sqlite3.connect(
                self._path, check_same_thread=False, isolation_level=None if autocommit else ""
            )
        else:
            import psycopg

            setup = psycopg.connect(self._url, autocommit=True)
            with setup:
                setup.execute(f'CREATE SCHEMA IF NOT EXISTS "{self._schema}"')
            connection = psycopg.connect(
                self._url, autocommit=autocommit, options=f"-c search_path={self._schema}"
            )
        if orders:
            connection.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER)")
            if self.in_transaction(connection):
                connection.commit()
        return connection

    def sql(self, statement: str) -> str:
        """``statement`` (``?`` placeholders) in the dialect of the user's connection."""
        return statement if self.kind == "sqlite" else statement.replace("?", "%s")

    def rows(self, statement: str, parameters: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run ``statement`` (``?`` placeholders) on a connection of its own; its rows."""
        connection = self.connect(autocommit=True, orders=False)
        try:
            cursor = connection.execute(self.sql(statement), parameters)
            return [tuple(row) for row in cursor.fetchall()] if cursor.description else []
        finally:
            connection.close()

    def in_transaction(self, connection: Any) -> bool:
        """Whether ``connection`` has a transaction open."""
        if self.kind == "sqlite":
            return bool(connection.in_transaction)
        from psycopg.pq import TransactionStatus

        return bool(connection.info.transaction_status != TransactionStatus.IDLE)

    def autocommits(self, connection: Any) -> bool:
        """Whether ``connection`` runs each statement in its own transaction."""
        if self.kind == "sqlite":
            return connection.isolation_level is None
        return bool(connection.autocommit)

    def writable_now(self, table: str = "orders") -> bool:
        """Whether another connection can take ``table`` for writing at once (no
        transaction is left holding it).
        """
        if self.kind == "sqlite":  # SQLite's one write lock, for the whole file
            connection = sqlite3.connect(self._path, timeout=0.5, isolation_level=None)
            try:
                connection.execute("BEGIN IMMEDIATE")
                connection.execute("ROLLBACK")
            except sqlite3.OperationalError:
                return False
            finally:
                connection.close()
            return True
        import psycopg

        with self.connect(orders=False) as connection:  # rolled back when it closes
            try:
                connection.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE NOWAIT")
            except psycopg.errors.LockNotAvailable:
                return False
        return True
