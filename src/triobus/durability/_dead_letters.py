"""The durable dead-letter store: one endpoint's letters in its database, behind the one API.

:class:`DurableDeadLetters` implements :class:`~triobus.DeadLetterStore` over
the ``triobus_dead_letters`` table of a durable queue's database, for that
queue's letters alone; ``queue.dead_letters`` gives it while the queue runs.
Filters are SQL (every criterion is a plain column comparison, ages
computed as ``now - recorded_at`` exactly as :class:`~triobus.DeadLetterFilter`
computes them, so both stores agree at the boundaries).

A stored letter reads back as a :class:`~triobus.DeadLetter`: the message
decoded with the endpoint's codec and its context (ids, headers, reply-to)
when its bytes decode, else ``message=None`` and ``raw`` the bytes. The live
exception is never stored (``exception`` is ``None``); its qualified type
name, text and traceback are. A letter is replayable when its bytes decode
with the endpoint's codec now: bytes that never decoded stay where they are
(``ReplayError``), unless the codec learnt their name or version since.
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, Unpack, final

import attrs
import trio

from .._errors import DeadLetterNotFound, EnvelopeError, ReplayError, StoreError
from ..bus import Envelope
from ..mailbox import (
    DeadLetter,
    DeadLetterCriteria,
    DeadLetterFilter,
    DeadLetterReason,
    DeadLetterSelection,
    checked_limit,
    exception_type_name,
    resolve_selection,
)
from ._codec import Codec
from ._database import SqlConnection
from ._store import LETTER_COLUMNS, SqlStore, StoredLetter, stored_letter

#: Puts a letter's message back in its queue; ``False`` when the letter was gone.
Requeue = Callable[[StoredLetter], Awaitable[bool]]

#: At most this many letters are named in one error.
_NAMED_IN_ERRORS: Final = 5


def _where(endpoint: str, chosen: DeadLetterFilter, now: float) -> tuple[str, list[Any]]:
    """The SQL condition (and its parameters) of ``chosen`` on ``endpoint``'s letters."""
    clauses = ["endpoint = ?"]
    values: list[Any] = [endpoint]
    exception_type = chosen.exception_type
    if exception_type is not None and not isinstance(exception_type, str):
        exception_type = exception_type_name(exception_type)  # no live exception is stored
    reason = None if chosen.reason is None else chosen.reason.value
    for column, value in (
        ("message_name", chosen.message_name),
        ("exception_type", exception_type),
        ("reason", reason),
        ("recipient", chosen.recipient),
        ("endpoint", chosen.endpoint),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            values.append(value)
    if chosen.older_than is not None:
        clauses.append("? - recorded_at > ?")
        values += [now, chosen.older_than]
    if chosen.newer_than is not None:
        clauses.append("? - recorded_at <= ?")
        values += [now, chosen.newer_than]
    return " AND ".join(clauses), values


def _more(count: int, joint: str) -> str:
    return f"{joint} {count - _NAMED_IN_ERRORS} more" if count > _NAMED_IN_ERRORS else ""


def _describe(letter: StoredLetter) -> str:
    what = letter.message_name or "undecodable bytes"
    return f"dead letter {letter.letter_id} ({what} to {letter.recipient}, {letter.reason})"


@final
class DurableDeadLetters:
    """The dead letters of one durable endpoint, in its database (SQLite or PostgreSQL).

    Implements :class:`~triobus.DeadLetterStore` (``list``, ``get``,
    ``count``, ``replay``, ``purge``); get one from
    :attr:`DurableQueue.dead_letters <triobus.DurableQueue.dead_letters>`
    while its endpoint runs. Letters come oldest first (by ``recorded_at``,
    the bus's wall clock); ages count on that clock too.

    A letter read back has ``exception=None`` and ``time=None`` (neither is
    stored). When its bytes decode with the endpoint's codec it has the
    message, a context (``message_id``, ``correlation_id``,
    ``causation_id``, ``message_name``, ``headers``, ``reply_to``, plus
    ``handler`` for one handler's failure and ``attempts`` for a ``failed``
    letter) and ``raw=None``; otherwise ``message=None``, ``context=None``
    and ``raw`` holds the bytes as they came.

    Replay puts each message back in the endpoint's queue in one transaction
    (same message id, a fresh attempt budget, its inbox mark cleared, the
    letter removed), so it leaves the store once it is stored again; a
    ``failed`` letter of one handler runs that handler alone.
    """

    __slots__ = ("_clock", "_codec", "_endpoint", "_requeue", "_store")

    def __init__(
        self,
        endpoint: str,
        store: SqlStore,
        codec: Codec,
        clock: Callable[[], float],
        requeue: Requeue,
    ) -> None:
        self._endpoint = endpoint
        self._store = store
        self._codec = codec
        self._clock = clock
        self._requeue = requeue

    @property
    def endpoint(self) -> str:
        """The uri of the durable endpoint whose letters these are."""
        return self._endpoint

    # ------------------------------------------------------------ reading

    async def list(
        self,
        filter: DeadLetterFilter | None = None,
        *,
        limit: int | None = None,
        **criteria: Unpack[DeadLetterCriteria],
    ) -> builtins.list[DeadLetter]:
        """The stored letters that match, oldest first; at most ``limit`` (the oldest).

        Raises:
            TypeError, ValueError: a bad filter or ``limit`` (named).
            StoreError: the endpoint has stopped.
        """
        chosen = DeadLetterFilter.of(filter, criteria)
        limit = checked_limit(limit)
        stored = await self._select(chosen, limit)
        return [self._letter(letter) for letter in stored]

    async def get(self, letter_id: str) -> DeadLetter:
        """The stored letter with this ``letter_id``.

        Raises:
            DeadLetterNotFound: no letter of this endpoint has this id (a ``LookupError``).
            StoreError: the endpoint has stopped.
        """
        found = await self._by_ids([letter_id] if isinstance(letter_id, str) else [])
        if not found:
            raise self._not_found([str(letter_id)], "")
        return self._letter(found[0])

    async def count(
        self, filter: DeadLetterFilter | None = None, **criteria: Unpack[DeadLetterCriteria]
    ) -> int:
        """How many stored letters match (all of this endpoint's without a filter)."""
        chosen = DeadLetterFilter.of(filter, criteria)
        where, values = _where(self._endpoint, chosen, self._clock())

        def job(connection: SqlConnection) -> int:
            query = f"SELECT COUNT(*) FROM triobus_dead_letters WHERE {where}"
            (count,) = connection.execute(query, values).fetchone()
            return int(count)

        await self._committed()
        return await self._store.database.read(job)

    # ------------------------------------------------------------ purge

    async def purge(
        self,
        selection: DeadLetterSelection | None = None,
        /,
        **criteria: Unpack[DeadLetterCriteria],
    ) -> int:
        """Delete the selected letters; returns how many (see :class:`~triobus.DeadLetterStore`).

        Raises:
            DeadLetterNotFound: a selected id is not stored (nothing deleted).
            TypeError: no selection, or a bad one.
            StoreError: the endpoint has stopped.
        """
        resolved = resolve_selection(selection, criteria, "purge")
        await self._committed()
        if isinstance(resolved, DeadLetterFilter):
            return await self._delete_matching(resolved)
        missing = await self._delete_ids(resolved)
        if missing:
            raise self._not_found(missing, ", so none was purged")
        return len(resolved)

    async def _delete_matching(self, chosen: DeadLetterFilter) -> int:
        where, values = _where(self._endpoint, chosen, self._clock())

        def job(connection: SqlConnection) -> int:
            cursor = connection.execute(f"DELETE FROM triobus_dead_letters WHERE {where}", values)
            return cursor.rowcount

        return await self._store.database.write(job)

    async def _delete_ids(self, letter_ids: Sequence[str]) -> builtins.list[str]:
        """Delete the letters if every one is stored; else delete none. The missing ids."""
        endpoint = self._endpoint

        def job(connection: SqlConnection) -> builtins.list[str]:
            missing = [
                letter_id
                for letter_id in letter_ids
                if connection.execute(
                    "SELECT 1 FROM triobus_dead_letters WHERE letter_id = ? AND endpoint = ?",
                    (letter_id, endpoint),
                ).fetchone()
                is None
            ]
            if not missing:
                connection.executemany(
                    "DELETE FROM triobus_dead_letters WHERE letter_id = ?",
                    [(letter_id,) for letter_id in letter_ids],
                )
            return missing

        return await self._store.database.write(job)

    # ------------------------------------------------------------ replay

    async def replay(
        self,
        selection: DeadLetterSelection | None = None,
        /,
        **criteria: Unpack[DeadLetterCriteria],
    ) -> int:
        """Queue the selected letters' messages again, oldest first; returns how many.

        Each message goes back to this endpoint's queue with its id and a
        fresh attempt budget, and its letter leaves the store in the same
        transaction. A letter replayed or purged meanwhile (by another call
        or process) is skipped.

        Raises:
            DeadLetterNotFound: a selected id is not stored (nothing replayed).
            ReplayError: some selected letters' bytes do not decode with the
                endpoint's codec (nothing replayed), or the store failed or
                the endpoint stopped midway (the letters before were replayed,
                ``replayed`` counts them); every letter not replayed stays.
            TypeError: no selection, or a bad one.
        """
        resolved = resolve_selection(selection, criteria, "replay")
        if isinstance(resolved, DeadLetterFilter):
            letters = await self._select(resolved, None)
        else:
            letters = await self._by_ids(resolved)
            found = {letter.letter_id for letter in letters}
            missing = [letter_id for letter_id in resolved if letter_id not in found]
            if missing:
                raise self._not_found(missing, ", so none was replayed")
        ready = self._replayable(letters)
        replayed = 0
        for index, letter in enumerate(ready):
            try:
                requeued = await self._requeue(letter)
            except Exception as exc:  # the store failed, the endpoint stopped (ActorStopped)
                raise self._refused(ready[index:], exc, replayed) from exc
            replayed += requeued
        return replayed

    def _replayable(self, letters: builtins.list[StoredLetter]) -> builtins.list[StoredLetter]:
        """The letters as they are queued again; ``ReplayError`` if any does not decode now."""
        ready: builtins.list[StoredLetter] = []
        stuck: builtins.list[tuple[StoredLetter, EnvelopeError]] = []
        for letter in letters:
            try:
                envelope = self._codec.decode(letter.body)
            except EnvelopeError as exc:
                stuck.append((letter, exc))
                continue
            if not letter.decodes:  # the codec learnt its name or version since
                letter = attrs.evolve(
                    letter, message_id=envelope.message_id, message_name=envelope.message_name
                )
            ready.append(letter)
        if stuck:
            reasons = "; ".join(
                f"{_describe(letter)}: its bytes do not decode ({exc.reason}: {exc})"
                for letter, exc in stuck[:_NAMED_IN_ERRORS]
            )
            raise ReplayError(
                f"{len(stuck)} of the {len(letters)} selected dead letter(s) cannot be replayed, "
                f"so none was: {reasons}{_more(len(stuck), '; and')}. They stay in the store: "
                "narrow the selection (for example reason=...), purge them, or register their "
                "message name and version with the endpoint's codec and replay them then",
                [letter.letter_id for letter, _ in stuck],
            )
        return ready

    def _refused(
        self, rest: builtins.list[StoredLetter], error: Exception, replayed: int
    ) -> ReplayError:
        first = rest[0]
        return ReplayError(
            f"{_describe(first)} was not replayed: {type(error).__name__}: {error}. It stays in "
            f"the store, with {len(rest) - 1} later selected letter(s) not tried; {replayed} "
            "were replayed before it",
            [letter.letter_id for letter in rest],
            replayed,
        )

    # ------------------------------------------------------------ helpers

    async def _committed(self) -> None:
        """Check the store is open, and commit queued writes (settled letters) first."""
        database = self._store.database
        if not database.is_open:
            raise StoreError(
                f"durable endpoint {self._endpoint!r} has stopped: its dead letters stay in "
                f"{database.location}; read them through queue.dead_letters inside the open_bus "
                "that runs the endpoint"
            )
        await database.flush()
        await trio.lowlevel.checkpoint()

    async def _select(
        self, chosen: DeadLetterFilter, limit: int | None
    ) -> builtins.list[StoredLetter]:
        if limit == 0:
            await trio.lowlevel.checkpoint()
            return []
        where, values = _where(self._endpoint, chosen, self._clock())
        query = f"SELECT {LETTER_COLUMNS} FROM triobus_dead_letters WHERE {where} "
        query += f"ORDER BY recorded_at, {self._store.letter_order}"
        if limit is not None:
            query += " LIMIT ?"
            values.append(limit)

        def job(connection: SqlConnection) -> builtins.list[StoredLetter]:
            return [stored_letter(row) for row in connection.execute(query, values).fetchall()]

        await self._committed()
        return await self._store.database.read(job)

    async def _by_ids(self, letter_ids: Sequence[str]) -> builtins.list[StoredLetter]:
        """The stored letters with these ids, oldest first."""
        endpoint = self._endpoint
        order = self._store.letter_order

        def job(connection: SqlConnection) -> builtins.list[StoredLetter]:
            found = []
            for letter_id in letter_ids:
                row = connection.execute(
                    f"SELECT {LETTER_COLUMNS}, {order} FROM triobus_dead_letters "
                    "WHERE letter_id = ? AND endpoint = ?",
                    (letter_id, endpoint),
                ).fetchone()
                if row is not None:
                    found.append(row)
            found.sort(key=lambda row: (row[11], row[14]))
            return [stored_letter(row) for row in found]

        await self._committed()
        return await self._store.database.read(job)

    def _letter(self, stored: StoredLetter) -> DeadLetter:
        """A stored letter as a :class:`DeadLetter`."""
        envelope: Envelope | None = None
        # Undecodable (then, or with today's codec): the raw bytes are the letter.
        with contextlib.suppress(EnvelopeError):
            envelope = self._codec.decode(stored.body)
        return DeadLetter(
            None if envelope is None else envelope.message,
            stored.recipient,
            DeadLetterReason(stored.reason),
            None,
            None if envelope is None else self._context(stored, envelope),
            None,
            letter_id=stored.letter_id,
            recorded_at=stored.recorded_at,
            exception_type=stored.exception_type,
            error=stored.error,
            traceback=stored.traceback,
            attempts=stored.attempts,
            endpoint=stored.endpoint,
            message_name=stored.message_name,
            message_id=stored.message_id,
            raw=stored.body if envelope is None else None,
        )

    @staticmethod
    def _context(stored: StoredLetter, envelope: Envelope) -> Mapping[str, Any]:
        context: dict[str, Any] = attrs.asdict(envelope.context())
        if stored.step:
            context["handler"] = stored.step
        if stored.reason == DeadLetterReason.FAILED.value and stored.attempts is not None:
            context["attempts"] = stored.attempts
        return context

    def _not_found(self, missing: builtins.list[str], consequence: str) -> DeadLetterNotFound:
        named = ", ".join(repr(letter_id) for letter_id in missing[:_NAMED_IN_ERRORS])
        return DeadLetterNotFound(
            f"no dead letter {named}{_more(len(missing), ' and')} of endpoint "
            f"{self._endpoint!r} in {self._store.location}{consequence}: it was never recorded "
            "there, or it was replayed or purged since; list() shows the letters stored",
            missing[0],
        )

    def __repr__(self) -> str:
        return f"<DurableDeadLetters {self._endpoint!r} in {self._store.location}>"
