"""The dead-letter store protocol: one API over the in-memory ring and durable stores.

Code and docs use :class:`DeadLetterStore` alone: ``bus.dead_letters`` (the
in-memory ring, :class:`~triobus.DeadLetters`) implements it, and so does a
durable store. Every method is ``async``: a durable store runs its queries
in a worker thread, and one API means one way to call it (see
docs/design.md, "The dead-letter store").

Which letters a call means is said with a :class:`DeadLetterFilter` or the
same criteria as keywords (:class:`DeadLetterCriteria`); the criteria
combine with AND. ``replay`` and ``purge`` also take one letter id or
several (:data:`DeadLetterSelection`); :func:`resolve_selection` turns what
a call got into ids or a filter, with the same errors for every store.
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, TypedDict, Unpack, final, runtime_checkable

import attrs

from ._dead_letter import DeadLetter, DeadLetterReason, exception_type_name


class DeadLetterCriteria(TypedDict, total=False):
    """The keyword filters of every :class:`DeadLetterStore` method (see :class:`DeadLetterFilter`).

    ``None`` for a key means no criterion, as if it were left out.
    """

    message_name: str | None
    exception_type: type[BaseException] | str | None
    reason: DeadLetterReason | str | None
    recipient: str | None
    endpoint: str | None
    older_than: float | None
    newer_than: float | None


_CRITERIA = tuple(DeadLetterCriteria.__annotations__)


def _text(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise TypeError(
            f"the dead-letter filter {attribute.name}= takes a non-empty str (or None), "
            f"got {value!r}"
        )


def _exception_type(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None or (isinstance(value, str) and value):
        return
    if isinstance(value, type) and issubclass(value, BaseException):
        return
    raise TypeError(
        "the dead-letter filter exception_type= takes an exception class (subclasses match) "
        f"or its qualified name as a str (such as 'ValueError' or 'myapp.PaymentDeclined'), "
        f"got {value!r}"
    )


def _reason(value: object) -> DeadLetterReason | None:
    if value is None or isinstance(value, DeadLetterReason):
        return value
    try:
        return DeadLetterReason(value)  # type: ignore[arg-type]  # checked here
    except ValueError:
        known = ", ".join(repr(reason.value) for reason in DeadLetterReason)
        raise ValueError(
            f"the dead-letter filter reason= takes a DeadLetterReason or one of {known}, "
            f"got {value!r}"
        ) from None


def _seconds(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    raise ValueError(
        "the dead-letter filters older_than= and newer_than= take a finite number of "
        f"seconds >= 0, got {value!r}"
    )


@final
@attrs.frozen(kw_only=True)
class DeadLetterFilter:
    """Which dead letters a store call means: every criterion given must hold (AND).

    ``DeadLetterFilter()`` sets no criterion and so matches every letter:
    pass it to ``replay`` or ``purge`` to mean all of them.

    Raises:
        TypeError, ValueError: a criterion of the wrong type or out of range
            (named in the message).
    """

    #: The message's name on the bus (``DeadLetter.message_name``), exactly.
    message_name: str | None = attrs.field(default=None, validator=_text)
    #: An exception class: a letter whose live exception is an instance of it
    #: (subclasses too) matches; a letter read back from a durable store, with
    #: no live exception, matches by the class's exact qualified name. Or that
    #: qualified name as a str (``DeadLetter.exception_type``), matched exactly.
    exception_type: type[BaseException] | str | None = attrs.field(
        default=None, validator=_exception_type
    )
    #: Why the message became a dead letter (a reason, or its value as a str).
    reason: DeadLetterReason | None = attrs.field(default=None, converter=_reason)
    #: The actor path or endpoint it was meant for (``DeadLetter.recipient``), exactly.
    recipient: str | None = attrs.field(default=None, validator=_text)
    #: The bus endpoint's uri (``DeadLetter.endpoint``), exactly.
    endpoint: str | None = attrs.field(default=None, validator=_text)
    #: Recorded more than this many seconds ago (wall clock).
    older_than: float | None = attrs.field(default=None, converter=_seconds)
    #: Recorded at most this many seconds ago (wall clock): with the same
    #: seconds, ``older_than`` and ``newer_than`` split the letters in two.
    newer_than: float | None = attrs.field(default=None, converter=_seconds)

    @classmethod
    def of(
        cls, filter: DeadLetterFilter | None = None, criteria: Mapping[str, Any] | None = None
    ) -> DeadLetterFilter:
        """The filter a store call means: ``filter``, or one made of keyword ``criteria``.

        Raises:
            TypeError: both were given, a key is no criterion, or a value is
                of the wrong type.
            ValueError: a value out of range.
        """
        given = {key: value for key, value in (criteria or {}).items() if value is not None}
        unknown = sorted(set(given) - set(_CRITERIA))
        if unknown:
            raise TypeError(
                f"unknown dead-letter filter(s) {', '.join(unknown)}: the filters are "
                f"{', '.join(_CRITERIA)}"
            )
        if filter is None:
            return cls(**given)
        if not isinstance(filter, DeadLetterFilter):
            raise TypeError(f"filter= takes a DeadLetterFilter (or None), got {filter!r}")
        if given:
            raise TypeError(
                f"pass a DeadLetterFilter or keyword filters, not both (got {filter!r} and "
                f"{', '.join(sorted(given))}=): put every criterion in one of them"
            )
        return filter

    def matches(self, letter: DeadLetter, now: float) -> bool:
        """Whether ``letter`` meets every criterion, ``now`` being the wall-clock time."""
        return (
            (self.message_name is None or letter.message_name == self.message_name)
            and (self.exception_type is None or self._exception_matches(letter))
            and (self.reason is None or letter.reason is self.reason)
            and (self.recipient is None or letter.recipient == self.recipient)
            and (self.endpoint is None or letter.endpoint == self.endpoint)
            and (self.older_than is None or now - letter.recorded_at > self.older_than)
            and (self.newer_than is None or now - letter.recorded_at <= self.newer_than)
        )

    def _exception_matches(self, letter: DeadLetter) -> bool:
        wanted = self.exception_type
        if isinstance(wanted, str):
            return letter.exception_type == wanted
        assert wanted is not None
        if letter.exception is not None:
            return isinstance(letter.exception, wanted)
        return letter.exception_type == exception_type_name(wanted)


#: What ``replay`` and ``purge`` take: one letter id, several, or a filter.
DeadLetterSelection = str | Iterable[str] | DeadLetterFilter


def checked_limit(limit: object) -> int | None:
    """``limit`` when it is ``None`` or a whole number >= 0 (what ``list(limit=)`` takes).

    Raises:
        ValueError: anything else, named.
    """
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise ValueError(f"limit= takes a whole number >= 0 (or None), got {limit!r}")
    return limit


def resolve_selection(
    selection: DeadLetterSelection | None, criteria: Mapping[str, Any], verb: str
) -> tuple[str, ...] | DeadLetterFilter:
    """What a ``replay`` or ``purge`` call (``verb``) selects: letter ids, or a filter.

    Ids come back once each, in the order given; a store acts on them oldest
    first, as on a filter's letters.

    Raises:
        TypeError: no selection at all (``DeadLetterFilter()`` means every
            letter: it is never implied), an id and keyword filters at once,
            or a selection of the wrong type.
        ValueError: a filter value out of range.
    """
    given = any(value is not None for value in criteria.values())
    if selection is None:
        if not given:
            raise TypeError(
                f"{verb}() needs a selection: a letter id, several ids, a DeadLetterFilter or "
                f"keyword filters (such as reason='failed'); {verb}(DeadLetterFilter()) means "
                "every letter"
            )
        return DeadLetterFilter.of(None, criteria)
    if isinstance(selection, DeadLetterFilter):
        return DeadLetterFilter.of(selection, criteria)
    if given:
        raise TypeError(
            f"{verb}() takes letter ids or keyword filters, not both: put the criteria in a "
            "DeadLetterFilter, or pass the ids alone"
        )
    if isinstance(selection, str):
        return (selection,)
    if isinstance(selection, bytes | bytearray) or not isinstance(selection, Iterable):
        raise TypeError(
            f"{verb}() takes a letter id (str), an iterable of ids, or a DeadLetterFilter, "
            f"got {type(selection).__qualname__}"
        )
    ids = tuple(dict.fromkeys(selection))
    for letter_id in ids:
        if not isinstance(letter_id, str):
            raise TypeError(f"{verb}(): a letter id is a str, got {letter_id!r}")
    return ids


@runtime_checkable
class DeadLetterStore(Protocol):
    """Where dead letters are kept, listed, replayed and purged: one API for every store.

    ``bus.dead_letters`` (the in-memory :class:`~triobus.DeadLetters`) is
    one; a durable store is another. Every method is ``async`` (a durable
    store queries in a worker thread). Letters come oldest first. Filters
    are a :class:`DeadLetterFilter` or the same criteria as keywords
    (:class:`DeadLetterCriteria`), never both; criteria combine with AND.

    Replay: the message goes back to the endpoint it was dead-lettered at
    (for a handler's failure, to that handler alone), keeping its message
    id, correlation id, causation id and headers, with a fresh attempt
    budget; the letter leaves the store once the endpoint accepted the
    message again. If it fails again it becomes a new letter (a new
    ``letter_id``, the same ``message_id``). A letter that cannot be
    replayed stays in the store and the call raises
    :class:`~triobus.ReplayError` naming it.
    """

    async def list(
        self,
        filter: DeadLetterFilter | None = None,
        *,
        limit: int | None = None,
        **criteria: Unpack[DeadLetterCriteria],
    ) -> builtins.list[DeadLetter]:
        """The letters that match, oldest first; at most ``limit`` (the oldest ones).

        Raises:
            TypeError, ValueError: a bad filter or ``limit`` (named).
        """
        ...

    async def get(self, letter_id: str) -> DeadLetter:
        """The letter with this ``letter_id``.

        Raises:
            DeadLetterNotFound: no letter has this id (a ``LookupError``).
        """
        ...

    async def count(
        self, filter: DeadLetterFilter | None = None, **criteria: Unpack[DeadLetterCriteria]
    ) -> int:
        """How many letters match (all of them without a filter)."""
        ...

    async def replay(
        self,
        selection: DeadLetterSelection | None = None,
        /,
        **criteria: Unpack[DeadLetterCriteria],
    ) -> int:
        """Deliver the selected letters' messages again, oldest first; returns how many.

        ``selection`` is a letter id, an iterable of ids, a filter
        (``DeadLetterFilter()``: every letter), or keyword filters; one is
        required. Each letter replayed leaves the store once its endpoint
        accepted the message again.

        Raises:
            DeadLetterNotFound: a selected id is not in the store (nothing replayed).
            ReplayError: some selected letters cannot be replayed (none was
                replayed), or a replay was refused (the letters before it
                were replayed, ``replayed`` counts them); every letter not
                replayed stays in the store.
            TypeError: no selection, or a bad one.
        """
        ...

    async def purge(
        self,
        selection: DeadLetterSelection | None = None,
        /,
        **criteria: Unpack[DeadLetterCriteria],
    ) -> int:
        """Remove the selected letters (selected as for :meth:`replay`); returns how many.

        Raises:
            DeadLetterNotFound: a selected id is not in the store (nothing removed).
            TypeError: no selection, or a bad one.
        """
        ...
