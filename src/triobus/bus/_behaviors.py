"""Shipped pipeline behaviors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, final

from ._handlers import Next
from ._messages import short_repr


class UnitOfWork(Protocol):
    """A transaction: committed when handling succeeded, rolled back when it failed."""

    async def commit(self) -> None: ...

    async def rollback(self) -> None: ...


@final
class TransactionalBehavior:
    """Runs the rest of the pipeline in a unit of work.

    ``TransactionalBehavior.using(factory)`` is the behavior to bind: each
    handling gets a fresh unit of work from ``factory``; it is committed when
    the handler returns and rolled back (the exception goes on) when it
    raises. Messages the handler sent are released only after the commit,
    since the bus holds them until the whole pipeline succeeded.
    """

    def __init__(self, unit_of_work: UnitOfWork) -> None:
        self.unit_of_work = unit_of_work

    @classmethod
    def using(cls, factory: Callable[[], UnitOfWork]) -> Callable[[], TransactionalBehavior]:
        """A behavior factory: one fresh unit of work per handling."""

        def make() -> TransactionalBehavior:
            return cls(factory())

        name = getattr(factory, "__qualname__", None) or short_repr(factory)
        make.__qualname__ = f"TransactionalBehavior.using({name})"
        return make

    async def __call__(self, message: Any, next: Next, /) -> Any:
        try:
            result = await next()
        except BaseException:
            await self.unit_of_work.rollback()
            raise
        await self.unit_of_work.commit()
        return result
