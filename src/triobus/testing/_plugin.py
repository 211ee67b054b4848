"""The triobus pytest plugin (entry point ``triobus``), for trio tests (pytest-trio).

Fixtures:

- ``triobus_modules``: the modules of the bus; override it in your tests.
- ``triobus_bus_options``: extra ``open_bus`` arguments; override it too.
- ``triobus_bus``: a running bus (deterministic ids) from those two.
- ``triobus_faults``: a :class:`FaultInjector` seeded from the test's id
  (add rules to it in the test; with no rules it injects nothing).
- ``triobus_session``: a tracked session of ``triobus_bus`` with those faults.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from ..bus import MessageBus, Module
from ._faults import FaultInjector
from ._runner import open_test_bus
from ._session import TrackedSession, tracked


@pytest.fixture
def triobus_modules() -> Sequence[Module]:
    """The modules ``triobus_bus`` is opened with: override this fixture."""
    return ()


@pytest.fixture
def triobus_bus_options() -> dict[str, Any]:
    """Extra ``open_bus`` arguments for ``triobus_bus``: override this fixture."""
    return {}


@pytest.fixture
async def triobus_bus(
    triobus_modules: Sequence[Module], triobus_bus_options: dict[str, Any]
) -> AsyncIterator[MessageBus]:
    """A running bus of ``triobus_modules``, closed after the test."""
    async with open_test_bus(*triobus_modules, **triobus_bus_options) as bus:
        yield bus


@pytest.fixture
def triobus_faults(request: pytest.FixtureRequest) -> FaultInjector:
    """A fault injector whose coin is seeded by the test's id (reproducible)."""
    return FaultInjector(random.Random(request.node.nodeid))


@pytest.fixture
async def triobus_session(
    triobus_bus: MessageBus, triobus_faults: FaultInjector
) -> AsyncIterator[TrackedSession]:
    """A tracked session of ``triobus_bus`` with ``triobus_faults``."""
    async with tracked(triobus_bus, faults=triobus_faults) as session:
        yield session
