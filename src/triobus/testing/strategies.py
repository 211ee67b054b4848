"""Hypothesis strategies for message types.

``from_type(OrderPlaced)`` builds messages from their attrs fields, nested
messages, generics, optional fields and containers included. ``register``
overrides the strategy of one type everywhere it appears (a field of a
message, an item of a list, ...). ``message_sequences`` makes lists of
messages of several types.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import attrs
from hypothesis import strategies as st

__all__ = ["clear_overrides", "from_type", "message_sequences", "messages", "register"]

T = TypeVar("T")

_overrides: dict[Any, st.SearchStrategy[Any]] = {}
_MAX_COLLECTION = 5


def register(message_type: type[T] | Any, strategy: st.SearchStrategy[T]) -> None:
    """Use ``strategy`` for ``message_type`` wherever it appears.

    Raises:
        TypeError: ``strategy`` is not a hypothesis strategy.
    """
    if not isinstance(strategy, st.SearchStrategy):
        raise TypeError(f"register a hypothesis strategy for {message_type!r}, not {strategy!r}")
    _overrides[message_type] = strategy


def clear_overrides() -> None:
    """Forget every override made with :func:`register`."""
    _overrides.clear()


def from_type(message_type: type[T] | Any) -> st.SearchStrategy[T]:
    """A strategy for messages of ``message_type`` (an attrs class, usually).

    Raises:
        TypeError: a field's type cannot be derived (``register`` one for it).
    """
    return _resolve(message_type, {}, {})


def messages(*message_types: type | Any) -> st.SearchStrategy[Any]:
    """A strategy for a message of any of ``message_types``."""
    if not message_types:
        raise ValueError("messages() needs at least one message type")
    return st.one_of([from_type(t) for t in message_types])


def message_sequences(
    *message_types: type | Any, min_size: int = 0, max_size: int = 20
) -> st.SearchStrategy[list[Any]]:
    """Lists of messages of ``message_types``, in the order they would be sent."""
    return st.lists(messages(*message_types), min_size=min_size, max_size=max_size)


def _substitute(tp: Any, typevars: Mapping[Any, Any]) -> Any:
    if isinstance(tp, TypeVar):
        if tp in typevars:
            return typevars[tp]
        if tp.__bound__ is not None:
            return tp.__bound__
        if tp.__constraints__:
            return typing.Union[tp.__constraints__]  # noqa: UP007 - a runtime Union
        raise TypeError(f"type variable {tp} is not bound: use a parametrized type like Box[int]")
    return tp


Building = dict[Any, st.SearchStrategy[Any]]


def _resolve(tp: Any, typevars: Mapping[Any, Any], building: Building) -> st.SearchStrategy[Any]:
    tp = _substitute(tp, typevars)
    if tp in _overrides:
        return _overrides[tp]
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        return st.one_of([_resolve(a, typevars, building) for a in args])
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin is typing.Annotated:
        return _resolve(args[0], typevars, building)
    if origin is not None and attrs.has(origin):
        params = getattr(origin, "__parameters__", ())
        # Type arguments may themselves be type variables of an outer generic.
        bound = tuple(_substitute(arg, typevars) for arg in args)
        return _attrs_strategy(origin, dict(zip(params, bound, strict=False)), building)
    if origin is not None:
        return _container(origin, args, typevars, building, tp)
    if isinstance(tp, type) and attrs.has(tp):
        return _attrs_strategy(tp, typevars, building)
    return _checked_from_type(tp)


def _checked_from_type(tp: Any) -> st.SearchStrategy[Any]:
    """``st.from_type``, resolved now: an underivable type fails here, named."""
    try:
        strategy = st.from_type(tp)
        strategy.validate()
        if strategy.is_empty:
            raise TypeError(f"no value of {tp!r} can be built")
    except Exception as exc:
        raise TypeError(
            f"cannot derive a strategy for {tp!r}: register one with "
            "triobus.testing.strategies.register"
        ) from exc
    return strategy


def _container(
    origin: Any, args: tuple[Any, ...], typevars: Mapping[Any, Any], building: Building, tp: Any
) -> st.SearchStrategy[Any]:
    def inner(index: int) -> st.SearchStrategy[Any]:
        return _resolve(args[index], typevars, building) if args else st.integers()

    if origin in (list, Sequence, typing.Sequence):
        return st.lists(inner(0), max_size=_MAX_COLLECTION)
    if origin in (set, frozenset):
        items = st.frozensets if origin is frozenset else st.sets
        return items(inner(0), max_size=_MAX_COLLECTION)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(inner(0), max_size=_MAX_COLLECTION).map(tuple)
        return st.tuples(*[_resolve(a, typevars, building) for a in args])
    if origin in (dict, Mapping, typing.Mapping):
        return st.dictionaries(inner(0), inner(1), max_size=_MAX_COLLECTION)
    return _checked_from_type(tp)


def _attrs_strategy(
    cls: type, typevars: Mapping[Any, Any], building: Building
) -> st.SearchStrategy[Any]:
    if cls in _overrides:
        return _overrides[cls]
    key = (cls, tuple(sorted(typevars.items(), key=repr)))
    if key in building:
        # A recursive message: refer back to the strategy being built.
        return building[key]
    done: list[st.SearchStrategy[Any]] = []
    building[key] = st.deferred(lambda: done[0])
    try:
        hints = typing.get_type_hints(cls)
    except NameError as exc:
        raise TypeError(f"cannot read the field types of {cls.__qualname__}: {exc}") from exc
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in attrs.fields(cls):
        if not field.init:
            continue
        field_type = hints.get(field.name, field.type)
        if field_type is None:
            raise TypeError(f"{cls.__qualname__}.{field.name} has no type: annotate it or register")
        fields[field.alias or field.name] = _resolve(field_type, typevars, building)
    strategy = st.builds(cls, **fields)
    done.append(strategy)
    return strategy
