"""Argument checks shared by the endpoint kinds: one message per rule."""

from __future__ import annotations


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
