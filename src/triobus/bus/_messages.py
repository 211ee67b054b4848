"""Message base classes and the message-name rule.

Messages are usually attrs classes deriving from :class:`Request`,
:class:`Command` or :class:`Event`. The base classes declare no attrs
fields. Any other object can travel too; it is named by the rule in
:func:`default_message_name`.
"""

from collections.abc import Callable, Mapping
from typing import ClassVar, Generic, TypeVar

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
    version = getattr(cls, "message_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise TypeError(
            f"{cls.__qualname__}.message_version must be a whole number >= 1, got {version!r}"
        )
    return version


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
    """A ``dict``'s ``"message_version"`` key, else its class's ``message_version``."""
    if isinstance(message, Mapping):
        version = message.get("message_version", 1)
        if isinstance(version, int) and not isinstance(version, bool) and version >= 1:
            return version
        raise TypeError(f"message_version of a dict message must be an int >= 1, got {version!r}")
    if isinstance(message, str):
        return 1
    return type_version(type(message))


def binding_identity(target: type | str, version: int | None) -> Identity:
    """The identity a binding for ``target`` (a class or a name) answers to."""
    if isinstance(target, str):
        if not target:
            raise ValueError("a message name is a non-empty string")
        return (target, version if version is not None else 1)
    if not isinstance(target, type):
        raise TypeError(f"bind a message class or a message name (str), not {target!r}")
    return (type_name(target), version if version is not None else type_version(target))


def describe(target: object) -> str:
    if isinstance(target, type):
        return target.__qualname__
    return repr(target)


def is_command(target: type | str) -> bool:
    return isinstance(target, type) and issubclass(target, Command)
