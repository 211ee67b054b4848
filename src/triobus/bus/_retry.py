"""The retry policy of an endpoint: what happens when a handler fails."""

from __future__ import annotations

from typing import final

import attrs

from ..supervision import Backoff


def _non_negative_int(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{attribute.name} must be a whole number >= 0, got {value!r}")


@final
@attrs.frozen
class RetryPolicy:
    """What an endpoint does when a handler fails on a sent or published message.

    It retries in place ``retries`` times (waiting per ``backoff`` when one
    is set), then sends the message to dead letters with the last exception.
    """

    retries: int = attrs.field(default=2, validator=_non_negative_int)
    backoff: Backoff | None = None
