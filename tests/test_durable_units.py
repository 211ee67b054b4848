"""Units of work on failure paths: no transaction left open, nothing sent twice.

Each test runs on SQLite and on PostgreSQL (``store_at``): it opens a bus
with a durable queue there, a user's connection to the same database
(``UserDatabase``: the file, or a ``psycopg`` connection to the test's
schema) and checks the tables through connections of their own, as another
process would.
"""

from __future__ import annotations

import time
from typing import Any

import attrs
import pytest
import trio
import trio.lowlevel
import trio.testing

from durable_helpers import (
    StoreAt,
    UserDatabase,
    leave_in_outbox,
    root_envelope,
    store_failure,
    store_of,
)
from triobus import (
    Backoff,
    Command,
    EnvelopeError,
    ErrorPolicy,
    Event,
    Module,
    StoreError,
    local_queue,
    open_bus,
    route,
)
from triobus.durability import durable_queue, unit_of_work


@attrs.frozen
class Job(Command):
    message_name = "units.job"
    n: int


def job_bus(store_at: StoreAt, seen: list[int], handled: trio.Event | None = None) -> Any:
    """A bus whose durable queue "jobs" records each Job in ``seen`` (and sets ``handled``)."""

    async def handle(job: Job) -> None:
        seen.append(job.n)
        if handled is not None:
            handled.set()

    return open_bus(
        Module("units").bind_request(Job, handle),
        endpoints=[durable_queue("jobs", **store_at.options())],
        routing=[route(Job).to("jobs")],
    )


TOO_BIG_FOR_JSON = 2**70  # an int orjson refuses: the envelope cannot be encoded


@pytest.mark.parametrize("autocommit", [False, True])
async def test_a_unit_of_work_whose_commit_fails_rolls_back_and_leaves_no_transaction_open(
    store_at: StoreAt, autocommit: bool
) -> None:
    user = UserDatabase(store_at)
    connection = user.connect(autocommit=autocommit)
    seen: list[int] = []
    async with job_bus(store_at, seen) as bus:
        with pytest.raises(EnvelopeError):
            async with unit_of_work(connection) as uow:
                await uow.execute("INSERT INTO orders (id) VALUES (1)")
                await bus.send(Job(TOO_BIG_FOR_JSON))  # refused at commit
        assert not user.in_transaction(connection)
        assert user.autocommits(connection) == autocommit
        assert user.writable_now()  # no transaction holds the table
        async with unit_of_work(connection) as uow:  # the connection is usable again
            await uow.execute("INSERT INTO orders (id) VALUES (2)")
            await bus.send(Job(2))
        await bus.wait_quiet()
    assert seen == [2]
    assert user.rows("SELECT id FROM orders") == [(2,)]  # the failed unit's write is gone
    assert store_at.rows("SELECT COUNT(*) FROM triobus_outbox") == [(0,)]
    connection.close()


async def test_a_unit_of_work_cancelled_at_its_commit_rolls_back(store_at: StoreAt) -> None:
    user = UserDatabase(store_at)
    connection = user.connect()
    seen: list[int] = []
    async with job_bus(store_at, seen) as bus:
        with trio.CancelScope() as scope:
            async with unit_of_work(connection) as uow:
                await uow.execute("INSERT INTO orders (id) VALUES (1)")
                await bus.send(Job(1))
                scope.cancel()  # the block ends normally; the commit meets the cancellation
        assert scope.cancelled_caught
        assert not user.in_transaction(connection)
        assert user.writable_now()
        await bus.wait_quiet()
    assert seen == []
    assert user.rows("SELECT COUNT(*) FROM orders") == [(0,)]
    assert store_at.rows("SELECT COUNT(*) FROM triobus_outbox") == [(0,)]
    connection.close()


async def test_a_database_error_in_the_feeder_is_logged_and_retried_not_a_crash_of_the_bus(
    store_at: StoreAt, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    from triobus.durability._store import SqlStore

    failing = {"take_outbox", "claim"}  # the first call of each fails as a full disk would

    def failing_once(name: str) -> Any:
        real = getattr(SqlStore, name)

        async def call(self: SqlStore, *args: Any, **kwargs: Any) -> Any:
            if name in failing:
                failing.discard(name)
                raise store_failure(store_at)
            return await real(self, *args, **kwargs)

        return call

    for name in sorted(failing):
        monkeypatch.setattr(SqlStore, name, failing_once(name))
    seen: list[int] = []
    async with job_bus(store_at, seen) as bus:
        await bus.send(Job(1))
        await bus.wait_quiet()
        assert seen == [1]
    assert failing == set()


@attrs.frozen
class Note(Command):
    message_name = "units.note"
    n: int


async def test_a_units_rows_are_relayed_by_the_unit_alone_not_again_by_the_queue(
    store_at: StoreAt, autojump_clock: trio.testing.MockClock
) -> None:
    from triobus import local_queue

    connection = UserDatabase(store_at).connect()
    notes: list[int] = []
    gate = trio.Event()

    async def take_note(note: Note) -> None:
        notes.append(note.n)
        if note.n == 0:
            await gate.wait()

    async def handle(job: Job) -> None:
        pass

    module = Module("units").bind_request(Job, handle).bind_request(Note, take_note)
    async with open_bus(
        module,
        endpoints=[durable_queue("jobs", **store_at.options()), local_queue("notes", capacity=1)],
        routing=[route(Job).to("jobs"), route(Note).to("notes")],
    ) as bus:
        await bus.send(Note(0))  # its handler waits at the gate
        await trio.testing.wait_all_tasks_blocked()
        await bus.send(Note(1))  # the mailbox is full now

        async def unit() -> None:
            async with unit_of_work(connection):
                await bus.send(Note(2))  # relayed after commit: waits for room

        async with trio.open_nursery() as nursery:
            nursery.start_soon(unit)
            while store_at.rows("SELECT COUNT(*) FROM triobus_outbox") != [(1,)]:
                await trio.lowlevel.checkpoint()  # (the clock stays still meanwhile)
            await trio.sleep(10)  # committed, relaying: the queue's idle passes look too
            gate.set()
        await bus.wait_quiet()
    assert sorted(notes) == [0, 1, 2]  # the unit's note once
    assert store_at.rows("SELECT COUNT(*) FROM triobus_outbox") == [(0,)]
    connection.close()


@attrs.frozen
class Placed(Event):
    message_name = "units.placed"
    n: int


async def test_a_subscribers_unit_of_work_does_not_settle_the_subscribers_after_it(
    store_at: StoreAt, autojump_clock: trio.testing.MockClock
) -> None:
    # The first subscriber's unit of work marks its own handler done with its
    # writes; the second subscriber still fails, is retried and runs again,
    # and the first one's writes are not applied twice.
    user = UserDatabase(store_at)
    connection = user.connect()
    calls: list[str] = []
    retried = trio.Event()

    async def record(event: Placed) -> None:
        async with unit_of_work(connection) as uow:
            await uow.execute(user.sql("INSERT INTO orders (id) VALUES (?)"), (event.n,))
        calls.append("record")

    async def notify(event: Placed) -> None:
        calls.append("notify")
        if calls.count("notify") == 1:
            raise RuntimeError("once")
        retried.set()

    policy = ErrorPolicy().otherwise().retry_with_backoff(Backoff(initial=5, jitter=0))
    async with open_bus(
        Module("units").bind_event(Placed, [record, notify]),
        endpoints=[durable_queue("jobs", **store_at.options(), errors=policy)],
        routing=[route(Placed).to("jobs")],
    ) as bus:
        await bus.publish(Placed(7))
        await bus.wait_quiet()  # the first delivery is settled: the retry waits in the store
        assert store_at.rows("SELECT progress FROM triobus_queue") == [(1,)]  # after `record`
        await retried.wait()
        await bus.wait_quiet()
    assert calls == ["record", "notify", "notify"]
    assert user.rows("SELECT id FROM orders") == [(7,)]
    assert store_at.rows("SELECT COUNT(*) FROM triobus_queue") == [(0,)]
    assert store_at.rows("SELECT COUNT(*) FROM triobus_dead_letters") == [(0,)]
    connection.close()


async def test_a_handler_failing_after_its_unit_committed_is_no_dead_letter_to_replay(
    store_at: StoreAt,
) -> None:
    # Its writes and "handled" are one commit: a stored dead letter would be
    # replayed (its inbox mark cleared) and apply the writes a second time.
    user = UserDatabase(store_at)
    connection = user.connect()

    async def write_then_fail(job: Job) -> None:
        async with unit_of_work(connection) as uow:
            await uow.execute(user.sql("INSERT INTO orders (id) VALUES (?)"), (job.n,))
        raise RuntimeError("after the commit")

    queue = durable_queue("jobs", **store_at.options(), retries=0)
    async with open_bus(
        Module("units").bind_request(Job, write_then_fail),
        endpoints=[queue],
        routing=[route(Job).to("jobs")],
    ) as bus:
        await bus.send(Job(1))
        await bus.wait_quiet()
        assert await queue.dead_letters.replay(reason="failed") == 0
        await bus.wait_quiet()
    assert user.rows("SELECT id FROM orders") == [(1,)]
    assert store_at.rows("SELECT COUNT(*) FROM triobus_dead_letters") == [(0,)]
    assert store_at.rows("SELECT COUNT(*) FROM triobus_queue") == [(0,)]
    connection.close()


async def left_claimed(store_at: StoreAt, message_id: str, n: int) -> None:
    """Store a Job and claim it, as a process that died while handling it left it."""
    from triobus.durability import Codec, MessageTypes

    data = Codec(MessageTypes().register(Job)).encode(
        root_envelope(Job(n), message_id, "units.job")
    )
    store = store_of(store_at)
    await store.open()
    try:
        await store.enqueue("jobs", message_id, "units.job", "", time.time(), data)
        taken, _ = await store.claim("jobs", time.time(), 10)
        assert [row.message_id for row in taken] == [message_id]
    finally:
        await store.close()


async def test_a_suspect_row_whose_attempt_cannot_be_stored_is_not_counted_in_flight_twice(
    store_at: StoreAt, monkeypatch: pytest.MonkeyPatch
) -> None:
    from triobus.durability._store import SqlStore

    await left_claimed(store_at, "left-1", 1)
    real_started = SqlStore.started
    failures = [store_failure(store_at)]

    async def started(self: SqlStore, seq: int) -> None:
        if failures:
            raise failures.pop()
        await real_started(self, seq)

    monkeypatch.setattr(SqlStore, "started", started)
    seen: list[int] = []
    handled = trio.Event()
    async with job_bus(store_at, seen, handled) as bus:
        with trio.fail_after(10):  # the feeder tries again after 1 s
            await handled.wait()
            await bus.wait_quiet()
        assert bus.in_flight == 0
    assert seen == [1]
    assert failures == []


async def test_a_relayed_row_its_in_memory_endpoint_refuses_is_a_dead_letter_not_a_crash(
    store_at: StoreAt,
) -> None:
    from triobus import DeadLetterReason, local_queue

    await leave_in_outbox(store_at, ("notes", Note(0), "units.note", "left-1"))
    notes: list[int] = []

    async def take_note(note: Note) -> None:
        notes.append(note.n)

    async def handle(job: Job) -> None:
        pass

    module = Module("units").bind_request(Job, handle).bind_request(Note, take_note)
    notes_queue = local_queue("notes", max_concurrency=2, partition_by=lambda note: 1 // note.n)
    async with open_bus(
        module,
        endpoints=[durable_queue("jobs", **store_at.options()), notes_queue],
        routing=[route(Job).to("jobs"), route(Note).to("notes")],
    ) as bus:
        lettered = trio.Event()
        bus.dead_letters.subscribe(lambda letter: lettered.set())
        with trio.fail_after(10):
            await lettered.wait()  # the relay at start met the refusal
        await bus.send(Note(1))  # the bus runs on
        await bus.wait_quiet()
        assert [letter.reason for letter in bus.dead_letters] == [DeadLetterReason.UNDELIVERABLE]
        assert bus.in_flight == 0
    assert notes == [1]
    assert store_at.rows("SELECT COUNT(*) FROM triobus_outbox") == [(0,)]


async def test_rows_left_for_an_endpoint_not_run_here_do_not_hide_the_rows_after_them(
    store_at: StoreAt,
) -> None:
    elsewhere = [("elsewhere", Job(n), "units.job", f"other-{n}") for n in range(501)]
    # More than one page of the relay bound elsewhere, then one row for this queue.
    await leave_in_outbox(store_at, *elsewhere, ("jobs", Job(7), "units.job", "mine"))
    seen: list[int] = []
    handled = trio.Event()
    async with job_bus(store_at, seen, handled) as bus:
        with trio.fail_after(10):
            await handled.wait()
        await bus.wait_quiet()
    assert seen == [7]
    assert store_at.rows("SELECT COUNT(*) FROM triobus_outbox") == [(501,)]  # theirs stay


@attrs.frozen
class Refused(Command):
    message_name = "units.refused"
    n: int


@attrs.frozen
class Stored(Command):
    message_name = "units.stored"


async def test_a_refusal_after_the_units_commit_does_not_fail_the_unit_and_the_row_stays(
    store_at: StoreAt,
) -> None:
    release = trio.Event()
    started = trio.Event()

    async def refused(command: Refused) -> None:
        started.set()
        await release.wait()

    async def stored(command: Stored) -> None:
        pass

    connection = UserDatabase(store_at).connect(orders=False)
    async with open_bus(
        Module("m").bind_request(Refused, refused).bind_request(Stored, stored),
        endpoints=[
            local_queue("full", capacity=1, overflow="fail"),
            durable_queue("stored", **store_at.options()),
        ],
        routing=[route(Refused).to("full"), route(Stored).to("stored")],
    ) as bus:
        await bus.send(Refused(1))
        await started.wait()  # in hand
        await bus.send(Refused(2))  # queued: the queue is full now
        async with unit_of_work(connection) as uow:
            await uow.execute("CREATE TABLE t (n INTEGER)")
            await bus.send(Refused(3))  # refused at the hand-over, after the commit
        # No exception reached the caller; the message waits in the outbox.
        assert store_at.rows("SELECT COUNT(*) FROM triobus_outbox") == [(1,)]
        release.set()
    connection.close()


async def test_a_second_unit_of_work_on_an_open_units_connection_is_refused(
    store_at: StoreAt,
) -> None:
    user = UserDatabase(store_at)
    connection = user.connect(orders=False)
    seen: list[int] = []
    inside = trio.Event()
    leave = trio.Event()
    refused: list[BaseException] = []

    async def first() -> None:
        async with unit_of_work(connection) as uow:
            await uow.execute("CREATE TABLE t (n INTEGER)")
            inside.set()
            await leave.wait()
            await uow.execute("INSERT INTO t VALUES (1)")

    async def second() -> None:
        await inside.wait()
        try:
            async with unit_of_work(connection):
                pass
        except StoreError as exc:
            refused.append(exc)
        leave.set()

    async with job_bus(store_at, seen), trio.open_nursery() as nursery:
        nursery.start_soon(first)
        nursery.start_soon(second)
    assert len(refused) == 1 and "open on this connection already" in str(refused[0])
    # The first unit was not disturbed: its writes committed.
    assert user.rows("SELECT n FROM t") == [(1,)]
    connection.close()
