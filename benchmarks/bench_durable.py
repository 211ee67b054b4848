"""The durable-queue benchmark: triobus on SQLite and PostgreSQL against raw baselines; memory.

Run from the project root::

    .venv/bin/python benchmarks/bench_durable.py            # 5 rounds, 1,000,000-row backlog
    .venv/bin/python benchmarks/bench_durable.py --quick    # 3 rounds, smaller sizes
    .venv/bin/python benchmarks/bench_durable.py --smoke    # a few hundred messages (seconds)
    .venv/bin/python benchmarks/bench_durable.py --profile  # cProfile of the triobus side only
    .venv/bin/python benchmarks/bench_durable.py --store postgresql  # one store only

**Throughput**, on each store chosen (``--store sqlite|postgresql|both``).
N commands are sent by K concurrent sender tasks to one durable queue (a
fresh SQLite file, or a fresh PostgreSQL schema dropped afterwards, per
measurement) whose one handler appends to a list. Time (wall clock) runs
from the first send until the last handler finished *and* its
acknowledgement is committed (``await bus.wait_quiet()``). The **raw
baseline** does the same database work without triobus (see
:class:`RawQueue` and :class:`RawDatabase`): the same schema and the store's
SQL word for word (on PostgreSQL translated as the store translates it:
``%s`` placeholders, tables in the schema, the claim's ``FOR UPDATE OF q
SKIP LOCKED``, and one ``pg_notify`` in each transaction that stores a
row), one connection thread fed through a ``queue.SimpleQueue`` with results
handed back through the trio token, the same group commit (a write waits in
the pending batch; a batch is committed as one transaction when the
connection is free, at most ``batch_size`` writes), a feeder task that
claims up to ``prefetch`` rows with the same SELECT and UPDATE and hands them
to a handler task through a memory channel of capacity ``prefetch`` (and
reads the earliest due moment, as triobus's feeder does, when a claim comes
back empty: on PostgreSQL on a second connection, since triobus reads
outside the batches on another pooled connection), and one ack (the DELETE
of the row plus the inbox mark) per message committed in the next batch.
Its payloads are orjson documents with the envelope's keys, decoded with
orjson into the same message class. On PostgreSQL both sides ANALYZE the
queue and inbox tables after the warm-up (untimed), as autovacuum does on a
store in use: the plans the connections cached on a fresh schema's empty
tables make every claim scan the whole inbox. PostgreSQL is at
``--postgres-url`` (default ``$TRIOBUS_TEST_POSTGRES``, else
``postgresql://postgres@127.0.0.1:5432/test``); when it cannot be reached
its row says ``skipped: <reason>``.

Within a round raw and triobus run back to back (the order alternates), the
ratio is taken per round, and the table shows medians over the rounds. The
CPU seconds of the trio thread, of the process's other threads (SQLite: the
connection thread; PostgreSQL: the worker threads, the listener and the
pool's), and on PostgreSQL of the server processes serving the measurement
(found by their ``application_name``, read from ``/proc`` when the server
runs on this machine) are taken after each measurement and shown per message
on stderr (and under the table), to say where the time goes.

**Memory** (with SQLite). A child process opens a bus with a durable queue
on a file that holds a backlog of B stored messages (written straight into
the table with the same row format, in big transactions) whose handler
blocks, and samples its resident set once the feeder has filled the prefetch
buffer and again a few seconds later. The backlog must stay in the store:
RSS with a backlog of 1,000,000 (100,000 with ``--quick``) minus RSS with a
backlog of 1,000 must be under 20 MB.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import pstats
import queue
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import attrs
import orjson
import outcome
import trio

import triobus
from triobus import Command, Envelope, Module, RequestHandler, durable_queue, open_bus, route
from triobus.durability import Codec, DurableQueue, MessageTypes
from triobus.durability._store import _SQLITE_SCHEMA as _SCHEMA
from triobus.durability._store import SCHEMA_VERSION

#: The queue's uri on both sides.
ENDPOINT = "work"
#: The targets.
MIN_RATIO = 0.7
MIN_RATE = 10_000.0
MAX_MEMORY_DELTA_MB = 20.0
#: Defaults of ``durable_queue`` (the raw side uses the same).
PREFETCH = 64
BATCH_SIZE = 500
#: Seconds of the memory child's observation window after the prefetch buffer filled.
MEMORY_WINDOW = 3.0
#: The stores, as ``--store`` names them, and as the table does.
STORES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
POSTGRES_URL = os.environ.get("TRIOBUS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@attrs.frozen
class Order(Command):
    """The benchmark's command (a fixed name, so a child process decodes the stored rows)."""

    message_name: ClassVar[str] = "bench.Order"
    n: int


# ---------------------------------------------------------------- CPU time


def _stat_cpu(path: str) -> float:
    """CPU seconds (user + system) in a ``/proc/.../stat`` file."""
    with open(path) as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _server_cpu(pid: int) -> float | None:
    """CPU seconds of the server process ``pid``; ``None`` unless it is PostgreSQL's, here."""
    try:
        with open(f"/proc/{pid}/comm") as comm:
            if comm.read().strip() != "postgres":
                return None
        return _stat_cpu(f"/proc/{pid}/stat")
    except (OSError, ValueError, IndexError):
        return None


@attrs.define
class Split:
    """CPU seconds during a measurement: the trio thread, the process's other threads, and
    the server processes serving it (PostgreSQL on this machine; else ``None``)."""

    trio_thread: float = 0.0
    threads: float = 0.0
    server: float | None = None


class CpuClock:
    """Reads the CPU time of the trio thread, of the whole process and of server processes."""

    def __init__(self, backends: Callable[[], list[int]]) -> None:
        self.backends = backends
        self.main = threading.get_native_id()
        self.start = (0.0, 0.0)
        self.server: dict[int, float | None] = {}

    def _now(self) -> tuple[float, float]:
        return _stat_cpu(f"/proc/self/task/{self.main}/stat"), _stat_cpu("/proc/self/stat")

    def begin(self) -> None:
        self.server = {pid: _server_cpu(pid) for pid in self.backends()}
        self.start = self._now()

    def end(self) -> Split:
        trio_thread, process = self._now()
        trio_time = trio_thread - self.start[0]
        split = Split(trio_time, process - self.start[1] - trio_time)
        server = 0.0
        for pid in self.backends():
            now, then = _server_cpu(pid), self.server.get(pid, 0.0)  # a newcomer counts from 0
            if now is None or then is None:
                return split  # not on this machine: unknown
            server += now - then
        split.server = server if self.server else None
        return split


# ---------------------------------------------------------------- the raw baseline

_CONNECT_PRAGMAS = (
    "PRAGMA busy_timeout = 30000",
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
)
# The statements of durability/_store.py, word for word.
_INSERT = (
    "INSERT INTO triobus_queue "
    "(endpoint, message_id, message_name, step, due, body, counted_by) "
    "SELECT ?, ?, ?, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM triobus_queue "
    "WHERE endpoint = ? AND message_id = ? AND step = ?) AND NOT EXISTS "
    "(SELECT 1 FROM triobus_inbox WHERE endpoint = ? AND message_id = ? AND step = ?)"
)
#: Seeding the memory check's backlog (not measured): a plain insert.
_SEED_INSERT = (
    "INSERT INTO triobus_queue (endpoint, message_id, message_name, step, due, body) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
_CLAIM_SELECT = (
    "SELECT q.seq, q.message_id, q.step, q.attempts, q.progress, q.suspect, q.body, "
    "q.counted_by IS NOT NULL AND q.counted_by = ?, "
    "EXISTS (SELECT 1 FROM triobus_inbox AS i "
    "WHERE i.endpoint = q.endpoint AND i.message_id = q.message_id AND i.step = q.step) "
    "FROM triobus_queue AS q "
    "WHERE q.endpoint = ? AND q.claimed_by IS NULL AND q.due <= ? "
    "ORDER BY q.seq LIMIT ?"
)
_CLAIM_DUPLICATE = "DELETE FROM triobus_queue WHERE seq = ?"
_CLAIM_UPDATE = "UPDATE triobus_queue SET claimed_by = ?, attempts = attempts + ? WHERE seq = ?"
_ACK_DELETE = "DELETE FROM triobus_queue WHERE seq = ? AND claimed_by = ?"
_ACK_INBOX = (
    "INSERT INTO triobus_inbox (endpoint, message_id, step, handled_at) "
    "VALUES (?, ?, ?, ?) ON CONFLICT (endpoint, message_id, step) "
    "DO UPDATE SET handled_at = excluded.handled_at"
)
_NEXT_DUE = "SELECT MIN(due) FROM triobus_queue WHERE endpoint = ? AND claimed_by IS NULL"
_VERSION = "INSERT INTO triobus_schema (version) VALUES (?)"
#: PostgreSQL: what a claim adds (``PostgresStore.lock_claimed``), and the
#: notification of an enqueue, once per transaction (``PgConnection.notify``).
_PG_LOCK_CLAIMED = " FOR UPDATE OF q SKIP LOCKED"
_PG_NOTIFY = "SELECT pg_notify(%s, %s)"

Job = Callable[[Any], Any]


@attrs.frozen
class RawSql:
    """The raw side's statements, as one database runs them."""

    begin: str
    insert: str
    claim_select: str
    claim_duplicate: str
    claim_update: str
    ack_delete: str
    ack_inbox: str
    next_due: str
    #: The notification an enqueue's transaction sends once, and its channel (PostgreSQL).
    notify: str | None = None
    channel: str = ""

    @classmethod
    def of(
        cls,
        translate: Callable[[str], str],
        *,
        begin: str,
        lock_claimed: str = "",
        notify: str | None = None,
        channel: str = "",
    ) -> RawSql:
        return cls(
            begin,
            translate(_INSERT),
            translate(_CLAIM_SELECT + lock_claimed),
            translate(_CLAIM_DUPLICATE),
            translate(_CLAIM_UPDATE),
            translate(_ACK_DELETE),
            translate(_ACK_INBOX),
            translate(_NEXT_DUE),
            notify,
            channel,
        )


@attrs.frozen
class Connector:
    """How the raw side reaches one database: connections, statements, schema."""

    #: Thread names start with it.
    name: str
    #: A new connection (called in the thread that uses it), in autocommit mode.
    connect: Callable[[], Any]
    sql: RawSql
    create_schema: Job
    #: Reads outside the batches go to a connection of their own (as on a pool).
    separate_reads: bool


def create_schema(connection: sqlite3.Connection) -> None:
    connection.executescript(_SCHEMA)
    if connection.execute("SELECT version FROM triobus_schema").fetchone() is None:
        connection.execute(_VERSION, (SCHEMA_VERSION,))


class ConnectionThread:
    """One connection owned by one thread; jobs through a SimpleQueue, results through trio."""

    def __init__(self, connect: Callable[[], Any], name: str) -> None:
        self.connect = connect
        self.name = name
        self.jobs: queue.SimpleQueue[tuple[Job, trio.lowlevel.Task] | None] = queue.SimpleQueue()
        self.token: trio.lowlevel.TrioToken | None = None
        self.thread: threading.Thread | None = None

    async def start(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        started: list[BaseException | None] = []
        ready = threading.Event()
        self.thread = threading.Thread(
            target=self._serve, args=(started, ready), name=self.name, daemon=True
        )
        self.thread.start()
        await trio.to_thread.run_sync(ready.wait)
        if started[0] is not None:
            raise started[0]

    async def stop(self) -> None:
        assert self.thread is not None
        self.jobs.put(None)
        await trio.to_thread.run_sync(self.thread.join)

    def _serve(self, started: list[BaseException | None], ready: threading.Event) -> None:
        try:
            connection = self.connect()
        except BaseException as exc:
            started.append(exc)
            ready.set()
            return
        started.append(None)
        ready.set()
        token = self.token
        assert token is not None
        while (item := self.jobs.get()) is not None:
            job, task = item
            token.run_sync_soon(trio.lowlevel.reschedule, task, outcome.capture(job, connection))
        connection.close()

    async def run(self, job: Job) -> Any:
        """Run ``job(connection)`` on this thread; return its result."""
        self.jobs.put((job, trio.lowlevel.current_task()))
        return await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)


class RawDatabase:
    """One connection thread committing batches (group commit); reads maybe on a second."""

    def __init__(self, connector: Connector, batch_size: int = BATCH_SIZE) -> None:
        self.connector = connector
        self.sql = connector.sql
        self.batch_size = batch_size
        self.writer = ConnectionThread(connector.connect, connector.name)
        self.reader = self.writer
        if connector.separate_reads:
            self.reader = ConnectionThread(connector.connect, f"{connector.name}-reads")
        #: Writes waiting for a commit: (job, the list its result goes to, or None).
        self.pending: list[tuple[Job, list[Any] | None]] = []
        self.queued = 0  # writes queued so far
        self.committed = 0  # writes committed so far (in queue order)
        self.flushing = False
        self.flushed = trio.lowlevel.ParkingLot()
        #: The transaction being committed sent its notification.
        self.notified = False

    async def open(self) -> None:
        await self.writer.start()
        await self.writer.run(self.connector.create_schema)
        if self.reader is not self.writer:
            await self.reader.start()

    async def close(self) -> None:
        await self.flush()
        await self.writer.stop()
        if self.reader is not self.writer:
            await self.reader.stop()

    async def read(self, job: Job) -> Any:
        """Run ``job(connection)`` outside the batches; return its result."""
        return await self.reader.run(job)

    def write_soon(self, job: Job, result: list[Any] | None = None) -> int:
        """Queue ``job`` for the next batch; returns its ticket."""
        self.pending.append((job, result))
        self.queued += 1
        return self.queued

    async def write(self, job: Job) -> Any:
        """Queue ``job`` and return its result once its batch is committed."""
        result: list[Any] = []
        ticket = self.write_soon(job, result)
        while self.committed < ticket:
            await self._flush_or_wait()
        return result[0]

    async def flush(self) -> None:
        ticket = self.queued
        while self.committed < ticket:
            await self._flush_or_wait()

    async def _flush_or_wait(self) -> None:
        if self.flushing:
            await self.flushed.park()
            return
        self.flushing = True
        try:
            batch = self.pending[: self.batch_size]
            del self.pending[: self.batch_size]
            await self.writer.run(lambda connection: self._commit(connection, batch))
            self.committed += len(batch)
        finally:
            self.flushing = False
            self.flushed.unpark_all()

    def _commit(self, connection: Any, batch: list[tuple[Job, list[Any] | None]]) -> None:
        self.notified = False
        connection.execute(self.sql.begin)
        for job, result in batch:
            value = job(connection)
            if result is not None:
                result.append(value)
        connection.execute("COMMIT")


def _claim_job(sql: RawSql, owner: str, now: float, limit: int) -> Job:
    def job(connection: Any) -> list[tuple[Any, ...]]:
        rows = connection.execute(sql.claim_select, (owner, ENDPOINT, now, limit)).fetchall()
        taken = [row for row in rows if not row[8]]
        duplicates = [(row[0],) for row in rows if row[8]]
        if duplicates:
            connection.cursor().executemany(sql.claim_duplicate, duplicates)
        connection.cursor().executemany(sql.claim_update, [(owner, 1, row[0]) for row in taken])
        return taken

    return job


def _insert_job(db: RawDatabase, message_id: str, name: str, due: float, body: bytes) -> Job:
    sql = db.sql

    def job(connection: Any) -> bool:
        key = (ENDPOINT, message_id, "")
        cursor = connection.execute(
            sql.insert, (ENDPOINT, message_id, name, "", due, body, "raw", *key, *key)
        )
        stored: bool = cursor.rowcount == 1
        if stored and sql.notify is not None and not db.notified:
            db.notified = True
            connection.execute(sql.notify, (sql.channel, ENDPOINT))
        return stored

    return job


def _ack_job(sql: RawSql, owner: str, seq: int, message_id: str, now: float) -> Job:
    def job(connection: Any) -> None:
        connection.execute(sql.ack_delete, (seq, owner))
        connection.execute(sql.ack_inbox, (ENDPOINT, message_id, "", now))

    return job


def _next_due_job(sql: RawSql) -> Job:
    def job(connection: Any) -> float | None:
        row = connection.execute(sql.next_due, (ENDPOINT,)).fetchone()
        return None if row[0] is None else float(row[0])

    return job


class RawQueue:
    """The raw baseline: senders, a feeder, a handler and an ack flusher on one RawDatabase."""

    def __init__(self, db: RawDatabase, prefetch: int = PREFETCH) -> None:
        self.db = db
        self.prefetch = prefetch
        self.owner = secrets.token_hex(8)
        self.ids = secrets.token_hex(12)
        self.sent = 0
        self.wake = trio.Event()
        self.handled: list[int] = []
        self.unflushed = 0
        self.ack_soon = trio.Event()
        self.acked = 0
        self.target = 0
        self.done = trio.Event()
        self.channel = trio.open_memory_channel[tuple[Any, ...]](prefetch)

    async def send(self, message: Order) -> None:
        self.sent += 1
        message_id = f"{self.ids}-{self.sent}"
        now = time.time()
        body = orjson.dumps(
            {
                "id": message_id,
                "name": Order.message_name,
                "version": 1,
                "correlation_id": message_id,
                "causation_id": None,
                "reply_to": None,
                "created_at": now,
                "headers": {},
                "body": {"n": message.n},
            }
        )
        await self.db.write(_insert_job(self.db, message_id, Order.message_name, now, body))
        self.wake.set()

    async def feed(self) -> None:
        send = self.channel[0]
        sql = self.db.sql
        while True:
            self.wake = trio.Event()
            rows = await self.db.write(_claim_job(sql, self.owner, time.time(), self.prefetch))
            if not rows:
                await self.db.read(_next_due_job(sql))
                await self.wake.wait()
            for row in rows:
                await send.send(row)

    async def handle(self) -> None:
        sql = self.db.sql
        async for row in self.channel[1]:
            doc = orjson.loads(row[6])
            await _raw_handler(self, Order(**doc["body"]))
            self.db.write_soon(_ack_job(sql, self.owner, row[0], row[1], time.time()))
            self.unflushed += 1
            self.ack_soon.set()

    async def flush_acks(self) -> None:
        while True:
            await self.ack_soon.wait()
            self.ack_soon = trio.Event()
            count, self.unflushed = self.unflushed, 0
            await self.db.flush()
            self.acked += count
            if self.acked >= self.target:
                self.done.set()

    async def wait_acked(self, total: int) -> None:
        self.target = total
        if self.acked < total:
            self.done = trio.Event()
            await self.done.wait()


async def _raw_handler(state: RawQueue, message: Order) -> None:
    state.handled.append(message.n)


async def _senders(send: Callable[[Order], Any], first: int, n: int, senders: int) -> None:
    per = n // senders

    async def sender(base: int) -> None:
        for i in range(base, base + per):
            await send(Order(i))

    async with trio.open_nursery() as nursery:
        for k in range(senders):
            nursery.start_soon(sender, first + k * per)


# ---------------------------------------------------------------- where a measurement stores


class Place(Protocol):
    """Where one measurement stores its queue, fresh, for either side; removed afterwards."""

    def endpoint(self) -> DurableQueue:
        """The triobus side's durable queue."""
        ...

    def connector(self) -> Connector:
        """The raw side's way to the same kind of database."""
        ...

    def backends(self) -> list[int]:
        """The server processes serving this measurement (none for SQLite)."""
        ...

    def warmed_up(self) -> None:
        """The warm-up is over (untimed): PostgreSQL analyzes the tables."""
        ...

    def remove(self) -> None: ...


class SqlitePlace:
    """A fresh SQLite file in ``folder``."""

    def __init__(self, folder: str, side: str) -> None:
        self.path = os.path.join(folder, f"{side}-{secrets.token_hex(4)}.db")

    def endpoint(self) -> DurableQueue:
        return durable_queue(ENDPOINT, path=self.path, prefetch=PREFETCH, batch_size=BATCH_SIZE)

    def connector(self) -> Connector:
        path = self.path

        def connect() -> sqlite3.Connection:
            connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            for pragma in _CONNECT_PRAGMAS:
                connection.execute(pragma)
            return connection

        sql = RawSql.of(lambda statement: statement, begin="BEGIN IMMEDIATE")
        return Connector("raw-sqlite", connect, sql, create_schema, separate_reads=False)

    def backends(self) -> list[int]:
        return []

    def warmed_up(self) -> None:
        pass

    def remove(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(self.path + suffix):
                os.remove(self.path + suffix)


class PostgresPlace:
    """A fresh schema on the server at ``url`` (dropped by :meth:`remove`).

    Both sides connect with the ``application_name`` triobus's pool gives
    its connections (``triobus <schema>``), so the server processes serving
    the measurement can be found.
    """

    def __init__(self, url: str, side: str) -> None:
        import psycopg

        self.schema = f"bench_{side}_{secrets.token_hex(4)}"
        self.application = f"triobus {self.schema}"
        self.url = f"{url}{'&' if '?' in url else '?'}application_name=triobus%20{self.schema}"
        self.admin = psycopg.connect(url, autocommit=True, connect_timeout=10)

    def endpoint(self) -> DurableQueue:
        return durable_queue(
            ENDPOINT, url=self.url, schema=self.schema, prefetch=PREFETCH, batch_size=BATCH_SIZE
        )

    def connector(self) -> Connector:
        import psycopg
        from psycopg import sql as pgsql

        from triobus.durability._postgres import _DDL, _translated

        url, schema = self.url, self.schema

        def connect() -> psycopg.Connection[Any]:
            return psycopg.connect(url, autocommit=True)

        def create(connection: psycopg.Connection[Any]) -> None:
            with connection.transaction():
                connection.execute(pgsql.SQL(_DDL).format(schema=pgsql.Identifier(schema)))
                connection.execute(_translated(_VERSION, schema), (SCHEMA_VERSION,))

        sql = RawSql.of(
            lambda statement: _translated(statement, schema),
            begin="BEGIN",
            lock_claimed=_PG_LOCK_CLAIMED,
            notify=_PG_NOTIFY,
            channel=f"triobus_{schema}",
        )
        return Connector("raw-postgresql", connect, sql, create, separate_reads=True)

    def backends(self) -> list[int]:
        rows = self.admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (self.application,)
        ).fetchall()
        return [int(pid) for (pid,) in rows]

    def warmed_up(self) -> None:
        # As autovacuum would on a store in use. Without it every plan the
        # connections cached was costed on the empty tables of a fresh schema.
        from psycopg import sql as pgsql

        for table in ("triobus_queue", "triobus_inbox"):
            self.admin.execute(
                pgsql.SQL("ANALYZE {}.{}").format(
                    pgsql.Identifier(self.schema), pgsql.Identifier(table)
                )
            )

    def remove(self) -> None:
        from psycopg import sql as pgsql

        try:
            self.admin.execute(
                pgsql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(pgsql.Identifier(self.schema))
            )
        finally:
            self.admin.close()


def postgres_problem(url: str) -> str | None:
    """Why the PostgreSQL server at ``url`` cannot be measured, or ``None``."""
    try:
        import psycopg
        import psycopg_pool  # noqa: F401  (the triobus side needs it)

        from triobus.durability._postgres import describe_url
    except ImportError as exc:
        return f"psycopg is not installed ({exc}; pip install -e '.[postgresql]')"
    try:
        where = describe_url(url)
    except ValueError as exc:
        return str(exc)
    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        return f"no server at {where} ({reason})"
    return None


# ---------------------------------------------------------------- both sides


@attrs.define
class Result:
    rate: float  # messages per second
    split: Split
    handled: int


async def _raw_run(place: Place, n: int, senders: int, warmup: int) -> Result:
    db = RawDatabase(place.connector())
    await db.open()
    raw = RawQueue(db)
    clock = CpuClock(place.backends)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(raw.feed)
        nursery.start_soon(raw.handle)
        nursery.start_soon(raw.flush_acks)
        await _senders(raw.send, 0, warmup, senders)
        await raw.wait_acked(warmup)
        place.warmed_up()
        gc.collect()
        clock.begin()
        t0 = time.perf_counter()
        await _senders(raw.send, warmup, n, senders)
        await raw.wait_acked(warmup + n)
        elapsed = time.perf_counter() - t0
        split = clock.end()
        nursery.cancel_scope.cancel()
    await db.close()
    return Result(n / elapsed, split, len(raw.handled) - warmup)


class TriobusSink:
    handled: ClassVar[list[int]] = []


class OrderHandler(RequestHandler[Order, None]):
    async def handle(self, request: Order) -> None:
        TriobusSink.handled.append(request.n)


def bench_module() -> Module:
    return Module("bench").bind_request(Order, OrderHandler)


async def _triobus_run(place: Place, n: int, senders: int, warmup: int) -> Result:
    TriobusSink.handled = []
    async with open_bus(
        bench_module(), endpoints=[place.endpoint()], routing=[route(Order).to(ENDPOINT)]
    ) as bus:
        clock = CpuClock(place.backends)
        await _senders(bus.send, 0, warmup, senders)
        await bus.wait_quiet()
        place.warmed_up()
        gc.collect()
        clock.begin()
        t0 = time.perf_counter()
        await _senders(bus.send, warmup, n, senders)
        await bus.wait_quiet()
        elapsed = time.perf_counter() - t0
        split = clock.end()
    return Result(n / elapsed, split, len(TriobusSink.handled) - warmup)


def make_place(args: argparse.Namespace, store: str, side: str, folder: str) -> Place:
    if store == "postgresql":
        return PostgresPlace(args.postgres_url, side)
    return SqlitePlace(folder, side)


def measure(args: argparse.Namespace, store: str, side: str, folder: str) -> Result:
    """One measurement of ``side`` ("raw" or "triobus") on ``store``, in a fresh place."""
    n, senders = args.n, args.senders
    place = make_place(args, store, side, folder)
    run = _triobus_run if side == "triobus" else _raw_run
    try:
        warmup = max(1, n // 20 // senders) * senders  # untimed, in the same run
        result = trio.run(run, place, n, senders, warmup)
    finally:
        place.remove()
    if result.handled != n:
        raise RuntimeError(f"{store} {side}: {result.handled} messages handled, expected {n}")
    return result


# ---------------------------------------------------------------- memory under a backlog


def _template_body() -> dict[str, Any]:
    """The wire document of one triobus envelope of an ``Order``, as triobus's codec writes it."""
    codec = Codec(MessageTypes.from_modules([bench_module()]))
    envelope = Envelope(
        message_id="0" * 24 + "-1",
        message_name=Order.message_name,
        message_version=1,
        correlation_id="0" * 24 + "-1",
        causation_id=None,
        headers={},
        reply_to=None,
        created_at=time.time(),
        message=Order(0),
    )
    doc: dict[str, Any] = orjson.loads(codec.encode(envelope))
    return doc


def store_backlog(path: str, count: int) -> float:
    """Write ``count`` queue rows straight into a fresh file; returns the seconds it took."""
    template = _template_body()
    prefix = secrets.token_hex(12)
    t0 = time.perf_counter()
    connection = sqlite3.connect(path, isolation_level=None)
    for pragma in _CONNECT_PRAGMAS:
        connection.execute(pragma)
    create_schema(connection)
    due = time.time() - 1.0
    chunk = 100_000
    for start in range(0, count, chunk):
        rows = []
        for i in range(start, min(count, start + chunk)):
            message_id = f"{prefix}-{i + 1}"
            template["id"] = template["correlation_id"] = message_id
            template["body"] = {"n": i}
            rows.append((ENDPOINT, message_id, Order.message_name, "", due, orjson.dumps(template)))
        connection.execute("BEGIN")
        connection.executemany(_SEED_INSERT, rows)
        connection.execute("COMMIT")
    connection.close()
    return time.perf_counter() - t0


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def _memory_child(path: str) -> dict[str, Any]:
    """Open a durable queue on ``path`` with a blocked handler; sample RSS."""
    gate = trio.Event()
    first = trio.Event()

    class Blocked(RequestHandler[Order, None]):
        async def handle(self, request: Order) -> None:
            first.set()
            await gate.wait()

    module = Module("bench").bind_request(Order, Blocked)
    endpoint = durable_queue(ENDPOINT, path=path, prefetch=PREFETCH, shutdown=0.1)
    before = _rss_mb()
    async with open_bus(
        module, endpoints=[endpoint], routing=[route(Order).to(ENDPOINT)], drain_timeout=0
    ):
        with trio.fail_after(60):
            await first.wait()
        await trio.sleep(0.5)  # the feeder fills the mailbox and claims the next batch
        counts = await endpoint.counts()
        early = _rss_mb()
        samples = [early]
        for _ in range(int(MEMORY_WINDOW / 0.5)):
            await trio.sleep(0.5)
            samples.append(_rss_mb())
        late = _rss_mb()
        claimed = await endpoint.store.database.read(
            lambda c: c.execute(
                "SELECT COUNT(*) FROM triobus_queue WHERE claimed_by IS NOT NULL"
            ).fetchone()[0]
        )
    return {
        "before": before,
        "early": early,
        "late": late,
        "peak": max(samples),
        "incoming": counts.incoming,
        "claimed": claimed,
    }


def memory_in_child(path: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", path],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------- the run


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _cpu_text(split: Split, n: int, threads: str) -> str:
    text = (
        f"trio thread {split.trio_thread / n * 1e6:.1f} µs, "
        f"{threads} {split.threads / n * 1e6:.1f} µs"
    )
    if split.server is not None:
        text += f", server {split.server / n * 1e6:.1f} µs"
    return text


#: What the CPU lines call the process's threads other than trio's, per store.
_THREADS = {"sqlite": "connection thread", "postgresql": "other threads"}


def throughput(
    args: argparse.Namespace, stores: list[str], folder: str
) -> dict[str, dict[str, list[Any]]]:
    """Per store: each round's best result per side, and the ratios."""
    out: dict[str, dict[str, list[Any]]] = {
        store: {"triobus": [], "raw": [], "ratio": []} for store in stores
    }
    for r in range(args.rounds):
        order = ("raw", "triobus") if r % 2 == 0 else ("triobus", "raw")
        for store in stores:
            got: dict[str, Result] = {}
            for _ in range(args.repeat):
                for side in order:
                    result = measure(args, store, side, folder)
                    if side not in got or result.rate > got[side].rate:
                        got[side] = result  # interference only ever takes time away: keep the best
            for side in order:
                out[store][side].append(got[side])
            ratio = got["triobus"].rate / got["raw"].rate
            out[store]["ratio"].append(ratio)
            _log(
                f"round {r + 1}, {STORES[store]}: "
                + "  ".join(
                    f"{side} {got[side].rate:,.0f} msg/s "
                    f"({_cpu_text(got[side].split, args.n, _THREADS[store])} per msg)"
                    for side in order
                )
                + f"  ratio {ratio:.2f}"
            )
    return out


def memory(args: argparse.Namespace, folder: str) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for backlog in (args.small_backlog, args.backlog):
        path = os.path.join(folder, f"backlog-{backlog}.db")
        seconds = store_backlog(path, backlog)
        size = os.path.getsize(path) / 2**20
        _log(f"backlog {backlog:,}: stored in {seconds:.1f} s ({size:,.0f} MB file)")
        result = memory_in_child(path)
        result["store_seconds"] = seconds
        _log(
            f"backlog {backlog:,}: RSS before the bus {result['before']:.1f} MB, prefetch full "
            f"{result['early']:.1f} MB, {MEMORY_WINDOW:.0f} s later {result['late']:.1f} MB "
            f"(peak {result['peak']:.1f} MB); {result['claimed']} rows claimed of "
            f"{result['incoming']:,} stored"
        )
        out[backlog] = result
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
    return out


def _row(cells: list[str], widths: list[int]) -> str:
    return (
        "| "
        + " | ".join(
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        + " |"
    )


def table(
    args: argparse.Namespace,
    tp: dict[str, dict[str, list[Any]]],
    skipped: dict[str, str],
    mem: dict[int, dict[str, Any]],
) -> str:
    rows: list[list[str]] = []
    for store in args.stores:
        label = f"{STORES[store]} send+handle, {args.n:,} msgs, {args.senders} senders (msg/s)"
        if store in skipped:
            rows.append([label, "", "", "", f">= {MIN_RATIO}x raw", f"skipped: {skipped[store]}"])
            continue
        tb = statistics.median(r.rate for r in tp[store]["triobus"])
        raw = statistics.median(r.rate for r in tp[store]["raw"])
        ratio = statistics.median(tp[store]["ratio"])
        rows.append(
            [
                label,
                f"{tb:,.0f}",
                f"{raw:,.0f}",
                f"{ratio:.2f}x",
                f">= {MIN_RATIO}x raw",
                "pass" if ratio >= MIN_RATIO else "FAIL",
            ]
        )
        if store == "sqlite":
            rows.append(
                [
                    "SQLite send+handle, absolute (msg/s)",
                    f"{tb:,.0f}",
                    "",
                    "",
                    f">= {MIN_RATE:,.0f} msg/s",
                    "pass" if tb >= MIN_RATE else "FAIL",
                ]
            )
    if mem:
        small, big = mem[args.small_backlog], mem[args.backlog]
        delta = max(big["late"], big["peak"]) - max(small["late"], small["peak"])
        rows.append(
            [
                f"RSS, backlog {args.backlog:,} vs {args.small_backlog:,} (MB)",
                f"{max(big['late'], big['peak']):.1f}",
                f"{max(small['late'], small['peak']):.1f}",
                f"{delta:+.1f} MB",
                f"< {MAX_MEMORY_DELTA_MB:.0f} MB more",
                "pass" if delta < MAX_MEMORY_DELTA_MB else "FAIL",
            ]
        )
    header = ["measurement", "triobus", "raw / small", "ratio / delta", "target", "result"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [_row(header, widths), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [_row(r, widths) for r in rows]
    return "\n".join(lines)


def _median_split(results: list[Result]) -> Split:
    servers = [r.split.server for r in results if r.split.server is not None]
    return Split(
        statistics.median(r.split.trio_thread for r in results),
        statistics.median(r.split.threads for r in results),
        statistics.median(servers) if len(servers) == len(results) else None,
    )


def _cpu_lines(args: argparse.Namespace, tp: dict[str, dict[str, list[Any]]]) -> str:
    lines = []
    for store, sides in tp.items():
        for side in ("triobus", "raw"):
            split = _median_split(sides[side])
            lines.append(
                f"CPU per message, {STORES[store]} {side}: "
                f"{_cpu_text(split, args.n, _THREADS[store])} (medians)"
            )
    return "\n".join(lines)


def profile(args: argparse.Namespace, stores: list[str], folder: str) -> None:
    for store in stores:
        profiler = cProfile.Profile()
        profiler.enable()
        measure(args, store, "triobus", folder)
        profiler.disable()
        print(f"triobus on {STORES[store]}:")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.top)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="3 rounds, 5,000 messages, 100,000 backlog"
    )
    parser.add_argument("--smoke", action="store_true", help="1 round, 300 messages, 2,000 backlog")
    parser.add_argument("--rounds", type=int, help="rounds (default 5; 3 with --quick)")
    parser.add_argument("-n", type=int, help="messages per measurement (default 20,000)")
    parser.add_argument(
        "--repeat", type=int, help="runs per side per round, the best kept (default 3; 1 smoke)"
    )
    parser.add_argument("--senders", type=int, default=50, help="concurrent sender tasks")
    parser.add_argument(
        "--store",
        choices=["sqlite", "postgresql", "both"],
        default="both",
        help="the stores measured (default both); the memory check runs with SQLite",
    )
    parser.add_argument(
        "--postgres-url",
        default=POSTGRES_URL,
        help="the PostgreSQL server (default $TRIOBUS_TEST_POSTGRES, else %(default)s)",
    )
    parser.add_argument("--backlog", type=int, help="stored messages of the memory check")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory check")
    parser.add_argument("--profile", action="store_true", help="cProfile the triobus side")
    parser.add_argument("--top", type=int, default=30, help="functions --profile lists")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        print(json.dumps(trio.run(_memory_child, args.memory_child)))
        return 0
    quick, smoke = args.quick, args.smoke
    args.rounds = args.rounds or (1 if smoke else 3 if quick else 5)
    args.repeat = args.repeat or (1 if smoke else 3)
    args.n = args.n or (300 if smoke else 5_000 if quick else 20_000)
    args.senders = min(args.senders, 10) if smoke else args.senders
    args.n = args.n // args.senders * args.senders  # each sender sends as many
    args.backlog = args.backlog or (2_000 if smoke else 100_000 if quick else 1_000_000)
    args.small_backlog = 1_000
    args.stores = list(STORES) if args.store == "both" else [args.store]
    if (
        args.rounds < 1
        or args.repeat < 1
        or args.n < args.senders
        or args.backlog < args.small_backlog
    ):
        parser.error("need --rounds and --repeat >= 1, -n >= --senders and --backlog >= 1,000")
    skipped: dict[str, str] = {}
    if "postgresql" in args.stores:
        problem = postgres_problem(args.postgres_url)
        if problem is not None:
            skipped["postgresql"] = problem
            _log(f"PostgreSQL skipped: {problem}")
    stores = [store for store in args.stores if store not in skipped]
    folder = tempfile.mkdtemp(prefix="bench_durable-")
    try:
        if args.profile:
            profile(args, stores, folder)
            return 0
        _log(
            f"bench_durable: triobus from {os.path.dirname(triobus.__file__ or '')}; "
            f"{args.rounds} round(s) of {args.repeat} run(s) per side, {args.n:,} messages, "
            f"{args.senders} senders, prefetch {PREFETCH}, batch_size {BATCH_SIZE}; "
            + "; ".join(_version(args, store) for store in stores)
        )
        tp = throughput(args, stores, folder)
        with_memory = "sqlite" in args.stores and not args.no_memory
        mem = memory(args, folder) if with_memory else {}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(table(args, tp, skipped, mem))
    if tp:
        print(_cpu_lines(args, tp))
    if mem:
        big = mem[args.backlog]
        rate = args.backlog / big["store_seconds"]
        print(
            f"backlog of {args.backlog:,} written straight into the table in "
            f"{big['store_seconds']:.1f} s ({rate:,.0f} rows/s)"
        )
    return 0


def _version(args: argparse.Namespace, store: str) -> str:
    if store == "sqlite":
        return f"SQLite {sqlite3.sqlite_version}"
    import psycopg

    from triobus.durability._postgres import describe_url

    with psycopg.connect(args.postgres_url, connect_timeout=10) as connection:
        version = connection.execute("SHOW server_version").fetchone()
    server = version[0] if version else "?"
    return (
        f"PostgreSQL {server} at {describe_url(args.postgres_url)} "
        f"(psycopg {psycopg.__version__}, libpq {psycopg.pq.version()})"
    )


if __name__ == "__main__":
    sys.exit(main())
