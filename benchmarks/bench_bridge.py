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
import statistics
import sys
import time
from collections.abc import Callable

import trio

from triobus.transports import BridgeStatistics, open_asyncio_bridge


async def trivial(i: int) -> int:
    return i


def _workers(n: int, tasks: int) -> list[range]:
    """Call numbers 0..n-1 split into ``tasks`` interleaved ranges."""
    return [range(start, n, tasks) for start in range(tasks)]


def measure_bridge(n: int, tasks: int) -> tuple[float, BridgeStatistics]:
    """Seconds for ``n`` calls by ``tasks`` concurrent trio tasks, and the bridge's statistics."""

    async def main() -> tuple[float, BridgeStatistics]:
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

            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for numbers in _workers(n, tasks):
                    nursery.start_soon(worker, numbers)
            elapsed = time.perf_counter() - start
            stats = bridge.statistics()
        if done != n:
            raise AssertionError(f"{done} calls of {n} returned")
        return elapsed, BridgeStatistics(
            calls=stats.calls - warm.calls,
            in_flight=stats.in_flight,
            crossings_to_loop=stats.crossings_to_loop - warm.crossings_to_loop,
            crossings_to_trio=stats.crossings_to_trio - warm.crossings_to_trio,
            running=stats.running,
        )

    gc.collect()
    return trio.run(main)


def measure_asyncio(n: int, tasks: int) -> float:
    """Seconds for ``n`` calls, each one new task awaited, by ``tasks`` asyncio tasks."""

    async def main() -> float:
        async def worker(numbers: range) -> None:
            for i in numbers:
                if await asyncio.create_task(trivial(i)) != i:
                    raise AssertionError(f"call {i} got another call's result")

        start = time.perf_counter()
        await asyncio.gather(*(worker(numbers) for numbers in _workers(n, tasks)))
        return time.perf_counter() - start

    gc.collect()
    return asyncio.run(main())


def median_of(rounds: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(rounds))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="1 round of 1,000 calls")
    parser.add_argument("--rounds", type=int, help="rounds (default 3; 1 with --smoke)")
    parser.add_argument("-n", type=int, help="calls per measurement (default 10,000)")
    parser.add_argument("--tasks", type=int, default=64, help="concurrent trio tasks")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.smoke else 3)
    n = args.n or (1_000 if args.smoke else 10_000)

    rows: list[tuple[str, float, BridgeStatistics | None]] = []
    for label, tasks in ((f"{args.tasks} concurrent trio tasks", args.tasks), ("one task", 1)):
        results = [measure_bridge(n, tasks) for _ in range(rounds)]
        for elapsed, stats in results:
            print(
                f"  {label}: {n / elapsed:,.0f} calls/s, crossings to loop "
                f"{stats.crossings_to_loop}, to trio {stats.crossings_to_trio}",
                file=sys.stderr,
            )
        elapsed = statistics.median(elapsed for elapsed, _ in results)
        middle = sorted(results, key=lambda result: result[0])[len(results) // 2][1]
        rows.append((label, elapsed, middle))
    asyncio_elapsed = median_of(rounds, lambda: measure_asyncio(n, args.tasks))
    rows.append((f"asyncio reference, {args.tasks} asyncio tasks", asyncio_elapsed, None))

    print(f"\n{n:,} trivial calls, median of {rounds} round(s)\n")
    print("| calls made by | calls/s | crossings to loop per call | crossings to trio per call |")
    print("|---|---:|---:|---:|")
    for label, elapsed, stats in rows:
        if stats is None:
            print(f"| {label} | {n / elapsed:,.0f} | - | - |")
        else:
            print(
                f"| {label} | {n / elapsed:,.0f} | {stats.crossings_to_loop / n:.4f} "
                f"({stats.crossings_to_loop}) | {stats.crossings_to_trio / n:.4f} "
                f"({stats.crossings_to_trio}) |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
