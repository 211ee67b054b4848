"""Actors: behaviors with a mailbox, reached through an ``ActorRef``.

``Frame``, ``Finisher`` and ``current_frame`` are for behaviors that hand
their handler's coroutine to the actor loop (the bus's endpoints);
``ActorCell``, ``ActorFactory``, ``Parent`` and ``Runtime`` are what the
supervision layer builds on. None of them is re-exported from ``triobus``.
"""

from ._actor import Actor as Actor
from ._ask import DEFAULT_ASK_TIMEOUT as DEFAULT_ASK_TIMEOUT
from ._ask import Finisher as Finisher
from ._ask import Frame as Frame
from ._ask import current_frame as current_frame
from ._cell import ActorCell as ActorCell
from ._cell import ActorFactory as ActorFactory
from ._ref import ActorRef as ActorRef
from ._runtime import Parent as Parent
from ._runtime import Runtime as Runtime

__all__ = [
    "DEFAULT_ASK_TIMEOUT",
    "Actor",
    "ActorCell",
    "ActorFactory",
    "ActorRef",
    "Finisher",
    "Frame",
    "Parent",
    "Runtime",
    "current_frame",
]
