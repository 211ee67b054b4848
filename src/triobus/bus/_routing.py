"""Routes: which endpoint handles each message type.

``route(T).to(uri)`` beats ``route_module(M).to(uri)`` beats the default
endpoint.
"""

from __future__ import annotations

import math
from typing import final

import attrs

from ._local import LocalQueue, local_queue
from ._module import Module

#: Unrouted commands and events go here (one message at a time, in order).
DEFAULT_ENDPOINT = "default"
#: Unrouted requests go here (up to 100 handled at once).
DEFAULT_REQUEST_ENDPOINT = "requests"


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


def default_endpoints() -> list[LocalQueue]:
    """The two endpoints every bus has unless they are redeclared."""
    return [
        local_queue(DEFAULT_ENDPOINT),
        local_queue(DEFAULT_REQUEST_ENDPOINT, max_concurrency=100, capacity=math.inf),
    ]
