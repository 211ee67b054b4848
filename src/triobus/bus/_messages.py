"""Message base classes and the message-name rule.

Messages are usually attrs classes deriving from :class:`Request`,
:class:`Command` or :class:`Event`. The base classes declare no attrs
fields. Any other object can travel too; it is named by the rule in
:func:`default_message_name`.
"""

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Generic, TypeVar

from .._errors import MessageVersionError

# Re-exported: the one helper that caps a message's repr in error and log text.
from .._errors import short_repr as short_repr

R_co = TypeVar("R_co", covariant=True)

#: A message's identity on a bus: its name and version.
Identity = tuple[str, int]

#: A custom name detector: return a name, or ``None`` to use the default rule.
NameDetector = Callable[[object], "str | None"]


class Request(Generic[R_co]):
    """A message with exactly one handler whose response, of type ``R``, goes back.

    ``await bus.invoke(request)`` is typed ``R``.
    """

    __slots__ = ()
    #: The version of this message type; handlers can be bound per version.
    message_version: ClassVar[int] = 1


class Command(Request[None]):
    """A request with no response: one handler; usually sent with ``bus.send``."""

    __slots__ = ()


class Event:
    """A fact that happened; published to zero or more handlers."""

    __slots__ = ()
    #: The version of this message type; handlers can be bound per version.
    message_version: ClassVar[int] = 1


def type_name(cls: type) -> str:
    """The name of messages of class ``cls``: its own ``message_name`` or ``module.qualname``."""
    own = cls.__dict__.get("message_name")
    if isinstance(own, str) and own:
        return own
    return f"{cls.__module__}.{cls.__qualname__}"


def type_version(cls: type) -> int:
    """The version of messages of class ``cls``: its ``message_version`` (1 when unset).

    Raises:
        MessageVersionError: it is not a whole number >= 1.
    """
    return checked_version(
        getattr(cls, "message_version", 1), f"{cls.__qualname__}.message_version"
    )


def checked_version(version: object, what: str) -> int:
    """``version`` when it is a whole number >= 1 (an ``int``, not a ``bool``).

    Raises:
        MessageVersionError: naming ``what`` (where the version came from) and the value.
    """
    if isinstance(version, int) and not isinstance(version, bool) and version >= 1:
        return version
    raise MessageVersionError(
        f"{what} is {short_repr(version)}, but a message version is a whole number >= 1 "
        "(an int, not a bool): start at 1 and raise it by one per change"
    )


def default_message_name(message: object) -> str:
    """Name a message: a ``str`` by itself, a ``dict`` by its ``"message_name"``
    key, anything else by its class (see :func:`type_name`).
    """
    if isinstance(message, str):
        return message
    if isinstance(message, Mapping):
        name = message.get("message_name")
        if isinstance(name, str) and name:
            return name
    return type_name(type(message))


def message_version(message: object) -> int:
    """A ``dict``'s ``"message_version"`` key, else its class's ``message_version``.

    Raises:
        MessageVersionError: the version is not a whole number >= 1.
    """
    if isinstance(message, Mapping):
        version = message.get("message_version", 1)
        if isinstance(version, int) and not isinstance(version, bool) and version >= 1:
            return version
        name = message.get("message_name")
        return checked_version(
            version, f"the message_version of the dict message {short_repr(name)}"
        )
    if isinstance(message, str):
        return 1
    return type_version(type(message))


def binding_identity(target: type | str, version: int | None) -> Identity:
    """The identity a binding for ``target`` (a class or a name) answers to.

    A class's own ``message_version`` is checked even when ``version`` is
    given, since messages of that class are versioned by it at dispatch.

    Raises:
        MessageVersionError: the class's ``message_version`` or ``version`` is malformed.
    """
    if isinstance(target, str):
        if not target:
            raise ValueError("a message name is a non-empty string")
        name, own = target, 1
    elif isinstance(target, type):
        name, own = type_name(target), type_version(target)
    else:
        raise TypeError(f"bind a message class or a message name (str), not {short_repr(target)}")
    if version is None:
        return (name, own)
    return (name, checked_version(version, f"the version= bound for {describe(target)}"))


def describe(target: object) -> str:
    """A binding target for error text: a class's qualname, else a capped repr."""
    if isinstance(target, type):
        return target.__qualname__
    return short_repr(target)


def is_command(target: type | str) -> bool:
    return isinstance(target, type) and issubclass(target, Command)


#: The bus calls whose missing handler :func:`unbound_advice` advises on.
VERBS = ("invoke", "send", "publish")


def unbound_advice(message: object, verb: str) -> str:
    """What to do when ``verb`` (``"invoke"``, ``"send"`` or ``"publish"``) finds
    no handler for ``message``: the advice part of the error, to follow a
    sentence that says what went wrong.

    A ``dict`` without a usable ``"message_name"`` key is told to add one
    (binding ``dict`` itself would not name it); anything else is told to
    bind its name, with ``bind_request`` for invoke and send, with
    ``bind_event`` for publish.

    Raises:
        ValueError: ``verb`` is not one of :data:`VERBS`.
    """
    if verb not in VERBS:
        raise ValueError(f"verb must be one of {VERBS}, got {short_repr(verb)}")
    if isinstance(message, Mapping) and not _has_name(message):
        example = _binding_call(repr("orders.place"), "", verb)
        return (
            'a dict message is named by its "message_name" key and this one has none: '
            'add a "message_name" key (a non-empty str, for example "orders.place") '
            f"and bind that name with {example}"
        )
    if isinstance(message, str):
        return f"bind one with {_binding_call(short_repr(message), '', verb)}"
    if isinstance(message, Mapping):
        version = message.get("message_version", 1)
        extra = "" if version == 1 else f", version={short_repr(version)}"
        return f"bind one with {_binding_call(short_repr(message['message_name']), extra, verb)}"
    return f"bind one with {_binding_call(describe(type(message)), '', verb)}"


def _has_name(message: Mapping[Any, Any]) -> bool:
    name = message.get("message_name")
    return isinstance(name, str) and bool(name)


def _binding_call(target: str, extra: str, verb: str) -> str:
    if verb == "publish":
        return f"Module(...).bind_event({target}, [handler, ...]{extra})"
    return f"Module(...).bind_request({target}, handler{extra})"
