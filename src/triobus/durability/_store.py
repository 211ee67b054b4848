"""The durable store: queues, the inbox, dead letters and the outbox, in SQL tables.

Tables (created on first open, versioned in ``triobus_schema``):

- ``triobus_queue``: one row per stored delivery: its endpoint, FIFO
  sequence, due moment, attempts so far, progress (handlers done), who
  claimed it and the encoded envelope. A row is claimed by the process that
  feeds it to a handler and deleted once it is handled or dead-lettered.
- ``triobus_inbox``: (endpoint, message id, step) of handled messages, kept
  ``inbox_retention`` seconds, so a message delivered again is skipped. A
  message stored again while its id is still queued is skipped as well.
- ``triobus_dead_letters``: dead letters with the reason, exception, traceback,
  attempts and the raw bytes.
- ``triobus_outbox``: messages sent inside a unit of work, relayed after
  commit by the process that wrote them (its ``owner``).

:class:`SqlStore` holds every statement the durable layer runs, written
once for both databases; :class:`SqliteStore` (one process per file) and
``PostgresStore`` (many processes, see ``_postgres``) say how the schema is
made and which owners are alive.

Attempts are counted before a handler runs: a claim adds one to every row
it takes. A process that dies leaves its claims behind; once it is known
dead they are *suspect*: each is fed alone, after everything before it is
settled, and its attempt is counted (committed) just before its handler
runs. So a message that kills the process every time reaches its attempt
limit, and one that was only prefetched when the process died is counted at
most once more than it ran.
"""

from __future__ import annotations

import abc
import math
import os
import secrets
import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final, final

import attrs

from .._errors import StoreError
from ._database import Database, SqlConnection
from ._sqlite import SqliteDatabase

if TYPE_CHECKING:
    from ._codec import Codec

SCHEMA_VERSION: Final = 2

#: How long handled message ids are kept in the inbox, in seconds (5 minutes).
DEFAULT_INBOX_RETENTION: Final = 300.0

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS triobus_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS triobus_queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint TEXT NOT NULL,
    message_id TEXT NOT NULL,
    message_name TEXT NOT NULL,
    step TEXT NOT NULL DEFAULT '',
    due REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    progress INTEGER NOT NULL DEFAULT 0,
    claimed_by TEXT,
    suspect INTEGER NOT NULL DEFAULT 0,
    counted_by TEXT,
    partition_key TEXT,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS triobus_queue_next ON triobus_queue (endpoint, claimed_by, seq);
CREATE INDEX IF NOT EXISTS triobus_queue_partition
    ON triobus_queue (endpoint, partition_key, seq);
CREATE INDEX IF NOT EXISTS triobus_queue_message ON triobus_queue (endpoint, message_id, step);
CREATE TABLE IF NOT EXISTS triobus_inbox (
    endpoint TEXT NOT NULL,
    message_id TEXT NOT NULL,
    step TEXT NOT NULL,
    handled_at REAL NOT NULL,
    PRIMARY KEY (endpoint, message_id, step)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS triobus_inbox_age ON triobus_inbox (handled_at);
CREATE TABLE IF NOT EXISTS triobus_dead_letters (
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
    recorded_at REAL NOT NULL,
    decodes INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS triobus_dead_letters_age ON triobus_dead_letters (recorded_at);
CREATE TABLE IF NOT EXISTS triobus_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint TEXT NOT NULL,
    message_id TEXT NOT NULL,
    message_name TEXT NOT NULL,
    step TEXT NOT NULL DEFAULT '',
    due REAL,
    body BLOB NOT NULL,
    owner TEXT
);
"""

#: Version 1 files lack the outbox's owner (their rows are an earlier run's) and
#: the partition key (their rows have none).
_SQLITE_MIGRATIONS: Final = {
    1: (
        "ALTER TABLE triobus_outbox ADD COLUMN owner TEXT",
        "ALTER TABLE triobus_queue ADD COLUMN partition_key TEXT",
        "CREATE INDEX IF NOT EXISTS triobus_queue_partition "
        "ON triobus_queue (endpoint, partition_key, seq)",
    )
}


@final
@attrs.frozen
class StoredRow:
    """A claimed queue row."""

    seq: int
    message_id: str
    step: str
    attempts: int
    progress: int
    suspect: bool
    body: bytes
    #: Counted in flight by this process when it was stored (not again at claim).
    counted_here: bool = False


@final
@attrs.frozen
class StoredLetter:
    """A dead letter as stored."""

    letter_id: str
    endpoint: str
    recipient: str
    reason: str
    message_id: str | None
    message_name: str | None
    step: str
    exception_type: str | None
    error: str | None
    traceback: str | None
    attempts: int | None
    recorded_at: float
    decodes: bool
    body: bytes


@final
@attrs.frozen
class OutboxRow:
    seq: int
    endpoint: str
    message_id: str
    step: str
    due: float | None
    body: bytes


@final
@attrs.frozen
class Counts:
    """What a durable endpoint has in its store."""

    #: Stored and due now (claimed or not).
    incoming: int
    #: Stored with a due moment still ahead (scheduled sends, retries waiting).
    scheduled: int
    #: In the dead-letter store.
    dead_letters: int
    #: Outbox rows waiting to be relayed to it.
    outbox: int


LETTER_COLUMNS: Final = (
    "letter_id, endpoint, recipient, reason, message_id, message_name, step, exception_type, "
    "error, traceback, attempts, recorded_at, decodes, body"
)


def _letter_values(letter: StoredLetter) -> tuple[Any, ...]:
    """``letter`` as ``LETTER_COLUMNS`` values (``decodes`` as an integer).

    A NUL character in its error or traceback (an exception's text) is
    written ``\\x00``, as ``repr`` writes it: no text column holds one on PostgreSQL.
    """
    letter = attrs.evolve(
        letter, error=_without_nul(letter.error), traceback=_without_nul(letter.traceback)
    )
    values = list(attrs.astuple(letter))
    values[12] = int(values[12])
    return tuple(values)


def _without_nul(text: str | None) -> str | None:
    return text.replace("\x00", "\\x00") if text is not None and "\x00" in text else text


def stored_letter(row: Sequence[Any]) -> StoredLetter:
    """A ``LETTER_COLUMNS`` row as a :class:`StoredLetter`."""
    values = list(row[:14])
    values[12] = bool(values[12])
    values[13] = bytes(values[13])
    return StoredLetter(*values)


class SqlStore(abc.ABC):
    """The durable tables of one database, shared by the endpoints that use it.

    Every statement is here, with ``?`` placeholders and bare table names;
    a subclass makes the schema and says which claims belong to the living.
    """

    #: What orders dead letters recorded at the same moment (insertion order).
    letter_order: ClassVar[str] = "rowid"
    #: Added to a claim's SELECT (of queue rows ``q``): how rows another process
    #: is claiming are skipped.
    lock_claimed: ClassVar[str] = ""
    #: Added to the SELECT that takes over outbox rows, likewise.
    lock_taken: ClassVar[str] = ""

    def __init__(self, database: Database, *, inbox_retention: float) -> None:
        if not (isinstance(inbox_retention, int | float) and 0 <= inbox_retention < math.inf):
            raise ValueError(
                f"inbox_retention must be a finite number of seconds >= 0, got {inbox_retention!r}"
            )
        self.database = database
        self.inbox_retention = float(inbox_retention)
        #: This process's claims (a fresh id per open: claims of a dead process differ).
        self.owner = secrets.token_hex(8)
        #: The codec of the bus whose durable queues use this store (set at their start).
        self.codec: Codec | None = None
        #: The queue that relays outbox rows bound for non-durable endpoints.
        self.relayer: object | None = None
        #: How often a feeder looks for claims and outbox rows of processes that
        #: died while this one runs (never, when no other process shares the store).
        self.recovery_interval = math.inf
        self._opens = 0

    @property
    def location(self) -> str:
        return self.database.location

    @property
    def is_open(self) -> bool:
        return self.database.is_open

    async def open(self) -> None:
        """Open the database and make or check the schema (a later open only counts a user)."""
        self._opens += 1
        if self._opens > 1:
            return
        try:
            await self.database.open()
            await self._prepare()
        except BaseException:
            self._opens -= 1
            await self.database.close()
            raise

    async def close(self) -> None:
        """Let go of one :meth:`open`; the last one closes the database."""
        if self._opens == 0:
            return
        self._opens -= 1
        if self._opens == 0:
            await self._closing()
            await self.database.close()

    # ------------------------------------------------------------ for subclasses

    @abc.abstractmethod
    async def _prepare(self) -> None:
        """Make or check the schema (first open)."""

    async def _closing(self) -> None:  # noqa: B027 (a hook: nothing to do by default)
        """The last user is closing the store (its writes are not flushed yet)."""

    def _dead_owner(self, column: str) -> tuple[str, tuple[Any, ...]]:
        """A condition true where ``column`` names no living process; its parameters."""
        return f"({column} IS NULL OR {column} <> ?)", (self.owner,)

    def _notify(self, connection: SqlConnection, endpoint: str) -> None:  # noqa: B027 (a hook: nothing to do by default)
        """Tell other processes ``endpoint`` has new rows (when this transaction commits)."""

    def _my_share(self, connection: SqlConnection, endpoint: str) -> tuple[str, tuple[Any, ...]]:
        """In a partitioned claim: which keys are this process's to take (a condition
        on ``q.partition_key`` and its parameters), once no other process claims rows
        of ``endpoint`` (until commit). Alone: every key.
        """
        return "", ()

    async def join(self, endpoint: str) -> None:  # noqa: B027 (a hook: nothing to do by default)
        """This process consumes ``endpoint`` (it takes a share of its partition keys)."""

    async def leave(self, endpoint: str) -> None:  # noqa: B027 (a hook: nothing to do by default)
        """This process no longer consumes ``endpoint``."""

    def watch(self, endpoint: str, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake`` (in trio) when another process stores rows for ``endpoint``.

        Returns the function that stops watching.
        """
        return lambda: None

    # ------------------------------------------------------------ queue

    async def enqueue(
        self,
        endpoint: str,
        message_id: str,
        name: str,
        step: str,
        due: float,
        body: bytes,
        counted: bool = False,
        partition_key: str | None = None,
    ) -> bool:
        """Store one delivery; returns once it is committed.

        Returns ``False`` (and stores nothing) for a duplicate: a message
        whose id the endpoint holds already, or handled within the inbox
        retention. ``counted``: this process counts it in flight already
        (see :attr:`StoredRow.counted_here`). ``partition_key``: see :meth:`claim`.
        """
        counted_by = self.owner if counted else None

        def job(connection: SqlConnection) -> bool:
            cursor = connection.execute(
                "INSERT INTO triobus_queue "
                "(endpoint, message_id, message_name, step, due, body, counted_by, partition_key) "
                "SELECT ?, ?, ?, ?, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM triobus_queue "
                "WHERE endpoint = ? AND message_id = ? AND step = ?) AND NOT EXISTS "
                "(SELECT 1 FROM triobus_inbox WHERE endpoint = ? AND message_id = ? AND step = ?)",
                (
                    endpoint,
                    message_id,
                    name,
                    step,
                    due,
                    body,
                    counted_by,
                    partition_key,
                    *(endpoint, message_id, step) * 2,
                ),
            )
            stored = cursor.rowcount == 1
            if stored:
                self._notify(connection, endpoint)
            return stored

        return await self.database.write(job)

    async def recover(self, endpoint: str) -> int:
        """Claims of processes that died become suspect; returns how many."""
        dead, params = self._dead_owner("claimed_by")

        def job(connection: SqlConnection) -> int:
            cursor = connection.execute(
                "UPDATE triobus_queue SET claimed_by = NULL, suspect = 1 "
                f"WHERE endpoint = ? AND claimed_by IS NOT NULL AND {dead}",
                (endpoint, *params),
            )
            return cursor.rowcount

        return await self.database.write(job)

    async def claim(
        self, endpoint: str, now: float, limit: int, partitioned: bool = False
    ) -> tuple[list[StoredRow], int]:
        """Take up to ``limit`` due rows, oldest first, counting an attempt on each.

        Rows whose message the inbox marks handled are deleted instead (a
        duplicate is skipped quietly). Suspect rows are taken without a count
        (see :meth:`started`). Rows another process is claiming are skipped.
        ``partitioned``: a row is not taken while an earlier row of its
        partition key is claimed by another process, so one key's messages
        are in one process's hands at a time, in order (claims of the
        endpoint take turns), and each process takes the keys of its share
        (see :meth:`_my_share`). Returns the rows taken and how many of the
        skipped duplicates this process counted in flight when it stored them.
        """
        owner = self.owner
        query = (
            "SELECT q.seq, q.message_id, q.step, q.attempts, q.progress, q.suspect, q.body, "
            "q.counted_by IS NOT NULL AND q.counted_by = ?, "
            "EXISTS (SELECT 1 FROM triobus_inbox AS i "
            "WHERE i.endpoint = q.endpoint AND i.message_id = q.message_id AND i.step = q.step) "
            "FROM triobus_queue AS q "
            "WHERE q.endpoint = ? AND q.claimed_by IS NULL AND q.due <= ? {partitions}"
            f"ORDER BY q.seq LIMIT ?{self.lock_claimed}"
        )

        def job(connection: SqlConnection) -> tuple[list[StoredRow], int]:
            parameters: tuple[Any, ...] = (owner, endpoint, now)
            partitions = ""
            if partitioned:
                share, share_parameters = self._my_share(connection, endpoint)
                partitions = (
                    "AND (q.partition_key IS NULL OR (NOT EXISTS (SELECT 1 FROM triobus_queue "
                    "AS p WHERE p.endpoint = q.endpoint AND p.partition_key = q.partition_key "
                    "AND p.seq < q.seq AND p.claimed_by IS NOT NULL AND p.claimed_by <> ?)"
                    f"{share})) "
                )
                parameters += (owner, *share_parameters)
            statement = query.format(partitions=partitions)
            rows = connection.execute(statement, (*parameters, limit)).fetchall()
            taken: list[StoredRow] = []
            duplicates: list[tuple[int]] = []
            counted_duplicates = 0
            for seq, message_id, step, attempts, progress, suspect, body, here, handled in rows:
                if handled:
                    duplicates.append((seq,))
                    counted_duplicates += bool(here)
                    continue
                count = 0 if suspect else 1
                taken.append(
                    StoredRow(
                        seq,
                        message_id,
                        step,
                        attempts + count,
                        progress,
                        bool(suspect),
                        bytes(body),
                        bool(here),
                    )
                )
            if duplicates:
                connection.executemany("DELETE FROM triobus_queue WHERE seq = ?", duplicates)
            if taken:
                connection.executemany(
                    "UPDATE triobus_queue SET claimed_by = ?, attempts = attempts + ? "
                    "WHERE seq = ?",
                    [(owner, 0 if row.suspect else 1, row.seq) for row in taken],
                )
            return taken, counted_duplicates

        return await self.database.write(job)

    async def started(self, seq: int) -> None:
        """A suspect row's handler is about to run: count the attempt, now, durably."""
        owner = self.owner

        def job(connection: SqlConnection) -> None:
            connection.execute(
                "UPDATE triobus_queue SET attempts = attempts + 1, suspect = 0 "
                "WHERE seq = ? AND claimed_by = ?",
                (seq, owner),
            )

        await self.database.write(job)

    def ack_soon(self, endpoint: str, seq: int, message_id: str, step: str, now: float) -> None:
        """The row was handled: delete it and mark the inbox (in the next batch)."""

        def job(connection: SqlConnection) -> None:
            self.ack(connection, endpoint, seq, message_id, step, now)

        self.database.write_soon(job)

    def retry_soon(
        self,
        seq: int,
        due: float,
        attempts: int,
        progress: int,
        *,
        to_tail: bool = False,
        counted: bool = False,
    ) -> None:
        """Unclaim the row, due at ``due`` (in the next batch): at its place, or the tail.

        ``counted``: this process keeps counting it in flight (see :meth:`enqueue`).
        """
        owner = self.owner
        counted_by = owner if counted else None

        def job(connection: SqlConnection) -> None:
            if not to_tail:
                connection.execute(
                    "UPDATE triobus_queue SET claimed_by = NULL, counted_by = ?, due = ?, "
                    "attempts = ?, progress = ? WHERE seq = ? AND claimed_by = ?",
                    (counted_by, due, attempts, progress, seq, owner),
                )
                return
            connection.execute(
                "INSERT INTO triobus_queue (endpoint, message_id, message_name, step, due, "
                "attempts, progress, body, counted_by, partition_key) "
                "SELECT endpoint, message_id, message_name, step, ?, ?, ?, body, ?, partition_key "
                "FROM triobus_queue WHERE seq = ? AND claimed_by = ?",
                (due, attempts, progress, counted_by, seq, owner),
            )
            connection.execute(
                "DELETE FROM triobus_queue WHERE seq = ? AND claimed_by = ?", (seq, owner)
            )

        self.database.write_soon(job)

    def release_soon(self, seq: int, give_back: int, progress: int) -> None:
        """Unclaim the row (left for redelivery), giving back an attempt that did not run."""
        owner = self.owner

        def job(connection: SqlConnection) -> None:
            connection.execute(
                "UPDATE triobus_queue SET claimed_by = NULL, attempts = attempts - ?, "
                "progress = ? WHERE seq = ? AND claimed_by = ?",
                (give_back, progress, seq, owner),
            )

        self.database.write_soon(job)

    async def next_due(self, endpoint: str) -> float | None:
        """The earliest due moment of the endpoint's unclaimed rows, if any."""

        def job(connection: SqlConnection) -> float | None:
            row = connection.execute(
                "SELECT MIN(due) FROM triobus_queue WHERE endpoint = ? AND claimed_by IS NULL",
                (endpoint,),
            ).fetchone()
            return None if row[0] is None else float(row[0])

        return await self.database.read(job)

    def purge_inbox_soon(self, now: float) -> None:
        """Forget handled ids older than the retention (in the next batch)."""
        horizon = now - self.inbox_retention

        def job(connection: SqlConnection) -> None:
            connection.execute("DELETE FROM triobus_inbox WHERE handled_at < ?", (horizon,))

        self.database.write_soon(job)

    async def counts(self, endpoint: str, now: float) -> Counts:
        def job(connection: SqlConnection) -> Counts:
            incoming, scheduled = connection.execute(
                "SELECT COALESCE(SUM(CASE WHEN due <= ? THEN 1 ELSE 0 END), 0), "
                "COALESCE(SUM(CASE WHEN due > ? THEN 1 ELSE 0 END), 0) "
                "FROM triobus_queue WHERE endpoint = ?",
                (now, now, endpoint),
            ).fetchone()
            (letters,) = connection.execute(
                "SELECT COUNT(*) FROM triobus_dead_letters WHERE endpoint = ?", (endpoint,)
            ).fetchone()
            (outbox,) = connection.execute(
                "SELECT COUNT(*) FROM triobus_outbox WHERE endpoint = ?", (endpoint,)
            ).fetchone()
            return Counts(int(incoming), int(scheduled), int(letters), int(outbox))

        return await self.database.read(job)

    # ------------------------------------------------------------ in a unit of work

    def ack(
        self,
        connection: SqlConnection,
        endpoint: str,
        seq: int,
        message_id: str,
        step: str,
        now: float,
    ) -> int:
        """Delete this process's handled row ``seq`` and mark its message in the inbox.

        Returns the rows deleted: 0 when the row is gone or was taken over
        by another process (which then handles it).
        """
        cursor = connection.execute(
            "DELETE FROM triobus_queue WHERE seq = ? AND claimed_by = ?", (seq, self.owner)
        )
        connection.execute(
            "INSERT INTO triobus_inbox (endpoint, message_id, step, handled_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (endpoint, message_id, step) "
            "DO UPDATE SET handled_at = excluded.handled_at",
            (endpoint, message_id, step, now),
        )
        return cursor.rowcount

    def mark_handled(
        self, connection: SqlConnection, endpoint: str, message_id: str, step: str, now: float
    ) -> int:
        """Mark a message handled in the inbox: 1, or 0 when it was marked before (a duplicate)."""
        cursor = connection.execute(
            "INSERT INTO triobus_inbox (endpoint, message_id, step, handled_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (endpoint, message_id, step) DO NOTHING",
            (endpoint, message_id, step, now),
        )
        return cursor.rowcount

    async def handled(self, endpoint: str, message_id: str, step: str) -> bool:
        """Whether the inbox marks this message (this handler step) handled."""

        def job(connection: SqlConnection) -> bool:
            row = connection.execute(
                "SELECT 1 FROM triobus_inbox WHERE endpoint = ? AND message_id = ? AND step = ?",
                (endpoint, message_id, step),
            ).fetchone()
            return row is not None

        return await self.database.read(job)

    def advance(self, connection: SqlConnection, seq: int, done: int) -> int:
        """Mark the first ``done`` handlers of row ``seq``'s event done; rows updated.

        0 when the row is gone, taken over, or already past them (a
        redelivery of a handler whose unit of work committed).
        """
        cursor = connection.execute(
            "UPDATE triobus_queue SET progress = ? WHERE seq = ? AND progress < ? "
            "AND claimed_by = ?",
            (done, seq, done, self.owner),
        )
        return cursor.rowcount

    def outbox_insert(
        self,
        connection: SqlConnection,
        endpoint: str,
        message_id: str,
        name: str,
        step: str,
        due: float | None,
        body: bytes,
    ) -> int:
        """Write one outbox row, owned by this process; its seq."""
        row = connection.execute(
            "INSERT INTO triobus_outbox "
            "(endpoint, message_id, message_name, step, due, body, owner) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING seq",
            (endpoint, message_id, name, step, due, body, self.owner),
        ).fetchone()
        return int(row[0])

    # ------------------------------------------------------------ dead letters

    def dead_letter_soon(self, letter: StoredLetter, seq: int | None) -> None:
        """Store ``letter`` (and delete queue row ``seq``, if given) in the next batch."""
        self.database.write_soon(self._dead_letter_job(letter, seq))

    async def dead_letter(self, letter: StoredLetter, seq: int | None = None) -> None:
        """Store ``letter`` (and delete queue row ``seq``, if given); returns once committed."""
        await self.database.write(self._dead_letter_job(letter, seq))

    def _dead_letter_job(
        self, letter: StoredLetter, seq: int | None
    ) -> Callable[[SqlConnection], None]:
        owner = self.owner

        def job(connection: SqlConnection) -> None:
            connection.execute(
                f"INSERT INTO triobus_dead_letters ({LETTER_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (letter_id) DO NOTHING",
                _letter_values(letter),
            )
            if seq is not None:
                connection.execute(
                    "DELETE FROM triobus_queue WHERE seq = ? AND claimed_by = ?", (seq, owner)
                )

        return job

    async def letters(self, endpoint: str) -> list[StoredLetter]:
        def job(connection: SqlConnection) -> list[StoredLetter]:
            rows = connection.execute(
                f"SELECT {LETTER_COLUMNS} FROM triobus_dead_letters WHERE endpoint = ? "
                f"ORDER BY recorded_at, {self.letter_order}",
                (endpoint,),
            ).fetchall()
            return [stored_letter(row) for row in rows]

        return await self.database.read(job)

    async def requeue_letter(
        self,
        letter: StoredLetter,
        now: float,
        counted: bool = False,
        partition_key: str | None = None,
    ) -> bool:
        """Replay: the letter's message goes back to its queue (same id, fresh attempts).

        One transaction: the letter leaves the store, the message is queued and
        its inbox mark is cleared. Returns ``False``, doing nothing, when the
        letter is no longer stored (replayed or purged meanwhile, perhaps by
        another process), so a letter is never queued twice. ``counted`` as
        for :meth:`enqueue`.
        """
        counted_by = self.owner if counted else None

        def job(connection: SqlConnection) -> bool:
            removed = connection.execute(
                "DELETE FROM triobus_dead_letters WHERE letter_id = ?", (letter.letter_id,)
            ).rowcount
            if not removed:
                return False
            connection.execute(
                "INSERT INTO triobus_queue "
                "(endpoint, message_id, message_name, step, due, body, counted_by, partition_key) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    letter.endpoint,
                    letter.message_id,
                    letter.message_name,
                    letter.step,
                    now,
                    letter.body,
                    counted_by,
                    partition_key,
                ),
            )
            connection.execute(
                "DELETE FROM triobus_inbox WHERE endpoint = ? AND message_id = ? AND step = ?",
                (letter.endpoint, letter.message_id, letter.step),
            )
            self._notify(connection, letter.endpoint)
            return True

        return await self.database.write(job)

    # ------------------------------------------------------------ outbox

    async def take_outbox(self, limit: int, after: int = 0) -> list[OutboxRow]:
        """Take over up to ``limit`` outbox rows (seq above ``after``) left by dead processes.

        A row of a process that died between its commit and its relay
        becomes this process's, to relay; give back what it does not relay
        with :meth:`release_outbox`. Oldest first.
        """
        dead, params = self._dead_owner("o.owner")  # qualified: the lease table has one too
        query = (
            "UPDATE triobus_outbox SET owner = ? WHERE seq IN (SELECT o.seq FROM triobus_outbox "
            f"AS o WHERE o.seq > ? AND {dead} ORDER BY o.seq LIMIT ?{self.lock_taken}) "
            "RETURNING seq, endpoint, message_id, step, due, body"
        )

        def job(connection: SqlConnection) -> list[OutboxRow]:
            rows = connection.execute(query, (self.owner, after, *params, limit)).fetchall()
            return sorted(
                (
                    OutboxRow(seq, uri, mid, step, due, bytes(body))
                    for seq, uri, mid, step, due, body in rows
                ),
                key=lambda row: row.seq,
            )

        return await self.database.write(job)

    async def release_outbox(self, seqs: Sequence[int]) -> None:
        """Give back taken outbox rows this process does not relay (another may)."""
        owner = self.owner

        def job(connection: SqlConnection) -> None:
            connection.executemany(
                "UPDATE triobus_outbox SET owner = NULL WHERE seq = ? AND owner = ?",
                [(seq, owner) for seq in seqs],
            )

        await self.database.write(job)

    async def relayed(self, seqs: Sequence[int]) -> None:
        def job(connection: SqlConnection) -> None:
            connection.executemany(
                "DELETE FROM triobus_outbox WHERE seq = ?", [(seq,) for seq in seqs]
            )

        await self.database.write(job)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.location}>"


@final
class SqliteStore(SqlStore):
    """The durable tables of one SQLite file, used by one process at a time."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        batch_size: int = 500,
        max_delay: float = 0.0,
        inbox_retention: float = DEFAULT_INBOX_RETENTION,
    ) -> None:
        super().__init__(
            SqliteDatabase(path, batch_size=batch_size, max_delay=max_delay),
            inbox_retention=inbox_retention,
        )
        self.path = os.fspath(path)

    async def _prepare(self) -> None:
        await self.database.read(_create_sqlite_schema)  # executescript commits as it goes


def _create_sqlite_schema(connection: sqlite3.Connection) -> None:
    """Upgrade the tables of an older version (first), then make what is missing."""
    version = _sqlite_version(connection)
    if version in _SQLITE_MIGRATIONS:
        connection.execute("BEGIN IMMEDIATE")
        for statement in _SQLITE_MIGRATIONS[version]:
            connection.execute(statement)
        connection.execute("UPDATE triobus_schema SET version = ?", (SCHEMA_VERSION,))
        connection.execute("COMMIT")
    elif version is not None and version != SCHEMA_VERSION:
        raise StoreError(
            f"the triobus tables are at schema version {version}, this triobus knows "
            f"{SCHEMA_VERSION}: upgrade triobus or use a fresh database file"
        )
    connection.executescript(_SQLITE_SCHEMA)
    if version is None:
        connection.execute("INSERT INTO triobus_schema (version) VALUES (?)", (SCHEMA_VERSION,))


def _sqlite_version(connection: sqlite3.Connection) -> int | None:
    """The schema version of the file's tables (``None``: none made yet)."""
    exists = connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'triobus_schema'"
    ).fetchone()
    if exists is None:
        return None
    row = connection.execute("SELECT version FROM triobus_schema").fetchone()
    return None if row is None else int(row[0])
