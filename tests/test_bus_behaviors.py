"""The shipped behaviors under cancellation: TransactionalBehavior's rollback."""

from __future__ import annotations

import logging
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from triobus import Command, Module, TransactionalBehavior, open_bus
from triobus.bus._behaviors import ROLLBACK_DEADLINE

MockClock = trio.testing.MockClock


@attrs.frozen
class Do(Command):
    n: int


class Failure(Exception):
    pass


@attrs.define
class SlowRollback:
    """A unit of work whose rollback takes ``seconds`` (checkpoints included)."""

    log: list[str]
    seconds: float = 1.0

    async def commit(self) -> None:
        self.log.append("commit")

    async def rollback(self) -> None:
        self.log.append("rollback started")
        await trio.sleep(self.seconds)
        self.log.append("rollback done")


async def forever() -> Any:
    await trio.sleep_forever()


async def test_a_rollback_completes_when_its_handling_is_cancelled(
    autojump_clock: MockClock,
) -> None:
    log: list[str] = []
    behavior = TransactionalBehavior(SlowRollback(log))
    with trio.move_on_after(1) as scope:
        await behavior(Do(1), forever)
    assert scope.cancelled_caught  # the cancellation went on after the rollback
    assert log == ["rollback started", "rollback done"]


async def test_a_rollback_completes_when_the_bus_is_cancelled_mid_handling(
    autojump_clock: MockClock,
) -> None:
    log: list[str] = []
    started = trio.Event()

    async def handle(command: Do) -> None:
        started.set()
        await trio.sleep_forever()

    module = Module("m").bind_request(
        Do, handle, behaviors=[TransactionalBehavior.using(lambda: SlowRollback(log))]
    )
    with trio.CancelScope() as scope:
        async with open_bus(module) as bus:
            await bus.send(Do(1))
            await started.wait()
            scope.cancel()  # a firm stop
            await trio.sleep_forever()
    assert log == ["rollback started", "rollback done"]


async def test_a_rollback_that_overstays_its_deadline_is_cut_off_and_logged(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[str] = []
    behavior = TransactionalBehavior(SlowRollback(log, seconds=60), rollback_deadline=2)

    async def fail() -> Any:
        raise Failure("handler failed")

    start = trio.current_time()
    with pytest.raises(Failure, match="handler failed"):
        await behavior(Do(1), fail)
    assert trio.current_time() - start == 2
    assert log == ["rollback started"]
    [record] = [r for r in caplog.records if r.name == "triobus.bus"]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == "rollback for Do overstayed its 2 s deadline and was cancelled"


async def test_a_rollback_that_raises_is_logged_and_the_handler_error_goes_on(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    class BrokenRollback(SlowRollback):
        async def rollback(self) -> None:
            raise OSError("connection lost")

    async def fail() -> Any:
        raise Failure("handler failed")

    with pytest.raises(Failure, match="handler failed"):
        await TransactionalBehavior(BrokenRollback([]))(Do(1), fail)
    [record] = [r for r in caplog.records if r.name == "triobus.bus"]
    assert record.levelno == logging.ERROR
    assert "rollback for Do raised" in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], OSError)


def test_the_rollback_deadline_defaults_to_five_seconds_and_is_checked() -> None:
    assert ROLLBACK_DEADLINE == 5.0
    assert TransactionalBehavior(SlowRollback([])).rollback_deadline == 5.0
    for bad in (0, -1, float("inf"), True, "5"):
        with pytest.raises(ValueError, match="rollback_deadline must be a positive, finite"):
            TransactionalBehavior.using(lambda: SlowRollback([]), rollback_deadline=bad)
