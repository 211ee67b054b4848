"""The benchmarks' smoke modes run (no timing is checked here: timing is never a test)."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import triobus

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_benchmark(name: str) -> Iterator[ModuleType]:
    """The benchmark script ``name`` as a module, registered while it is used."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # attrs, cattrs and dataclasses resolve its classes through it
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[name]


@pytest.fixture
def bench_durable() -> Iterator[ModuleType]:
    yield from load_benchmark("bench_durable")


@pytest.fixture
def bench_bridge() -> Iterator[ModuleType]:
    yield from load_benchmark("bench_bridge")


@pytest.fixture
def bench_kafka() -> Iterator[ModuleType]:
    yield from load_benchmark("bench_kafka")


def test_the_durable_benchmark_smoke_run_handles_every_message_on_both_sides(
    bench_durable: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    # measure() raises unless each side handled exactly the messages it sent;
    # PostgreSQL is measured when the test server is there, else its row says why not.
    assert bench_durable.main(["--smoke", "--no-memory"]) == 0
    table = capsys.readouterr().out
    assert "| SQLite send+handle, 300 msgs, 10 senders (msg/s) " in table
    assert "| SQLite send+handle, absolute (msg/s) " in table
    assert "CPU per message, SQLite raw: trio thread" in table
    postgres = next(line for line in table.splitlines() if line.startswith("| PostgreSQL"))
    if bench_durable.postgres_problem(bench_durable.POSTGRES_URL) is None:
        assert postgres.split("|")[-2].strip() in ("pass", "FAIL")
        assert "CPU per message, PostgreSQL triobus: trio thread" in table
    else:
        assert "| skipped: " in postgres


def test_the_durable_benchmark_says_postgresql_is_skipped_when_no_server_answers(
    bench_durable: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    nowhere = "postgresql://postgres@127.0.0.1:1/test"
    argv = ["--smoke", "--store", "postgresql", "--postgres-url", nowhere]
    assert bench_durable.main(argv) == 0
    table = capsys.readouterr().out
    assert "| PostgreSQL send+handle, 300 msgs, 10 senders (msg/s) |" in table
    assert "| skipped: no server at postgresql://postgres@127.0.0.1:1/test (" in table
    assert "SQLite" not in table and "RSS" not in table


def test_the_bridge_benchmark_smoke_run_gets_every_result_back(
    bench_bridge: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    # measure_bridge() raises unless every call got its own result.
    assert bench_bridge.main(["--smoke", "--tasks", "8"]) == 0
    table = capsys.readouterr().out
    assert "| 8 concurrent trio tasks |" in table
    assert "| one trio task at a time |" in table


@pytest.fixture
def bench_brokers() -> Iterator[ModuleType]:
    yield from load_benchmark("bench_brokers")


def test_the_broker_benchmark_quick_run_prints_a_row_per_broker_operation_and_system(
    bench_brokers: ModuleType, rabbitmq_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Each consume raises unless it got every message, and each RabbitMQ publish
    # checks that the queue holds them all; the script starts its own Tansu.
    # triobus on RabbitMQ is also measured once on quorum queues, below the table.
    assert bench_brokers.main(["--quick", "--rabbitmq-url", rabbitmq_url]) == 0
    table = capsys.readouterr().out
    kafka = next(line for line in table.splitlines() if line.startswith("| Kafka"))
    if "| skipped: " in kafka:  # no Tansu binary: the Kafka tests say the same
        message = f"the broker benchmark's Kafka rows: {kafka.split('| skipped: ')[1]}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    faststream = importlib.util.find_spec("faststream") is not None
    for broker in ("RabbitMQ", "Kafka (Tansu)"):
        for operation in ("publish", "consume"):
            for system in ("raw", "FastStream", "triobus"):
                line = next(
                    line
                    for line in table.splitlines()
                    if [cell.strip() for cell in line.split("|")[1:4]]
                    == [broker, operation, system]
                )
                cells = [cell.strip() for cell in line.split("|")[4:-1]]
                rate, result = cells[0], cells[-1]
                if system == "FastStream" and not faststream:
                    assert result.startswith("not installed"), line
                elif result.startswith("not measured yet"):
                    # Until the Kafka endpoint lands; every RabbitMQ row is measured.
                    assert system == "triobus" and broker == "Kafka (Tansu)", line
                    assert not hasattr(triobus, "kafka_endpoint"), line
                else:
                    assert int(rate.replace(",", "")) > 0, line
                    assert result.split(" ")[0] in (
                        ("pass", "FAIL") if system == "triobus" else ("-",)
                    ), line
    assert "triobus on RabbitMQ, quorum queues (once): publish " in table
    assert "triobus's message on RabbitMQ: the bus's envelope, " in table


@pytest.mark.slow
def test_the_kafka_benchmark_smoke_run_takes_every_message_back(
    bench_kafka: ModuleType, kafka_bootstrap: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench_kafka.main(["--smoke", "-n", "500", "--bootstrap", kafka_bootstrap]) == 0
    table = capsys.readouterr().out
    assert "| transport publish, one per call (64 trio tasks) |" in table
    assert "| transport fetch+settle, prefetch 512 |" in table
