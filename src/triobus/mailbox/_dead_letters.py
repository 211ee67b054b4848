"""Dead letters: where every message that could not be delivered ends up.

A bounded ring of frozen records. Nothing triobus refuses, drops or fails
is dropped silently: it is recorded here with the reason, logged, and
handed to every subscriber. The ring is the in-memory
:class:`~triobus.DeadLetterStore`: letters are listed, counted, replayed
and purged through the same API as a durable store's.

Replay without knowing the bus: whoever records a letter may hand the ring
the callable that delivers its message again (a :class:`Carrier` offers
one through :meth:`Carrier.replayer`); a letter recorded without one (a
plain actor's message) cannot be replayed.

Logging: each dead letter is one WARNING line on the ``triobus.dead_letters``
logger (recipient, reason, message type, message id when known, and the
message's repr capped by :func:`~triobus._errors.short_repr`; the exception,
if any, as ``exc_info``). What an actor dead-letters when it stops for good
is logged as one WARNING summary line per actor with the count instead.
"""

from __future__ import annotations

import abc
import builtins
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, Unpack, final

import trio

from .._errors import DeadLetterNotFound, ReplayError, short_repr
from ._dead_letter import DeadLetter, DeadLetterReason
from ._dead_letter_store import (
    DeadLetterCriteria,
    DeadLetterFilter,
    DeadLetterSelection,
    checked_limit,
    resolve_selection,
)

#: Where dead letters are logged (WARNING); see the module docstring.
logger = logging.getLogger("triobus.dead_letters")

DEFAULT_DEAD_LETTER_CAPACITY = 10_000


Subscriber = Callable[[DeadLetter], None]
#: Delivers a dead letter's message again (see :meth:`DeadLetters.replay`).
Replay = Callable[[], Awaitable[None]]

#: At most this many letters are named in one error.
_NAMED_IN_ERRORS = 5


def _more(count: int, joint: str) -> str:
    """The tail of an error that named the first ``_NAMED_IN_ERRORS`` of ``count`` letters."""
    return f"{joint} {count - _NAMED_IN_ERRORS} more" if count > _NAMED_IN_ERRORS else ""


class Carrier(abc.ABC):
    """Base of the internal wrappers that carry a user message through a mailbox.

    A dead letter records the carried message and its context, never the
    wrapper; :meth:`dead_lettered` lets the wrapper's owner account for it.
    """

    __slots__ = ()

    @abc.abstractmethod
    def carried(self) -> tuple[object, Mapping[str, Any] | None]:
        """The user message and its context."""

    def carried_message(self) -> object:
        """The user message alone (cheaper than :meth:`carried`)."""
        return self.carried()[0]

    def dead_lettered(self, reason: DeadLetterReason) -> None:  # noqa: B027 - optional hook
        """Called once the carried message is recorded as a dead letter."""

    def endpoint_uri(self) -> str | None:
        """The uri of the bus endpoint the carried message was meant for, if any."""
        return None

    def replayer(self) -> Replay | None:
        """What delivers the carried message again if its dead letter is replayed.

        ``None`` (the default): nothing can, and the letter is not replayable.
        """
        return None

    def left_over(self) -> bool:
        """Its actor stopped for good with it still queued: does the owner keep it?

        ``True`` means the owner keeps it for a later delivery (a durable
        store), so it is no dead letter; the default is ``False``.
        """
        return False


def _log(letter: DeadLetter) -> None:
    message_id = letter.context.get("message_id") if letter.context else None
    logger.warning(
        "dead letter to %s (reason %s): %s%s: %s",
        letter.recipient,
        letter.reason.value,
        type(letter.message).__qualname__,
        "" if message_id is None else f" id={message_id}",
        short_repr(letter.message),
        exc_info=letter.exception,
    )


def _now() -> float | None:
    try:
        return trio.current_time()
    except RuntimeError:
        return None


@final
class DeadLetters:
    """A bounded ring of :class:`DeadLetter` records: the in-memory dead-letter store.

    When the ring is full the oldest record is evicted and counted in
    :attr:`evicted`; :attr:`total` counts every record ever made.
    Subscribers are plain callables called synchronously with each record;
    a subscriber that raises is logged and kept. It implements
    :class:`~triobus.DeadLetterStore` (``list``, ``get``, ``count``,
    ``replay``, ``purge``); ``clock`` gives the wall-clock time that
    records are stamped with and ages are counted on (``time.time``).
    """

    __slots__ = (
        "_capacity",
        "_clock",
        "_letters",
        "_replaying",
        "_replays",
        "_subscribers",
        "evicted",
        "total",
    )

    def __init__(
        self,
        capacity: int = DEFAULT_DEAD_LETTER_CAPACITY,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"dead letter capacity must be at least 1, got {capacity!r}")
        self._capacity = capacity
        self._clock = clock
        #: The kept records by letter id, oldest first.
        self._letters: OrderedDict[str, DeadLetter] = OrderedDict()
        #: What replays each replayable kept record.
        self._replays: dict[str, Replay] = {}
        #: Letters whose replay is under way (a second replay skips them).
        self._replaying: set[str] = set()
        self._subscribers: list[Subscriber] = []
        #: Records pushed out of the full ring.
        self.evicted = 0
        #: Records made since the ring was created.
        self.total = 0

    @property
    def capacity(self) -> int:
        """How many records the ring keeps."""
        return self._capacity

    def record(
        self,
        message: object,
        recipient: str,
        reason: DeadLetterReason,
        exception: BaseException | None = None,
        context: Mapping[str, Any] | None = None,
        *,
        log: bool = True,
        endpoint: str | None = None,
        replay: Replay | None = None,
    ) -> DeadLetter:
        """Record one dead letter, log it (WARNING) and tell the subscribers.

        A :class:`Carrier` is recorded as the message it carries, with its
        context, its endpoint and its replayer. ``log=False`` records without
        a log line, for a caller that records many at once and then calls
        :meth:`log_summary`. ``endpoint`` is the bus endpoint's uri;
        ``replay`` delivers the message again when the letter is replayed
        (without one the letter is not replayable).
        """
        carrier = message if isinstance(message, Carrier) else None
        if carrier is not None:
            message, carried_context = carrier.carried()
            if carried_context is not None:
                context = {**carried_context, **context} if context else carried_context
            if endpoint is None:
                endpoint = carrier.endpoint_uri()
            if replay is None:
                replay = carrier.replayer()
        letter = DeadLetter(
            message,
            recipient,
            reason,
            exception,
            context,
            _now(),
            recorded_at=self._clock(),
            endpoint=endpoint,
        )
        self._keep(letter, replay)
        self.total += 1
        if log and logger.isEnabledFor(logging.WARNING):
            _log(letter)
        for subscriber in tuple(self._subscribers):
            try:
                subscriber(letter)
            except Exception:
                logger.exception("dead letter subscriber %r raised", subscriber)
        if carrier is not None:
            carrier.dead_lettered(reason)
        return letter

    def _keep(self, letter: DeadLetter, replay: Replay | None) -> None:
        letters = self._letters
        if len(letters) >= self._capacity:
            oldest, _ = letters.popitem(last=False)
            self._replays.pop(oldest, None)
            self.evicted += 1
        letters[letter.letter_id] = letter
        if replay is not None:
            self._replays[letter.letter_id] = replay

    def _forget(self, letter_id: str) -> None:
        self._letters.pop(letter_id, None)
        self._replays.pop(letter_id, None)

    def log_summary(self, recipient: str, count: int, reason: DeadLetterReason) -> None:
        """Log one WARNING line for ``count`` dead letters recorded with ``log=False``.

        The line reads ``"<recipient>: N message(s) dead-lettered at shutdown
        (reason ...)"``; nothing is logged when ``count`` is 0.
        """
        if count:
            logger.warning(
                "%s: %d message(s) dead-lettered at shutdown (reason %s)",
                recipient,
                count,
                reason.value,
            )

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call ``subscriber`` with every new record; returns the unsubscribe call."""
        self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

        return unsubscribe

    def clear(self) -> None:
        """Forget every kept record (the counters stay)."""
        self._letters.clear()
        self._replays.clear()

    # ------------------------------------------------------------ the store API

    async def list(
        self,
        filter: DeadLetterFilter | None = None,
        *,
        limit: int | None = None,
        **criteria: Unpack[DeadLetterCriteria],
    ) -> builtins.list[DeadLetter]:
        """The kept letters that match, oldest first; at most ``limit`` (the oldest).

        Raises:
            TypeError, ValueError: a bad filter or ``limit`` (named).
        """
        await trio.lowlevel.checkpoint()
        chosen = DeadLetterFilter.of(filter, criteria)
        limit = checked_limit(limit)
        now = self._clock()
        found: builtins.list[DeadLetter] = []
        if limit == 0:
            return found
        for letter in self._letters.values():
            if chosen.matches(letter, now):
                found.append(letter)
                if len(found) == limit:
                    break
        return found

    async def get(self, letter_id: str) -> DeadLetter:
        """The kept letter with this ``letter_id``.

        Raises:
            DeadLetterNotFound: no kept letter has this id (a ``LookupError``).
        """
        await trio.lowlevel.checkpoint()
        letter = self._letters.get(letter_id) if isinstance(letter_id, str) else None
        if letter is None:
            raise self._not_found([letter_id], "")
        return letter

    async def count(
        self, filter: DeadLetterFilter | None = None, **criteria: Unpack[DeadLetterCriteria]
    ) -> int:
        """How many kept letters match (all of them without a filter)."""
        await trio.lowlevel.checkpoint()
        chosen = DeadLetterFilter.of(filter, criteria)
        now = self._clock()
        return sum(1 for letter in self._letters.values() if chosen.matches(letter, now))

    async def purge(
        self,
        selection: DeadLetterSelection | None = None,
        /,
        **criteria: Unpack[DeadLetterCriteria],
    ) -> int:
        """Remove the selected letters; returns how many (see :class:`~triobus.DeadLetterStore`).

        The counters (:attr:`total`, :attr:`evicted`) stay.

        Raises:
            DeadLetterNotFound: a selected id is not kept (nothing removed).
            TypeError: no selection, or a bad one.
        """
        await trio.lowlevel.checkpoint()
        letters = self._selected(selection, criteria, "purge")
        for letter in letters:
            self._forget(letter.letter_id)
        return len(letters)

    async def replay(
        self,
        selection: DeadLetterSelection | None = None,
        /,
        **criteria: Unpack[DeadLetterCriteria],
    ) -> int:
        """Deliver the selected letters' messages again, oldest first; returns how many.

        Each letter's replayer runs in turn, and the letter leaves the ring
        once it returned (the endpoint accepted the message again). A
        selected letter whose replay another call has under way fails the
        call before anything is replayed; one that another call starts
        meanwhile is skipped.

        Raises:
            DeadLetterNotFound: a selected id is not kept (nothing replayed).
            ReplayError: some selected letters are not replayable (nothing
                replayed), or a replayer raised (the letters before it were
                replayed); every letter not replayed stays.
            TypeError: no selection, or a bad one.
        """
        await trio.lowlevel.checkpoint()
        letters = self._selected(selection, criteria, "replay")
        self._check_replayable(letters)
        replayed = 0
        for index, letter in enumerate(letters):
            letter_id = letter.letter_id
            replay = self._replays.get(letter_id)
            if replay is None or letter_id in self._replaying:
                continue  # purged, evicted, or replayed by another call meanwhile
            self._replaying.add(letter_id)
            try:
                await replay()
            except Exception as exc:
                raise self._refused(letters[index:], exc, replayed) from exc
            finally:
                self._replaying.discard(letter_id)
            self._forget(letter_id)
            replayed += 1
        return replayed

    def _selected(
        self, selection: DeadLetterSelection | None, criteria: Mapping[str, Any], verb: str
    ) -> builtins.list[DeadLetter]:
        resolved = resolve_selection(selection, criteria, verb)
        letters = self._letters
        if isinstance(resolved, DeadLetterFilter):
            now = self._clock()
            return [letter for letter in letters.values() if resolved.matches(letter, now)]
        missing = [letter_id for letter_id in resolved if letter_id not in letters]
        if missing:
            done = f"{verb}d" if verb.endswith("e") else f"{verb}ed"
            raise self._not_found(missing, f", so none was {done}")
        if len(resolved) == 1:
            return [letters[resolved[0]]]
        wanted = set(resolved)
        return [letter for letter_id, letter in letters.items() if letter_id in wanted]

    def _not_found(self, missing: builtins.list[str], consequence: str) -> DeadLetterNotFound:
        named = ", ".join(repr(letter_id) for letter_id in missing[:_NAMED_IN_ERRORS])
        more = _more(len(missing), " and")
        return DeadLetterNotFound(
            f"no dead letter {named}{more} in this store{consequence}: it was never "
            f"recorded here, or it was replayed, purged or evicted since (the ring keeps the "
            f"last {self._capacity}); list() shows the letters kept",
            missing[0],
        )

    def _check_replayable(self, letters: builtins.list[DeadLetter]) -> None:
        stuck = [
            letter
            for letter in letters
            if letter.letter_id not in self._replays or letter.letter_id in self._replaying
        ]
        if not stuck:
            return
        reasons = "; ".join(
            f"{letter.describe()}: {self._why_not_replayable(letter)}"
            for letter in stuck[:_NAMED_IN_ERRORS]
        )
        more = _more(len(stuck), "; and")
        raise ReplayError(
            f"{len(stuck)} of the {len(letters)} selected dead letter(s) cannot be replayed, so "
            f"none was: {reasons}{more}. They stay in the store: narrow the selection (for "
            "example endpoint=...) or purge them",
            [letter.letter_id for letter in stuck],
        )

    def _why_not_replayable(self, letter: DeadLetter) -> str:
        if letter.letter_id in self._replaying:
            return "its replay is under way already"
        if letter.endpoint is None:
            return (
                "a plain actor's message, which nothing here can deliver again "
                "(tell it to the actor yourself)"
            )
        return (
            "recorded with nothing that delivers it again: an invoke's request (an ask), "
            "whose caller got the outcome or gave up, or a durable endpoint's letter, kept "
            "and replayed in its own store (queue.dead_letters)"
        )

    def _refused(
        self, rest: builtins.list[DeadLetter], error: Exception, replayed: int
    ) -> ReplayError:
        first = rest[0]
        kept = [letter.letter_id for letter in rest if letter.letter_id in self._letters]
        untried = len(kept) - (first.letter_id in self._letters)
        return ReplayError(
            f"{first.describe()} was not replayed: {type(error).__name__}: {error}. It stays in "
            f"the store, with {untried} later selected letter(s) not tried; {replayed} were "
            "replayed before it",
            kept,
            replayed,
        )

    def __iter__(self) -> Iterator[DeadLetter]:
        return iter(tuple(self._letters.values()))

    def __len__(self) -> int:
        return len(self._letters)

    def __repr__(self) -> str:
        return f"<DeadLetters kept={len(self)} total={self.total} evicted={self.evicted}>"
