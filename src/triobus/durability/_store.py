"""The SQLite store: durable queues, the inbox, dead letters and the outbox, in one file.

Tables (created on first open, versioned in ``triobus_schema``):

- ``triobus_queue``: one row per stored delivery: its endpoint, FIFO
  sequence, due moment, attempts so far, progress (handlers done) and the
  encoded envelope. A row is claimed by the process that feeds it to a
  handler and deleted once it is handled or dead-lettered.
- ``triobus_inbox``: (endpoint, message id, step) of handled messages, kept
  ``inbox_retention`` seconds, so a message delivered again is skipped. A
  message stored again while its id is still queued is skipped as well.
- ``triobus_dead_letters``: dead letters with the reason, exception, traceback,
  attempts and the raw bytes.
- ``triobus_outbox``: messages sent inside a unit of work, relayed after commit.

Attempts are counted before a handler runs: a claim adds one to every row
it takes. A process that dies leaves its claims behind; at the next start
they are *suspect*: each is fed alone, after everything before it is
settled, and its attempt is counted (committed) just before its handler
runs. So a message that kills the process every time reaches its attempt
limit, and one that was only prefetched when the process died is counted at
most once more than it ran.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final, final

import attrs

from ._sqlite import Database

if TYPE_CHECKING:
    from ._codec import Codec

SCHEMA_VERSION: Final = 1

#: How long handled message ids are kept in the inbox, in seconds (5 minutes).
DEFAULT_INBOX_RETENTION: Final = 300.0

_SCHEMA = """
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
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS triobus_queue_next ON triobus_queue (endpoint, claimed_by, seq);
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
    body BLOB NOT NULL
);
"""


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


def _last_outbox_seq(connection: sqlite3.Connection) -> int:
    (seq,) = connection.execute("SELECT COALESCE(MAX(seq), 0) FROM triobus_outbox").fetchone()
    return int(seq)


def _create_schema(connection: sqlite3.Connection) -> None:
    connection.executescript(_SCHEMA)
    row = connection.execute("SELECT version FROM triobus_schema").fetchone()
    if row is None:
        connection.execute("INSERT INTO triobus_schema (version) VALUES (?)", (SCHEMA_VERSION,))
    elif row[0] != SCHEMA_VERSION:
        raise sqlite3.DatabaseError(
            f"the triobus tables are at schema version {row[0]}, this triobus knows "
            f"{SCHEMA_VERSION}: upgrade triobus or use a fresh database file"
        )


@final
class SqliteStore:
    """The durable tables of one SQLite file, shared by the endpoints that use it."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        batch_size: int = 500,
        max_delay: float = 0.0,
        inbox_retention: float = DEFAULT_INBOX_RETENTION,
    ) -> None:
        if not inbox_retention >= 0:
            raise ValueError(f"inbox_retention must be >= 0 seconds, got {inbox_retention!r}")
        self.database = Database(path, batch_size=batch_size, max_delay=max_delay)
        self.inbox_retention = float(inbox_retention)
        #: This process's claims (a fresh id per open: claims of a dead process differ).
        self.owner = secrets.token_hex(8)
        #: The codec of the bus whose durable queues use this store (set at their start).
        self.codec: Codec | None = None
        #: The queue that relays outbox rows bound for non-durable endpoints.
        self.relayer: object | None = None
        #: Outbox rows up to this seq were left by an earlier run (read at open):
        #: the durable queues relay them. Later rows are this run's units', which
        #: relay their own (relaying them here too would deliver them twice).
        self.outbox_horizon = 0

    @property
    def path(self) -> str:
        return self.database.path

    async def open(self) -> None:
        first = not self.database.is_open
        await self.database.open()
        if first:
            await self.database.read(_create_schema)  # executescript commits as it goes
            self.outbox_horizon = await self.database.read(_last_outbox_seq)

    async def close(self) -> None:
        await self.database.close()

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
    ) -> bool:
        """Store one delivery; returns once it is committed.

        Returns ``False`` (and stores nothing) for a duplicate: a message
        whose id the endpoint holds already, or handled within the inbox
        retention. ``counted``: this process counts it in flight already
        (see :attr:`StoredRow.counted_here`).
        """
        counted_by = self.owner if counted else None

        def job(connection: sqlite3.Connection) -> bool:
            cursor = connection.execute(
                "INSERT INTO triobus_queue "
                "(endpoint, message_id, message_name, step, due, body, counted_by) "
                "SELECT ?, ?, ?, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM triobus_queue "
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
                    *(endpoint, message_id, step) * 2,
                ),
            )
            return cursor.rowcount == 1

        return await self.database.write(job)

    async def recover(self, endpoint: str) -> int:
        """Claims left by a process that died become suspect; returns how many."""

        def job(connection: sqlite3.Connection) -> int:
            cursor = connection.execute(
                "UPDATE triobus_queue SET claimed_by = NULL, suspect = 1 "
                "WHERE endpoint = ? AND claimed_by IS NOT NULL AND claimed_by != ?",
                (endpoint, self.owner),
            )
            return cursor.rowcount

        return await self.database.write(job)

    async def claim(self, endpoint: str, now: float, limit: int) -> tuple[list[StoredRow], int]:
        """Take up to ``limit`` due rows, oldest first, counting an attempt on each.

        Rows whose message the inbox marks handled are deleted instead (a
        duplicate is skipped quietly). Suspect rows are taken without a count
        (see :meth:`started`). Returns the rows taken and how many of the
        skipped duplicates this process counted in flight when it stored them.
        """
        owner = self.owner

        def job(connection: sqlite3.Connection) -> tuple[list[StoredRow], int]:
            rows = connection.execute(
                "SELECT q.seq, q.message_id, q.step, q.attempts, q.progress, q.suspect, q.body, "
                "q.counted_by IS NOT NULL AND q.counted_by = ?, i.message_id IS NOT NULL "
                "FROM triobus_queue AS q "
                "LEFT JOIN triobus_inbox AS i ON i.endpoint = q.endpoint "
                "AND i.message_id = q.message_id AND i.step = q.step "
                "WHERE q.endpoint = ? AND q.claimed_by IS NULL AND q.due <= ? "
                "ORDER BY q.seq LIMIT ?",
                (owner, endpoint, now, limit),
            ).fetchall()
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
            connection.executemany(
                "UPDATE triobus_queue SET claimed_by = ?, attempts = attempts + ? WHERE seq = ?",
                [(owner, 0 if row.suspect else 1, row.seq) for row in taken],
            )
            return taken, counted_duplicates

        return await self.database.write(job)

    async def started(self, seq: int) -> None:
        """A suspect row's handler is about to run: count the attempt, now, durably."""

        def job(connection: sqlite3.Connection) -> None:
            connection.execute(
                "UPDATE triobus_queue SET attempts = attempts + 1, suspect = 0 WHERE seq = ?",
                (seq,),
            )

        await self.database.write(job)

    def ack_soon(self, endpoint: str, seq: int, message_id: str, step: str, now: float) -> None:
        """The row was handled: delete it and mark the inbox (in the next batch)."""

        def job(connection: sqlite3.Connection) -> None:
            ack(connection, endpoint, seq, message_id, step, now)

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
        counted_by = self.owner if counted else None

        def job(connection: sqlite3.Connection) -> None:
            if not to_tail:
                connection.execute(
                    "UPDATE triobus_queue SET claimed_by = NULL, counted_by = ?, due = ?, "
                    "attempts = ?, progress = ? WHERE seq = ?",
                    (counted_by, due, attempts, progress, seq),
                )
                return
            connection.execute(
                "INSERT INTO triobus_queue (endpoint, message_id, message_name, step, due, "
                "attempts, progress, body, counted_by) "
                "SELECT endpoint, message_id, message_name, step, ?, ?, ?, body, ? "
                "FROM triobus_queue WHERE seq = ?",
                (due, attempts, progress, counted_by, seq),
            )
            connection.execute("DELETE FROM triobus_queue WHERE seq = ?", (seq,))

        self.database.write_soon(job)

    def release_soon(self, seq: int, give_back: int, progress: int) -> None:
        """Unclaim the row (left for redelivery), giving back an attempt that did not run."""

        def job(connection: sqlite3.Connection) -> None:
            connection.execute(
                "UPDATE triobus_queue SET claimed_by = NULL, attempts = attempts - ?, "
                "progress = ? WHERE seq = ?",
                (give_back, progress, seq),
            )

        self.database.write_soon(job)

    async def next_due(self, endpoint: str) -> float | None:
        """The earliest due moment of the endpoint's unclaimed rows, if any."""

        def job(connection: sqlite3.Connection) -> float | None:
            row = connection.execute(
                "SELECT MIN(due) FROM triobus_queue WHERE endpoint = ? AND claimed_by IS NULL",
                (endpoint,),
            ).fetchone()
            return None if row[0] is None else float(row[0])

        return await self.database.read(job)

    def purge_inbox_soon(self, now: float) -> None:
        """Forget handled ids older than the retention (in the next batch)."""
        horizon = now - self.inbox_retention

        def job(connection: sqlite3.Connection) -> None:
            connection.execute("DELETE FROM triobus_inbox WHERE handled_at < ?", (horizon,))

        self.database.write_soon(job)

    async def counts(self, endpoint: str, now: float) -> Counts:
        def job(connection: sqlite3.Connection) -> Counts:
            incoming, scheduled = connection.execute(
                "SELECT COALESCE(SUM(due <= ?), 0), COALESCE(SUM(due > ?), 0) "
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

    # ------------------------------------------------------------ dead letters

    def dead_letter_soon(self, letter: StoredLetter, seq: int | None) -> None:
        """Store ``letter`` (and delete queue row ``seq``, if given) in the next batch."""
        self.database.write_soon(_dead_letter_job(letter, seq))

    async def dead_letter(self, letter: StoredLetter, seq: int | None = None) -> None:
        """Store ``letter`` (and delete queue row ``seq``, if given); returns once committed."""
        await self.database.write(_dead_letter_job(letter, seq))

    async def letters(self, endpoint: str) -> list[StoredLetter]:
        def job(connection: sqlite3.Connection) -> list[StoredLetter]:
            rows = connection.execute(
                f"SELECT {_LETTER_COLUMNS} FROM triobus_dead_letters WHERE endpoint = ? "
                "ORDER BY recorded_at, rowid",
                (endpoint,),
            ).fetchall()
            return [_letter(row) for row in rows]

        return await self.database.read(job)

    async def remove_letters(self, letter_ids: Sequence[str]) -> int:
        def job(connection: sqlite3.Connection) -> int:
            cursor = connection.executemany(
                "DELETE FROM triobus_dead_letters WHERE letter_id = ?",
                [(letter_id,) for letter_id in letter_ids],
            )
            return cursor.rowcount

        return await self.database.write(job)

    async def requeue_letter(self, letter: StoredLetter, now: float, counted: bool = False) -> bool:
        """Replay: the letter's message goes back to its queue (same id, fresh attempts).

        One transaction: the letter leaves the store, the message is queued and
        its inbox mark is cleared. Returns ``False``, doing nothing, when the
        letter is no longer stored (replayed or purged meanwhile, perhaps by
        another process), so a letter is never queued twice. ``counted`` as
        for :meth:`enqueue`.
        """
        counted_by = self.owner if counted else None

        def job(connection: sqlite3.Connection) -> bool:
            removed = connection.execute(
                "DELETE FROM triobus_dead_letters WHERE letter_id = ?", (letter.letter_id,)
            ).rowcount
            if not removed:
                return False
            connection.execute(
                "INSERT INTO triobus_queue "
                "(endpoint, message_id, message_name, step, due, body, counted_by) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    letter.endpoint,
                    letter.message_id,
                    letter.message_name,
                    letter.step,
                    now,
                    letter.body,
                    counted_by,
                ),
            )
            connection.execute(
                "DELETE FROM triobus_inbox WHERE endpoint = ? AND message_id = ? AND step = ?",
                (letter.endpoint, letter.message_id, letter.step),
            )
            return True

        return await self.database.write(job)

    # ------------------------------------------------------------ outbox

    async def outbox(
        self,
        endpoints: Iterable[str] | None,
        limit: int,
        through: int | None = None,
        after: int = 0,
    ) -> list[OutboxRow]:
        """Outbox rows (bound for ``endpoints``, or all; seq above ``after`` and up to
        ``through``), oldest first.
        """
        uris = None if endpoints is None else list(endpoints)

        def job(connection: sqlite3.Connection) -> list[OutboxRow]:
            clauses = ["seq > ?"]
            params: list[Any] = [after]
            if uris is not None:
                clauses.append(f"endpoint IN ({', '.join('?' for _ in uris)})")
                params += uris
            if through is not None:
                clauses.append("seq <= ?")
                params.append(through)
            query = f"WHERE {' AND '.join(clauses)}"
            rows = connection.execute(
                "SELECT seq, endpoint, message_id, step, due, body FROM triobus_outbox "
                f"{query} ORDER BY seq LIMIT ?",
                (*params, limit),
            ).fetchall()
            return [
                OutboxRow(seq, uri, mid, step, due, bytes(body))
                for seq, uri, mid, step, due, body in rows
            ]

        if uris == []:
            return []
        return await self.database.read(job)

    async def relayed(self, seqs: Sequence[int]) -> None:
        def job(connection: sqlite3.Connection) -> None:
            connection.executemany(
                "DELETE FROM triobus_outbox WHERE seq = ?", [(seq,) for seq in seqs]
            )

        await self.database.write(job)

    def __repr__(self) -> str:
        return f"<SqliteStore {self.path!r}>"


_LETTER_COLUMNS = (
    "letter_id, endpoint, recipient, reason, message_id, message_name, step, exception_type, "
    "error, traceback, attempts, recorded_at, decodes, body"
)


def _letter(row: Any) -> StoredLetter:
    values = list(row)
    values[12] = bool(values[12])
    values[13] = bytes(values[13])
    return StoredLetter(*values)


def _dead_letter_job(letter: StoredLetter, seq: int | None) -> Callable[[sqlite3.Connection], None]:
    def job(connection: sqlite3.Connection) -> None:
        insert_letter(connection, letter)
        if seq is not None:
            connection.execute("DELETE FROM triobus_queue WHERE seq = ?", (seq,))

    return job


def insert_letter(connection: sqlite3.Connection, letter: StoredLetter) -> None:
    connection.execute(
        f"INSERT OR REPLACE INTO triobus_dead_letters ({_LETTER_COLUMNS}) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        attrs.astuple(letter),
    )


def ack(
    connection: sqlite3.Connection, endpoint: str, seq: int, message_id: str, step: str, now: float
) -> int:
    """Delete the handled row ``seq`` and mark its message in the inbox; rows deleted."""
    cursor = connection.execute("DELETE FROM triobus_queue WHERE seq = ?", (seq,))
    connection.execute(
        "INSERT OR REPLACE INTO triobus_inbox (endpoint, message_id, step, handled_at) "
        "VALUES (?, ?, ?, ?)",
        (endpoint, message_id, step, now),
    )
    return cursor.rowcount


def advance(connection: sqlite3.Connection, seq: int, done: int) -> int:
    """Mark the first ``done`` handlers of row ``seq``'s event done; rows updated.

    0 when the row is gone or already past them (a redelivery of a handler
    whose unit of work committed).
    """
    cursor = connection.execute(
        "UPDATE triobus_queue SET progress = ? WHERE seq = ? AND progress < ?",
        (done, seq, done),
    )
    return cursor.rowcount


def outbox_insert(
    connection: sqlite3.Connection,
    endpoint: str,
    message_id: str,
    name: str,
    step: str,
    due: float | None,
    body: bytes,
) -> None:
    connection.execute(
        "INSERT INTO triobus_outbox (endpoint, message_id, message_name, step, due, body) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (endpoint, message_id, name, step, due, body),
    )
