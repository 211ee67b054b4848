"""Supervision strategies, restart backoff, and the specs of a supervisor's children."""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable, Iterable
from typing import final

import attrs

from .._choices import parse_choice
from .._errors import ActorNameTaken
from .._lifecycle import ChildKind, Restart, to_restart
from ..actors import Actor
from ..mailbox import MailboxSpec


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


#: The default shutdown deadline of an actor, in seconds.
DEFAULT_SHUTDOWN = 5.0


def check_name(name: object) -> str:
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"a child name is a non-empty string without '/', got {name!r}")
    return name


def _name(instance: object, attribute: object, value: str) -> None:
    check_name(value)


def _concurrency(instance: object, attribute: object, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"max_concurrency must be a whole number >= 1, got {value!r}")


def _shutdown(instance: object, attribute: object, value: float) -> None:
    if not value > 0:
        raise ValueError(
            f"shutdown must be a positive number of seconds (or math.inf), got {value!r}"
        )


def _mailbox(value: MailboxSpec | None) -> MailboxSpec:
    return MailboxSpec() if value is None else value


@final
@attrs.frozen
class ChildSpec:
    """An actor child of a supervisor, as OTP's child spec describes a worker.

    Pass specs as ``children=`` to ``spawn_supervisor``: the supervisor starts
    them in order before the spawn returns.
    """

    #: The child's name (its id), unique among its siblings.
    name: str = attrs.field(validator=_name)
    #: Makes a fresh :class:`Actor` for every incarnation (an Actor subclass works).
    factory: Callable[[], Actor] = attrs.field()
    #: When the supervisor restarts the child.
    restart: Restart = attrs.field(default=Restart.PERMANENT, converter=to_restart)
    #: Seconds the child gets to stop before it is cancelled.
    shutdown: float = attrs.field(default=DEFAULT_SHUTDOWN, validator=_shutdown)
    #: Its mailbox (the default capacity and ``block`` policy when ``None``).
    mailbox: MailboxSpec = attrs.field(default=None, converter=_mailbox)
    #: Messages handled at once (an elastic pool above 1).
    max_concurrency: int = attrs.field(default=1, validator=_concurrency)

    @property
    def kind(self) -> ChildKind:
        """Always :attr:`ChildKind.ACTOR`: a worker."""
        return ChildKind.ACTOR


def _children(
    value: Iterable[ChildSpec | SupervisorSpec],
) -> tuple[ChildSpec | SupervisorSpec, ...]:
    children = tuple(value)
    seen: set[str] = set()
    for child in children:
        if not isinstance(child, ChildSpec | SupervisorSpec):
            raise TypeError(
                f"children are ChildSpec or SupervisorSpec values, got {type(child).__qualname__}"
            )
        if child.name in seen:
            raise ActorNameTaken(f"two children are named {child.name!r}: names must be unique")
        seen.add(child.name)
    return children


def _max_restarts(instance: object, attribute: object, value: int) -> None:
    check_intensity(value, 1.0)


def _within(instance: object, attribute: object, value: float) -> None:
    check_intensity(0, value)


@final
@attrs.frozen
class SupervisorSpec:
    """A supervisor child of a supervisor, with its own children (OTP's supervisor child spec)."""

    #: The child's name (its id), unique among its siblings.
    name: str = attrs.field(validator=_name)
    #: Its children, started in order.
    children: tuple[ChildSpec | SupervisorSpec, ...] = attrs.field(default=(), converter=_children)
    #: Which children it restarts when one fails.
    strategy: Strategy = attrs.field(default=Strategy.ONE_FOR_ONE, converter=to_strategy)
    #: At most this many restarts ...
    max_restarts: int = attrs.field(default=1, validator=_max_restarts)
    #: ... within this many seconds, else it gives up.
    within: float = attrs.field(default=5.0, validator=_within)
    #: Optional delay between restarts.
    backoff: Backoff | None = None
    #: When its own supervisor restarts it.
    restart: Restart = attrs.field(default=Restart.PERMANENT, converter=to_restart)
    #: Seconds it gets to stop its subtree (unlimited by default, as OTP).
    shutdown: float = attrs.field(default=math.inf, validator=_shutdown)

    @property
    def kind(self) -> ChildKind:
        """Always :attr:`ChildKind.SUPERVISOR`."""
        return ChildKind.SUPERVISOR
