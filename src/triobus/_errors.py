"""Every error triobus raises, in one place.

All of them derive from :class:`TriobusError`; not-found errors are also
:class:`LookupError`, timeouts are also :class:`TimeoutError`. Each message
says what happened and what to do about it; :func:`short_repr` caps what
an object's repr (a message, a payload) contributes to that text.
"""

from __future__ import annotations

from collections.abc import Sequence

#: At most this many characters of an object's repr go into an error or a log line.
REPR_LIMIT = 200


def short_repr(obj: object, limit: int = REPR_LIMIT) -> str:
    """``repr(obj)`` for error and log text, cut to at most ``limit`` characters.

    A longer repr is cut with ``...`` and its full length, so a 10 MB
    message never ends up whole in an exception or a log. Never raises: a
    ``repr`` that fails is named as such.
    """
    try:
        text = repr(obj)
    except Exception as exc:
        return f"<{type(obj).__name__} object, repr failed: {type(exc).__name__}>"
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} chars)"


class TriobusError(Exception):
    """The base class of every error raised by triobus."""


# ---------------------------------------------------------------- mailbox


class MailboxFull(TriobusError):
    """A message was refused because the mailbox is at capacity.

    Raised by the ``fail`` overflow policy, by ``tell_nowait`` on a full
    ``block`` mailbox, and to the asker whose ask was evicted or dropped.
    """


class MailboxClosed(TriobusError):
    """A message was offered to a mailbox that no longer takes messages."""


# ---------------------------------------------------------------- dead letters


class DeadLetterNotFound(TriobusError, LookupError):
    """No dead letter has this id in the store.

    It was never recorded there, or it was replayed, purged or (in the
    bounded in-memory ring) evicted since. ``letter_id`` names it.
    """

    def __init__(self, message: str, letter_id: str) -> None:
        super().__init__(message)
        self.letter_id = letter_id


class ReplayError(TriobusError):
    """Dead letters were not replayed; each one not replayed stays in the store.

    ``letter_ids`` names the letters not replayed; ``replayed`` counts the
    letters of the same call replayed before the error (they left the
    store). ``__cause__`` holds what refused the replay, when something did
    (``BusClosed``, an endpoint's refusal).
    """

    def __init__(self, message: str, letter_ids: Sequence[str], replayed: int = 0) -> None:
        super().__init__(message)
        self.letter_ids: tuple[str, ...] = tuple(letter_ids)
        self.replayed = replayed


# ---------------------------------------------------------------- actors


class ActorStopped(TriobusError):
    """The actor is stopped (or stopped before it replied to an ask).

    The message is in dead letters; ``__cause__`` holds why the actor stopped
    when that is known.
    """


class AskTimeout(TriobusError, TimeoutError):
    """An ask got no reply within its timeout."""


class DeadlockError(TriobusError):
    """An ask would wait on an actor that is itself waiting on the asker.

    ``chain`` lists the actor paths from the first asker to the target.
    """

    def __init__(self, message: str, chain: Sequence[str]) -> None:
        super().__init__(message)
        self.chain: tuple[str, ...] = tuple(chain)


class ActorNameTaken(TriobusError, ValueError):
    """A child with this name already exists under the same supervisor."""


class ActorStartError(TriobusError):
    """An actor's factory or ``on_start`` failed while it was being spawned."""


# ---------------------------------------------------------------- supervision


class SupervisorGaveUp(TriobusError):
    """A supervisor exceeded its restart intensity and stopped.

    ``__cause__`` holds the last failure; ``path`` names the supervisor.
    """

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class SystemClosed(TriobusError):
    """The actor system is not running (not entered yet, or already left)."""


# ---------------------------------------------------------------- bus


class RequestHandlerNotFound(TriobusError, LookupError):
    """``invoke`` found no handler bound for the request's name and version."""


class NoRouteError(TriobusError, LookupError):
    """``send`` found no handler, so no endpoint, for the command."""


class PartitionKeyError(TriobusError, ValueError):
    """An endpoint's ``partition_by`` failed on a message, or gave an unhashable key."""


class WrongVerb(TriobusError, TypeError):
    """A message was dispatched with the verb of another kind (publish of a request...)."""


class InvalidHeaders(TriobusError, TypeError):
    """``headers=`` is not a mapping of ``str`` to ``str``."""


class WrongThread(TriobusError, RuntimeError):
    """The bus was called from outside its own trio run: use its thread portal."""


class HandlerNotLocated(TriobusError, LookupError):
    """A plugin routed a message to a handler id that no locator resolved."""


class RequestHandlerAlreadyRegistered(TriobusError):
    """A second handler was bound for a request (or command) that has one."""


class EventHandlerAlreadyRegistered(TriobusError):
    """The same handler was bound twice for one event."""


class PipelineBehaviorAlreadyRegistered(TriobusError):
    """The same pipeline behavior was bound twice for one message type."""


class MessageVersionError(TriobusError, TypeError):
    """A message's version is not a whole number >= 1.

    Raised at bind time for a class's ``message_version`` (or ``version=``),
    and at dispatch for a message whose version is malformed. It is also a
    :class:`TypeError`, as the check was before it had a class of its own.
    """


class InvalidHandler(TriobusError, TypeError):
    """A handler or pipeline behavior was bound that the bus cannot call.

    Bind an ``async def`` function (or an object whose ``__call__`` is
    async), a class, or a factory that takes no arguments.
    """


class ModuleFrozen(TriobusError):
    """A module was changed after a bus started with it."""


class WiringError(TriobusError):
    """The bus configuration has mistakes; ``problems`` lists every one."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"the bus cannot start, {len(self.problems)} wiring mistake(s):\n{lines}")


class PublishError(TriobusError):
    """Some endpoints refused a published event; ``endpoints`` names them.

    The endpoints not named accepted it.
    """

    def __init__(self, message: str, endpoints: Sequence[str]) -> None:
        super().__init__(message)
        self.endpoints: tuple[str, ...] = tuple(endpoints)


class BusClosed(TriobusError):
    """The bus is not running (not entered yet, or already left)."""


# ---------------------------------------------------------------- durability: the codec


class MessageTypeAlreadyRegistered(TriobusError, ValueError):
    """A second, different class (or a class and a name) was registered for one
    message name and version in a ``MessageTypes`` registry."""


class UpcasterAlreadyRegistered(TriobusError, ValueError):
    """A second upcaster was registered for one step (a name, from one version)."""


class UnsupportedMessageType(TriobusError, TypeError):
    """A registered class is one the codec's converter cannot structure.

    Make it an attrs class or a dataclass, or register a structure and an
    unstructure hook for it on the converter given to ``Codec(converter=)``.
    """


class EnvelopeError(TriobusError):
    """An envelope could not be encoded or decoded.

    ``message_id`` is the envelope's id when it could be read (``None``
    otherwise); ``reason`` is a short machine-readable string, one of
    :data:`ENVELOPE_REASONS`, for logs, metrics and dead-letter records.
    The subclasses group the reasons into families.
    """

    def __init__(self, message: str, *, reason: str, message_id: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message_id = message_id

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only arguments: rebuild through a helper so copies and pickles work.
        return (_rebuild_envelope_error, (type(self), str(self), self.reason, self.message_id))


def _rebuild_envelope_error(
    cls: type[EnvelopeError], message: str, reason: str, message_id: str | None
) -> EnvelopeError:
    return cls(message, reason=reason, message_id=message_id)


class MalformedEnvelope(EnvelopeError):
    """The bytes are not an envelope: not JSON, not an object, or a field is
    missing or of the wrong type (``reason`` ``"malformed"``)."""


class UnknownMessage(EnvelopeError, LookupError):
    """No message type is registered under the envelope's name and version
    (``reason`` ``"unknown_message"``)."""


class UnsupportedVersion(EnvelopeError):
    """The envelope's version cannot be decoded: newer than the newest known
    (``"version_too_new"``), or an older one with no class of its own and no
    upcaster path to a registered one (``"missing_upcaster"``)."""


class InvalidBody(EnvelopeError):
    """The message body does not fit its class (``"invalid_body"``), is not
    the registered class (``"wrong_type"``), an upcaster failed on it
    (``"upcaster_failed"``), or it cannot be written as JSON (``"unserializable"``)."""


class OversizeEnvelope(EnvelopeError):
    """An envelope is over one of the codec's limits: ``"oversize"`` (bytes),
    ``"too_many_headers"``, ``"header_too_long"``, ``"name_too_long"``, ``"id_too_long"``."""


#: Every ``EnvelopeError.reason``, by the family (class) that raises it.
ENVELOPE_REASONS: dict[str, type[EnvelopeError]] = {
    "malformed": MalformedEnvelope,
    "unknown_message": UnknownMessage,
    "version_too_new": UnsupportedVersion,
    "missing_upcaster": UnsupportedVersion,
    "invalid_body": InvalidBody,
    "wrong_type": InvalidBody,
    "upcaster_failed": InvalidBody,
    "unserializable": InvalidBody,
    "oversize": OversizeEnvelope,
    "too_many_headers": OversizeEnvelope,
    "header_too_long": OversizeEnvelope,
    "name_too_long": OversizeEnvelope,
    "id_too_long": OversizeEnvelope,
}


class StoreError(TriobusError):
    """A durable store could not do what was asked (open, read or write its database)."""


# ---------------------------------------------------------------- transports


class BridgeClosed(TriobusError):
    """The asyncio bridge is not running: not started, stopped, or its loop thread crashed.

    A call that was running on the loop when the bridge stopped gets it too;
    ``__cause__`` holds what stopped the loop thread when it crashed. Make
    calls between ``start()`` and ``stop()`` (inside ``open_asyncio_bridge()``
    or ``shared_asyncio_bridge()``), or open a new bridge.
    """


class BrokerUnavailable(TriobusError, ConnectionError):
    """A broker could not be reached, refused the credentials, or lost the connection.

    The message names the endpoint and the broker. What was being sent was
    not confirmed: it was not sent.
    """


class RemoteHandlerError(TriobusError):
    """The handler of an invoke in another process raised.

    ``exception_type`` is the remote exception's qualified name, ``remote_message``
    its text and ``remote_traceback`` its traceback, as text.
    """

    def __init__(
        self, message: str, exception_type: str, remote_message: str, remote_traceback: str
    ) -> None:
        super().__init__(message)
        self.exception_type = exception_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
