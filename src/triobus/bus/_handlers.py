"""Handlers and pipeline behaviors, and how a bus calls them.

A bound handler is either an async function (called with the message) or a
factory (a class with a no-argument constructor, or any callable) that makes
a fresh handler object per message, whose ``async def handle(message)`` is
called. Pipeline behaviors follow the same rule, with
``async def __call__(message, next)``.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar, final

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


@final
class Callee:
    """A bound handler or behavior, classified once at bind time."""

    __slots__ = ("direct", "label", "target")

    def __init__(self, target: object) -> None:
        if not callable(target):
            raise TypeError(
                f"{short_repr(target)} is neither an async function nor a factory "
                "(a class or callable)"
            )
        self.target: Any = target
        #: True when ``target`` is itself the async callable (not a factory).
        self.direct = inspect.iscoroutinefunction(target)
        self.label = getattr(target, "__qualname__", None) or short_repr(target)

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
            raise TypeError(
                f"handler class {handler.label} has no 'async def handle(self, message)'"
            )
        if inspect.isabstract(target):
            raise TypeError(f"handler class {handler.label} is abstract: implement handle()")

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
        raise TypeError(
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
