"""Plans: what the bus computed once per message type at start-up.

A plan says, for one message identity and one endpoint, which handlers run
there and inside which behaviors. Dispatch only looks plans up.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, final

from ..actors import ActorRef
from ._handlers import Callee, handler_call, run_pipeline
from ._routing import Endpoint

if TYPE_CHECKING:
    from ._bus import MessageBus


async def _no_handler(message: Any) -> Any:
    raise RuntimeError("this step's handler is resolved by a plugin at delivery time")


class Kind(enum.StrEnum):
    REQUEST = "request"
    EVENT = "event"


@final
class Step:
    """One handler and the behaviors around it: one delivery."""

    __slots__ = ("behaviors", "call", "factory", "handler", "label", "raw")

    def __init__(
        self, handler: Callee | None, behaviors: tuple[Callee, ...], raw: Any = None
    ) -> None:
        #: The bound handler; ``None`` when a plugin routed the message to ``raw``
        #: (a handler, or a string id that a locate plugin resolves).
        self.handler = handler
        self.behaviors = behaviors
        self.raw = raw
        self.label = handler.label if handler is not None else repr(raw)
        #: Runs the handler inside its behaviors on one message (made once, here).
        self.call: Callable[[Any], Awaitable[Any]] = _no_handler
        #: The handler class, when ``call`` is just ``factory().handle(message)``:
        #: the endpoint then does that itself, without the extra frame of ``call``.
        self.factory: Callable[[], Any] | None = None
        if handler is not None:
            if not behaviors and isinstance(handler.target, type) and not handler.direct:
                self.factory = handler.target
            inner = handler_call(handler)
            if behaviors:
                self.call = lambda message: run_pipeline(behaviors, message, lambda: inner(message))
            else:
                self.call = inner


@final
class EndpointRuntime:
    """A running endpoint: its spec and the actor (or partition actors) behind it."""

    __slots__ = ("partition_by", "refs", "spec", "uri")

    def __init__(self, spec: Endpoint, refs: Sequence[ActorRef]) -> None:
        self.spec = spec
        self.uri = spec.uri
        self.refs = tuple(refs)
        self.partition_by = spec.partition_by

    def pick(self, message: object) -> ActorRef:
        """The actor that takes ``message`` (by its partition key, if any)."""
        if self.partition_by is None:
            return self.refs[0]
        return self.refs[hash(self.partition_by(message)) % len(self.refs)]

    def __repr__(self) -> str:
        return f"<Endpoint {self.uri!r} actors={len(self.refs)}>"


@final
class Plan:
    """The handlers of one message identity on one endpoint."""

    __slots__ = (
        "bus",
        "call",
        "endpoint",
        "factory",
        "kind",
        "name",
        "ref",
        "steps",
        "version",
    )

    def __init__(
        self,
        bus: MessageBus,
        name: str,
        version: int,
        kind: Kind,
        endpoint: EndpointRuntime,
        steps: Sequence[Step],
    ) -> None:
        self.bus = bus
        self.name = name
        self.version = version
        self.kind = kind
        self.endpoint = endpoint
        self.steps = tuple(steps)
        #: The first (for a request: the only) step's call.
        first = self.steps[0] if self.steps else Step(None, ())
        self.call = first.call
        #: The handler class of the only step, when that step is just
        #: ``factory().handle(message)`` (the endpoint hands that coroutine
        #: to the actor loop); ``None`` otherwise.
        self.factory = first.factory if len(self.steps) == 1 else None
        #: The endpoint's only actor, or ``None`` when it is partitioned.
        self.ref: ActorRef | None = endpoint.refs[0] if endpoint.partition_by is None else None

    def __repr__(self) -> str:
        labels = ", ".join(step.label for step in self.steps)
        return f"<Plan {self.name} v{self.version} -> {self.endpoint.uri}: {labels}>"


@final
class Failed:
    """The outcome of an asked handling that raised: re-raised in the caller."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def unwrap(result: Any) -> Any:
    if type(result) is Failed:
        raise result.error
    return result
