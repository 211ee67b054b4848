"""Machine instructions per operation under valgrind: triobus against the raw trio baselines.

Run from the project root (valgrind installed)::

    .venv/bin/python benchmarks/count_instructions.py          # ask, invoke, send, publish
    .venv/bin/python benchmarks/count_instructions.py invoke   # some of them

Each side of an operation runs in a process of its own under ``valgrind
--tool=cachegrind --cache-sim=no`` with ``PYTHONHASHSEED=0``, at two sizes;
the difference of the two instruction totals divided by the difference of
the sizes is the count per operation, start-up excluded. The counts do not
move with the machine's load, and unlike opcode counts (``count_opcodes.py``)
they include what runs in C: raising and catching an exception, making
objects, coroutines and frames, setting a context variable. About half a
minute per operation.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).parent))

import bench_bus
import bench_core

Run = Callable[[int], object]


def _core(fn: Callable[[int, int], Awaitable[object]]) -> Run:
    return lambda n: trio.run(lambda: fn(n, 5))


#: operation -> (triobus, its baseline, the baseline's name, small size, large size)
OPERATIONS: dict[str, tuple[Run, Run, str, int, int]] = {
    "ask": (_core(bench_core.triobus_ask), _core(bench_core.raw_ask), "raw ask", 2000, 4000),
    "invoke": (bench_bus.triobus_measure("invoke"), bench_bus.raw_ask, "raw ask", 2000, 4000),
    "send": (bench_bus.triobus_measure("send"), bench_bus.floor_send, "send floor", 5000, 10000),
    "publish": (
        bench_bus.triobus_measure("publish"),
        bench_bus.raw_fan_out,
        "raw fan-out",
        5000,
        10000,
    ),
}
SIDES = ("triobus", "baseline")

_I_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def _instructions(operation: str, side: str, n: int) -> int:
    """Instructions of one process that runs ``side`` of ``operation`` ``n`` times."""
    command = [
        "valgrind",
        "--tool=cachegrind",
        "--cache-sim=no",
        "--cachegrind-out-file=/dev/null",
        sys.executable,
        __file__,
        "--run",
        operation,
        side,
        str(n),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    found = _I_REFS.search(done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{done.stderr}")
    return int(found.group(1).replace(",", ""))


def per_operation(operation: str, side: str) -> float:
    """Instructions per operation of one side, start-up excluded."""
    *_, small, large = OPERATIONS[operation]
    a = _instructions(operation, side, small)
    b = _instructions(operation, side, large)
    return (b - a) / (large - small)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("operations", nargs="*", help=f"some of: {', '.join(OPERATIONS)}")
    # One measured process (what valgrind runs): --run OPERATION SIDE N.
    parser.add_argument("--run", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        operation, side, n = args.run
        bench_bus.WARMUP = 50
        mine, baseline, *_ = OPERATIONS[operation]
        (mine if side == "triobus" else baseline)(int(n))
        return
    unknown = set(args.operations) - set(OPERATIONS)
    if unknown:
        parser.error(f"unknown operation(s) {sorted(unknown)}: choose from {', '.join(OPERATIONS)}")
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (apt-get install valgrind)")
    print(f"{'operation':10s} | {'triobus':>9s} | {'baseline':>9s} | {'':11s} | ratio")
    print(f"{'-' * 10}-+-{'-' * 9}-+-{'-' * 9}-+-{'-' * 11}-+------")
    for operation in args.operations or list(OPERATIONS):
        ours, theirs = (per_operation(operation, side) for side in SIDES)
        name = OPERATIONS[operation][2]
        print(
            f"{operation:10s} | {ours:9.0f} | {theirs:9.0f} | {name:11s} | {ours / theirs:.3f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
