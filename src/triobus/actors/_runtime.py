"""What every actor of one system shares: its name, dead letters and ask timer."""

from __future__ import annotations

import random
from typing import Protocol, final

from ..mailbox import DeadLetters
from ._ask import AskTimer


class Parent(Protocol):
    """The supervisor side of a child: told when the child ends by itself."""

    def child_exited(self, child: object, incarnation: int, error: BaseException | None) -> None:
        """``child`` ended by itself (``error`` is ``None`` for a normal exit)."""

    async def remove_child(self, child: object) -> None:
        """Stop ``child`` for good and forget it."""


@final
class Runtime:
    """State shared by every actor and supervisor of one :class:`ActorSystem`."""

    __slots__ = ("dead_letters", "name", "random", "timer")

    def __init__(self, name: str, dead_letters: DeadLetters, rng: random.Random) -> None:
        self.name = name
        self.dead_letters = dead_letters
        self.timer = AskTimer()
        #: The one source of randomness (backoff jitter, ids) of the system.
        self.random = rng
