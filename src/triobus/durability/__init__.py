"""Durability: what durable and broker endpoints store and carry.

The codec writes an :class:`~triobus.Envelope` as bytes and reads it back,
by a registry of the message types allowed to travel (:class:`MessageTypes`),
with upcasters for old versions and :class:`Limits` on what it accepts.
"""

from .._errors import ENVELOPE_REASONS as ENVELOPE_REASONS
from ._codec import Codec as Codec
from ._codec import Limits as Limits
from ._codec import MessageTypes as MessageTypes
from ._codec import Upcaster as Upcaster

__all__ = ["ENVELOPE_REASONS", "Codec", "Limits", "MessageTypes", "Upcaster"]
