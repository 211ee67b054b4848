"""Durable queues on SQLite: every rule, proved on real database files.

Each test opens a bus over a file in ``tmp_path`` and looks at that file
through a separate ``sqlite3`` connection where a rule is about what is
stored. Scheduled moments run on trio's ``MockClock`` (``autojump_clock``):
the bus's wall clock follows trio's clock, also across a restart on the
same file within one test.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from triobus import (
    Backoff,
    Command,
    Envelope,
    ErrorPolicy,
    Module,
    Request,
    open_bus,
    route,
)
from triobus._errors import StoreError
from triobus.durability import DurableQueue, durable_queue, unit_of_work
from triobus.durability._store import SqliteStore

WORKERS = Path(__file__).parent / "workers"


@attrs.frozen
class Work(Command):
    message_name = "dq.work"
    n: int


@attrs.frozen
class Other(Command):
    message_name = "dq.other"
    n: int


@attrs.frozen
class Double(Request[int]):
    message_name = "dq.double"
    n: int


class Seen:
    """What the handlers saw: (n, trio time) and the message id per call, in call order."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, float]] = []
        self.ids: list[str] = []
        self._changed = trio.Event()

    @property
    def numbers(self) -> list[int]:
        return [n for n, _ in self.calls]

    def saw(self, n: int, message_id: str) -> None:
        self.calls.append((n, trio.current_time()))
        self.ids.append(message_id)
        self._changed.set()
        self._changed = trio.Event()

    async def reach(self, count: int) -> None:
        """Wait until ``count`` handler calls were seen.

        Store calls run in a thread, so on an autojumping clock sleeping past
        a moment does not mean the feeder looked; and no deadline here: the
        clock would jump to it while a store call runs.
        """
        while len(self.calls) < count:
            await self._changed.wait()


@asynccontextmanager
async def clock_held() -> AsyncIterator[None]:
    """Keep trio's clock still inside the block, on an autojumping ``MockClock``.

    Store calls wait on a thread; while they do, every task looks blocked
    and the clock would jump to the feeder's next wake-up in the middle of a
    series of sends. A task that keeps checkpointing stops the jumps.
    """
    done = False

    async def spin() -> None:
        while not done:
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(spin)
        try:
            yield
        finally:
            done = True


def work_module(
    seen: Seen, before: Callable[[Work], Awaitable[None]] | None = None, name: str = "dq"
) -> Module:
    from triobus import current_context

    async def handle(work: Work) -> None:
        context = current_context()
        assert context is not None
        seen.saw(work.n, context.message_id)
        if before is not None:
            await before(work)

    return Module(name).bind_request(Work, handle)


def queue_of(path: Path, **options: Any) -> DurableQueue:
    return durable_queue("work", path=path, **options)


def bus_on(module: Module, queue: DurableQueue, *types: type, **options: Any) -> Any:
    return open_bus(
        module,
        endpoints=[queue],
        routing=[route(t).to(queue.uri) for t in (types or (Work,))],
        **options,
    )


def queue_of_bus(bus: Any, uri: str = "work") -> DurableQueue:
    endpoint = bus.endpoints[uri]
    assert isinstance(endpoint, DurableQueue)
    return endpoint


def rows(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read the file through a connection of its own (what another process would see)."""
    connection = sqlite3.connect(path, timeout=30)
    try:
        return connection.execute(sql, params).fetchall()
    finally:
        connection.close()


def queue_rows(path: Path) -> list[tuple[Any, ...]]:
    return rows(
        path,
        "SELECT message_id, message_name, due, attempts, claimed_by FROM triobus_queue "
        "ORDER BY seq",
    )


def letter_rows(path: Path) -> list[tuple[Any, ...]]:
    return rows(
        path,
        "SELECT message_id, reason, attempts, exception_type, decodes, body "
        "FROM triobus_dead_letters ORDER BY recorded_at, rowid",
    )


# ---------------------------------------------------------------- stored before handled


async def test_send_returns_once_the_message_is_stored_before_its_handler_runs(
    tmp_path: Path,
) -> None:
    path = tmp_path / "q.db"
    seen = Seen()
    gate = trio.Event()

    async def blocked(work: Work) -> None:
        await gate.wait()

    async with bus_on(work_module(seen, blocked), queue_of(path)) as bus:
        await bus.send(Work(1))
        assert [name for _, name, *_ in queue_rows(path)] == ["dq.work"]
        await bus.send(Work(2))
        # Both stored while the first one's handler is blocked: the second has not run.
        assert [name for _, name, *_ in queue_rows(path)] == ["dq.work", "dq.work"]
        assert 2 not in seen.numbers
        gate.set()
        await bus.wait_quiet()
    assert seen.numbers == [1, 2]
    assert queue_rows(path) == []


async def test_one_handler_takes_a_thousand_messages_in_order_and_quiet_means_committed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "q.db"
    seen = Seen()
    queue = queue_of(path)
    async with bus_on(work_module(seen), queue) as bus:
        for n in range(1_000):
            await bus.send(Work(n))
        await bus.wait_quiet()
        # Quiet means every settlement is committed: another connection sees it.
        assert rows(path, "SELECT COUNT(*) FROM triobus_queue") == [(0,)]
        assert rows(path, "SELECT COUNT(*) FROM triobus_inbox") == [(1_000,)]
        counts = await queue.counts()
        assert (counts.incoming, counts.scheduled, counts.dead_letters) == (0, 0, 0)
    assert seen.numbers == list(range(1_000))
    assert len(set(seen.ids)) == 1_000


# ---------------------------------------------------------------- a final stop


async def test_a_final_stop_leaves_the_backlog_stored_and_the_next_bus_handles_it_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "q.db"
    first = Seen()
    never = trio.Event()

    async def stuck(work: Work) -> None:
        await never.wait()

    async with bus_on(work_module(first, stuck), queue_of(path, shutdown=1.0)) as bus:
        for n in range(5):
            await bus.send(Work(n))
        await bus.send(Work(5), delay=60)  # scheduled later: stored too
    assert first.numbers == [0]  # in hand when the bus stopped, cut off
    assert list(bus.dead_letters) == []  # nothing dead-lettered in memory ...
    assert letter_rows(path) == []  # ... nor in the store
    stored = queue_rows(path)
    assert len(stored) == 6
    assert all(claimed_by is None for *_, claimed_by in stored)  # unclaimed for the next start
    assert all(attempts == 0 for *_, attempts, _ in stored)  # a cut-off handler is no failure

    second = Seen()
    async with bus_on(work_module(second), queue_of(path)) as bus:
        await second.reach(6)
        await bus.wait_quiet()
    assert second.numbers == [0, 1, 2, 3, 4, 5]
    assert queue_rows(path) == []
    assert letter_rows(path) == []


async def test_a_final_stop_does_not_wait_for_a_far_future_message_delivered_later_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "q.db"
    hour = 3600.0
    async with bus_on(work_module(Seen()), queue_of(path, poll_interval=600)) as bus:
        await bus.send(Work(1), delay=hour)
        ((due,),) = rows(path, "SELECT due FROM triobus_queue")
        stopping = trio.current_time()
    # Leaving did not wait for the hour. (The clock may jump to internal
    # deadlines of a few seconds while the store's thread commits and closes.)
    assert trio.current_time() - stopping < hour / 10
    assert len(queue_rows(path)) == 1
    assert list(bus.dead_letters) == []

    seen = Seen()
    handled_at: list[float] = []
    queue = queue_of(path, poll_interval=600)

    async def clock(work: Work) -> None:
        handled_at.append(queue.wall_clock())

    async with bus_on(work_module(seen, clock), queue) as bus:
        assert seen.numbers == []
        await seen.reach(1)
        await bus.wait_quiet()
        await trio.sleep(hour)  # and not again
    assert seen.numbers == [1]
    assert handled_at[0] >= due
    assert queue_rows(path) == []


# ---------------------------------------------------------------- scheduling


async def test_delay_and_deliver_at_are_never_early_and_a_past_moment_means_now(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    from datetime import UTC, datetime

    path = tmp_path / "q.db"
    seen = Seen()
    at: dict[int, float] = {}
    queue = queue_of(path, poll_interval=600)

    async def clock(work: Work) -> None:
        at[work.n] = queue.wall_clock()

    async with bus_on(work_module(seen, clock), queue) as bus:
        async with clock_held():
            start = queue.wall_clock()
            await bus.send(Work(1), delay=30)
            await bus.send(Work(2), deliver_at=start + 20)
            await bus.send(Work(3), deliver_at=datetime.fromtimestamp(start + 10, UTC))
            await bus.send(Work(4), deliver_at=start - 100)  # past: now
            await bus.send(Work(5))
            dues = dict(rows(path, "SELECT message_id, due FROM triobus_queue WHERE due > ?", (start,)))
        assert len(dues) == 3  # the scheduled ones wait in the store
        await seen.reach(5)
        await bus.wait_quiet()
    assert seen.numbers == [4, 5, 3, 2, 1]  # due order; the unscheduled in send order
    assert at[4] - start < 1 and at[5] - start < 1
    assert at[3] >= start + 10 - 1e-6  # a datetime keeps microseconds
    assert at[2] >= start + 20
    assert at[1] >= start + 30
    by_id = dict(zip(seen.ids, seen.numbers, strict=True))
    for message_id, due in dues.items():
        assert at[by_id[message_id]] >= due  # never before its stored moment


async def test_two_messages_scheduled_for_one_moment_keep_their_send_order(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "q.db"
    seen = Seen()
    queue = queue_of(path, poll_interval=600)
    async with bus_on(work_module(seen), queue) as bus:
        async with clock_held():
            moment = queue.wall_clock() + 15
            await bus.send(Work(1), deliver_at=moment)
            await bus.send(Work(2), deliver_at=moment)
            await bus.send(Work(3), deliver_at=moment - 5)
        await seen.reach(3)
        await bus.wait_quiet()
    assert seen.numbers == [3, 1, 2]


# ---------------------------------------------------------------- the inbox


def encoded(queue: DurableQueue, message: object, message_id: str, name: str = "dq.work") -> bytes:
    """The bytes a transport would carry for ``message`` with id ``message_id``."""
    return queue.codec.encode(
        Envelope(
            message_id=message_id,
            message_name=name,
            message_version=1,
            correlation_id=message_id,
            causation_id=None,
            headers={},
            reply_to=None,
            created_at=time.time(),
            message=message,
        )
    )


async def test_a_message_stored_twice_with_one_id_is_handled_once_quietly(
    tmp_path: Path,
) -> None:
    path = tmp_path / "q.db"
    seen = Seen()
    gate = trio.Event()

    async def held(work: Work) -> None:
        await gate.wait()

    queue = queue_of(path)
    with trio.fail_after(30):
        async with bus_on(work_module(seen, held), queue) as bus:
            data = encoded(queue, Work(1), "dup-1")
            await queue.deliver_raw(data)
            await queue.deliver_raw(data)  # again while the first is in hand
            await seen.reach(1)
            gate.set()
            await bus.wait_quiet()
            await queue.deliver_raw(data)  # and again once it was handled
            await bus.wait_quiet()
            assert seen.ids == ["dup-1"]
            assert list(bus.dead_letters) == []
            assert letter_rows(path) == []
            assert queue_rows(path) == []
        async with bus_on(work_module(seen), queue_of(path)) as bus:
            await queue_of_bus(bus).deliver_raw(data)  # after a restart too
            await bus.wait_quiet()
    assert seen.ids == ["dup-1"]
    assert queue_rows(path) == []


async def test_after_the_inbox_retention_the_same_id_is_handled_again(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    from triobus.durability._queue import INBOX_PURGE_INTERVAL

    path = tmp_path / "q.db"
    seen = Seen()
    queue = queue_of(path, inbox_retention=10.0)
    async with bus_on(work_module(seen), queue) as bus:
        data = encoded(queue, Work(1), "again-1")
        await queue.deliver_raw(data)
        await seen.reach(1)
        await bus.wait_quiet()
        await trio.sleep(5)
        await queue.deliver_raw(data)  # within the retention: skipped
        await bus.wait_quiet()
        assert seen.ids == ["again-1"]
        # Handled ids older than the retention are purged at the next purge pass
        # (every INBOX_PURGE_INTERVAL seconds): kept at least the retention.
        await trio.sleep(INBOX_PURGE_INTERVAL + 10)
        while rows(path, "SELECT COUNT(*) FROM triobus_inbox") != [(0,)]:
            await trio.sleep(1)
        await queue.deliver_raw(data)
        await seen.reach(2)
        await bus.wait_quiet()
    assert seen.ids == ["again-1", "again-1"]
    assert letter_rows(path) == []


# ---------------------------------------------------------------- error policies


class Refused(Exception):
    pass


def failing_module(seen: Seen, fail: Callable[[Work, int], Awaitable[None]]) -> Module:
    """Handlers that call ``fail(work, call number of that n)`` after recording the call."""
    calls: dict[int, int] = {}

    async def check(work: Work) -> None:
        calls[work.n] = calls.get(work.n, 0) + 1
        await fail(work, calls[work.n])

    return work_module(seen, check)


def numbered_letters(path: Path, seen: Seen) -> dict[int, tuple[Any, ...]]:
    """The durable dead letters by message number: (reason, attempts, exception type)."""
    by_id = dict(zip(seen.ids, seen.numbers, strict=True))
    return {by_id[mid]: (reason, attempts, kind) for mid, reason, attempts, kind, *_ in letter_rows(path)}


async def test_error_rules_apply_per_exception_type_and_end_in_durable_dead_letters(
    tmp_path: Path,
) -> None:
    path = tmp_path / "q.db"
    seen = Seen()
    errors = {1: ValueError, 2: KeyError, 3: Refused}

    async def fail(work: Work, call: int) -> None:
        if work.n in errors:
            raise errors[work.n](f"no {work.n}")

    policy = ErrorPolicy().on(ValueError).dead_letter().on(KeyError).retry(attempts=4)
    policy = policy.otherwise().retry(attempts=2)
    async with bus_on(failing_module(seen, fail), queue_of(path, errors=policy)) as bus:
        for n in (1, 2, 3, 4):
            await bus.send(Work(n))
        await bus.wait_quiet()
    assert seen.numbers == [1, 2, 2, 2, 2, 3, 3, 4]  # N attempts: N handler calls
    assert numbered_letters(path, seen) == {
        1: ("failed", 1, "ValueError"),
        2: ("failed", 4, "KeyError"),
        3: ("failed", 2, f"{__name__}.Refused"),
    }
    assert queue_rows(path) == []


@pytest.mark.parametrize("attempts", [1, 3, 5])
async def test_n_attempts_are_n_handler_calls_then_a_durable_dead_letter(
    tmp_path: Path, attempts: int
) -> None:
    path = tmp_path / "q.db"
    seen = Seen()

    async def fail(work: Work, call: int) -> None:
        raise Refused(f"call {call}")

    queue = queue_of(path, retries=attempts - 1)
    async with bus_on(failing_module(seen, fail), queue) as bus:
        await bus.send(Work(1))
        await bus.wait_quiet()
        assert (await queue.counts()).dead_letters == 1
    assert seen.numbers == [1] * attempts
    ((message_id, reason, stored_attempts, kind, decodes, body),) = letter_rows(path)
    assert (message_id, reason, stored_attempts, decodes) == (seen.ids[0], "failed", attempts, 1)
    assert queue_rows(path) == []


async def test_a_message_waiting_on_its_backoff_lets_the_ones_behind_pass_its_retry_stored(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "q.db"
    seen = Seen()
    all_sent = trio.Event()
    at: dict[int, list[float]] = {}
    queue = queue_of(
        path,
        errors=ErrorPolicy().otherwise().retry_with_backoff(Backoff(initial=10, jitter=0)),
        poll_interval=600,
    )

    async def fail(work: Work, call: int) -> None:
        at.setdefault(work.n, []).append(queue.wall_clock())
        if work.n == 1 and call == 1:
            await all_sent.wait()
            raise Refused("not yet")

    async with bus_on(failing_module(seen, fail), queue) as bus:
        async with clock_held():
            for n in (1, 2, 3):
                await bus.send(Work(n))
            all_sent.set()
            await seen.reach(3)
            while len(queue_rows(path)) > 1:  # until 2 and 3 are acknowledged
                await queue.store.database.flush()
                await trio.sleep(0)
            ((message_id, _, due, attempts, claimed_by),) = queue_rows(path)
            assert message_id == seen.ids[0]
            assert attempts == 1  # the failed attempt, persisted
            assert claimed_by is None
            assert due >= at[1][0] + 10
            counts = await queue.counts()
            assert (counts.incoming, counts.scheduled) == (0, 1)
        await seen.reach(4)
        await bus.wait_quiet()
    assert seen.numbers == [1, 2, 3, 1]
    assert at[1][1] >= due
    assert queue_rows(path) == [] and letter_rows(path) == []


async def test_requeue_puts_a_failed_message_at_the_tail(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    seen = Seen()
    all_sent = trio.Event()

    async def fail(work: Work, call: int) -> None:
        if work.n == 1 and call == 1:
            await all_sent.wait()
            raise Refused("again later")

    queue = queue_of(path, errors=ErrorPolicy().otherwise().requeue(attempts=2))
    async with bus_on(failing_module(seen, fail), queue) as bus:
        for n in (1, 2, 3):
            await bus.send(Work(n))
        all_sent.set()
        await bus.wait_quiet()
    assert seen.numbers == [1, 2, 3, 1]
    assert queue_rows(path) == [] and letter_rows(path) == []
