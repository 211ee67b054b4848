"""Message context: ids, correlation, causation, headers, reply-to.

Each message travels in an :class:`Envelope`. While a handler runs, the
envelope it handles is in its worker's frame (found through the actors'
context variable, set once per worker), so every message the handler
sends, invokes or publishes gets the same correlation id and that message's
id as its causation id, and is held in the envelope until the handler's
pipeline succeeded. Ids are made only when someone needs them, from a
per-process random prefix and a counter (or the bus's ``id_factory``).
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, final

import attrs

from ..actors._ask import current_frame
from ..mailbox import Carrier, DeadLetterReason

if TYPE_CHECKING:
    from ._bus import MessageBus
    from ._plans import Plan
    from ._plugins import DispatchEvent

_EMPTY: Mapping[str, str] = MappingProxyType({})


def default_id_factory() -> Callable[[], str]:
    """Ids unique across processes and restarts: 96 random bits, then a counter."""
    prefix = secrets.token_hex(12)
    counter = itertools.count(1)
    return lambda: f"{prefix}-{next(counter):x}"


@final
@attrs.frozen
class MessageContext:
    """What is known about the message being handled (see :func:`current_context`)."""

    #: This message's id.
    message_id: str
    #: The id shared by every message of one chain (the first one's id).
    correlation_id: str
    #: The id of the message whose handler sent this one (``None`` for a root).
    causation_id: str | None
    #: The message's name on the bus.
    message_name: str
    #: Headers, kept along the chain.
    headers: Mapping[str, str] = attrs.field(factory=dict)
    #: Where a reply should go, when the sender said.
    reply_to: str | None = None


@final
class Envelope(Carrier):
    """One message on its way: the message, its plan and its context."""

    __slots__ = (
        "_correlation_id",
        "_id",
        "asked",
        "attempt",
        "causation_id",
        "dispatch",
        "headers",
        "held",
        "message",
        "plan",
        "progress",
        "reply_to",
    )

    message: object
    plan: Plan
    _id: str | None
    _correlation_id: str | None
    #: The id of the message whose handler sent this one (``None`` for a root).
    causation_id: str | None
    headers: Mapping[str, str]
    reply_to: str | None
    #: Handlers of this envelope already done (events: one per subscription).
    progress: int
    #: The delivery attempt of the handler now running (1 = first).
    attempt: int
    #: True for an ask (invoke): one attempt, the outcome goes to the caller.
    asked: bool
    #: The plugins' view of this dispatch, when plugins are attached.
    dispatch: DispatchEvent | None
    #: What the handler of this envelope sent while running (released after it).
    held: list[tuple[Any, Envelope]] | None

    def __init__(
        self,
        message: object,
        plan: Plan,
        parent: Envelope | None,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        asked: bool = False,
    ) -> None:
        self.message = message
        self.plan = plan
        self._id = None
        if parent is None:
            self._correlation_id = correlation_id
            self.causation_id = None
            self.headers = headers or _EMPTY
        else:
            self._correlation_id = correlation_id or parent.correlation_id
            self.causation_id = parent.message_id
            self.headers = {**parent.headers, **headers} if headers else parent.headers
        self.reply_to = reply_to
        self.progress = 0
        self.attempt = 1
        self.asked = asked
        self.dispatch = None
        self.held = None

    @property
    def message_id(self) -> str:
        if self._id is None:
            self._id = self.plan.bus.new_id()
        return self._id

    @property
    def correlation_id(self) -> str:
        if self._correlation_id is None:
            self._correlation_id = self.message_id
        return self._correlation_id

    def duplicate(self) -> Envelope:
        """A second delivery of the same message: same id and context, fresh progress."""
        copy = Envelope.__new__(Envelope)
        copy.message = self.message
        copy.plan = self.plan
        copy._id = self.message_id
        copy._correlation_id = self.correlation_id
        copy.causation_id = self.causation_id
        copy.headers = self.headers
        copy.reply_to = self.reply_to
        copy.progress = 0
        copy.attempt = 1
        copy.asked = self.asked
        copy.dispatch = self.dispatch
        copy.held = None
        return copy

    def context(self) -> MessageContext:
        return MessageContext(
            message_id=self.message_id,
            correlation_id=self.correlation_id,
            causation_id=self.causation_id,
            message_name=self.plan.name,
            headers=dict(self.headers),
            reply_to=self.reply_to,
        )

    def carried_message(self) -> object:
        return self.message

    def carried(self) -> tuple[object, Mapping[str, Any] | None]:
        return self.message, attrs.asdict(self.context())

    def dead_lettered(self, reason: DeadLetterReason) -> None:
        if not self.asked:
            self.plan.bus.settled()

    def __repr__(self) -> str:
        return f"<Envelope {self.plan.name} id={self.message_id}>"


def current_handling() -> Envelope | None:
    """The envelope whose handler runs in this task, if any.

    The endpoint keeps it in its worker's frame (see ``actors._ask.Frame``);
    the hot paths of the bus read the frame inline.
    """
    frame = current_frame.get()
    return None if frame is None else frame.handling


def current_context() -> MessageContext | None:
    """The context of the message whose handler is running here, or ``None``."""
    handling = current_handling()
    return None if handling is None else handling.context()


def current_bus() -> MessageBus:
    """The bus whose handler is running here: send, invoke or publish on it.

    Raises:
        RuntimeError: no handler of a bus is running in this task.
    """
    handling = current_handling()
    if handling is None:
        raise RuntimeError(
            "current_bus() works inside a bus handler (or behavior) only: pass the bus "
            "to code that runs elsewhere"
        )
    return handling.plan.bus
