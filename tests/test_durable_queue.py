"""Durable queues: every rule, proved on real databases, SQLite and PostgreSQL.

Each test runs once per store (``store_at``: a file in ``tmp_path``, or a
schema of its own on the test server), opens a bus over it and looks at the
tables through a separate connection where a rule is about what is stored.
Scheduled moments run on trio's ``MockClock`` (``autojump_clock``): the
bus's wall clock follows trio's clock, also across a restart on the same
store within one test.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.lowlevel

from durable_helpers import StoreAt, UserDatabase, leave_in_outbox, root_envelope, store_of
from triobus import (
    Backoff,
    Command,
    ErrorPolicy,
    Event,
    Module,
    Request,
    open_bus,
    route,
)
from triobus._errors import StoreError
from triobus.durability import Codec, DurableQueue, MessageTypes, durable_queue, unit_of_work

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


def queue_of(store_at: StoreAt, **options: Any) -> DurableQueue:
    return durable_queue("work", **store_at.options(), **options)


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


def queue_rows(store_at: StoreAt) -> list[tuple[Any, ...]]:
    return store_at.rows(
        "SELECT message_id, message_name, due, attempts, claimed_by FROM triobus_queue ORDER BY seq"
    )


def letter_rows(store_at: StoreAt) -> list[tuple[Any, ...]]:
    """The dead letters in recording order (a moment's letters in insertion order)."""
    order = "rowid" if store_at.kind == "sqlite" else "seq"
    letters = store_at.rows(
        "SELECT message_id, reason, attempts, exception_type, decodes, body "
        f"FROM triobus_dead_letters ORDER BY recorded_at, {order}"
    )
    return [(*letter[:-1], bytes(letter[-1])) for letter in letters]


# ---------------------------------------------------------------- stored before handled


async def test_send_returns_once_the_message_is_stored_before_its_handler_runs(
    store_at: StoreAt,
) -> None:
    seen = Seen()
    gate = trio.Event()

    async def blocked(work: Work) -> None:
        await gate.wait()

    async with bus_on(work_module(seen, blocked), queue_of(store_at)) as bus:
        await bus.send(Work(1))
        assert [name for _, name, *_ in queue_rows(store_at)] == ["dq.work"]
        await bus.send(Work(2))
        # Both stored while the first one's handler is blocked: the second has not run.
        assert [name for _, name, *_ in queue_rows(store_at)] == ["dq.work", "dq.work"]
        assert 2 not in seen.numbers
        gate.set()
        await bus.wait_quiet()
    assert seen.numbers == [1, 2]
    assert queue_rows(store_at) == []


async def test_one_handler_takes_a_thousand_messages_in_order_and_quiet_means_committed(
    store_at: StoreAt,
) -> None:
    seen = Seen()
    queue = queue_of(store_at)
    async with bus_on(work_module(seen), queue) as bus:
        for n in range(1_000):
            await bus.send(Work(n))
        await bus.wait_quiet()
        # Quiet means every settlement is committed: another connection sees it.
        assert store_at.rows("SELECT COUNT(*) FROM triobus_queue") == [(0,)]
        assert store_at.rows("SELECT COUNT(*) FROM triobus_inbox") == [(1_000,)]
        counts = await queue.counts()
        assert (counts.incoming, counts.scheduled, counts.dead_letters) == (0, 0, 0)
    assert seen.numbers == list(range(1_000))
    assert len(set(seen.ids)) == 1_000


# ---------------------------------------------------------------- a final stop


async def test_a_final_stop_leaves_the_backlog_stored_and_the_next_bus_handles_it_once(
    store_at: StoreAt, autojump_clock: trio.testing.MockClock
) -> None:
    first = Seen()
    never = trio.Event()

    async def stuck(work: Work) -> None:
        await never.wait()

    async with bus_on(work_module(first, stuck), queue_of(store_at, shutdown=1.0)) as bus:
        for n in range(5):
            await bus.send(Work(n))
        await bus.send(Work(5), delay=60)  # scheduled later: stored too
    assert first.numbers == [0]  # in hand when the bus stopped, cut off
    assert list(bus.dead_letters) == []  # nothing dead-lettered in memory ...
    assert letter_rows(store_at) == []  # ... nor in the store
    stored = queue_rows(store_at)
    assert len(stored) == 6
    assert all(claimed_by is None for *_, claimed_by in stored)  # unclaimed for the next start
    assert all(attempts == 0 for *_, attempts, _ in stored)  # a cut-off handler is no failure

    second = Seen()
    async with bus_on(work_module(second), queue_of(store_at)) as bus:
        await second.reach(6)
        await bus.wait_quiet()
    assert second.numbers == [0, 1, 2, 3, 4, 5]
    assert queue_rows(store_at) == []
    assert letter_rows(store_at) == []


async def test_a_final_stop_does_not_wait_for_a_far_future_message_delivered_later_once(
    store_at: StoreAt, autojump_clock: trio.testing.MockClock
) -> None:
    hour = 3600.0
    async with bus_on(work_module(Seen()), queue_of(store_at, poll_interval=600)) as bus:
        await bus.send(Work(1), delay=hour)
        ((due,),) = store_at.rows("SELECT due FROM triobus_queue")
        stopping = trio.current_time()
    # Leaving did not wait for the hour. (The clock may jump to internal
    # deadlines of a few seconds while the store's thread commits and closes.)
    assert trio.current_time() - stopping < hour / 10
    assert len(queue_rows(store_at)) == 1
    assert list(bus.dead_letters) == []

    seen = Seen()
    handled_at: list[float] = []
    queue = queue_of(store_at, poll_interval=600)

    async def clock(work: Work) -> None:
        handled_at.append(queue.wall_clock())

    async with bus_on(work_module(seen, clock), queue) as bus:
        assert seen.numbers == []
        await seen.reach(1)
        await bus.wait_quiet()
        await trio.sleep(hour)  # and not again
    assert seen.numbers == [1]
    assert handled_at[0] >= due
    assert queue_rows(store_at) == []


# ---------------------------------------------------------------- scheduling


async def test_delay_and_deliver_at_are_never_early_and_a_past_moment_means_now(
    store_at: StoreAt, autojump_clock: trio.testing.MockClock
) -> None:
    from datetime import UTC, datetime

    seen = Seen()
    at: dict[int, float] = {}
    queue = queue_of(store_at, poll_interval=600)

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
            dues = dict(
                store_at.rows("SELECT message_id, due FROM triobus_queue WHERE due > ?", (start,))
            )
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
    store_at: StoreAt, autojump_clock: trio.testing.MockClock
) -> None:
    seen = Seen()
    queue = queue_of(store_at, poll_interval=600)
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
    return queue.codec.encode(root_envelope(message, message_id, name))


async def test_a_message_stored_twice_with_one_id_is_handled_once_quietly(
    store_at: StoreAt,
) -> None:
    seen = Seen()
    gate = trio.Event()

    async def held(work: Work) -> None:
        await gate.wait()

    queue = queue_of(store_at)
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
            assert letter_rows(store_at) == []
            assert queue_rows(store_at) == []
        async with bus_on(work_module(seen), queue_of(store_at)) as bus:
            await queue_of_bus(bus).deliver_raw(data)  # after a restart too
            await bus.wait_quiet()
    assert seen.ids == ["dup-1"]
    assert queue_rows(store_at) == []


async def test_after_the_inbox_retention_the_same_id_is_handled_again(
    store_at: StoreAt, autojump_clock: trio.testing.MockClock
) -> None:
    from triobus.durability._queue import INBOX_PURGE_INTERVAL

    seen = Seen()
    queue = queue_of(store_at, inbox_retention=10.0)
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
        # The purge is a write of the feeder's: wait until another connection sees it.
        while store_at.rows("SELECT COUNT(*) FROM triobus_inbox") != [(0,)]:  # noqa: ASYNC110
            await trio.sleep(1)
        await queue.deliver_raw(data)
        await seen.reach(2)
        await bus.wait_quiet()
    assert seen.ids == ["again-1", "again-1"]
    assert letter_rows(store_at) == []


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


def numbered_letters(store_at: StoreAt, seen: Seen) -> dict[int, tuple[Any, ...]]:
    """The durable dead letters by message number: (reason, attempts, exception type)."""
    by_id = dict(zip(seen.ids, seen.numbers, strict=True))
    return {
        by_id[mid]: (reason, attempts, kind)
        for mid, reason, attempts, kind, *_ in letter_rows(store_at)
    }


async def test_error_rules_apply_per_exception_type_and_end_in_durable_dead_letters(
    store_at: StoreAt,
) -> None:
    seen = Seen()
    errors = {1: ValueError, 2: KeyError, 3: Refused}

    async def fail(work: Work, call: int) -> None:
        if work.n in errors:
            raise errors[work.n](f"no {work.n}")

    policy = ErrorPolicy().on(ValueError).dead_letter().on(KeyError).retry(attempts=4)
    policy = policy.otherwise().retry(attempts=2)
    async with bus_on(failing_module(seen, fail), queue_of(store_at, errors=policy)) as bus:
        for n in (1, 2, 3, 4):
            await bus.send(Work(n))
        await bus.wait_quiet()
    # N attempts: N handler calls. A durable queue retries through its store (the
    # attempt is committed first), behind what it has prefetched: not in place.
    assert sorted(seen.numbers) == [1, 2, 2, 2, 2, 3, 3, 4]
    assert numbered_letters(store_at, seen) == {
        1: ("failed", 1, "ValueError"),
        2: ("failed", 4, "KeyError"),
        3: ("failed", 2, f"{__name__}.Refused"),
    }
    assert queue_rows(store_at) == []


@pytest.mark.parametrize("attempts", [1, 3, 5])
async def test_n_attempts_are_n_handler_calls_then_a_durable_dead_letter(
    store_at: StoreAt, attempts: int
) -> None:
    seen = Seen()

    async def fail(work: Work, call: int) -> None:
        raise Refused(f"call {call}")

    queue = queue_of(store_at, retries=attempts - 1)
    async with bus_on(failing_module(seen, fail), queue) as bus:
        await bus.send(Work(1))
        await bus.wait_quiet()
        assert (await queue.counts()).dead_letters == 1
    assert seen.numbers == [1] * attempts
    ((message_id, reason, stored_attempts, kind, decodes, _),) = letter_rows(store_at)
    assert (message_id, reason, stored_attempts, decodes) == (seen.ids[0], "failed", attempts, 1)
    assert kind == f"{__name__}.Refused"
    assert queue_rows(store_at) == []


async def test_a_message_waiting_on_its_backoff_lets_the_ones_behind_pass_its_retry_stored(
    store_at: StoreAt, autojump_clock: trio.testing.MockClock
) -> None:
    seen = Seen()
    all_sent = trio.Event()
    at: dict[int, list[float]] = {}
    queue = queue_of(
        store_at,
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
            while len(queue_rows(store_at)) > 1:  # until 2 and 3 are acknowledged
                await queue.store.database.flush()
                await trio.lowlevel.checkpoint()
            ((message_id, _, due, attempts, claimed_by),) = queue_rows(store_at)
            assert message_id == seen.ids[0]
            assert attempts == 1  # the failed attempt, persisted
            assert claimed_by is None
            assert due >= at[1][0] + 10
            counts = await queue.counts()
            assert (counts.incoming, counts.scheduled) == (0, 1)
            # A retry due later waits in the store, not in flight (as a scheduled
            # send does): leaving open_bus does not wait for it.
            assert bus.in_flight == 0
        await seen.reach(4)
        await bus.wait_quiet()
    assert seen.numbers == [1, 2, 3, 1]
    assert at[1][1] >= due
    assert queue_rows(store_at) == [] and letter_rows(store_at) == []


async def test_requeue_puts_a_failed_message_at_the_tail(store_at: StoreAt) -> None:
    seen = Seen()
    all_sent = trio.Event()

    async def fail(work: Work, call: int) -> None:
        if work.n == 1 and call == 1:
            await all_sent.wait()
            raise Refused("again later")

    queue = queue_of(store_at, errors=ErrorPolicy().otherwise().requeue(attempts=2))
    async with bus_on(failing_module(seen, fail), queue) as bus:
        for n in (1, 2, 3):
            await bus.send(Work(n))
        all_sent.set()
        await bus.wait_quiet()
    assert seen.numbers == [1, 2, 3, 1]
    assert queue_rows(store_at) == [] and letter_rows(store_at) == []


# ---------------------------------------------------------------- process death


def snapshot(path: Path, to: Path) -> None:
    """Copy the committed state of SQLite file ``path`` over ``to``."""
    source = sqlite3.connect(path, timeout=30)
    target = sqlite3.connect(to)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()


CODEC = Codec(MessageTypes().register(Work).register(Other))


async def seed(store_at: StoreAt, *numbers: int) -> list[str]:
    """Store ``Work(n)`` messages as a sender's bus would, before any consumer starts."""
    store = store_of(store_at)
    await store.open()
    ids = []
    try:
        for n in numbers:
            message_id = f"seeded-{n}"
            envelope = root_envelope(Work(n), message_id, "dq.work")
            await store.enqueue("work", message_id, "dq.work", "", 0.0, CODEC.encode(envelope))
            ids.append(message_id)
    finally:
        await store.close()
    return ids


def stored_attempts(store_at: StoreAt, n: int) -> int:
    ((attempts,),) = store_at.rows(
        "SELECT attempts FROM triobus_queue WHERE message_id = ?", (f"seeded-{n}",)
    )
    return int(attempts)


def dies_in_handler(
    store_at: StoreAt, crashed: Path, handled: list[tuple[int, int]], dying: trio.Event
) -> Callable[[Work], Awaitable[None]]:
    """A handler that "kills the process": it keeps ``crashed``, the file as of now."""

    async def die(work: Work) -> None:
        handled.append((work.n, stored_attempts(store_at, work.n)))
        snapshot(store_at.path, crashed)
        dying.set()
        await trio.sleep_forever()

    return die


# SQLite-only: a SIGKILL is simulated by putting back a copy of the file taken in the handler.
@pytest.mark.parametrize("store_at", ["sqlite"], indirect=True)
async def test_a_message_whose_handler_dies_with_the_process_each_time_is_dead_lettered_interrupted(
    store_at: StoreAt, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Work(1) kills the process on every attempt; Work(2) and (3) were only prefetched."""
    await seed(store_at, 1, 2, 3)
    handled: list[tuple[int, int]] = []  # (n, its row's attempts as stored while it ran)
    for run in range(1, 4):  # retries=2: three attempts in all, each cut off by a "crash"
        crashed = tmp_path / f"run-{run}.db"
        dying = trio.Event()
        die = dies_in_handler(store_at, crashed, handled, dying)
        async with bus_on(work_module(Seen(), die), queue_of(store_at, shutdown=1.0)):
            await dying.wait()
        snapshot(crashed, store_at.path)  # the file as the killed process left it
        # What the dead process left: its claims (Work(1) was counted before it ran).
        stored = {mid: (attempts, claimed) for mid, _, _, attempts, claimed in queue_rows(store_at)}
        assert stored["seeded-1"][0] == run
        assert stored["seeded-2"][0] <= 1  # prefetched, never run: counted at most once

    assert handled == [(1, 1), (1, 2), (1, 3)]  # each attempt committed before its handler ran
    seen = Seen()
    attempts_seen: dict[int, int] = {}

    async def look(work: Work) -> None:
        attempts_seen[work.n] = stored_attempts(store_at, work.n)

    async with bus_on(work_module(seen, look), queue_of(store_at)) as bus:
        await seen.reach(2)
        await bus.wait_quiet()
        assert list(bus.dead_letters) == []  # the durable store has it
    assert seen.numbers == [2, 3]  # Work(1) never runs a fourth time
    assert attempts_seen == {2: 2, 3: 2}  # prefetched once, run once: one more than it ran
    ((message_id, reason, attempts, kind, decodes, _),) = letter_rows(store_at)
    assert (message_id, reason, attempts, kind, decodes) == ("seeded-1", "interrupted", 3, None, 1)
    assert queue_rows(store_at) == []


# ---------------------------------------------------------------- no handler, bad bytes


def two_endpoint_bus(seen: Seen, queue: DurableQueue, others: list[int]) -> Any:
    """Work on the durable queue; Other bound too, but on a local queue elsewhere."""
    from triobus import local_queue

    async def other(message: Other) -> None:
        others.append(message.n)

    module = work_module(seen).bind_request(Other, other)
    return open_bus(
        module,
        endpoints=[queue, local_queue("elsewhere")],
        routing=[route(Work).to("work"), route(Other).to("elsewhere")],
    )


async def test_a_decoded_message_with_no_handler_at_the_endpoint_is_a_durable_dead_letter(
    store_at: StoreAt,
) -> None:
    seen = Seen()
    others: list[int] = []
    queue = queue_of(store_at)
    async with two_endpoint_bus(seen, queue, others) as bus:
        data = encoded(queue, Other(1), "stray-1", name="dq.other")
        await queue.deliver_raw(data)
        await bus.send(Work(1))
        await bus.wait_quiet()
        assert (await queue.counts()).dead_letters == 1
    assert seen.numbers == [1] and others == []
    ((message_id, reason, _, _, decodes, body),) = letter_rows(store_at)
    assert (message_id, reason, decodes, body) == ("stray-1", "no_handler", 1, data)
    assert queue_rows(store_at) == []


async def test_a_stored_row_whose_message_has_no_handler_here_any_more_is_dead_lettered(
    store_at: StoreAt,
) -> None:
    seed_ids = await seed(store_at, 1)
    # An Other row stored by a bus routed differently.
    data = CODEC.encode(root_envelope(Other(2), "stray-2", "dq.other"))
    store_at.rows(
        "INSERT INTO triobus_queue (endpoint, message_id, message_name, step, due, body) "
        "VALUES ('work', 'stray-2', 'dq.other', '', 0, ?)",
        (data,),
    )
    seen = Seen()
    others: list[int] = []
    async with two_endpoint_bus(seen, queue_of(store_at), others) as bus:
        await seen.reach(1)
        await bus.wait_quiet()
    assert seen.ids == seed_ids and others == []
    letters = letter_rows(store_at)
    assert [(mid, reason, body) for mid, reason, _, _, _, body in letters] == [
        ("stray-2", "no_handler", data)
    ]
    assert queue_rows(store_at) == []


async def test_a_bad_envelope_is_dead_lettered_at_once_with_its_bytes_and_good_ones_go_on(
    store_at: StoreAt,
) -> None:
    seen = Seen()
    queue = queue_of(store_at)
    bad = [b"{not json", b'{"message_id": "x-1", "message_name": "dq.unknown"}', b"\xff" * 10]
    async with bus_on(work_module(seen), queue) as bus:
        for n, data in enumerate(bad):
            await queue.deliver_raw(data)
            await bus.send(Work(n))
        await bus.wait_quiet()
    assert seen.numbers == [0, 1, 2]
    letters = letter_rows(store_at)
    assert [body for *_, body in letters] == bad
    assert {reason for _, reason, *_ in letters} == {"undecodable"}
    assert {attempts for _, _, attempts, *_ in letters} == {0}  # no handler call, no retry
    assert {decodes for *_, decodes, _ in letters} == {0}
    assert queue_rows(store_at) == []


# ---------------------------------------------------------------- invoke


async def test_invoke_on_a_durable_queue_is_answered_directly_and_stores_nothing(
    store_at: StoreAt,
) -> None:
    async def double(request: Double) -> int:
        if request.n < 0:
            raise Refused("negative")
        return request.n * 2

    module = work_module(Seen()).bind_request(Double, double)
    async with bus_on(module, queue_of(store_at), Work, Double) as bus:
        assert await bus.invoke(Double(21)) == 42
        with pytest.raises(Refused):
            await bus.invoke(Double(-1))  # the caller gets it: no retry, no dead letter
        await bus.wait_quiet()
    assert store_at.rows("SELECT COUNT(*) FROM triobus_queue") == [(0,)]
    assert store_at.rows("SELECT COUNT(*) FROM triobus_inbox") == [(0,)]
    assert letter_rows(store_at) == []
    assert list(bus.dead_letters) == []


# ---------------------------------------------------------------- the write lock


# SQLite-only: SQLite has one write lock per file (PostgreSQL locks rows, and readers
# never block writers).
@pytest.mark.parametrize("store_at", ["sqlite"], indirect=True)
async def test_a_handler_that_has_not_written_does_not_hold_the_write_lock(
    store_at: StoreAt,
) -> None:
    user = UserDatabase(store_at)
    connection = user.connect()
    entered = trio.Event()
    gate = trio.Event()

    async def hold(work: Work) -> None:
        if work.n == 1:
            entered.set()
            await gate.wait()
            return
        async with unit_of_work(connection) as uow:
            await uow.execute("SELECT COUNT(*) FROM orders")  # read, not written yet
            entered.set()
            await gate.wait()
            await uow.execute(user.sql("INSERT INTO orders (id) VALUES (?)"), (work.n,))

    seen = Seen()
    async with bus_on(work_module(seen, hold), queue_of(store_at)) as bus:
        for n in (1, 2):
            entered = trio.Event()
            gate = trio.Event()
            await bus.send(Work(n))
            await entered.wait()
            assert user.writable_now()  # another writer gets the lock at once
            gate.set()
            await bus.wait_quiet()
    assert user.rows("SELECT id FROM orders") == [(2,)]
    connection.close()


# ---------------------------------------------------------------- units of work


def counting_ids() -> tuple[list[str], Callable[[], str]]:
    made: list[str] = []

    def new_id() -> str:
        made.append(f"uow-{len(made) + 1}")
        return made[-1]

    return made, new_id


async def test_a_unit_of_work_delivers_what_was_sent_inside_it_after_commit(
    store_at: StoreAt,
) -> None:
    user = UserDatabase(store_at)
    connection = user.connect()
    made, new_id = counting_ids()
    seen = Seen()
    async with bus_on(work_module(seen), queue_of(store_at), id_factory=new_id) as bus:
        async with unit_of_work(connection) as uow:
            await uow.execute("INSERT INTO orders (id) VALUES (1)")
            await bus.send(Work(1))
            await bus.send(Work(2))
            assert queue_rows(store_at) == []  # nothing stored nor sent before the commit
            assert store_at.rows("SELECT COUNT(*) FROM triobus_outbox") == [(0,)]
            assert user.rows("SELECT COUNT(*) FROM orders") == [(0,)]
        await seen.reach(2)
        await bus.wait_quiet()
    assert seen.numbers == [1, 2]
    assert seen.ids == made[:2]  # the ids made at send, kept through the outbox
    assert user.rows("SELECT id FROM orders") == [(1,)]
    assert store_at.rows("SELECT COUNT(*) FROM triobus_outbox") == [(0,)]
    connection.close()


async def test_a_unit_of_work_that_rolls_back_delivers_nothing(store_at: StoreAt) -> None:
    user = UserDatabase(store_at)
    connection = user.connect()
    seen = Seen()
    async with bus_on(work_module(seen), queue_of(store_at)) as bus:
        with pytest.raises(Refused):
            async with unit_of_work(connection) as uow:
                await uow.execute("INSERT INTO orders (id) VALUES (1)")
                await bus.send(Work(1))
                raise Refused("changed my mind")
        await bus.send(Work(2))  # outside: delivered
        await bus.wait_quiet()
    assert seen.numbers == [2]
    assert user.rows("SELECT COUNT(*) FROM orders") == [(0,)]
    assert store_at.rows("SELECT COUNT(*) FROM triobus_outbox") == [(0,)]
    assert queue_rows(store_at) == []
    connection.close()


def elsewhere_connection(store_at: StoreAt) -> tuple[Any, str]:
    """A user's connection to a database no durable queue uses; how messages name it."""
    if store_at.kind == "sqlite":
        path = store_at.path.with_name("elsewhere.db")
        return sqlite3.connect(path, check_same_thread=False), "elsewhere.db"
    import psycopg
    from psycopg.conninfo import make_conninfo

    assert store_at.url is not None
    return psycopg.connect(make_conninfo(store_at.url, dbname="postgres")), "/postgres"


async def test_a_unit_of_work_needs_a_durable_queue_on_its_database(store_at: StoreAt) -> None:
    elsewhere, name = elsewhere_connection(store_at)
    with pytest.raises(StoreError, match="no durable queue of a running bus uses"):
        async with unit_of_work(elsewhere):
            pass  # no bus at all
    async with bus_on(work_module(Seen()), queue_of(store_at)):
        with pytest.raises(StoreError, match=f"no durable queue .* uses .*{re.escape(name)}"):
            async with unit_of_work(elsewhere):
                pass  # a bus, but its durable queue is on another database
    elsewhere.close()


# SQLite-only: sqlite3's check_same_thread (psycopg connections serve any thread).
@pytest.mark.parametrize("store_at", ["sqlite"], indirect=True)
async def test_a_unit_of_work_needs_a_connection_usable_from_other_threads(
    store_at: StoreAt,
) -> None:
    connection = sqlite3.connect(store_at.path)  # check_same_thread left on
    async with bus_on(work_module(Seen()), queue_of(store_at)):
        with pytest.raises(StoreError, match="check_same_thread=False"):
            async with unit_of_work(connection):
                pass
    connection.close()


async def test_an_outbox_row_left_by_a_crash_is_relayed_at_the_next_start_with_its_id(
    store_at: StoreAt,
) -> None:
    await leave_in_outbox(
        store_at, ("work", Work(1), "dq.work", "left-1"), ("work", Work(2), "dq.work", "left-2")
    )
    seen = Seen()
    queue = queue_of(store_at)
    async with bus_on(work_module(seen), queue) as bus:
        with trio.fail_after(10):  # relayed at the start (real time: no autojump here)
            await seen.reach(2)
        await bus.wait_quiet()
        assert (await queue.counts()).outbox == 0
    assert seen.ids == ["left-1", "left-2"]
    assert store_at.rows("SELECT COUNT(*) FROM triobus_outbox") == [(0,)]
    assert queue_rows(store_at) == []


@pytest.mark.slow
async def test_a_process_killed_between_commit_and_relay_delivers_after_restart(
    store_at: StoreAt,
) -> None:
    user = UserDatabase(store_at)
    user.connect().close()  # the orders table
    where = [str(store_at.path)] if store_at.kind == "sqlite" else [store_at.url, store_at.schema]
    child = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [sys.executable, str(WORKERS / "outbox_child.py"), *where],
            capture_output=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
    )
    # The child committed, printed the id it sent, and was SIGKILLed before relaying.
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    message_id = child.stdout.decode().split()[-1]
    assert store_at.rows("SELECT message_id FROM triobus_outbox") == [(message_id,)]
    assert user.rows("SELECT id FROM orders") == [(7,)]
    assert queue_rows(store_at) == []
    seen = Seen()
    # PostgreSQL: the killed child's lease runs out a second after its last renewal.
    async with bus_on(work_module(seen), queue_of(store_at, lease=1.0)) as bus:
        await seen.reach(1)
        await bus.wait_quiet()
    assert seen.numbers == [7]
    assert seen.ids == [message_id]
    assert store_at.rows("SELECT COUNT(*) FROM triobus_outbox") == [(0,)]


# ---------------------------------------------------------------- counts


async def test_counts_report_incoming_scheduled_dead_letters_and_outbox(store_at: StoreAt) -> None:
    gate = trio.Event()

    async def held(work: Work) -> None:
        await gate.wait()

    queue = queue_of(store_at)
    async with bus_on(work_module(Seen(), held), queue) as bus:
        empty = await queue.counts()
        assert (empty.incoming, empty.scheduled, empty.dead_letters, empty.outbox) == (0, 0, 0, 0)
        await bus.send(Work(1))  # in hand (claimed): still incoming
        await bus.send(Work(2))
        await bus.send(Work(3), delay=3600)
        await queue.deliver_raw(b"junk")
        store_at.rows(
            "INSERT INTO triobus_outbox (endpoint, message_id, message_name, step, due, body) "
            "VALUES ('work', 'o-1', 'dq.work', '', NULL, ?)",
            (b"\x00",),
        )
        counts = await queue.counts()
        assert (counts.incoming, counts.scheduled, counts.dead_letters, counts.outbox) == (
            2,
            1,
            1,
            1,
        )
        store_at.rows("DELETE FROM triobus_outbox")  # not a real message: not for the relay
        gate.set()
        await bus.wait_quiet()
        counts = await queue.counts()
        assert (counts.incoming, counts.scheduled) == (0, 1)


# ---------------------------------------------------------------- events


@attrs.frozen
class Happened(Event):
    message_name = "dq.happened"
    n: int


async def test_an_events_handlers_on_a_durable_queue_retry_from_the_one_that_failed(
    store_at: StoreAt, autojump_clock: trio.testing.MockClock
) -> None:
    calls: list[tuple[str, int]] = []
    changed = trio.Event()

    async def first(event: Happened) -> None:
        calls.append(("first", event.n))

    async def second(event: Happened) -> None:
        calls.append(("second", event.n))
        changed.set()
        if calls.count(("second", event.n)) == 1:
            raise Refused("once")

    module = Module("events").bind_event(Happened, [first, second])
    policy = ErrorPolicy().otherwise().retry_with_backoff(Backoff(initial=5, jitter=0))
    async with open_bus(
        module,
        endpoints=[queue_of(store_at, errors=policy)],
        routing=[route(Happened).to("work")],
    ) as bus:
        await bus.publish(Happened(1))
        while len(calls) < 3:
            await changed.wait()
            changed = trio.Event()
        await bus.wait_quiet()
    # The retry later runs from the handler that failed: the first one ran once.
    assert calls == [("first", 1), ("second", 1), ("second", 1)]
    assert queue_rows(store_at) == [] and letter_rows(store_at) == []


async def test_a_scheduled_send_inside_a_unit_of_work_keeps_its_moment(
    store_at: StoreAt, autojump_clock: trio.testing.MockClock
) -> None:
    connection = UserDatabase(store_at).connect()
    seen = Seen()
    at: list[float] = []
    queue = queue_of(store_at, poll_interval=600)

    async def clock(work: Work) -> None:
        at.append(queue.wall_clock())

    async with bus_on(work_module(seen, clock), queue) as bus:
        async with clock_held():
            async with unit_of_work(connection):
                await bus.send(Work(1), delay=100)
            ((due,),) = store_at.rows("SELECT due FROM triobus_queue")
            assert due >= queue.wall_clock() + 99
        await seen.reach(1)
        await bus.wait_quiet()
    assert at[0] >= due
    connection.close()


async def test_a_handler_that_fails_after_its_unit_of_work_committed_is_not_retried(
    store_at: StoreAt,
) -> None:
    """The commit acknowledged the message with the handler's writes: it is handled."""
    user = UserDatabase(store_at)
    connection = user.connect()
    seen = Seen()

    async def write_then_fail(work: Work) -> None:
        async with unit_of_work(connection) as uow:
            await uow.execute(user.sql("INSERT INTO orders (id) VALUES (?)"), (work.n,))
        raise Refused("after the commit")

    policy = ErrorPolicy().otherwise().retry_with_backoff(Backoff(initial=0.01), attempts=3)
    with trio.fail_after(10):
        async with bus_on(
            work_module(seen, write_then_fail), queue_of(store_at, errors=policy)
        ) as bus:
            await bus.send(Work(1))
            await seen.reach(1)
            await bus.wait_quiet()
    assert seen.numbers == [1]
    assert user.rows("SELECT id FROM orders") == [(1,)]
    assert queue_rows(store_at) == []
    connection.close()


async def test_two_durable_queues_share_one_database_each_with_its_own_backlog(
    store_at: StoreAt,
) -> None:
    seen = Seen()
    others: list[int] = []
    gate = trio.Event()

    async def other(message: Other) -> None:
        await gate.wait()
        others.append(message.n)

    work, elsewhere = queue_of(store_at), durable_queue("elsewhere", **store_at.options())
    module = work_module(seen).bind_request(Other, other)
    async with open_bus(
        module,
        endpoints=[work, elsewhere],
        routing=[route(Work).to("work"), route(Other).to("elsewhere")],
    ) as bus:
        for n in range(3):
            await bus.send(Other(n))
            await bus.send(Work(n))
        await seen.reach(3)  # one queue goes on while the other waits
        assert (await elsewhere.counts()).incoming == 3  # its first in hand, all stored
        gate.set()
        await bus.wait_quiet()
    assert seen.numbers == [0, 1, 2] and others == [0, 1, 2]
    assert queue_rows(store_at) == []
