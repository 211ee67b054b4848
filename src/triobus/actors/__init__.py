"""Actors: behaviors with a mailbox, reached through an ``ActorRef``."""

from ._actor import Actor as Actor
from ._ask import DEFAULT_ASK_TIMEOUT as DEFAULT_ASK_TIMEOUT
from ._ref import ActorRef as ActorRef

__all__ = ["DEFAULT_ASK_TIMEOUT", "Actor", "ActorRef"]
