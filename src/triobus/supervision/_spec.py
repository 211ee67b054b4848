"""Supervision strategies and restart backoff."""

from __future__ import annotations

import enum
import math
import random
from typing import final

import attrs

from .._choices import parse_choice


class Strategy(enum.StrEnum):
    """Which children a supervisor restarts when one fails (OTP strategies)."""

    #: Restart only the child that failed.
    ONE_FOR_ONE = "one_for_one"
    #: Stop the others in reverse order, then restart all in order.
    ONE_FOR_ALL = "one_for_all"
    #: Stop the children started after the failed one in reverse order, then
    #: restart the failed one and those after it in order.
    REST_FOR_ONE = "rest_for_one"


def to_strategy(value: Strategy | str) -> Strategy:
    """``Strategy(value)`` with an error that lists the choices."""
    return parse_choice(Strategy, value, "supervision strategy")


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"backoff {attribute.name} must be > 0, got {value!r}")


def _non_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value >= 0:
        raise ValueError(f"backoff {attribute.name} must be >= 0, got {value!r}")


@final
@attrs.frozen
class Backoff:
    """Exponential backoff between restarts, with jitter.

    The n-th restart in a row (n from 0) waits
    ``min(initial * factor**n, maximum)``, spread by ``± jitter`` of itself.
    The count goes back to 0 after ``reset_after`` seconds without a failure.
    The first restart waits too.
    """

    initial: float = attrs.field(default=0.1, validator=_positive)
    maximum: float = attrs.field(default=10.0, validator=_positive)
    factor: float = attrs.field(default=2.0, validator=_positive)
    jitter: float = attrs.field(default=0.1, validator=_non_negative)
    reset_after: float = attrs.field(default=30.0, validator=_non_negative)

    def __attrs_post_init__(self) -> None:
        if self.jitter >= 1:
            raise ValueError(f"backoff jitter is a fraction below 1, got {self.jitter!r}")
        if self.maximum < self.initial:
            raise ValueError(
                f"backoff maximum ({self.maximum}) is below its initial delay ({self.initial})"
            )

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The delay before restart number ``attempt`` (from 0) of a streak."""
        base = min(self.initial * self.factor ** min(attempt, 1_000), self.maximum)
        if math.isinf(base) or self.jitter == 0:
            return base
        return base * (1 + self.jitter * rng.uniform(-1.0, 1.0))


def check_intensity(max_restarts: int, within: float) -> None:
    if not isinstance(max_restarts, int) or isinstance(max_restarts, bool) or max_restarts < 0:
        raise ValueError(f"max_restarts must be a whole number >= 0, got {max_restarts!r}")
    if not within > 0:
        raise ValueError(f"within must be a positive number of seconds, got {within!r}")
