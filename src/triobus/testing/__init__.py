"""triobus.testing: property-test message flows with hypothesis.

- :mod:`triobus.testing.strategies`: strategies for message types.
- :func:`run` and :func:`open_test_bus`: deterministic runs on trio's mock
  clock, with one seeded source of randomness.
- :func:`tracked`: record everything a bus does and wait until it is quiet.
- :class:`FaultInjector`: drop, duplicate, delay, reorder and crash,
  driven by hypothesis data so failures shrink.
- :class:`BusStateMachine`: rule-based stateful tests against a live bus.
- a pytest plugin (fixtures ``triobus_bus``, ``triobus_session``,
  ``triobus_faults``), loaded by its entry point.

Needs the ``testing`` extra (hypothesis).
"""

from . import strategies as strategies
from ._faults import Fault as Fault
from ._faults import FaultInjector as FaultInjector
from ._faults import FaultRule as FaultRule
from ._faults import InjectedFault as InjectedFault
from ._records import QuietTimeout as QuietTimeout
from ._records import Record as Record
from ._records import RecordKind as RecordKind
from ._runner import open_test_bus as open_test_bus
from ._runner import run as run
from ._runner import seeded_ids as seeded_ids
from ._runner import shared_random as shared_random
from ._session import DEFAULT_QUIET_TIMEOUT as DEFAULT_QUIET_TIMEOUT
from ._session import TrackedSession as TrackedSession
from ._session import tracked as tracked
from ._stateful import BusStateMachine as BusStateMachine

__all__ = [
    "DEFAULT_QUIET_TIMEOUT",
    "BusStateMachine",
    "Fault",
    "FaultInjector",
    "FaultRule",
    "InjectedFault",
    "QuietTimeout",
    "Record",
    "RecordKind",
    "TrackedSession",
    "open_test_bus",
    "run",
    "seeded_ids",
    "shared_random",
    "strategies",
    "tracked",
]


def _rewrite_module_names() -> None:
    for name in __all__:
        obj = globals()[name]
        if isinstance(obj, type) and obj.__module__.startswith("triobus.testing."):
            obj.__module__ = "triobus.testing"


_rewrite_module_names()
