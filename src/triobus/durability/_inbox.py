"""Durable inboxes: where a broker endpoint marks the messages it handled.

A broker delivers at least once: a message handled just before a crash (or
a lost connection) comes again. With ``inbox=durable_inbox(...)`` a broker
endpoint looks each message up before running its handler, and marks it
handled (in the store's ``triobus_inbox`` table) before acknowledging it.
A handler that writes through :func:`~triobus.durability.unit_of_work` on
the inbox's database marks the message in its own transaction, so its
writes and "handled" commit together and a redelivery cannot apply them
twice: the redelivered handler's unit of work rolls back quietly.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol, final, runtime_checkable

from .._errors import StoreError
from ._queue import _postgres_store, _release_store, _shared_store, _sqlite_location
from ._store import DEFAULT_INBOX_RETENTION, SqliteStore, SqlStore

if TYPE_CHECKING:
    from ..bus import Delivery
    from ._codec import Codec

#: How often handled ids older than the retention are purged (seconds).
PURGE_INTERVAL: Final = 60.0

#: (endpoint or subscription, message id, handler step) of one handled message.
InboxKey = tuple[str, str, str]


@final
class DurableInbox:
    """The handled-message marks of broker endpoints, in SQLite or PostgreSQL.

    Declare one with :func:`durable_inbox`; several endpoints may share it.
    """

    def __init__(self, location: str, make_store: Callable[[], SqlStore]) -> None:
        #: The database, as messages name it.
        self.location = location
        self._make_store = make_store
        self._store: SqlStore | None = None
        self._users = 0
        self._next_purge = 0.0

    @property
    def store(self) -> SqlStore:
        if self._store is None:
            raise StoreError(f"the inbox in {self.location} is not open")
        return self._store

    async def open(self, codec: Codec) -> None:
        """Open the database (shared with durable queues on it); ``codec`` encodes what a
        handler's unit of work sends.

        Raises:
            StoreError: the database cannot be opened.
        """
        if self._users == 0:
            store = _shared_store(self.location, self._make_store)
            await store.open()
            if store.codec is None:
                store.codec = codec
            self._store = store
        self._users += 1

    async def close(self) -> None:
        self._users -= 1
        if self._users == 0 and self._store is not None:
            store, self._store = self._store, None
            await store.close()
            _release_store(store)

    async def handled(self, key: InboxKey) -> bool:
        """Whether ``key`` is marked handled."""
        return await self.store.handled(*key)

    def mark_soon(self, key: InboxKey, now: float) -> None:
        """Mark ``key`` handled in the next batch (see :meth:`flush`)."""
        store = self.store
        store.database.write_soon(lambda connection: store.mark_handled(connection, *key, now))
        if now >= self._next_purge:
            store.purge_inbox_soon(now)
            self._next_purge = now + PURGE_INTERVAL

    async def flush(self) -> None:
        """Commit the marks made so far."""
        await self.store.database.flush()

    def __repr__(self) -> str:
        return f"<DurableInbox in {self.location}>"


@runtime_checkable
class InboxEndpoint(Protocol):
    """An endpoint that marks handled messages in a :class:`DurableInbox` (a broker endpoint)."""

    def inbox_key(self, delivery: Delivery) -> tuple[DurableInbox, InboxKey, float] | None:
        """The inbox and key that mark ``delivery``'s running handler handled, and now
        (the bus's wall clock), if the endpoint has a durable inbox.
        """


def durable_inbox(
    *,
    path: str | os.PathLike[str] | None = None,
    url: str | None = None,
    schema: str = "triobus",
    inbox_retention: float = DEFAULT_INBOX_RETENTION,
    pool_size: int = 4,
) -> DurableInbox:
    """An inbox in a SQLite file (``path``) or a PostgreSQL database (``url``).

    Args:
        inbox_retention: seconds a handled message id is remembered (a
            redelivery later than that runs its handler again).
        schema, pool_size: PostgreSQL's, as for :func:`durable_queue`.

    Raises:
        ValueError: neither or both of ``path`` and ``url``, or a bad option (named).
    """
    if (path is None) == (url is None):
        raise ValueError("durable_inbox() needs exactly one of path= (a SQLite file) or url=")
    if url is not None:
        location, make_store = _postgres_store(
            url,
            schema=schema,
            lease=30.0,
            pool_size=pool_size,
            batch_size=500,
            max_delay=0.0,
            inbox_retention=inbox_retention,
        )
    else:
        file = os.fspath(path)  # type: ignore[arg-type]
        location = _sqlite_location(file)

        def make_store() -> SqlStore:
            return SqliteStore(file, inbox_retention=inbox_retention)

    make_store()  # checks the options now
    return DurableInbox(location, make_store)
