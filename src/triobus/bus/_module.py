"""``Module``: a named group of handler bindings, built fluently."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Self, final

import attrs

from .._errors import (
    EventHandlerAlreadyRegistered,
    ModuleFrozen,
    PipelineBehaviorAlreadyRegistered,
    RequestHandlerAlreadyRegistered,
)
from ._handlers import Callee, handler_call
from ._messages import Identity, binding_identity, describe, short_repr


@final
@attrs.frozen
class RequestBinding:
    """One request (or command) bound to its one handler."""

    identity: Identity
    target: type | str
    handler: Callee
    behaviors: tuple[Callee, ...]
    module: Module


@final
@attrs.frozen
class EventBinding:
    """One event bound to one of its handlers."""

    identity: Identity
    target: type | str
    handler: Callee
    behaviors: tuple[Callee, ...]
    module: Module


def _behaviors(target: object, behaviors: Iterable[object]) -> tuple[Callee, ...]:
    callees: list[Callee] = []
    for behavior in behaviors:
        callee = Callee(behavior, behavior=True)
        if callee in callees:
            raise PipelineBehaviorAlreadyRegistered(
                f"behavior {callee.label} is bound twice for {describe(target)}: bind it once"
            )
        callees.append(callee)
    return tuple(callees)


@final
class Module:
    """A named group of bindings: ``Module("orders").bind_request(T, H).bind_event(E, [H1, H2])``.

    A module freezes when a bus starts with it; binding afterwards raises
    :class:`ModuleFrozen`.
    """

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a module name is a non-empty string, got {short_repr(name)}")
        self.name = name
        self.requests: dict[Identity, RequestBinding] = {}
        self.events: dict[Identity, list[EventBinding]] = {}
        self._users = 0

    @property
    def frozen(self) -> bool:
        """Whether a running bus uses this module (binding raises then)."""
        return self._users > 0

    def _freeze(self) -> None:
        self._users += 1

    def _thaw(self) -> None:
        self._users -= 1

    def _check_open(self) -> None:
        if self.frozen:
            raise ModuleFrozen(
                f"module {self.name!r} is in use by a running bus: bind before open_bus"
            )

    def bind_request(
        self,
        request: type | str,
        handler: object,
        *,
        behaviors: Iterable[object] = (),
        version: int | None = None,
    ) -> Self:
        """Bind the one handler of a request or command (a class or a message name).

        ``handler`` (and each of ``behaviors``) is an ``async def`` function
        or an object whose ``__call__`` is async (called as it is), a class
        (made per message; a handler class needs ``async def handle``), or a
        factory that takes no arguments (called per message). A plain
        function that needs arguments is neither, and is refused here.

        Raises:
            RequestHandlerAlreadyRegistered: this module already binds one.
            PipelineBehaviorAlreadyRegistered: a behavior is listed twice.
            InvalidHandler: the handler or a behavior is none of the above.
            MessageVersionError: the class's ``message_version`` or ``version`` is
                not a whole number >= 1.
        """
        self._check_open()
        identity = binding_identity(request, version)
        if identity in self.requests:
            raise RequestHandlerAlreadyRegistered(
                f"{describe(request)} (version {identity[1]}) already has the handler "
                f"{self.requests[identity].handler.label} in module {self.name!r}: "
                "a request has exactly one handler"
            )
        callee = Callee(handler)
        handler_call(callee)  # a bad handler class fails here, not at the first message
        self.requests[identity] = RequestBinding(
            identity, request, callee, _behaviors(request, behaviors), self
        )
        return self

    def bind_event(
        self,
        event: type | str,
        handlers: Iterable[object],
        *,
        behaviors: Iterable[object] = (),
        version: int | None = None,
    ) -> Self:
        """Subscribe ``handlers`` to an event (a class or a message name).

        Each handler and behavior follows the rule of :meth:`bind_request`.

        Raises:
            EventHandlerAlreadyRegistered: a handler is bound twice for this event.
            PipelineBehaviorAlreadyRegistered: a behavior is listed twice.
            InvalidHandler: a handler or a behavior is not async, a class or a
                zero-argument factory.
            MessageVersionError: the class's ``message_version`` or ``version`` is
                not a whole number >= 1.
        """
        self._check_open()
        identity = binding_identity(event, version)
        if isinstance(handlers, str) or not isinstance(handlers, Iterable):
            raise TypeError(
                f"bind_event takes a list of handlers for {describe(event)}, "
                f"got {short_repr(handlers)}"
            )
        bound = self.events.setdefault(identity, [])
        chain = _behaviors(event, behaviors)
        for handler in handlers:
            callee = Callee(handler)
            handler_call(callee)
            if any(b.handler == callee for b in bound):
                raise EventHandlerAlreadyRegistered(
                    f"{callee.label} is already subscribed to {describe(event)} in module "
                    f"{self.name!r}: subscribe it once"
                )
            bound.append(EventBinding(identity, event, callee, chain, self))
        return self

    def __repr__(self) -> str:
        return (
            f"<Module {self.name!r} requests={len(self.requests)} "
            f"events={sum(len(v) for v in self.events.values())}>"
        )
