"""Leaving an ``async with`` that holds a nursery, the way users wrote it.

``ActorSystem`` and ``open_bus`` enter a nursery by hand. On the way out the
body's own exception must leave unchanged, a ``Cancelled`` from outside must
leave as a bare ``Cancelled``, and anything else the internal tasks raised
(a ``KeyboardInterrupt``, hypothesis' own control exceptions) must not be
lost.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

import trio


async def exit_nursery(manager: AbstractAsyncContextManager[trio.Nursery]) -> BaseException | None:
    """Exit a nursery (its scope already cancelled); return what it raised, if anything."""
    try:
        await manager.__aexit__(None, None, None)
    except BaseException as exc:
        return exc
    return None


def single_exception(error: BaseException) -> BaseException:
    """Unwrap groups of exactly one exception (trio's strict groups), recursively."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def _without_cancelled(error: BaseException) -> BaseException | None:
    if isinstance(error, BaseExceptionGroup):
        return error.split(trio.Cancelled)[1]
    return None if isinstance(error, trio.Cancelled) else error


def _first_cancelled(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def what_leaves(
    body: BaseException | None,
    internal: BaseException | None,
    failure: BaseException | None,
) -> BaseException | None:
    """The exception to raise from ``__aexit__`` (``None``: let ``body`` go on as it is).

    Args:
        body: the exception the body raised, if any.
        internal: what the internal nursery raised, if anything.
        failure: the library's own reason to fail (``SupervisorGaveUp``), if any.
    """
    if internal is not None:
        rest = _without_cancelled(internal)
        if rest is not None:
            if isinstance(rest, BaseExceptionGroup) and len(rest.exceptions) == 1:
                only: BaseException = rest.exceptions[0]
                if not isinstance(only, Exception | BaseExceptionGroup):
                    return only
            return rest
    if failure is not None:
        return failure
    if body is not None:
        return None
    if internal is not None:
        return _first_cancelled(internal)
    return None
