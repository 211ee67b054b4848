"""Argument checks shared by the endpoint kinds: one message per rule."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._errors import PartitionKeyError


def positive_int(name: str, value: object) -> int:
    """``value`` when it is a whole number >= 1 (not a bool).

    Raises:
        ValueError: naming ``name`` and the value.
    """
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    return value


def positive_seconds(name: str, value: object) -> float:
    """``value`` as a float when it is a positive number of seconds (not a bool).

    Raises:
        ValueError: naming ``name`` and the value.
    """
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def endpoint_uri(uri: object) -> str:
    """``uri`` when it is a non-empty string (an endpoint's name).

    Raises:
        ValueError: anything else.
    """
    if not isinstance(uri, str) or not uri:
        raise ValueError(f"an endpoint uri is a non-empty string, got {uri!r}")
    return uri


def wire_partition_key(
    endpoint: str, partition_by: Callable[[Any], object] | None, message: object
) -> str | None:
    """The partition key of ``message`` as it is stored or sent (``None`` without
    ``partition_by``): a str or an int, compared across processes, as a str.

    Raises:
        PartitionKeyError: ``partition_by`` raised, or gave neither a str nor an int
            (naming ``endpoint``, e.g. ``"durable endpoint 'orders'"``).
    """
    if partition_by is None:
        return None
    try:
        key = partition_by(message)
    except Exception as exc:
        raise PartitionKeyError(
            f"{endpoint}: partition_by failed on {type(message).__qualname__} ({exc!r}); it "
            "must return a key for every message routed here"
        ) from exc
    if isinstance(key, bool) or not isinstance(key, str | int):
        raise PartitionKeyError(
            f"{endpoint}: partition_by gave {key!r} for {type(message).__qualname__}; the key "
            "is stored or sent and compared across processes, so it must be a str or an int"
        )
    return str(key)
