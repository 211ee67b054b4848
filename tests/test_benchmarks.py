"""The durable benchmark's smoke mode runs (no timing is checked here: timing is never a test)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCH_DURABLE = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_durable.py"


@pytest.fixture
def bench_durable() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("bench_durable", BENCH_DURABLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_durable"] = module  # attrs and cattrs resolve its classes through it
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules["bench_durable"]


def test_the_durable_benchmark_smoke_run_handles_every_message_on_both_sides(
    bench_durable: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    # measure() raises unless each side handled exactly the messages it sent.
    assert bench_durable.main(["--smoke", "--no-memory"]) == 0
    table = capsys.readouterr().out
    assert "| send+handle, 300 msgs, 10 senders (msg/s) |" in table
    assert "| send+handle, absolute (msg/s)" in table
    assert "CPU per message, raw: trio thread" in table
