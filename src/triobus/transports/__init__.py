"""Transports: what the broker endpoints share to reach their clients.

Broker clients (RabbitMQ, Kafka, NATS) are asyncio libraries, and no
asyncio client runs under ``trio.run``. They run on one asyncio event loop
in one dedicated thread, reached from trio through an
:class:`AsyncioBridge`: :func:`shared_asyncio_bridge` gives every endpoint
of a trio run the same one; :func:`open_asyncio_bridge` opens one of its own.
"""

from ._bridge import AsyncioBridge as AsyncioBridge
from ._bridge import BridgeStatistics as BridgeStatistics
from ._bridge import open_asyncio_bridge as open_asyncio_bridge
from ._bridge import shared_asyncio_bridge as shared_asyncio_bridge

__all__ = [
    "AsyncioBridge",
    "BridgeStatistics",
    "open_asyncio_bridge",
    "shared_asyncio_bridge",
]
