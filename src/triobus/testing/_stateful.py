"""Stateful testing against a live bus.

Hypothesis' ``RuleBasedStateMachine`` is synchronous. :class:`BusStateMachine`
runs one long-lived ``trio.run`` in a thread (on the real clock) holding a
bus and a tracked session; each rule runs trio code there through
``trio.from_thread`` and returns once the bus is quiet, so invariants, which
hypothesis checks after every step, see a settled system.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import trio
import trio.from_thread
import trio.lowlevel
from hypothesis.stateful import RuleBasedStateMachine

from ..bus import MessageBus, Module
from ._runner import open_test_bus
from ._session import TrackedSession, tracked

T = TypeVar("T")

#: Seconds a rule may take before the machine fails the test.
DEFAULT_STEP_TIMEOUT = 30.0


class BusStateMachine(RuleBasedStateMachine):
    """A state machine whose rules drive a live bus.

    Override :meth:`bus_modules` (and :meth:`bus_options`); in rules call
    ``self.run(async_fn, *args)``, which runs ``async_fn(*args)`` in the bus's
    trio thread, waits until the bus is quiet, and returns its result.
    ``self.bus`` and ``self.session`` are the bus and its tracked session.
    """

    step_timeout: float = DEFAULT_STEP_TIMEOUT

    def bus_modules(self) -> Sequence[Module]:
        """The modules the bus is opened with."""
        return ()

    def bus_options(self) -> dict[str, Any]:
        """Extra ``open_bus`` arguments (endpoints, routing, pipeline, ...)."""
        return {}

    def __init__(self) -> None:
        super().__init__()
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._failure: BaseException | None = None
        self.bus: MessageBus
        self.session: TrackedSession
        self._thread = threading.Thread(target=self._thread_main, daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise RuntimeError("the bus of the state machine failed to start") from self._failure

    def _thread_main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:
            self._failure = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        async with (
            open_test_bus(*self.bus_modules(), **self.bus_options()) as bus,
            tracked(bus, quiet_timeout=self.step_timeout) as session,
        ):
            self.bus, self.session = bus, session
            self._stop = trio.Event()
            self._token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await self._stop.wait()

    def run(self, async_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``async_fn(*args)`` in the bus's trio thread, then wait until quiet."""

        async def step() -> T:
            with trio.fail_after(self.step_timeout):
                result = await async_fn(*args)
            await self.session.wait_quiet()
            return result

        if self._token is None:
            raise RuntimeError("the bus of this state machine is not running")
        return trio.from_thread.run(step, trio_token=self._token)

    def teardown(self) -> None:
        if self._token is not None and self._stop is not None:
            stop = self._stop
            trio.from_thread.run_sync(stop.set, trio_token=self._token)
        self._thread.join(timeout=self.step_timeout)
        self._token = None
        if self._failure is not None:
            raise self._failure
