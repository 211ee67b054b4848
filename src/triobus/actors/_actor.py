"""The ``Actor`` base class: the behavior users subclass."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._cell import ActorCell
    from ._ref import ActorRef


class Actor:
    """A behavior that handles one message at a time.

    Subclass it and implement :meth:`receive`. Its return value is the reply
    to an :meth:`ActorRef.ask`; for a ``tell`` it is ignored. An ``Exception``
    escaping ``receive`` crashes the actor: an asker gets that exception, a
    told message goes to dead letters with it, and the supervisor decides
    what happens next (by default a fresh instance from the factory).

    While the actor runs, :attr:`ref` is its own address.
    """

    # Set by the runtime before on_start; never None while the actor runs.
    _cell: ActorCell | None = None

    @property
    def ref(self) -> ActorRef:
        """The address of this actor (it survives restarts)."""
        if self._cell is None:
            raise RuntimeError("this actor was not spawned: it has no address yet")
        return self._cell.ref

    async def receive(self, message: Any) -> Any:
        """Handle one message; the return value answers an ask."""
        raise TypeError(
            f"{type(self).__qualname__} must implement 'async def receive(self, message)'"
        )

    async def on_start(self) -> None:
        """Runs before the first message of every incarnation, before ``spawn`` returns."""

    async def on_stop(self) -> None:
        """Runs on the old instance when it stops, best effort within its shutdown deadline."""

    async def on_restart(self, error: BaseException | None) -> None:
        """Runs on the fresh instance of a restart, before :meth:`on_start`.

        ``error`` is the failure that caused the restart (``None`` when a
        permanent actor that ended normally is started again).
        """

    def stop_self(self) -> None:
        """End this actor normally once the message in hand is handled.

        This is a normal exit: a ``permanent`` actor is restarted (as in
        OTP), ``transient`` and ``temporary`` ones are removed and what is
        left in their mailbox goes to dead letters.
        """
        if self._cell is not None:
            self._cell.stop_self(self)
