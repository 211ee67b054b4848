"""Endpoints and routes: where each message type is handled.

An endpoint is declared by a spec (``local_queue("uri", ...)``) and becomes
a supervised actor (or, with ``partition_by``, a small pool of them) when the
bus starts. ``route(T).to(uri)`` beats ``route_module(M).to(uri)`` beats the
default endpoint.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Hashable
from typing import Any, final

import attrs

from ..mailbox import DEFAULT_MAILBOX_CAPACITY, Overflow
from ..mailbox._mailbox import _check_capacity, _to_overflow
from ..supervision import Backoff
from ._module import Module

#: Unrouted commands and events go here (one message at a time, in order).
DEFAULT_ENDPOINT = "default"
#: Unrouted requests go here (up to 100 handled at once).
DEFAULT_REQUEST_ENDPOINT = "requests"


class Delivery(enum.StrEnum):
    """What an endpoint promises about a message it accepted."""

    #: Handled in the caller's ask (``invoke``): the caller sees the outcome.
    INLINE = "inline"
    #: Held in memory: at most once across a crash of the process.
    BUFFERED = "buffered"
    #: Stored before it is accepted: at least once, deduplicated by id.
    DURABLE = "durable"


def _non_negative_int(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{attribute.name} must be a whole number >= 0, got {value!r}")


def _positive_int(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{attribute.name} must be a whole number >= 1, got {value!r}")


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be a positive number of seconds, got {value!r}")


@final
@attrs.frozen
class RetryPolicy:
    """What an endpoint does when a handler fails on a sent or published message.

    It retries in place ``retries`` times (waiting per ``backoff`` when one
    is set), then sends the message to dead letters with the last exception.
    """

    retries: int = attrs.field(default=2, validator=_non_negative_int)
    backoff: Backoff | None = None


@final
@attrs.frozen
class Endpoint:
    """A declared endpoint: make one with :func:`local_queue`."""

    uri: str
    capacity: float = attrs.field(default=DEFAULT_MAILBOX_CAPACITY, validator=_check_capacity)
    max_concurrency: int = attrs.field(default=1, validator=_positive_int)
    overflow: Overflow = attrs.field(default=Overflow.BLOCK, converter=_to_overflow)
    retry: RetryPolicy = RetryPolicy()
    shutdown: float = attrs.field(default=5.0, validator=_positive)
    partition_by: Callable[[Any], Hashable] | None = None
    delivery: Delivery = Delivery.BUFFERED

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.uri, str) or not self.uri:
            raise ValueError(f"an endpoint uri is a non-empty string, got {self.uri!r}")
        if self.partition_by is not None and self.max_concurrency < 2:
            raise ValueError(
                f"endpoint {self.uri!r}: partition_by needs max_concurrency >= 2 "
                "(one partition is just an ordered queue)"
            )


def local_queue(
    uri: str,
    *,
    capacity: float = DEFAULT_MAILBOX_CAPACITY,
    max_concurrency: int = 1,
    overflow: Overflow | str = Overflow.BLOCK,
    retries: int = 2,
    backoff: Backoff | None = None,
    shutdown: float = 5.0,
    partition_by: Callable[[Any], Hashable] | None = None,
) -> Endpoint:
    """Declare an in-process queue endpoint (buffered delivery).

    Args:
        uri: the name routes refer to.
        capacity: messages that may wait (``math.inf`` for unbounded).
        max_concurrency: messages handled at once (1 keeps order).
        overflow: what a full queue does (see :class:`Overflow`).
        retries: retries in place after a handler failure, before dead letters.
        backoff: the wait between retries (none by default).
        shutdown: seconds to drain at shutdown before the rest is dead-lettered.
        partition_by: with ``max_concurrency > 1``, a key function: messages
            with one key are handled in order, different keys at once.
    """
    return Endpoint(
        uri=uri,
        capacity=capacity,
        max_concurrency=max_concurrency,
        overflow=_to_overflow(overflow),
        retry=RetryPolicy(retries=retries, backoff=backoff),
        shutdown=shutdown,
        partition_by=partition_by,
    )


@final
@attrs.frozen
class Route:
    """Messages of ``message_type`` (or of every type bound in ``module``) go to ``uri``."""

    uri: str
    message_type: type | str | None = None
    module: Module | None = None


@final
@attrs.frozen
class RouteBuilder:
    """Half a route: finish it with :meth:`to`."""

    message_type: type | str | None = None
    module: Module | None = None

    def to(self, uri: str) -> Route:
        """Send the matched messages to the endpoint ``uri``."""
        if not isinstance(uri, str) or not uri:
            raise ValueError(f"route to an endpoint uri (a non-empty string), got {uri!r}")
        return Route(uri=uri, message_type=self.message_type, module=self.module)


def route(message_type: type | str) -> RouteBuilder:
    """Route one message type (or name): ``route(OrderPlaced).to("events")``."""
    if not isinstance(message_type, type | str):
        raise TypeError(f"route() takes a message class or name, not {message_type!r}")
    return RouteBuilder(message_type=message_type)


def route_module(module: Module) -> RouteBuilder:
    """Route every type bound in ``module``: ``route_module(orders).to("orders")``."""
    if not isinstance(module, Module):
        raise TypeError(f"route_module() takes a Module, not {module!r}")
    return RouteBuilder(module=module)


def default_endpoints() -> dict[str, Endpoint]:
    return {
        DEFAULT_ENDPOINT: Endpoint(DEFAULT_ENDPOINT),
        DEFAULT_REQUEST_ENDPOINT: Endpoint(
            DEFAULT_REQUEST_ENDPOINT, max_concurrency=100, capacity=math.inf
        ),
    }
