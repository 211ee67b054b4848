"""Shipped pipeline behaviors."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, Protocol, final

import trio

from ._handlers import Next
from ._messages import short_repr

logger = logging.getLogger("triobus.bus")

#: How long a rollback may run (in seconds, shielded from cancellation) after
#: its handling failed or was cancelled; ``TransactionalBehavior.using``
#: takes another with ``rollback_deadline=``.
ROLLBACK_DEADLINE = 5.0


def _checked_deadline(value: float) -> float:
    # A shield always has a deadline: a rollback that hangs must not hold a stop forever.
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ValueError(
            f"rollback_deadline must be a positive, finite number of seconds, got {value!r}"
        )
    return value


class UnitOfWork(Protocol):
    """A transaction: committed when handling succeeded, rolled back when it failed."""

    async def commit(self) -> None: ...

    async def rollback(self) -> None: ...


@final
class TransactionalBehavior:
    """Runs the rest of the pipeline in a unit of work.

    ``TransactionalBehavior.using(factory)`` is the behavior to bind: each
    handling gets a fresh unit of work from ``factory``; it is committed when
    the handler returns and rolled back when it raises or is cancelled.
    Messages the handler sent are released only after the commit, since the
    bus holds them until the whole pipeline succeeded.

    The rollback is shielded from cancellation, so a firm stop (a cancelled
    endpoint, a cancelled invoker) does not cut it off midway, within
    ``rollback_deadline`` seconds (:data:`ROLLBACK_DEADLINE` by default).
    A rollback that overstays it is cancelled and logged; one that raises is
    logged. Either way the handling's own exception goes on unchanged.
    """

    def __init__(
        self, unit_of_work: UnitOfWork, *, rollback_deadline: float = ROLLBACK_DEADLINE
    ) -> None:
        self.unit_of_work = unit_of_work
        self.rollback_deadline = _checked_deadline(rollback_deadline)

    @classmethod
    def using(
        cls, factory: Callable[[], UnitOfWork], *, rollback_deadline: float = ROLLBACK_DEADLINE
    ) -> Callable[[], TransactionalBehavior]:
        """A behavior factory: one fresh unit of work per handling.

        Raises:
            ValueError: ``rollback_deadline`` is not a positive number of seconds.
        """
        _checked_deadline(rollback_deadline)  # now, not at the first message

        def make() -> TransactionalBehavior:
            return cls(factory(), rollback_deadline=rollback_deadline)

        name = getattr(factory, "__qualname__", None) or short_repr(factory)
        make.__qualname__ = f"TransactionalBehavior.using({name})"
        return make

    async def __call__(self, message: Any, next: Next, /) -> Any:
        try:
            result = await next()
        except BaseException:
            await self._rollback(message)
            raise
        await self.unit_of_work.commit()
        return result

    async def _rollback(self, message: object) -> None:
        """Roll back, shielded, within the deadline; log what goes wrong, raise nothing."""
        deadline = trio.current_time() + self.rollback_deadline
        with trio.CancelScope(shield=True, deadline=deadline) as scope:
            try:
                await self.unit_of_work.rollback()
            except Exception:
                logger.exception(
                    "rollback for %s raised; the handling's own exception goes on",
                    type(message).__qualname__,
                )
        if scope.cancelled_caught:
            logger.warning(
                "rollback for %s overstayed its %s s deadline and was cancelled",
                type(message).__qualname__,
                self.rollback_deadline,
            )
