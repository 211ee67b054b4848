"""The asyncio bridge: results, errors and cancellations cross intact, and crossings are grouped.

Every wait on the loop thread here is on an event (an asyncio event set on
the loop, a threading event the loop thread sets), never on time.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import triobus
from triobus import BridgeClosed, WrongThread
from triobus.transports import (
    AsyncioBridge,
    BridgeStatistics,
    open_asyncio_bridge,
    shared_asyncio_bridge,
)

THREAD_NAME = "triobus-asyncio"


def bridge_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == THREAD_NAME]


async def add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


async def forever() -> None:
    await asyncio.Event().wait()


async def echo_after(value: int, yields: int) -> int:
    """``value``, after ``yields`` turns of the loop."""
    for _ in range(yields):
        await asyncio.sleep(0)
    return value


class LoopHold:
    """Blocks the loop thread inside a call until released (to queue calls behind it)."""

    def __init__(self) -> None:
        self.held = threading.Event()
        self.release = threading.Event()

    async def hold(self) -> None:
        self.held.set()
        self.release.wait()  # blocks the whole loop thread on purpose


async def held_loop(bridge: AsyncioBridge, nursery: trio.Nursery) -> LoopHold:
    """Start a call that blocks ``bridge``'s loop thread; return once it blocks it."""
    hold = LoopHold()
    nursery.start_soon(bridge.run, hold.hold)
    await trio.to_thread.run_sync(hold.held.wait)
    return hold


@pytest.fixture
async def bridge() -> AsyncIterator[AsyncioBridge]:
    async with open_asyncio_bridge() as bridge:
        yield bridge


# ---------------------------------------------------------------- results


async def test_a_call_returns_its_result_in_trio(bridge: AsyncioBridge) -> None:
    assert await bridge.run(add, 2, 3) == 5


async def test_a_call_runs_as_a_task_on_the_bridges_loop_in_its_own_thread(
    bridge: AsyncioBridge,
) -> None:
    async def where() -> tuple[asyncio.AbstractEventLoop, threading.Thread, bool]:
        return asyncio.get_running_loop(), threading.current_thread(), bool(asyncio.current_task())

    loop, thread, in_task = await bridge.run(where)
    assert loop is bridge.loop
    assert thread is not threading.current_thread()
    assert thread.name == THREAD_NAME and thread.daemon
    assert in_task


async def test_an_exception_crosses_as_the_same_object_with_its_cause_and_traceback(
    bridge: AsyncioBridge,
) -> None:
    raised: list[BaseException] = []

    async def fail_far_away() -> None:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            error = ValueError("outer", 42)
            raised.append(error)
            raise error from inner

    with pytest.raises(ValueError) as info:
        await bridge.run(fail_far_away)
    assert info.value is raised[0]
    assert info.value.args == ("outer", 42)
    assert isinstance(info.value.__cause__, KeyError)
    assert info.value.__cause__.args == ("inner",)
    frames = [entry.name for entry in info.traceback]
    assert "fail_far_away" in frames


async def test_a_function_that_gives_no_coroutine_fails_its_caller_only(
    bridge: AsyncioBridge,
) -> None:
    def not_async() -> int:
        return 1

    with pytest.raises(TypeError):
        await bridge.run(not_async)  # type: ignore[arg-type]
    assert await bridge.run(add, 1, 1) == 2


# ---------------------------------------------------------------- cancellation


async def test_cancelling_the_caller_cancels_the_far_side_whose_finally_runs_before_trio_resumes(
    bridge: AsyncioBridge,
) -> None:
    record: list[str] = []
    started = asyncio.Event()

    async def far_side() -> None:
        started.set()
        try:
            await forever()
        except asyncio.CancelledError:
            record.append("far side cancelled")
            raise
        finally:
            record.append("far side finally")

    async def cancel_once_started(scope: trio.CancelScope) -> None:
        await bridge.run(started.wait)
        scope.cancel()

    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_once_started, scope)
            await bridge.run(far_side)
    record.append("trio caller resumed")
    assert scope.cancelled_caught
    assert record == ["far side cancelled", "far side finally", "trio caller resumed"]
    assert bridge.statistics().in_flight == 0


async def test_a_far_side_that_returns_despite_the_cancel_gives_its_value_then_the_cancel_arrives(
    bridge: AsyncioBridge,
) -> None:
    got: list[str] = []
    started = asyncio.Event()

    async def stubborn() -> str:
        started.set()
        try:
            await forever()
        except asyncio.CancelledError:
            return "finished anyway"
        return "not cancelled"

    async def cancel_once_started(scope: trio.CancelScope) -> None:
        await bridge.run(started.wait)
        scope.cancel()

    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_once_started, scope)
            got.append(await bridge.run(stubborn))
            await trio.lowlevel.checkpoint()
            got.append("after the next checkpoint")
    assert scope.cancelled_caught
    assert got == ["finished anyway"]


async def test_a_call_cancelled_before_the_loop_started_it_never_runs(
    bridge: AsyncioBridge,
) -> None:
    ran: list[str] = []

    async def must_not_run() -> None:
        ran.append("ran")

    async def caller(scope: trio.CancelScope) -> None:
        with scope:
            await bridge.run(must_not_run)
        ran.append("caller cancelled" if scope.cancelled_caught else "caller returned")

    async with trio.open_nursery() as nursery:
        hold = await held_loop(bridge, nursery)
        scope = trio.CancelScope()
        nursery.start_soon(caller, scope)
        await trio.testing.wait_all_tasks_blocked()
        scope.cancel()  # the call and its cancel are both queued behind the held loop
        hold.release.set()
    assert ran == ["caller cancelled"]


async def test_an_already_cancelled_caller_does_not_cross(bridge: AsyncioBridge) -> None:
    with trio.CancelScope() as scope:
        scope.cancel()
        await bridge.run(add, 1, 2)
    assert scope.cancelled_caught
    assert bridge.statistics().calls == 0


# ---------------------------------------------------------------- grouping


async def test_a_thousand_calls_made_in_one_turn_cross_once_each_way(
    bridge: AsyncioBridge,
) -> None:
    results: dict[int, int] = {}

    async def caller(i: int) -> None:
        results[i] = await bridge.run(add, i, 1)

    async with trio.open_nursery() as nursery:
        for i in range(1000):
            nursery.start_soon(caller, i)
    assert results == {i: i + 1 for i in range(1000)}
    stats = bridge.statistics()
    assert stats.calls == 1000 and stats.in_flight == 0
    assert (stats.crossings_to_loop, stats.crossings_to_trio) == (1, 1)


async def test_tasks_calling_in_step_cross_once_each_way_per_round(bridge: AsyncioBridge) -> None:
    async def worker(w: int) -> None:
        for i in range(20):
            assert await bridge.run(add, w, i) == w + i

    async with trio.open_nursery() as nursery:
        for w in range(64):
            nursery.start_soon(worker, w)
    stats = bridge.statistics()
    assert stats.calls == 64 * 20
    assert (stats.crossings_to_loop, stats.crossings_to_trio) == (20, 20)


async def test_calls_queued_while_the_loop_is_busy_start_in_one_drain(
    bridge: AsyncioBridge,
) -> None:
    async def caller(i: int) -> None:
        assert await bridge.run(add, i, 1) == i + 1

    async with trio.open_nursery() as nursery:
        hold = await held_loop(bridge, nursery)
        before = bridge.statistics()
        for i in range(100):
            nursery.start_soon(caller, i)
            await trio.lowlevel.checkpoint()  # calls made over many turns of trio
        await trio.testing.wait_all_tasks_blocked()
        hold.release.set()
    after = bridge.statistics()
    assert after.calls - before.calls == 100
    assert after.crossings_to_loop - before.crossings_to_loop == 1


async def test_a_lone_call_crosses_once_each_way(bridge: AsyncioBridge) -> None:
    await bridge.run(add, 1, 2)
    stats = bridge.statistics()
    assert (stats.crossings_to_loop, stats.crossings_to_trio) == (1, 1)


@given(yields=st.lists(st.integers(0, 6), min_size=1, max_size=40))
@settings(max_examples=25, deadline=None)
def test_each_caller_gets_its_own_result_whatever_order_the_far_side_ends_in(
    yields: list[int],
) -> None:
    async def main() -> dict[int, int]:
        results: dict[int, int] = {}

        async def caller(bridge: AsyncioBridge, i: int, turns: int) -> None:
            results[i] = await bridge.run(echo_after, i, turns)

        async with open_asyncio_bridge() as bridge, trio.open_nursery() as nursery:
            for i, turns in enumerate(yields):
                nursery.start_soon(caller, bridge, i, turns)
        return results

    assert trio.run(main) == {i: i for i in range(len(yields))}


# ---------------------------------------------------------------- life cycle


async def test_stop_cancels_outstanding_calls_and_their_callers_get_bridge_closed() -> None:
    bridge = AsyncioBridge()
    await bridge.start()
    cancelled: list[str] = []
    errors: list[BridgeClosed] = []
    running = 0
    all_running = asyncio.Event()

    async def far_side() -> None:
        nonlocal running
        running += 1
        if running == 3:
            all_running.set()
        try:
            await forever()
        except asyncio.CancelledError:
            cancelled.append("cancelled")
            raise

    async def caller() -> None:
        with pytest.raises(BridgeClosed) as info:
            await bridge.run(far_side)
        errors.append(info.value)

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(caller)
        await bridge.run(all_running.wait)
        await bridge.stop()
    assert cancelled == ["cancelled"] * 3
    assert len(errors) == 3
    assert "stopped" in str(errors[0]) and "open a new bridge" in str(errors[0])
    assert isinstance(errors[0].__cause__, asyncio.CancelledError)
    assert not bridge_threads() or all(not t.is_alive() for t in bridge_threads())


async def test_stop_runs_the_finally_of_an_async_generator_left_open_on_the_loop() -> None:
    record: list[str] = []

    async def numbers() -> AsyncIterator[int]:
        try:
            yield 1
            yield 2
        finally:
            record.append("generator closed")

    async def take_one() -> int:
        generator = numbers()
        keep.append(generator)
        return await generator.__anext__()

    keep: list[Any] = []
    async with open_asyncio_bridge() as bridge:
        loop = bridge.loop
        assert await bridge.run(take_one) == 1
    assert record == ["generator closed"]
    assert loop.is_closed()


async def test_calls_after_stop_and_before_start_raise_bridge_closed_saying_what_to_do() -> None:
    bridge = AsyncioBridge()
    with pytest.raises(BridgeClosed, match="not started"):
        await bridge.run(add, 1, 2)
    with pytest.raises(BridgeClosed, match="not started"):
        _ = bridge.loop
    await bridge.stop()  # before start: nothing to do
    await bridge.start()
    assert bridge.running
    await bridge.stop()
    await bridge.stop()  # a second stop does nothing
    assert not bridge.running
    with pytest.raises(BridgeClosed, match="open a new bridge"):
        await bridge.run(add, 1, 2)
    with pytest.raises(BridgeClosed):
        _ = bridge.loop
    with pytest.raises(RuntimeError, match="starts once"):
        await bridge.start()


async def test_a_crash_of_the_loop_thread_fails_every_waiting_caller() -> None:
    started = asyncio.Event()
    errors: list[BaseException] = []

    async def waiter(bridge: AsyncioBridge) -> None:
        with pytest.raises(BridgeClosed) as info:
            await bridge.run(forever)
        errors.append(info.value)

    async def set_started() -> None:
        started.set()

    async def exit_loop_thread() -> None:
        await started.wait()
        raise SystemExit(3)

    async with open_asyncio_bridge() as bridge:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter, bridge)
            await trio.testing.wait_all_tasks_blocked()
            await bridge.run(set_started)
            with pytest.raises(SystemExit) as exited:
                await bridge.run(exit_loop_thread)
        assert len(errors) == 1
        assert errors[0].__cause__ is exited.value
        assert "loop thread stopped on SystemExit(3)" in str(errors[0])
        assert not bridge.running
        with pytest.raises(BridgeClosed) as info:
            await bridge.run(add, 1, 2)
        assert info.value.__cause__ is exited.value


async def test_a_trio_run_that_ends_without_stop_stops_the_loop_and_its_thread() -> None:
    Ended = tuple[AsyncioBridge, asyncio.AbstractEventLoop, threading.Thread]

    def run_without_stop() -> Ended:
        async def main() -> Ended:
            bridge = AsyncioBridge()
            await bridge.start()
            thread = await bridge.run(current_thread)
            return bridge, bridge.loop, thread

        return trio.run(main)

    async def current_thread() -> threading.Thread:
        return threading.current_thread()

    bridge, loop, thread = await trio.to_thread.run_sync(run_without_stop)
    # A bounded join as a safety net, not a timing assumption: the thread ends at once.
    await trio.to_thread.run_sync(thread.join, 30)
    assert not thread.is_alive()
    assert not bridge.running
    assert loop.is_closed()


async def test_a_call_from_another_trio_run_raises_wrong_thread(bridge: AsyncioBridge) -> None:
    async def call_from_elsewhere() -> int:
        return await bridge.run(add, 1, 2)

    with pytest.raises(WrongThread, match="another trio run"):
        await trio.to_thread.run_sync(trio.run, call_from_elsewhere)


# ---------------------------------------------------------------- the shared bridge


async def test_the_shared_bridge_is_one_thread_for_two_users_and_gone_after_both_leave() -> None:
    threads_before = len(bridge_threads())
    async with shared_asyncio_bridge() as first:
        async with shared_asyncio_bridge() as second:
            assert second is first
            assert len(bridge_threads()) == threads_before + 1
            assert await second.run(add, 1, 2) == 3
        assert first.running  # the first user still holds it
        assert await first.run(add, 2, 2) == 4
    assert not first.running
    assert len(bridge_threads()) == threads_before
    async with shared_asyncio_bridge() as again:
        assert again is not first  # a user after the last left starts a new one
        assert again.running


async def test_users_entering_the_shared_bridge_together_share_one_started_bridge() -> None:
    seen: list[AsyncioBridge] = []
    all_in = trio.Event()
    leave = trio.Event()

    async def user() -> None:
        async with shared_asyncio_bridge() as bridge:
            assert bridge.running
            seen.append(bridge)
            if len(seen) == 3:
                all_in.set()
            await leave.wait()

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(user)
        await all_in.wait()
        assert seen[0] is seen[1] is seen[2]
        assert len(bridge_threads()) == 1
        leave.set()
    assert not seen[0].running


async def test_a_user_after_the_shared_bridge_crashed_gets_a_new_one() -> None:
    async def exit_loop_thread() -> None:
        raise SystemExit(3)

    async with shared_asyncio_bridge() as crashed:
        with pytest.raises(SystemExit):
            await crashed.run(exit_loop_thread)
        async with shared_asyncio_bridge() as fresh:
            assert fresh is not crashed
            assert await fresh.run(add, 1, 2) == 3
        with pytest.raises(BridgeClosed, match="SystemExit"):
            await crashed.run(add, 1, 2)
    assert not fresh.running


# ---------------------------------------------------------------- surface


def test_the_bridge_and_its_error_are_exported_from_triobus() -> None:
    assert triobus.AsyncioBridge is AsyncioBridge
    assert triobus.BridgeClosed is BridgeClosed
    assert issubclass(BridgeClosed, triobus.TriobusError)


async def test_statistics_and_repr_tell_the_state(bridge: AsyncioBridge) -> None:
    await bridge.run(add, 1, 2)
    stats = bridge.statistics()
    assert stats == BridgeStatistics(
        calls=1, in_flight=0, crossings_to_loop=1, crossings_to_trio=1, running=True
    )
    assert repr(bridge) == "<AsyncioBridge running in_flight=0>"
    assert repr(AsyncioBridge()) == "<AsyncioBridge new in_flight=0>"
