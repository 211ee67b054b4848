"""The hook the testing kit attaches to a bus to observe it and inject faults.

A bus has no probe in production, and then pays one ``is None`` check per
dispatch and per handling.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ._context import Envelope
    from ._plans import EndpointRuntime, Step
    from ._plugins import DispatchKind


class Probe(Protocol):
    """Observer and fault injector of one bus (see ``triobus.testing``)."""

    def dispatched(self, kind: DispatchKind, envelope: Envelope) -> None:
        """A caller sent, invoked or published ``envelope`` (held ones included)."""

    async def deliver(self, endpoint: EndpointRuntime, envelope: Envelope) -> None:
        """Put ``envelope`` into ``endpoint`` (via ``bus.tell``), maybe with a fault."""

    def before_receive(self, envelope: Envelope, endpoint: str) -> None:
        """An endpoint actor took ``envelope``; raising here crashes the actor."""

    def before_handle(self, envelope: Envelope, step: Step, endpoint: str) -> None:
        """A handler is about to run; raising here fails this attempt."""

    def handled(self, envelope: Envelope, step: Step, endpoint: str) -> None:
        """A handler finished ``envelope`` successfully."""

    def failed(
        self, envelope: Envelope, step: Step, endpoint: str, error: Exception, retrying: bool
    ) -> None:
        """A handler raised ``error``; ``retrying`` says whether another attempt follows."""
