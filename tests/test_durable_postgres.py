"""What only the PostgreSQL store does: connect errors, its schema, cancelled queries,
NOTIFY, leases and competing consumers.

The behavior both stores share is tested on both (the ``store_at`` fixture).
"""

from __future__ import annotations

import time
from typing import Any

import attrs
import psycopg
import pytest
import trio
import trio.testing

from durable_helpers import root_envelope
from triobus import Command, Module, StoreError, open_bus, route
from triobus.durability import Codec, MessageTypes, durable_queue, unit_of_work
from triobus.durability._postgres import PostgresDatabase, PostgresStore
from triobus.durability._store import SCHEMA_VERSION


@attrs.frozen
class Work(Command):
    message_name = "pg.work"
    n: int


CODEC = Codec(MessageTypes().register(Work))


def encoded(n: int, message_id: str) -> bytes:
    return CODEC.encode(root_envelope(Work(n), message_id, "pg.work"))


def sql(url: str, statement: str, parameters: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as connection:
        cursor = connection.execute(statement, parameters)
        return [tuple(row) for row in cursor.fetchall()] if cursor.description else []


class Seen:
    def __init__(self) -> None:
        self.numbers: list[int] = []
        self.changed = trio.Event()

    async def handle(self, work: Work) -> None:
        self.numbers.append(work.n)
        self.changed.set()
        self.changed = trio.Event()

    async def reach(self, count: int) -> None:
        with trio.fail_after(20):
            while len(self.numbers) < count:
                await self.changed.wait()


def bus_with(seen: Seen, **options: Any) -> Any:
    return open_bus(
        Module("pg").bind_request(Work, seen.handle),
        endpoints=[durable_queue("work", **options)],
        routing=[route(Work).to("work")],
    )


# ------------------------------------------------------------ start-up errors


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda url: url.replace(":5432", ":1"), "cannot connect"),
        (lambda url: url.rsplit("/", 1)[0] + "/no_such_database", "no_such_database"),
        (lambda url: url.replace("postgres@", "no_such_role@"), "no_such_role"),
    ],
    ids=["wrong port", "missing database", "unknown role"],
)
async def test_a_server_that_refuses_is_one_clear_error_naming_the_endpoint_at_start(
    postgres_url: str, pg_schema: str, change: Any, words: str
) -> None:
    url = change(postgres_url)
    with pytest.raises(StoreError) as caught:
        async with bus_with(Seen(), url=url, schema=pg_schema):
            pass  # pragma: no cover - the start fails
    message = str(caught.value)
    assert "durable endpoint 'work' cannot start" in message
    assert words in message
    assert "check the URL" in message


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"url": "mysql://localhost/test"}, "must be a PostgreSQL URL"),
        ({"url": "postgresql://localhost/test", "path": "q.db"}, "exactly one of path="),
        ({}, "exactly one of path="),
        ({"url": "postgresql://localhost/test", "schema": "bad-name"}, "plain SQL identifier"),
        ({"url": "postgresql://localhost/test", "lease": 0}, "lease must be"),
        ({"url": "postgresql://localhost/test", "pool_size": 1}, "pool_size must be"),
    ],
)
def test_a_bad_store_option_is_refused_when_the_queue_is_declared(
    options: dict[str, Any], words: str
) -> None:
    with pytest.raises(ValueError, match=words):
        durable_queue("work", **options)


def test_messages_name_the_server_and_database_never_the_password() -> None:
    queue = durable_queue("work", url="postgresql://app:s3cret@db.example:6543/orders")
    assert "s3cret" not in repr(queue)
    assert "postgresql://app@db.example:6543/orders (schema 'triobus')" in repr(queue)


# ------------------------------------------------------------ schema


async def test_the_tables_are_made_in_the_chosen_schema_with_their_version(
    postgres_url: str, pg_schema: str
) -> None:
    seen = Seen()
    async with bus_with(seen, url=postgres_url, schema=pg_schema) as bus:
        await bus.send(Work(1))
        await seen.reach(1)
    tables = {
        name
        for (name,) in sql(
            postgres_url,
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (pg_schema,),
        )
    }
    assert {
        "triobus_schema",
        "triobus_queue",
        "triobus_inbox",
        "triobus_dead_letters",
        "triobus_outbox",
        "triobus_consumers",
    } <= tables
    assert sql(postgres_url, f'SELECT version FROM "{pg_schema}".triobus_schema') == [
        (SCHEMA_VERSION,)
    ]


async def test_tables_of_another_schema_version_are_refused_at_start(
    postgres_url: str, pg_schema: str
) -> None:
    async with bus_with(Seen(), url=postgres_url, schema=pg_schema):
        pass
    sql(postgres_url, f'UPDATE "{pg_schema}".triobus_schema SET version = 99')
    with pytest.raises(StoreError, match="schema version 99"):
        async with bus_with(Seen(), url=postgres_url, schema=pg_schema):
            pass  # pragma: no cover - the start fails


# ------------------------------------------------------------ cancellation


async def test_a_cancelled_query_is_cancelled_on_the_server_not_left_running(
    postgres_url: str, pg_schema: str
) -> None:
    database = PostgresDatabase(postgres_url, schema=pg_schema)
    await database.open()
    try:
        started = time.monotonic()
        with trio.move_on_after(0.3) as scope:
            await database.read(lambda c: c.raw.execute("SELECT pg_sleep(30)"))
        assert scope.cancelled_caught
        assert time.monotonic() - started < 10
        running = sql(
            postgres_url,
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' "
            "AND state = 'active'",
        )
        assert running == [(0,)]
        assert await database.read(lambda c: c.raw.execute("SELECT 1").fetchone()) == (1,)
    finally:
        await database.close()


# ------------------------------------------------------------ other processes


async def store_open(url: str, schema: str, **options: Any) -> PostgresStore:
    """A store as another process would hold it (its own owner and lease)."""
    store = PostgresStore(url, schema=schema, **options)
    await store.open()
    return store


async def test_a_message_stored_by_another_process_wakes_the_feeder_at_once(
    postgres_url: str, pg_schema: str
) -> None:
    seen = Seen()
    async with bus_with(seen, url=postgres_url, schema=pg_schema, poll_interval=3600):
        other = await store_open(postgres_url, pg_schema)
        try:
            await other.enqueue("work", "from-other", "pg.work", "", 0.0, encoded(7, "from-other"))
            await seen.reach(1)  # not the hour's poll: the notification
        finally:
            await other.close()
    assert seen.numbers == [7]


async def test_claims_of_a_process_whose_lease_ran_out_are_taken_over_while_running(
    postgres_url: str, pg_schema: str
) -> None:
    seen = Seen()
    ghost = await store_open(postgres_url, pg_schema, lease=0.6)
    await ghost.enqueue("work", "ghost-1", "pg.work", "", 0.0, encoded(1, "ghost-1"))
    rows, _ = await ghost.claim("work", time.time(), 10)
    assert [row.message_id for row in rows] == ["ghost-1"]
    async with bus_with(seen, url=postgres_url, schema=pg_schema, lease=0.6):
        # The ghost dies without a word: its lease is no longer renewed.
        assert ghost._heartbeat is not None
        ghost._heartbeat.cancel()
        await seen.reach(1)
        attempts = sql(
            postgres_url,
            f'SELECT count(*) FROM "{pg_schema}".triobus_queue',
        )
        await ghost.database.close()
    assert seen.numbers == [1]
    assert attempts in ([(0,)], [(1,)])  # acknowledged (or about to be)


async def test_claims_of_a_living_process_are_left_alone(postgres_url: str, pg_schema: str) -> None:
    seen = Seen()
    other = await store_open(postgres_url, pg_schema, lease=0.6)
    try:
        await other.enqueue("work", "held", "pg.work", "", 0.0, encoded(1, "held"))
        rows, _ = await other.claim("work", time.time(), 10)
        assert len(rows) == 1
        async with bus_with(seen, url=postgres_url, schema=pg_schema, lease=0.6) as bus:
            await bus.send(Work(2))
            await seen.reach(1)
            await trio.sleep(1.5)  # several recovery passes (real time: leases use the server's)
        assert seen.numbers == [2]
        claimed = sql(postgres_url, f'SELECT claimed_by FROM "{pg_schema}".triobus_queue')
        assert claimed == [(other.owner,)]
    finally:
        await other.close()


async def test_competing_claims_skip_each_others_rows(postgres_url: str, pg_schema: str) -> None:
    first = await store_open(postgres_url, pg_schema)
    second = await store_open(postgres_url, pg_schema)
    try:
        for n in range(100):
            await first.enqueue("work", f"m-{n}", "pg.work", "", 0.0, encoded(n, f"m-{n}"))
        taken: dict[str, list[str]] = {}

        async def claim(name: str, store: PostgresStore) -> None:
            rows: list[str] = []
            for _ in range(5):
                claimed, _ = await store.claim("work", time.time(), 12)
                rows += [row.message_id for row in claimed]
            taken[name] = rows

        async with trio.open_nursery() as nursery:
            nursery.start_soon(claim, "first", first)
            nursery.start_soon(claim, "second", second)
    finally:
        await first.close()
        await second.close()
    together = taken["first"] + taken["second"]
    assert len(together) == len(set(together)) == 100  # all taken, none twice


async def test_outbox_rows_of_a_process_whose_lease_ran_out_are_relayed_while_running(
    postgres_url: str, pg_schema: str
) -> None:
    seen = Seen()
    async with bus_with(seen, url=postgres_url, schema=pg_schema, lease=0.6):
        ghost = await store_open(postgres_url, pg_schema, lease=0.6)
        with psycopg.connect(postgres_url) as connection:
            from triobus.durability._postgres import PgConnection

            ghost.outbox_insert(
                PgConnection(connection, pg_schema),
                "work",
                "outbox-1",
                "pg.work",
                "",
                None,
                encoded(5, "outbox-1"),
            )
            connection.commit()
        assert ghost._heartbeat is not None
        ghost._heartbeat.cancel()  # died between its commit and its relay
        await seen.reach(1)
        await ghost.database.close()
    assert seen.numbers == [5]
    assert sql(postgres_url, f'SELECT count(*) FROM "{pg_schema}".triobus_outbox') == [(0,)]


# ------------------------------------------------------------ units of work


async def test_a_unit_on_a_database_no_queue_uses_is_a_clear_error(
    postgres_url: str, pg_schema: str
) -> None:
    with (
        psycopg.connect(postgres_url) as connection,
        pytest.raises(StoreError, match="no durable queue of a running bus uses"),
    ):
        async with unit_of_work(connection):
            pass  # pragma: no cover


async def test_a_unit_asks_which_schema_when_queues_of_several_run_on_the_database(
    postgres_url: str, pg_schema: str
) -> None:
    other_schema = pg_schema + "_b"
    seen = Seen()
    try:
        async with open_bus(
            Module("pg").bind_request(Work, seen.handle),
            endpoints=[
                durable_queue("work", url=postgres_url, schema=pg_schema),
                durable_queue("other", url=postgres_url, schema=other_schema),
            ],
            routing=[route(Work).to("work")],
        ) as bus:
            with psycopg.connect(postgres_url) as connection:
                with pytest.raises(StoreError, match="schema="):
                    async with unit_of_work(connection):
                        pass  # pragma: no cover
                async with unit_of_work(connection, schema=pg_schema):
                    await bus.send(Work(3))
            await seen.reach(1)
    finally:
        sql(postgres_url, f'DROP SCHEMA IF EXISTS "{other_schema}" CASCADE')
    assert seen.numbers == [3]


# ------------------------------------------------------------ partitions


async def test_a_key_another_process_holds_is_skipped_until_it_lets_go(
    postgres_url: str, pg_schema: str
) -> None:
    first = await store_open(postgres_url, pg_schema)
    second = await store_open(postgres_url, pg_schema)
    try:
        for n, key in enumerate("aabba"):
            message_id = f"m-{n}"
            await first.enqueue(
                "work", message_id, "pg.work", "", 0.0, encoded(n, message_id), partition_key=key
            )
        held, _ = await first.claim("work", time.time(), 1, partitioned=True)
        assert [row.message_id for row in held] == ["m-0"]  # key a, in the first's hands
        taken, _ = await second.claim("work", time.time(), 10, partitioned=True)
        assert [row.message_id for row in taken] == ["m-2", "m-3"]  # key b only
        await first.database.write(
            lambda c: first.ack(c, "work", held[0].seq, "m-0", "", time.time())
        )
        taken, _ = await second.claim("work", time.time(), 10, partitioned=True)
        assert [row.message_id for row in taken] == ["m-1", "m-4"]  # key a, in order
    finally:
        await first.close()
        await second.close()


async def test_one_consumer_takes_a_keys_messages_in_one_claim_in_order(
    postgres_url: str, pg_schema: str
) -> None:
    store = await store_open(postgres_url, pg_schema)
    try:
        for n in range(6):
            await store.enqueue(
                "work", f"m-{n}", "pg.work", "", 0.0, encoded(n, f"m-{n}"), partition_key="k"
            )
        taken, _ = await store.claim("work", time.time(), 10, partitioned=True)
    finally:
        await store.close()
    assert [row.message_id for row in taken] == [f"m-{n}" for n in range(6)]


@pytest.mark.parametrize("key", [lambda work: [work.n], lambda work: 1 / 0])
async def test_a_partition_key_that_is_no_str_or_int_is_refused_at_send(
    postgres_url: str, pg_schema: str, key: Any
) -> None:
    from triobus import PartitionKeyError

    seen = Seen()
    async with bus_with(seen, url=postgres_url, schema=pg_schema, partition_by=key) as bus:
        with pytest.raises(PartitionKeyError, match="partition_by"):
            await bus.send(Work(1))
    assert seen.numbers == []


async def test_a_cancelled_statement_of_a_unit_is_cancelled_on_the_server_and_rolled_back(
    postgres_url: str, pg_schema: str
) -> None:
    seen = Seen()
    async with bus_with(seen, url=postgres_url, schema=pg_schema) as bus:
        with psycopg.connect(postgres_url) as connection:
            started = time.monotonic()
            with trio.move_on_after(0.3) as scope:
                async with unit_of_work(connection) as uow:
                    await bus.send(Work(1))
                    await uow.execute("SELECT pg_sleep(30)")
            assert scope.cancelled_caught
            assert time.monotonic() - started < 10
            assert connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            async with unit_of_work(connection):  # the connection is usable again
                await bus.send(Work(2))
        await seen.reach(1)
        await bus.wait_quiet()
    assert seen.numbers == [2]  # the cancelled unit sent nothing
    running = sql(
        postgres_url,
        "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'",
    )
    assert running == [(0,)]


async def test_a_send_while_the_connections_are_lost_fails_clearly_and_the_next_one_works(
    postgres_url: str, pg_schema: str
) -> None:
    seen = Seen()
    async with bus_with(seen, url=postgres_url, schema=pg_schema, poll_interval=3600) as bus:
        await bus.send(Work(1))
        await seen.reach(1)
        await bus.wait_quiet()
        killed = sql(
            postgres_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (f"triobus {pg_schema}",),
        )
        assert killed  # the pool's connections, idle between jobs
        with pytest.raises(StoreError, match="durable endpoint 'work' could not store"):
            await bus.send(Work(2))
        await bus.send(Work(3))  # the pool connects again
        await seen.reach(2)
        await bus.wait_quiet()
    assert seen.numbers == [1, 3]


async def test_the_lease_is_renewed_in_real_time_while_trios_clock_stands_still(
    postgres_url: str, pg_schema: str, mock_clock: trio.testing.MockClock
) -> None:
    # The server's clock measures the lease: a MockClock that stands still must not
    # let it run out while the process lives.
    def seen_at() -> float:
        ((value,),) = sql(postgres_url, f'SELECT seen_at FROM "{pg_schema}".triobus_consumers')
        return float(value)

    def renewed() -> bool:
        first = seen_at()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if seen_at() > first:
                return True
            time.sleep(0.05)
        return False

    async with bus_with(Seen(), url=postgres_url, schema=pg_schema, lease=0.3):
        assert await trio.to_thread.run_sync(renewed)
