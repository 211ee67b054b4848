"""Interpreter opcodes per operation: triobus against the raw trio baselines.

Run from the project root::

    .venv/bin/python benchmarks/count_opcodes.py            # every operation
    .venv/bin/python benchmarks/count_opcodes.py invoke -v  # one, with the top functions

Timing on a shared or virtual machine swings; opcode counts do not. Each
operation of ``bench_core.py`` and ``bench_bus.py`` runs twice under
``sys.settrace`` with opcode events on, at two sizes; the difference divided
by the difference of sizes is the count per operation, set-up excluded. Both
sides run the same trio scheduler code, so the ratio of counts follows the
ratio of times (a little under it: making objects and coroutines costs time
that no opcode shows).
"""

from __future__ import annotations

import argparse
import collections
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).parent))

import bench_bus
import bench_core

Counts = collections.Counter[tuple[str, str]]
_counts: Counts = collections.Counter()


def _global_trace(frame: FrameType, event: str, arg: Any) -> Any:
    frame.f_trace_opcodes = True
    frame.f_trace_lines = False
    return _local_trace


def _local_trace(frame: FrameType, event: str, arg: Any) -> Any:
    if event == "opcode":
        code = frame.f_code
        _counts[(Path(code.co_filename).name, code.co_name)] += 1
    return _local_trace


def _traced(run: Callable[[int], object], n: int) -> Counts:
    run(20)  # warm: caches filled, code specialised
    _counts.clear()
    sys.settrace(_global_trace)
    try:
        run(n)
    finally:
        sys.settrace(None)
    return collections.Counter(_counts)


def per_operation(
    run: Callable[[int], object], small: int, large: int
) -> dict[tuple[str, str], float]:
    """Opcodes per operation, by function."""
    a, b = _traced(run, small), _traced(run, large)
    return {key: (b[key] - a.get(key, 0)) / (large - small) for key in b}


def _core(fn: Callable[..., Any], **kwargs: Any) -> Callable[[int], object]:
    return lambda n: trio.run(lambda: fn(n, 5, **kwargs))


#: operation -> (triobus, raw, small size, large size)
OPERATIONS: dict[str, tuple[Callable[[int], object], Callable[[int], object], int, int]] = {
    "ask": (_core(bench_core.triobus_ask), _core(bench_core.raw_ask), 200, 1200),
    "tell_nowait": (
        _core(bench_core.triobus_tell, awaited=False),
        _core(bench_core.raw_tell),
        2000,
        12000,
    ),
    "invoke": (bench_bus.triobus_measure("invoke"), bench_bus.raw_ask, 200, 1200),
    "send": (bench_bus.triobus_measure("send"), bench_bus.raw_tell, 200, 1200),
    "publish": (bench_bus.triobus_measure("publish"), bench_bus.raw_fan_out, 200, 1200),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("operations", nargs="*", help=f"some of: {', '.join(OPERATIONS)}")
    parser.add_argument("-v", "--verbose", action="store_true", help="top functions of triobus")
    parser.add_argument("--top", type=int, default=15, help="how many functions -v lists")
    args = parser.parse_args(argv)
    unknown = set(args.operations) - set(OPERATIONS)
    if unknown:
        parser.error(f"unknown operation(s) {sorted(unknown)}: choose from {', '.join(OPERATIONS)}")
    bench_bus.WARMUP = 50
    print(f"{'operation':12s} | {'triobus':>8s} | {'raw':>8s} | ratio")
    print(f"{'-' * 12}-+-{'-' * 8}-+-{'-' * 8}-+------")
    for name in args.operations or list(OPERATIONS):
        mine, raw, small, large = OPERATIONS[name]
        ours = per_operation(mine, small, large)
        theirs = per_operation(raw, small, large)
        total, base = sum(ours.values()), sum(theirs.values())
        print(f"{name:12s} | {total:8.0f} | {base:8.0f} | {total / base:.2f}x", flush=True)
        if args.verbose:
            for (file, function), count in sorted(ours.items(), key=lambda kv: -kv[1])[: args.top]:
                print(f"    {count:7.1f}  {file}:{function}")


if __name__ == "__main__":
    main()
