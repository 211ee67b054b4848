"""Turning user input into enum members, with errors that list the choices."""

from __future__ import annotations

import enum
from typing import TypeVar

E = TypeVar("E", bound=enum.Enum)


def parse_choice(kind: type[E], value: object, what: str) -> E:
    """``kind(value)``, or a ``ValueError`` naming ``what`` and every choice."""
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(repr(member.value) for member in kind)
        raise ValueError(f"unknown {what} {value!r}: use one of {choices}") from None
