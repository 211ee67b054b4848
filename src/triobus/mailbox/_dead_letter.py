"""The dead-letter record: what every dead-letter store keeps, in memory or durably.

A :class:`DeadLetter` is plain data a durable store can write and read back
(``letter_id``, ``exception_type``, ``error``, ``traceback``, ...), plus
what only memory can hold: the message object and the live exception.
"""

from __future__ import annotations

import enum
import itertools
import secrets
from collections.abc import Mapping
from time import time as wall_clock
from traceback import format_exception
from typing import Any, final

import attrs

#: Modules whose classes are named without their module (as tracebacks do).
_BARE_MODULES = frozenset({"builtins", "__main__"})


class DeadLetterReason(enum.StrEnum):
    """Why a message became a dead letter."""

    #: Sent to an actor (or endpoint) that was already stopped.
    STOPPED = "stopped"
    #: Still queued (or in hand) when its actor stopped for good.
    SHUTDOWN = "shutdown"
    #: Its handler raised; the exception is attached.
    CRASHED = "crashed"
    #: Dropped by the mailbox's ``drop_oldest`` / ``drop_newest`` policy.
    MAILBOX_FULL = "mailbox_full"
    #: A reply that arrived after its ask had timed out, been cancelled or
    #: already been answered.
    LATE_REPLY = "late_reply"
    #: Every delivery attempt failed; the last exception is attached.
    FAILED = "failed"
    #: A message released by a handler could not be delivered.
    UNDELIVERABLE = "undeliverable"
    #: Its bytes do not decode (malformed, unknown name, newer version, oversize).
    UNDECODABLE = "undecodable"
    #: It decoded, but no handler for it is bound at the endpoint it reached.
    NO_HANDLER = "no_handler"
    #: Its handler was cut off (the process died) on every attempt it had.
    INTERRUPTED = "interrupted"


def exception_type_name(exception_type: type[BaseException]) -> str:
    """The qualified name a dead letter records for an exception class.

    ``module.QualName``, as the last line of a traceback names it: classes of
    ``builtins`` and ``__main__`` go bare (``"ValueError"``), triobus's own
    errors by their public module (``"triobus.MailboxFull"``). Every
    dead-letter store names exceptions with this, so a filter on the name
    means the same everywhere.
    """
    module = exception_type.__module__
    if module in _BARE_MODULES:
        return exception_type.__qualname__
    return f"{module}.{exception_type.__qualname__}"


_LETTER_PREFIX = secrets.token_hex(6)
_letter_numbers = itertools.count(1)


def new_letter_id() -> str:
    """A dead-letter id unique across processes and restarts (random prefix, counter)."""
    return f"dl-{_LETTER_PREFIX}-{next(_letter_numbers):x}"


def _exception_type(letter: DeadLetter) -> str | None:
    exc = letter.exception
    return None if exc is None else exception_type_name(type(exc))


def _error(letter: DeadLetter) -> str | None:
    exc = letter.exception
    if exc is None:
        return None
    try:
        return str(exc)
    except Exception as failure:
        return f"<str() of the exception failed: {type(failure).__name__}>"


class _Lazy(enum.Enum):
    """A field not made yet (the traceback, formatted when first read)."""

    LAZY = "lazy"


_LAZY = _Lazy.LAZY


def _format_traceback(exc: BaseException | None) -> str | None:
    if exc is None or exc.__traceback__ is None:
        return None  # never raised (a refusal made on the spot): no stack to show
    return "".join(format_exception(exc))


def _from_context(key: str, kind: type) -> Any:
    def read(letter: DeadLetter) -> Any:
        value = letter.context.get(key) if letter.context else None
        return value if isinstance(value, kind) else None

    return attrs.Factory(read, takes_self=True)


@final
@attrs.frozen
class DeadLetter:
    """One message that could not be delivered, as every dead-letter store keeps it.

    The first six fields are the in-memory record; the keyword-only ones are
    what a durable store fills too. Left out, they are derived from the
    exception and the context (``exception_type``, ``error``, ``traceback``,
    ``message_id``, ``message_name``, ``attempts``) or made fresh
    (``letter_id``, ``recorded_at``). Equality compares the content, not the
    store's bookkeeping (``letter_id`` and ``recorded_at``).

    ``traceback`` is formatted from the exception when first read, so a
    store writes a letter field by field (``letter.traceback``), not
    through ``attrs.asdict`` (which shows the private ``_traceback``).
    """

    #: The message itself (never the internal wrapper around an ask); in a
    #: durable store, the decoded message, or ``None`` when it did not decode.
    message: object
    #: The path of the actor or endpoint the message was meant for.
    recipient: str
    #: Why it could not be delivered.
    reason: DeadLetterReason
    #: The exception that made it a dead letter, if one did: the live object,
    #: kept in memory only (a durable store reads back ``None``).
    exception: BaseException | None = None
    #: The message context (ids, headers) when the bus knows it.
    context: Mapping[str, Any] | None = None
    #: ``trio.current_time()`` when it was recorded (``None`` outside trio).
    time: float | None = None
    #: The store's unique id of this record (not the message id: a message
    #: that fails again after a replay is a new letter with a new id).
    letter_id: str = attrs.field(factory=new_letter_id, kw_only=True, eq=False)
    #: Wall-clock time (``time.time()``) when it was recorded: what ages count from.
    recorded_at: float = attrs.field(factory=wall_clock, kw_only=True, eq=False)
    #: The exception's qualified name (see :func:`exception_type_name`), or ``None``.
    exception_type: str | None = attrs.field(
        default=attrs.Factory(_exception_type, takes_self=True), kw_only=True
    )
    #: ``str(exception)``, or ``None``.
    error: str | None = attrs.field(default=attrs.Factory(_error, takes_self=True), kw_only=True)
    #: The traceback, or ``_LAZY`` until :attr:`traceback` is first read
    #: (formatting costs more than the rest of a record).
    _traceback: str | _Lazy | None = attrs.field(
        default=_LAZY, kw_only=True, alias="traceback", eq=False, repr=False
    )
    #: How many attempts the handler had (``failed`` letters), else ``None``.
    attempts: int | None = attrs.field(default=_from_context("attempts", int), kw_only=True)
    #: The uri of the bus endpoint the message was dead-lettered at, or ``None``
    #: (a plain actor's message).
    endpoint: str | None = attrs.field(default=None, kw_only=True)
    #: The message's name on the bus, or ``None`` (a plain actor's message).
    message_name: str | None = attrs.field(default=_from_context("message_name", str), kw_only=True)
    #: The message's id on the bus, or ``None`` (a plain actor's message).
    message_id: str | None = attrs.field(default=_from_context("message_id", str), kw_only=True)
    #: The undecoded bytes of a message that did not decode (durable stores);
    #: ``None`` in memory.
    raw: bytes | None = attrs.field(default=None, kw_only=True)

    @property
    def traceback(self) -> str | None:
        """The formatted traceback of a raised exception, or ``None``."""
        value = self._traceback
        if value is _LAZY:
            value = _format_traceback(self.exception)
            object.__setattr__(self, "_traceback", value)  # a cache of a derived field
        return value

    def describe(self) -> str:
        """A short text naming this letter in errors: id, message, recipient and reason."""
        what = self.message_name or type(self.message).__qualname__
        return f"dead letter {self.letter_id} ({what} to {self.recipient}, {self.reason.value})"
