"""Accounting: how many messages are in flight, and waiting until none is."""

from __future__ import annotations

from typing import final

import trio


@final
class Accounting:
    """Counts messages accepted and not yet settled: queued, running, held or retrying.

    Each accepted message is settled exactly once; the bus is quiet when
    the count is zero.
    """

    __slots__ = ("_inflight", "_quiet")

    def __init__(self) -> None:
        self._inflight = 0
        self._quiet: trio.Event | None = None

    def accepted(self) -> None:
        """One more message is in flight."""
        self._inflight += 1

    def settled(self) -> None:
        """One message is done: handled, dead-lettered, kept, or dropped with its handler."""
        self._inflight -= 1
        if not self._inflight and self._quiet is not None:
            self._quiet.set()
            self._quiet = None

    @property
    def in_flight(self) -> int:
        """Messages accepted and not yet settled."""
        return self._inflight

    async def wait_quiet(self) -> None:
        """Return once no message is in flight (cascades included)."""
        while self._inflight > 0:
            if self._quiet is None:
                self._quiet = trio.Event()
            await self._quiet.wait()
