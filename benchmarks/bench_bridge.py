"""The asyncio bridge micro benchmark: trivial calls through one bridge, grouped or one at a time.

Run from the project root::

    .venv/bin/python benchmarks/bench_bridge.py            # 3 rounds of 10,000 calls
    .venv/bin/python benchmarks/bench_bridge.py --smoke    # 1 round of 1,000 calls

N trivial ``await bridge.run(trivial, i)`` calls (``trivial`` returns its
argument), made by K concurrent trio tasks (64 by default) that take the
next call number until N are made, and by one task making them one at a
time. Time (wall clock) runs from the first call until the last result is
back in trio; each measurement opens its own bridge in its own ``trio.run``.
The **asyncio reference** is the same N calls made by K asyncio tasks, each
awaiting one new task per call on a plain ``asyncio.run``: the cost of a task
per call without any crossing. Crossings per call are read from the
bridge's statistics. The table shows medians over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from triobus.transports import open_asyncio_bridge


async def trivial(i: int) -> int:
    return i


def _workers(n: int, tasks: int) -> list[range]:
    """Call numbers 0..n-1 split into ``tasks`` interleaved ranges."""
    return [range(start, n, tasks) for start in range(tasks)]


@dataclass(frozen=True)
class Measurement:
    """One measurement: wall and CPU seconds (every thread of the process), and crossings."""

    n: int
    elapsed: float
    cpu: float
    crossings_to_loop: int = 0
    crossings_to_trio: int = 0

    @property
    def rate(self) -> float:
        return self.n / self.elapsed

    @property
    def cpu_us(self) -> float:
        return self.cpu / self.n * 1e6


def measure_bridge(n: int, tasks: int) -> Measurement:
    """``n`` calls through one bridge by ``tasks`` concurrent trio tasks."""

    async def main() -> Measurement:
        async with open_asyncio_bridge() as bridge:
            await bridge.run(trivial, -1)  # the loop is warm before the clock starts
            warm = bridge.statistics()
            done = 0

            async def worker(numbers: range) -> None:
                nonlocal done
                for i in numbers:
                    if await bridge.run(trivial, i) != i:
                        raise AssertionError(f"call {i} got another call's result")
                    done += 1

            start, cpu_start = time.perf_counter(), time.process_time()
            async with trio.open_nursery() as nursery:
                for numbers in _workers(n, tasks):
                    nursery.start_soon(worker, numbers)
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            stats = bridge.statistics()
        if done != n:
            raise AssertionError(f"{done} calls of {n} returned")
        return Measurement(
            n,
            elapsed,
            cpu,
            crossings_to_loop=stats.crossings_to_loop - warm.crossings_to_loop,
            crossings_to_trio=stats.crossings_to_trio - warm.crossings_to_trio,
        )

    gc.collect()
    return trio.run(main)


def measure_asyncio(n: int, tasks: int) -> Measurement:
    """``n`` calls, each one new task awaited, by ``tasks`` asyncio tasks on a plain loop."""

    async def main() -> Measurement:
        async def worker(numbers: range) -> None:
            for i in numbers:
                if await asyncio.create_task(trivial(i)) != i:
                    raise AssertionError(f"call {i} got another call's result")

        start, cpu_start = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker(numbers) for numbers in _workers(n, tasks)))
        return Measurement(n, time.perf_counter() - start, time.process_time() - cpu_start)

    gc.collect()
    return asyncio.run(main())


def median(results: list[Measurement]) -> Measurement:
    """The measurement of median wall time."""
    return sorted(results, key=lambda result: result.elapsed)[len(results) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="1 round of 1,000 calls")
    parser.add_argument("--rounds", type=int, help="rounds (default 3; 1 with --smoke)")
    parser.add_argument("-n", type=int, help="calls per measurement (default 10,000)")
    parser.add_argument("--tasks", type=int, default=64, help="concurrent tasks")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.smoke else 3)
    n = args.n or (1_000 if args.smoke else 10_000)

    sides: list[tuple[str, Callable[[], Measurement], bool]] = [
        (f"{args.tasks} concurrent trio tasks", lambda: measure_bridge(n, args.tasks), True),
        ("one trio task at a time", lambda: measure_bridge(n, 1), True),
        (f"asyncio reference, {args.tasks} tasks", lambda: measure_asyncio(n, args.tasks), False),
    ]
    rows: list[tuple[str, Measurement, bool]] = []
    for label, measure, bridged in sides:
        results = [measure() for _ in range(rounds)]
        for result in results:
            print(
                f"  {label}: {result.rate:,.0f} calls/s, {result.cpu_us:.1f} us CPU/call, "
                f"crossings to loop {result.crossings_to_loop}, to trio {result.crossings_to_trio}",
                file=sys.stderr,
            )
        rows.append((label, median(results), bridged))

    print(f"\n{n:,} trivial calls, median of {rounds} round(s)\n")
    print("| calls made by | calls/s | CPU/call | to loop/call | to trio/call |")
    print("|---|---:|---:|---:|---:|")
    for label, result, bridged in rows:
        if bridged:
            crossings = (
                f"{result.crossings_to_loop / n:.4f} ({result.crossings_to_loop}) | "
                f"{result.crossings_to_trio / n:.4f} ({result.crossings_to_trio})"
            )
        else:
            crossings = "- | -"
        print(f"| {label} | {result.rate:,.0f} | {result.cpu_us:.1f} us | {crossings} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
