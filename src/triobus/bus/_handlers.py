"""Handlers and pipeline behaviors, and how a bus calls them.

What is bound is classified once, at bind time, by one rule:

- an ``async def`` function (or an object whose ``__call__`` is
  ``async def``) is the handler itself, called with the message;
- a class is a handler class: made fresh per message (no arguments), its
  ``async def handle(self, message)`` is called (checked at bind time);
- any other callable is a factory, called with no arguments per message to
  make the handler object, only if it can be called with no arguments (no
  required parameter in its signature);
- anything else (a plain ``def handle(message)``, a ``lambda m: ...``) is
  refused with :class:`~triobus.InvalidHandler`.

Pipeline behaviors follow the same rule, with
``async def __call__(self, message, next)`` (``async def fn(message, next)``
for a function), except that a class is not checked for ``__call__``.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar, final

from .._errors import InvalidHandler
from ._messages import short_repr

Req_contra = TypeVar("Req_contra", contravariant=True)
R_co = TypeVar("R_co", covariant=True)
E_contra = TypeVar("E_contra", contravariant=True)

#: What a pipeline behavior calls to go on: no argument, awaitable result.
Next = Callable[[], Awaitable[Any]]


class RequestHandler(abc.ABC, Generic[Req_contra, R_co]):
    """Handles one request type; its return value is the response."""

    @abc.abstractmethod
    async def handle(self, request: Req_contra, /) -> R_co:
        """Handle ``request`` and return the response."""


class EventHandler(abc.ABC, Generic[E_contra]):
    """Handles one event type; one of possibly many subscribers."""

    @abc.abstractmethod
    async def handle(self, event: E_contra, /) -> None:
        """React to ``event``."""


class PipelineBehavior(Protocol):
    """Middleware around handling: call ``await next()`` to go on."""

    async def __call__(self, message: Any, next: Next, /) -> Any: ...


def is_async_callable(target: object) -> bool:
    """Whether calling ``target`` starts a coroutine: an ``async def`` function,
    method or partial of one, or an object whose ``__call__`` is ``async def``.
    """
    if inspect.iscoroutinefunction(target):
        return True
    if isinstance(target, type) or inspect.isroutine(target):
        return False
    return inspect.iscoroutinefunction(type(target).__call__)


def takes_no_arguments(target: object) -> bool:
    """Whether ``target`` can be called with no arguments (no required parameter).

    A signature that cannot be read (some built-ins) is taken as a yes.
    """
    try:
        parameters = inspect.signature(target).parameters.values()  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return True
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return all(p.default is not p.empty or p.kind in variadic for p in parameters)


def _refused(target: object, label: str, behavior: bool) -> InvalidHandler:
    name = getattr(target, "__name__", None) or ("__call__" if behavior else "handle")
    if behavior:
        what, signature = "pipeline behavior", "(message, next)"
        instances = "'async def __call__(self, message, next)'"
    else:
        what, signature = "handler", "(message)"
        instances = "'async def handle(self, message)'"
    return InvalidHandler(
        f"the {what} {label} is a plain (not async) callable that needs arguments, so it is "
        f"neither a {what} nor a factory: make it 'async def {name}{signature}', or pass a "
        f"zero-argument factory or a class whose instances have {instances}"
    )


@final
class Callee:
    """A bound handler or behavior, classified once at bind time.

    ``behavior=True`` classifies a pipeline behavior (only the wording of
    the errors differs). See the module docstring for the rule.

    Raises:
        InvalidHandler: ``target`` is not callable, or is a plain callable
            that needs arguments (neither async nor a factory).
    """

    __slots__ = ("direct", "label", "target")

    def __init__(self, target: object, *, behavior: bool = False) -> None:
        self.label: str = getattr(target, "__qualname__", None) or short_repr(target)
        if not callable(target):
            what = "pipeline behavior" if behavior else "handler"
            raise InvalidHandler(
                f"the {what} {self.label} is not callable: bind an async function, "
                "a class or a zero-argument factory"
            )
        self.target: Any = target
        #: True when ``target`` is itself the async callable (not a factory).
        self.direct = is_async_callable(target)
        if isinstance(target, type) and not self.direct and not takes_no_arguments(target):
            what = "pipeline behavior" if behavior else "handler"
            raise InvalidHandler(
                f"the {what} class {self.label} needs constructor arguments, but it is made "
                "fresh per message with none: give every __init__ parameter a default, or "
                f"bind a zero-argument factory, e.g. lambda: {self.label}(...)"
            )
        if not self.direct and not isinstance(target, type) and not takes_no_arguments(target):
            raise _refused(target, self.label, behavior)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Callee) and other.target == self.target

    def __hash__(self) -> int:
        return hash(self.target)

    def __repr__(self) -> str:
        return self.label


def handler_call(handler: Callee) -> Callable[[Any], Awaitable[Any]]:
    """The quickest callable that runs ``handler`` on one message.

    An async function is called as it is. A class is checked now for an
    ``async def handle`` and then instantiated per message with no extra
    coroutine layer; any other factory goes through :func:`call_handler`,
    which checks what the factory made.
    """
    target = handler.target
    if handler.direct:
        return target  # type: ignore[no-any-return]
    if isinstance(target, type):
        if not inspect.iscoroutinefunction(getattr(target, "handle", None)):
            raise InvalidHandler(
                f"handler class {handler.label} has no 'async def handle(self, message)'"
            )
        if inspect.isabstract(target):
            raise InvalidHandler(f"handler class {handler.label} is abstract: implement handle()")

        def make_and_handle(message: Any) -> Awaitable[Any]:
            return target().handle(message)  # type: ignore[no-any-return]

        return make_and_handle
    return lambda message: call_handler(handler, message)


async def call_handler(handler: Callee, message: object) -> Any:
    """Make the handler for this message (fresh per message) and run it."""
    if handler.direct:
        return await handler.target(message)
    instance = handler.target()
    handle = getattr(instance, "handle", None)
    if handle is None:
        raise InvalidHandler(
            f"the factory {handler.label} made {type(instance).__qualname__}, which has no "
            "'async def handle(self, message)'"
        )
    return await handle(message)


def run_pipeline(
    behaviors: Sequence[Callee], message: object, terminal: Callable[[], Awaitable[Any]]
) -> Awaitable[Any]:
    """Run ``terminal`` inside ``behaviors``, the first one outermost."""
    if not behaviors:
        return terminal()

    def step(index: int) -> Awaitable[Any]:
        if index == len(behaviors):
            return terminal()
        behavior = behaviors[index]
        instance = behavior.target if behavior.direct else behavior.target()
        return instance(message, lambda: step(index + 1))  # type: ignore[no-any-return]

    return step(0)
