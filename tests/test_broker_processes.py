"""Broker endpoints across processes, on the real brokers (RabbitMQ, and Kafka on Tansu).

The handlers run in worker processes (tests/workers/broker_worker.py); this
process sends, publishes and invokes through a bus whose routes name the
message types only. Each worker writes its effects in SQLite with a durable
inbox, so "none twice in effect" is counted, not assumed.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

import triobus
from triobus import MessageBus, broker_endpoint, open_bus, route

sys.path.insert(0, str(Path(__file__).parent / "workers"))
from broker_messages import REMOTE, GetQuote, OrderPlaced, OrderShipped, PlaceOrder, Quote

from broker_helpers import eventually

WORKER = Path(__file__).parent / "workers" / "broker_worker.py"


@pytest.fixture(params=["rabbitmq", "kafka"])
def broker(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(broker kind, address) of a running broker."""
    if request.param == "rabbitmq":
        address: str = request.getfixturevalue("rabbitmq_url")
    else:
        address = request.getfixturevalue("kafka_bootstrap")
    return request.param, address


def make_transport(broker: tuple[str, str]) -> triobus.BrokerTransport:
    kind, address = broker
    if kind == "rabbitmq":
        return triobus.rabbitmq_transport(address)
    return triobus.kafka_transport(address)


class Workers:
    """Worker processes of one test, all on one endpoint and one effects file."""

    def __init__(self, broker: tuple[str, str], uri: str, path: Path) -> None:
        self.broker = broker
        self.uri = uri
        self.path = path
        self.running: list[subprocess.Popen[str]] = []
        self._logs: list[Any] = []

    def start(self) -> subprocess.Popen[str]:
        kind, address = self.broker
        log = open(self.path.with_suffix(f".{len(self.running)}.log"), "w")  # noqa: SIM115
        self._logs.append(log)
        worker = subprocess.Popen(
            [sys.executable, str(WORKER), kind, address, self.uri, str(self.path)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        self.running.append(worker)
        return worker

    async def ready(self, worker: subprocess.Popen[str]) -> None:
        assert worker.stdout is not None
        line = await trio.to_thread.run_sync(worker.stdout.readline)
        if line.strip() != "ready":
            log = self.path.with_suffix(f".{self.running.index(worker)}.log").read_text()
            raise AssertionError(f"the worker did not start: {line!r}\n{log}")

    async def started(self, count: int = 1) -> None:
        workers = [self.start() for _ in range(count)]
        for worker in workers:
            await self.ready(worker)

    def kill(self, worker: subprocess.Popen[str]) -> None:
        worker.send_signal(signal.SIGKILL)
        worker.wait()

    def stop_all(self) -> None:
        for worker in self.running:
            if worker.poll() is None:
                worker.terminate()
                try:
                    worker.wait(10)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
            if worker.stdout is not None:
                worker.stdout.close()
        for log in self._logs:
            log.close()

    def effects(self, kind: str | None = None) -> list[tuple[str, str, int, int]]:
        if not self.path.exists():
            return []
        with sqlite3.connect(self.path, timeout=30) as connection:
            try:
                rows = connection.execute(
                    "SELECT kind, message_id, n, calls FROM effects"
                ).fetchall()
            except sqlite3.OperationalError:
                return []  # no table yet
        return [row for row in rows if kind is None or row[0] == kind]

    def calls(self) -> int:
        with sqlite3.connect(self.path, timeout=30) as connection:
            (count,) = connection.execute("SELECT COUNT(*) FROM calls").fetchone()
        return int(count)


@pytest.fixture
def workers(broker: tuple[str, str], tmp_path: Path) -> Iterator[Workers]:
    running = Workers(broker, f"orders-{uuid.uuid4().hex[:8]}", tmp_path / "effects.db")
    try:
        yield running
    finally:
        running.stop_all()


@asynccontextmanager
async def sender(broker: tuple[str, str], uri: str, **options: Any) -> AsyncIterator[MessageBus]:
    """This process: routes every message type to the broker endpoint, binds no handler."""
    endpoint = broker_endpoint(uri, make_transport(broker), **options)
    async with open_bus(endpoints=[endpoint], routing=[route(t).to(uri) for t in REMOTE]) as bus:
        yield bus


def once_each(rows: list[tuple[str, str, int, int]]) -> bool:
    return all(calls == 1 for _, _, _, calls in rows)


async def test_send_publish_and_invoke_round_trip_between_processes(workers: Workers) -> None:
    await workers.started()
    async with sender(workers.broker, workers.uri) as bus:
        for n in range(30):
            await bus.send(PlaceOrder(n))
        for n in range(10):
            await bus.publish(OrderPlaced(n))
        await bus.publish(OrderShipped(1))
        assert await bus.invoke(GetQuote("apple"), timeout=30) == Quote("apple", 42)
        with pytest.raises(triobus.RemoteHandlerError) as failure:
            await bus.invoke(GetQuote("boom"), timeout=30)
        await eventually(lambda: len(workers.effects()) == 30 + 10 + 10 + 1, timeout=60)
    assert failure.value.exception_type == "ValueError"
    assert "no price for boom" in failure.value.remote_traceback
    effects = workers.effects()
    assert once_each(effects)
    assert sorted(n for _, _, n, _ in workers.effects("place")) == list(range(30))
    assert sorted(n for _, _, n, _ in workers.effects("billing")) == list(range(10))
    # The audit module takes both events through its wildcard binding (orders.#).
    assert len(workers.effects("audit OrderPlaced")) == 10
    assert len(workers.effects("audit OrderShipped")) == 1


async def test_an_invoke_nobody_answers_times_out(broker: tuple[str, str]) -> None:
    async with sender(broker, f"nobody-{uuid.uuid4().hex[:8]}") as bus:
        with pytest.raises(triobus.AskTimeout, match="within 2 s"):
            await bus.invoke(GetQuote("apple"), timeout=2)


async def test_competing_consumers_share_the_work_once_each(workers: Workers) -> None:
    await workers.started(2)
    async with sender(workers.broker, workers.uri) as bus:
        async with trio.open_nursery() as nursery:
            for start in range(0, 400, 50):

                async def send_some(start: int = start) -> None:
                    for n in range(start, start + 50):
                        await bus.send(PlaceOrder(n))

                nursery.start_soon(send_some)
        await eventually(lambda: len(workers.effects("place")) == 400, timeout=90)
    effects = workers.effects("place")
    assert once_each(effects)
    assert sorted(n for _, _, n, _ in effects) == list(range(400))


async def test_a_consumer_killed_mid_stream_loses_nothing_and_applies_nothing_twice(
    workers: Workers,
) -> None:
    total = 1500
    await workers.started()
    async with sender(workers.broker, workers.uri) as bus:
        async with trio.open_nursery() as nursery:

            async def send_all() -> None:
                for n in range(total):
                    await bus.send(PlaceOrder(n))

            nursery.start_soon(send_all)
            for at in (300, 800):
                await eventually(lambda at=at: len(workers.effects("place")) >= at, timeout=90)
                workers.kill(workers.running[-1])
                await workers.started()
        await eventually(lambda: len(workers.effects("place")) == total, timeout=120)
    effects = workers.effects("place")
    assert sorted(n for _, _, n, _ in effects) == list(range(total))
    assert once_each(effects)
