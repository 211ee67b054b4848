"""Dispatch hooks: plugins that observe or change each phase of a dispatch.

Phases run in order: initialize, detect message name, route (in the
caller), locate handler, invoke handler, finalize (where the message is
handled; finalize runs in the caller when the dispatch fails there).
Within a phase, higher priority runs first and equal priorities run in
attach order; a plugin may stop the rest of its phase. A finalize plugin
sees the exception and may replace or clear it. With no plugin attached, no
phase loop runs at all.
"""

from __future__ import annotations

import enum
import inspect
import itertools
from collections.abc import Awaitable, Callable
from typing import Any, final

import attrs

from .._choices import parse_choice


class Phase(enum.StrEnum):
    """The phases of a dispatch, in the order they run."""

    INITIALIZE = "initialize"
    DETECT_MESSAGE_NAME = "detect_message_name"
    ROUTE = "route"
    LOCATE_HANDLER = "locate_handler"
    INVOKE_HANDLER = "invoke_handler"
    FINALIZE = "finalize"


class DispatchKind(enum.StrEnum):
    INVOKE = "invoke"
    SEND = "send"
    PUBLISH = "publish"


@final
class DispatchEvent:
    """What one dispatch is about; plugins read and change it.

    ``handler`` is set by a router plugin (an async function, a handler
    factory, or a string id for a locator plugin to resolve); ``endpoint``
    may name the endpoint it runs on. ``exception`` is what failed (a
    finalize plugin may replace it or set it to ``None``), ``result`` is what
    an ``invoke`` returns when the exception is cleared.
    """

    __slots__ = (
        "_stopped",
        "endpoint",
        "exception",
        "finalized",
        "handler",
        "handlers",
        "kind",
        "message",
        "message_name",
        "params",
        "result",
    )

    def __init__(self, message: object, kind: DispatchKind) -> None:
        self.message = message
        self.kind = kind
        self.message_name: str | None = None
        self.handler: Any = None
        self.handlers: list[Any] | None = None
        self.endpoint: str | None = None
        self.exception: BaseException | None = None
        self.result: Any = None
        #: Free-form values plugins hand to each other.
        self.params: dict[str, Any] = {}
        #: Whether the finalize phase ran for this dispatch (it runs once).
        self.finalized = False
        self._stopped = False

    def stop_propagation(self) -> None:
        """Skip the remaining plugins of the current phase."""
        self._stopped = True

    def for_handler(self, handler: Any) -> DispatchEvent:
        """A copy for one subscription of a published event."""
        copy = DispatchEvent(self.message, self.kind)
        copy.message_name = self.message_name
        copy.handler = handler
        copy.endpoint = self.endpoint
        copy.params = dict(self.params)
        return copy

    def __repr__(self) -> str:
        return f"<DispatchEvent {self.kind} {self.message_name!r} handler={self.handler!r}>"


Plugin = Callable[[DispatchEvent], "Awaitable[None] | None"]


@final
@attrs.frozen(eq=False)
class PluginHandle:
    """What :meth:`MessageBus.attach` returns; pass it to :meth:`MessageBus.detach`."""

    phase: Phase
    plugin: Plugin
    priority: int
    order: int


@final
class Plugins:
    """The attached plugins, sorted per phase."""

    __slots__ = ("_by_phase", "_order")

    def __init__(self) -> None:
        self._by_phase: dict[Phase, list[PluginHandle]] = {}
        self._order = itertools.count()

    def __bool__(self) -> bool:
        return bool(self._by_phase)

    def attach(self, phase: Phase | str, plugin: Plugin, priority: int = 0) -> PluginHandle:
        phase_ = parse_choice(Phase, phase, "dispatch phase")
        if not callable(plugin):
            raise TypeError(f"a plugin is a function of a DispatchEvent, got {plugin!r}")
        handle = PluginHandle(phase_, plugin, priority, next(self._order))
        handles = self._by_phase.setdefault(phase_, [])
        handles.append(handle)
        handles.sort(key=lambda h: (-h.priority, h.order))
        return handle

    def detach(self, handle: PluginHandle) -> None:
        handles = self._by_phase.get(handle.phase, [])
        if handle not in handles:
            raise ValueError(f"{handle!r} is not attached (detached already?)")
        handles.remove(handle)
        if not handles:
            del self._by_phase[handle.phase]

    async def run(self, phase: Phase, event: DispatchEvent) -> None:
        event._stopped = False
        for handle in tuple(self._by_phase.get(phase, ())):
            outcome = handle.plugin(event)
            if inspect.isawaitable(outcome):
                await outcome
            if event._stopped:
                break
        event._stopped = False
