"""Deterministic runs: a mock clock that jumps, and one seeded source of randomness.

Under hypothesis, trio's own scheduler is already deterministic (trio
registers its random with hypothesis). What is left to fix is time
(``MockClock(autojump_threshold=0)``: timeouts, retries and backoff take no
wall time) and triobus's own randomness (backoff jitter, message ids), which
goes through :func:`shared_random`, registered with hypothesis so that a seed
replays a run.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import trio
import trio.testing

from ..bus import BusRunner, Endpoint, Module, Route, open_bus
from ..supervision import ActorSystem

T = TypeVar("T")

_SHARED = random.Random(0)
_registered = False


def shared_random() -> random.Random:
    """The one ``random.Random`` of deterministic runs, registered with hypothesis.

    Inside a hypothesis test, hypothesis seeds it for every example, so a
    failing example replays from hypothesis' seed alone. Outside hypothesis
    it is seeded with 0 on first use.
    """
    global _registered
    if not _registered:
        try:
            from hypothesis import register_random
        except ImportError:  # pragma: no cover - hypothesis is the testing extra
            pass
        else:
            register_random(_SHARED)
        _registered = True
    return _SHARED


def seeded_ids(rng: random.Random | None = None) -> Callable[[], str]:
    """Message ids drawn from ``rng`` (default :func:`shared_random`): same seed, same ids."""
    source = rng or shared_random()
    prefix = f"{source.getrandbits(32):08x}"
    counter = itertools.count(1)
    return lambda: f"{prefix}-{next(counter)}"


def run(async_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``trio.run`` on a ``MockClock(autojump_threshold=0)``: sleeps take no wall time.

    Only in-memory endpoints belong in such a run: the clock jumps whenever
    every task waits, which would fire timeouts while real I/O is pending.
    """
    clock = trio.testing.MockClock(autojump_threshold=0)
    return trio.run(async_fn, *args, clock=clock)


def open_test_bus(
    *modules: Module,
    endpoints: Iterable[Endpoint] = (),
    routing: Iterable[Route] = (),
    system: ActorSystem | None = None,
    **options: Any,
) -> BusRunner:
    """:func:`open_bus` with deterministic ids and randomness (see :func:`shared_random`)."""
    rng = shared_random()
    options.setdefault("rng", rng)
    options.setdefault("id_factory", seeded_ids(rng))
    return open_bus(*modules, endpoints=endpoints, routing=routing, system=system, **options)
