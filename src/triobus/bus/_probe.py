"""The instrument the testing kit attaches to a bus's handling path.

A bus has no probe in production, and then pays one ``is None`` check per
handling. The probe observes the production path; it adds no path of its
own (faults in delivery wrap endpoints through the seam instead).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ._plugins import DispatchKind
    from ._seam import Delivery, Step


class Probe(Protocol):
    """Observer of one bus (see ``triobus.testing``)."""

    def dispatched(self, kind: DispatchKind, delivery: Delivery) -> None:
        """A caller sent, invoked or published ``delivery`` (held ones included)."""

    def before_receive(self, delivery: Delivery, endpoint: str) -> None:
        """An endpoint actor took ``delivery``; raising here crashes the actor."""

    def before_handle(self, delivery: Delivery, step: Step, endpoint: str) -> None:
        """A handler is about to run; raising here fails this attempt."""

    def handled(self, delivery: Delivery, step: Step, endpoint: str) -> None:
        """A handler finished ``delivery`` successfully."""

    def failed(
        self, delivery: Delivery, step: Step, endpoint: str, error: Exception, retrying: bool
    ) -> None:
        """A handler raised ``error``; ``retrying`` says whether another attempt follows."""
