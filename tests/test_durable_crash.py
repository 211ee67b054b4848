"""Crash tests: a worker consuming a durable queue is SIGKILLed at random points."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from triobus.durability import Codec, MessageTypes
from triobus.durability._store import SqliteStore

sys.path.insert(0, str(Path(__file__).parent / "workers"))
import durable_worker

from durable_helpers import root_envelope

WORKER = Path(__file__).parent / "workers" / "durable_worker.py"
COUNT = 10_000


async def _seed(path: str, count: int) -> None:
    """Store ``count`` messages in the worker's queue, as a sender's bus would."""
    codec = Codec(MessageTypes().register(durable_worker.Work))
    store = SqliteStore(path)
    await store.open()
    try:
        async with trio.open_nursery() as nursery:
            for start in range(0, count, count // 20):

                async def batch(start: int = start) -> None:
                    for n in range(start, min(start + count // 20, count)):
                        envelope = root_envelope(durable_worker.Work(n), f"m-{n}", "crash.work")
                        await store.enqueue(
                            "crash-work",
                            envelope.message_id,
                            "crash.work",
                            "",
                            0.0,
                            codec.encode(envelope),
                        )

                nursery.start_soon(batch)
    finally:
        await store.close()


def _effects(path: str) -> int:
    connection = sqlite3.connect(path, timeout=30)
    try:
        connection.execute(durable_worker.SCHEMA)
        return int(connection.execute("SELECT COUNT(*) FROM effects").fetchone()[0])
    finally:
        connection.close()


def _worker(path: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as errors:
        return subprocess.Popen(
            [sys.executable, str(WORKER), path, str(COUNT)],
            stdout=subprocess.DEVNULL,
            stderr=errors,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )


def _kill_after(path: str, worker: subprocess.Popen[bytes], at: int, deadline: float) -> None:
    """SIGKILL ``worker`` once ``at`` effects exist (or it ended, or the deadline passed)."""
    while time.monotonic() < deadline and worker.poll() is None:
        if _effects(path) >= at:
            break
        time.sleep(0.01)
    worker.send_signal(signal.SIGKILL)
    worker.wait()


@pytest.mark.slow
async def test_sigkilled_workers_handle_every_message_exactly_once_in_effect(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "crash.db")
    await _seed(path, COUNT)
    rng = random.Random(20261203)
    kills = 0
    deadline = time.monotonic() + 300
    points = sorted(rng.sample(range(200, COUNT - 500), 6))
    for at in points:
        worker = _worker(path, tmp_path / f"worker-{kills}.log")
        await trio.to_thread.run_sync(_kill_after, path, worker, at, deadline)
        kills += 1
    log = tmp_path / "worker-last.log"
    worker = _worker(path, log)
    await trio.to_thread.run_sync(lambda: worker.wait(timeout=240))
    assert worker.returncode == 0, log.read_text()[-3000:]

    connection = sqlite3.connect(path)
    effects = dict(connection.execute("SELECT message_id, calls FROM effects").fetchall())
    (queued,) = connection.execute("SELECT COUNT(*) FROM triobus_queue").fetchone()
    (letters,) = connection.execute("SELECT COUNT(*) FROM triobus_dead_letters").fetchone()
    connection.close()
    assert kills == 6
    assert len(effects) == COUNT  # none lost
    assert set(effects) == {f"m-{n}" for n in range(COUNT)}
    assert set(effects.values()) == {1}  # each applied once: the inbox commit is the effect's
    assert queued == 0
    assert letters == 0
