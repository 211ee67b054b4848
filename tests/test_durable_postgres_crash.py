"""Crash test on PostgreSQL: two workers share one durable queue and are SIGKILLed repeatedly."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import trio

from triobus.durability import Codec, MessageTypes

sys.path.insert(0, str(Path(__file__).parent / "workers"))
import pg_worker

from durable_helpers import root_envelope

WORKER = Path(__file__).parent / "workers" / "pg_worker.py"
COUNT = 10_000
KILLS_EACH = 4


async def _seed(url: str, schema: str, count: int, keys: int = 0, senders: int = 20) -> None:
    """Store ``count`` messages in the workers' queue, as ``senders`` senders would
    (one sender: stored in the order of ``n``).
    """
    from triobus.durability._postgres import PostgresStore

    codec = Codec(MessageTypes().register(pg_worker.Work))
    store = PostgresStore(url, schema=schema)
    await store.open()
    try:
        async with trio.open_nursery() as nursery:
            step = -(-count // senders)
            for start in range(0, count, step):

                async def batch(start: int = start) -> None:
                    for n in range(start, min(start + step, count)):
                        envelope = root_envelope(pg_worker.Work(n), f"m-{n}", "crash.work")
                        data = codec.encode(envelope)
                        key = str(n % keys) if keys else None
                        await store.enqueue(
                            "crash-work", f"m-{n}", "crash.work", "", 0.0, data, False, key
                        )

                nursery.start_soon(batch)
    finally:
        await store.close()


def _effects(url: str, schema: str) -> dict[str, tuple[int, str]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        rows = connection.execute(
            f'SELECT message_id, calls, worker FROM "{schema}".effects'
        ).fetchall()
    return {message_id: (calls, worker) for message_id, calls, worker in rows}


def _count(url: str, schema: str) -> int:
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        (count,) = connection.execute(f'SELECT COUNT(*) FROM "{schema}".effects').fetchone()
    return int(count)


def _worker(
    url: str, schema: str, name: str, log: Path, count: int = COUNT, keys: int = 0
) -> subprocess.Popen[bytes]:
    with log.open("wb") as errors:
        return subprocess.Popen(
            [sys.executable, str(WORKER), url, schema, str(count), name, str(keys)],
            stdout=subprocess.DEVNULL,
            stderr=errors,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )


def _run_slot(
    url: str, schema: str, name: str, points: list[int], folder: Path, deadline: float
) -> int:
    """Start worker ``name``; SIGKILL it at each of ``points`` effects and start it again.

    Returns how many times it was killed.
    """
    kills = 0
    for at in points:
        worker = _worker(url, schema, name, folder / f"{name}-{kills}.log")
        while time.monotonic() < deadline and worker.poll() is None:
            if _count(url, schema) >= at:
                break
            time.sleep(0.02)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        kills += 1
    return kills


@pytest.mark.slow
async def test_two_sigkilled_workers_share_a_postgres_queue_and_handle_each_message_once(
    tmp_path: Path, postgres_url: str, pg_schema: str
) -> None:
    url, schema = postgres_url, pg_schema
    await _seed(url, schema, COUNT)
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(pg_worker.schema_sql(schema))
    rng = random.Random(20261203)
    deadline = time.monotonic() + 300
    points = sorted(rng.sample(range(300, COUNT - 1500), 2 * KILLS_EACH))
    kills: dict[str, int] = {}

    def slot(name: str, mine: list[int]) -> None:
        kills[name] = _run_slot(url, schema, name, mine, tmp_path, deadline)

    threads = [
        threading.Thread(target=slot, args=("a", points[0::2])),
        threading.Thread(target=slot, args=("b", points[1::2])),
    ]
    for thread in threads:
        thread.start()
    await trio.to_thread.run_sync(lambda: [thread.join() for thread in threads])

    finals = {name: _worker(url, schema, name, tmp_path / f"{name}-last.log") for name in "ab"}
    for name, worker in finals.items():
        await trio.to_thread.run_sync(lambda worker=worker: worker.wait(timeout=240))
        log = (tmp_path / f"{name}-last.log").read_text()
        assert worker.returncode == 0, log[-3000:]

    effects = _effects(url, schema)
    with psycopg.connect(url, autocommit=True) as connection:
        (queued,) = connection.execute(f'SELECT COUNT(*) FROM "{schema}".triobus_queue').fetchone()
        (letters,) = connection.execute(
            f'SELECT COUNT(*) FROM "{schema}".triobus_dead_letters'
        ).fetchone()
    shares = {name: sum(1 for _, worker in effects.values() if worker == name) for name in "ab"}
    assert kills == {"a": KILLS_EACH, "b": KILLS_EACH}
    assert set(effects) == {f"m-{n}" for n in range(COUNT)}  # none lost
    assert {calls for calls, _ in effects.values()} == {1}  # each applied once
    assert queued == 0
    assert letters == 0
    assert min(shares.values()) > COUNT // 10, shares  # both processes took a share


async def test_two_workers_on_a_partitioned_queue_keep_each_keys_order(
    tmp_path: Path, postgres_url: str, pg_schema: str
) -> None:
    import psycopg

    url, schema, count, keys = postgres_url, pg_schema, 2_000, 8
    await _seed(url, schema, count, keys, senders=1)
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(pg_worker.schema_sql(schema))
    workers = {
        name: _worker(url, schema, name, tmp_path / f"{name}.log", count, keys) for name in "ab"
    }
    for name, worker in workers.items():
        await trio.to_thread.run_sync(lambda worker=worker: worker.wait(timeout=240))
        assert worker.returncode == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    with psycopg.connect(url, autocommit=True) as connection:
        rows = connection.execute(
            f'SELECT n, worker, calls FROM "{schema}".effects ORDER BY handled'
        ).fetchall()
    by_key: dict[int, list[int]] = {}
    for n, _, _ in rows:
        by_key.setdefault(n % keys, []).append(n)
    assert len(rows) == count and {calls for _, _, calls in rows} == {1}
    assert all(numbers == sorted(numbers) for numbers in by_key.values())  # each key in order
    shares = {name: sum(1 for _, worker, _ in rows if worker == name) for name in "ab"}
    assert min(shares.values()) > count // 10, shares  # both took a share
