"""The wire envelope: what a codec writes and a transport carries.

An :class:`Envelope` is a frozen value: the message and its context (ids,
name, version, headers, reply-to, creation time), nothing of the runtime.
What one delivery of it needs while it is handled (its plan, attempt,
progress, what its handler sent) lives apart, in a
:class:`~triobus.bus._seam.Delivery`. Ids are made from a per-process random
prefix and a counter (or the bus's ``id_factory``).
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable, Mapping
from typing import Any, final

import attrs


def default_id_factory() -> Callable[[], str]:
    """Ids unique across processes and restarts: 96 random bits, then a counter."""
    prefix = secrets.token_hex(12)
    counter = itertools.count(1)
    return lambda: f"{prefix}-{next(counter):x}"


@final
@attrs.frozen
class MessageContext:
    """What is known about the message being handled (see :func:`current_context`)."""

    #: This message's id.
    message_id: str
    #: The id shared by every message of one chain (the first one's id).
    correlation_id: str
    #: The id of the message whose handler sent this one (``None`` for a root).
    causation_id: str | None
    #: The message's name on the bus.
    message_name: str
    #: Headers, kept along the chain.
    headers: Mapping[str, str] = attrs.field(factory=dict)
    #: Where a reply should go, when the sender said.
    reply_to: str | None = None


@final
@attrs.frozen
class Envelope:
    """One message with its context, as it travels between processes.

    Frozen and free of runtime state: a codec writes exactly these fields,
    and a decoded envelope becomes a delivery again on the receiving side.
    """

    #: Unique per message (a published event is one message with one id).
    message_id: str
    #: The message's name on the bus (see :func:`default_message_name`).
    message_name: str
    #: The message type's version (``message_version``).
    message_version: int
    #: The id shared by every message of one chain.
    correlation_id: str
    #: The id of the message whose handler sent this one (``None`` for a root).
    causation_id: str | None
    #: Headers, kept along the chain.
    headers: Mapping[str, str]
    #: Where a reply should go, when the sender said.
    reply_to: str | None
    #: When the message was made (seconds since the epoch, wall clock).
    created_at: float
    #: The message itself.
    message: Any

    def context(self) -> MessageContext:
        """The context of this message, as handlers see it."""
        return MessageContext(
            message_id=self.message_id,
            correlation_id=self.correlation_id,
            causation_id=self.causation_id,
            message_name=self.message_name,
            headers=dict(self.headers),
            reply_to=self.reply_to,
        )
