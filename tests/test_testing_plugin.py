"""The triobus pytest plugin: loaded by its entry point, fixtures for trio tests."""

from __future__ import annotations

import importlib.metadata
import random
from collections.abc import Sequence
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import triobus.testing._plugin
from triobus import Command, MessageBus, Module, Request, local_queue, route
from triobus.testing import FaultInjector, RecordKind, TrackedSession, tracked

pytest_plugins = ["pytester"]

MockClock = trio.testing.MockClock


@attrs.frozen
class Note(Command):
    text: str


@attrs.frozen
class CountNotes(Request[int]):
    pass


class Notebook:
    def __init__(self) -> None:
        self.notes: list[str] = []

    async def note(self, command: Note) -> None:
        self.notes.append(command.text)

    async def count(self, query: CountNotes) -> int:
        return len(self.notes)


# ---------------------------------------------------------------- the user's overrides


@pytest.fixture
def notebook() -> Notebook:
    return Notebook()


@pytest.fixture
def triobus_modules(notebook: Notebook) -> Sequence[Module]:
    return [
        Module("notes").bind_request(Note, notebook.note).bind_request(CountNotes, notebook.count)
    ]


@pytest.fixture
def triobus_bus_options() -> dict[str, Any]:
    return {"endpoints": [local_queue("notes")], "routing": [route(Note).to("notes")]}


# ---------------------------------------------------------------- registration


def test_the_plugin_is_registered_through_its_entry_point(request: pytest.FixtureRequest) -> None:
    manager = request.config.pluginmanager
    assert manager.has_plugin("triobus")
    assert manager.get_plugin("triobus") is triobus.testing._plugin
    [entry_point] = [
        ep for ep in importlib.metadata.entry_points(group="pytest11") if ep.name == "triobus"
    ]
    assert entry_point.value == "triobus.testing._plugin"


def test_trace_config_shows_the_plugin(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest("--trace-config", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*registered*triobus.testing._plugin*"])
    result.assert_outcomes(passed=1)


# ---------------------------------------------------------------- the fixtures, used directly


async def test_triobus_bus_runs_the_overridden_modules_and_options(
    triobus_bus: MessageBus, notebook: Notebook, autojump_clock: MockClock
) -> None:
    await triobus_bus.send(Note("hello"))
    await triobus_bus.wait_quiet()
    assert notebook.notes == ["hello"]
    assert await triobus_bus.invoke(CountNotes()) == 1
    assert "notes" in triobus_bus.endpoints  # from triobus_bus_options
    assert "request" in triobus_bus.topology()


async def test_triobus_session_records_what_the_test_does(
    triobus_bus: MessageBus, triobus_session: TrackedSession, autojump_clock: MockClock
) -> None:
    assert triobus_session.bus is triobus_bus
    await triobus_bus.send(Note("a"))
    await triobus_session.wait_quiet()
    assert await triobus_bus.invoke(CountNotes()) == 1
    [handled] = triobus_session.handled(Note)
    assert handled.endpoint is not None and handled.endpoint.endswith("/notes")
    assert len(triobus_session.invoked(CountNotes)) == 1


async def test_triobus_faults_rules_added_in_the_test_apply_to_the_session(
    triobus_bus: MessageBus,
    triobus_faults: FaultInjector,
    triobus_session: TrackedSession,
    notebook: Notebook,
    autojump_clock: MockClock,
) -> None:
    assert triobus_session.faults is triobus_faults
    triobus_faults.duplicate(Note, max_times=1)
    await triobus_bus.send(Note("twice"))
    await triobus_bus.send(Note("once"))
    await triobus_session.wait_quiet()
    assert notebook.notes == ["twice", "twice", "once"]
    assert [r.kind for r in triobus_session.faults_injected()] == [RecordKind.DUPLICATED]


async def test_triobus_session_is_the_only_session_of_triobus_bus(
    triobus_bus: MessageBus, triobus_session: TrackedSession, autojump_clock: MockClock
) -> None:
    with pytest.raises(RuntimeError, match="tracked by another session"):
        async with tracked(triobus_bus):
            pass  # pragma: no cover


def test_triobus_faults_starts_empty_with_a_coin_seeded_by_the_test_id(
    triobus_faults: FaultInjector, request: pytest.FixtureRequest
) -> None:
    assert triobus_faults.rules == []
    expected = random.Random(request.node.nodeid)
    assert isinstance(triobus_faults.source, random.Random)
    assert [triobus_faults.source.random() for _ in range(5)] == [
        expected.random() for _ in range(5)
    ]


# ---------------------------------------------------------------- in a fresh pytest run


INI = """
[pytest]
trio_mode = true
filterwarnings = error
"""

MESSAGES = """
import attrs
import trio

from triobus import Backoff, Command, Module, local_queue, route


@attrs.frozen
class Job(Command):
    name: str


class Worker:
    def __init__(self):
        self.done = []
        self.attempts = 0

    async def work(self, job):
        self.attempts += 1
        if job.name == "flaky" and self.attempts < 3:
            raise RuntimeError("not yet")
        if job.name == "hang":
            await trio.sleep_forever()
        self.done.append((job.name, trio.current_time()))
"""


def test_the_fixtures_work_in_a_fresh_pytest_run(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(jobs=MESSAGES)
    pytester.makepyfile(
        test_user="""
import pytest
import trio

from triobus import Backoff, local_queue, route
from triobus.testing import QuietTimeout, RecordKind
from jobs import Job, Module, Worker


@pytest.fixture
def worker():
    return Worker()


@pytest.fixture
def triobus_modules(worker):
    return [Module("jobs").bind_request(Job, worker.work)]


@pytest.fixture
def triobus_bus_options():
    backoff = Backoff(initial=1.0, factor=2.0, jitter=0.0)
    return {"endpoints": [local_queue("jobs", backoff=backoff)], "routing": [route(Job).to("jobs")]}


async def test_retries_with_backoff_on_the_mock_clock(
    triobus_bus, triobus_session, worker, autojump_clock
):
    start = trio.current_time()
    await triobus_bus.send(Job("flaky"))
    await triobus_session.wait_quiet()
    assert worker.done == [("flaky", start + 3.0)]
    assert [r.attempt for r in triobus_session.failed(Job)] == [1, 2]


async def test_faults_from_the_fixture(triobus_bus, triobus_faults, triobus_session, worker):
    triobus_faults.drop(Job)
    await triobus_bus.send(Job("lost"))
    await triobus_session.wait_quiet()
    assert worker.done == []
    assert [r.kind for r in triobus_session.faults_injected()] == [RecordKind.DROPPED]


async def test_a_test_that_fails_is_reported(triobus_bus, triobus_session, worker):
    await triobus_bus.send(Job("x"))
    await triobus_session.wait_quiet()
    assert worker.done == []
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*FAILED test_user.py::test_a_test_that_fails_is_reported*"])


def test_a_session_left_busy_fails_the_test_at_teardown(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(jobs=MESSAGES)
    pytester.makepyfile(
        test_busy="""
import pytest

from jobs import Job, Module, Worker


@pytest.fixture
def triobus_modules():
    return [Module("jobs").bind_request(Job, Worker().work)]


async def test_leaves_a_handler_hanging(triobus_bus, triobus_session, autojump_clock):
    await triobus_bus.send(Job("hang"))
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    # pytest-trio tears trio fixtures down inside the test's own run: the test fails.
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*FAILED test_busy.py::test_leaves_a_handler_hanging*QuietTimeout*"]
    )


def test_the_default_modules_make_an_empty_bus(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        test_empty="""
import pytest

from triobus import NoRouteError


async def test_nothing_is_bound(triobus_bus, triobus_session):
    with pytest.raises(NoRouteError):
        await triobus_bus.send("anything")
    assert triobus_session.records == []
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_without_the_plugin_the_fixtures_are_missing(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        test_missing="""
async def test_wants_a_bus(triobus_bus):
    pass
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:triobus")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'triobus_bus' not found*"])
