"""Leaving an ``async with`` that holds a nursery, the way users wrote it.

``ActorSystem`` and ``open_bus`` enter a nursery by hand. On the way out the
body's own exception must leave unchanged, a ``Cancelled`` from outside must
leave as a bare ``Cancelled``, and anything else the internal tasks raised
(a ``KeyboardInterrupt``, hypothesis' own control exceptions) must not be
lost. A ``KeyboardInterrupt`` or ``SystemExit`` from any depth of the tree
leaves bare, as asyncio's ``TaskGroup`` lets it, so that ``except
KeyboardInterrupt:`` sees it.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import NoReturn

import trio

#: What leaves bare from a nursery of ours, whatever else failed with it.
_INTERRUPTS = (KeyboardInterrupt, SystemExit)


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


def _first_interrupt(error: BaseException) -> BaseException | None:
    """The first ``KeyboardInterrupt`` or ``SystemExit`` in ``error``, nested groups included."""
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = _first_interrupt(inner)
            if found is not None:
                return found
        return None
    return error if isinstance(error, _INTERRUPTS) else None


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
            interrupt = _first_interrupt(rest)
            if interrupt is not None:
                return interrupt
            only = single_exception(rest)
            return rest if isinstance(only, Exception) else only
    if failure is not None:
        return failure
    if body is not None:
        return None
    if internal is not None:
        return _first_cancelled(internal)
    return None


def raise_as_it_was(error: BaseException) -> NoReturn:
    """Raise ``error`` from an ``__aexit__``, keeping the context it was raised with.

    A ``raise`` sets ``__context__`` to the exception being handled (the
    body's ``Cancelled``, say); an exception that comes from an internal task
    keeps the context it had there, and its traceback grows from where it was.
    """
    context = error.__context__
    try:
        raise error
    finally:
        error.__context__ = context
