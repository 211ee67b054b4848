"""Actors: behaviors with a mailbox, reached through an ``ActorRef``.

``Frame``, ``Finisher`` and ``current_frame`` are for behaviors that hand
their handler's coroutine to the actor loop (the bus's endpoints); they are
not re-exported from ``triobus``.
"""

from ._actor import Actor as Actor
from ._ask import DEFAULT_ASK_TIMEOUT as DEFAULT_ASK_TIMEOUT
from ._ask import Finisher as Finisher
from ._ask import Frame as Frame
from ._ask import current_frame as current_frame
from ._ref import ActorRef as ActorRef

__all__ = ["DEFAULT_ASK_TIMEOUT", "Actor", "ActorRef", "Finisher", "Frame", "current_frame"]
