"""Durability: what durable and broker endpoints store and carry.

The codec writes an :class:`~triobus.Envelope` as bytes and reads it back,
by a registry of the message types allowed to travel (:class:`MessageTypes`),
with upcasters for old versions and :class:`Limits` on what it accepts.
Durable queues (:func:`durable_queue`) keep their backlog, inbox and dead
letters in SQLite or PostgreSQL; ``queue.dead_letters`` (:class:`DurableDeadLetters`) is
the dead-letter store of one durable queue.
"""

from .._errors import ENVELOPE_REASONS as ENVELOPE_REASONS
from ._codec import Codec as Codec
from ._codec import Limits as Limits
from ._codec import MessageTypes as MessageTypes
from ._codec import Upcaster as Upcaster
from ._dead_letters import DurableDeadLetters as DurableDeadLetters
from ._inbox import DurableInbox as DurableInbox
from ._inbox import durable_inbox as durable_inbox
from ._queue import DurableQueue as DurableQueue
from ._queue import durable_queue as durable_queue
from ._store import Counts as Counts
from ._unit import UnitOfWork as UnitOfWork
from ._unit import unit_of_work as unit_of_work

__all__ = [
    "ENVELOPE_REASONS",
    "Codec",
    "Counts",
    "DurableQueue",
    "Limits",
    "MessageTypes",
    "DurableDeadLetters",
    "DurableInbox",
    "durable_inbox",
    "UnitOfWork",
    "Upcaster",
    "durable_queue",
    "unit_of_work",
]
