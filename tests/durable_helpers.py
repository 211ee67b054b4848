"""Helpers for the durable tests: the envelope a sender's bus would write."""

from __future__ import annotations

import time

from triobus import Envelope


def root_envelope(message: object, message_id: str, name: str, version: int = 1) -> Envelope:
    """The envelope of ``message`` sent as the root of its chain (no cause, no headers), now."""
    return Envelope(
        message_id=message_id,
        message_name=name,
        message_version=version,
        correlation_id=message_id,
        causation_id=None,
        headers={},
        reply_to=None,
        created_at=time.time(),
        message=message,
    )
