"""Core triobus costs against the raw trio baselines (benchmarks/README.md).

Measures ask, tell_nowait, await tell, spawn rate and idle memory per actor,
each next to its raw trio baseline in the same run, and prints one table of
medians, ratios and targets.

Run: .venv/bin/python benchmarks/bench_core.py [--rounds N] [--quick]

See benchmarks/README.md for what each row means.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, cast

import trio
import trio.testing

import triobus

Side = Literal["raw", "triobus"]
Put = Callable[[object], None]
AsyncPut = Callable[[object], Awaitable[None]]

#: Capacity of the raw ask channel (the default triobus mailbox capacity).
ASK_CHANNEL_CAPACITY = 1_000
#: Capacity of the channel / mailbox of every idle task or actor (spawn, memory).
IDLE_CAPACITY = 16
#: The stretch goal for idle actor memory, in bytes ("2.6 KB", read strictly).
MEMORY_STRETCH = 2_600

perf_counter = time.perf_counter
#: The clock of every timed section: CPU time of this process by default, which
#: other processes on a shared machine disturb far less than wall time does.
#: ``--clock wall`` switches to ``time.perf_counter``. (Time limits are wall time.)
clock: Callable[[], float] = time.process_time


@dataclass(frozen=True)
class Sizes:
    """How much work one round does."""

    ask: int = 20_000
    tell: int = 100_000
    spawn: int = 100_000
    #: Wall-clock cap in seconds for one triobus spawn or memory measurement.
    spawn_limit: float = 60.0
    #: ask and tell: back-to-back runs per round; the round keeps the best of each.
    repeat: int = 3

    @property
    def ask_warmup(self) -> int:
        return max(self.ask // 10, 100)

    @property
    def tell_warmup(self) -> int:
        return max(self.tell // 10, 100)


FULL = Sizes()
QUICK = Sizes(ask=2_000, tell=10_000, spawn=5_000, spawn_limit=20.0, repeat=1)


def _abort(raise_cancel: object) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.SUCCEEDED


async def handle(m: object) -> object:
    """The baselines' handler: ``m + 1`` for an int, else None."""
    return m + 1 if isinstance(m, int) else None


# ---------------------------------------------------------------- ask


async def _raw_ask_server(recv: trio.MemoryReceiveChannel[Any]) -> None:
    while True:
        msg, task, box = await recv.receive()
        box.append(await handle(msg))
        trio.lowlevel.reschedule(task)


async def _raw_ask_loop(send_nowait: Put, count: int) -> float:
    t0 = clock()
    box: list[object] = []
    for i in range(count):
        box = []
        send_nowait((i, trio.lowlevel.current_task(), box))
        await trio.lowlevel.wait_task_rescheduled(_abort)
    elapsed = clock() - t0
    assert box == [count], box
    return elapsed


async def raw_ask(n: int, warmup: int) -> float:
    """µs per raw ask (park/reschedule through one consumer task)."""
    send: trio.MemorySendChannel[Any]
    recv: trio.MemoryReceiveChannel[Any]
    send, recv = trio.open_memory_channel(ASK_CHANNEL_CAPACITY)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_raw_ask_server, recv)
        await trio.testing.wait_all_tasks_blocked()
        await _raw_ask_loop(send.send_nowait, warmup)
        gc.collect()
        elapsed = await _raw_ask_loop(send.send_nowait, n)
        nursery.cancel_scope.cancel()
    return elapsed / n * 1e6


class Echo(triobus.Actor):
    """Replies ``m + 1`` to an int, like :func:`handle`."""

    async def receive(self, message: object) -> object:
        return message + 1 if isinstance(message, int) else None


async def _triobus_ask_loop(ref: triobus.ActorRef, count: int) -> float:
    ask = ref.ask
    t0 = clock()
    reply: object = None
    for i in range(count):
        reply = await ask(i)
    elapsed = clock() - t0
    assert reply == count, reply
    return elapsed


async def triobus_ask(n: int, warmup: int) -> float:
    """µs per ``await ref.ask(i)`` with the default timeout."""
    with trio.CancelScope() as cancel:
        async with triobus.ActorSystem("bench") as system:
            ref = await system.spawn(Echo, name="echo")
            await trio.testing.wait_all_tasks_blocked()
            await _triobus_ask_loop(ref, warmup)
            gc.collect()
            elapsed = await _triobus_ask_loop(ref, n)
            cancel.cancel()
            await trio.lowlevel.checkpoint()  # leave by cancellation: no graceful stop
    return elapsed / n * 1e6


# ---------------------------------------------------------------- tell

# The raw consumer and the triobus actor count with the same code: the
# handler body below, one coroutine call per message, attributes on an
# instance with a __dict__ (as Actor subclasses have). The Nth message
# reschedules the producer parked in wait_task_rescheduled.


class RawSink:
    """The raw tell handler: :func:`handle` plus the count of messages seen."""

    def __init__(self, waiter: trio.lowlevel.Task) -> None:
        self.waiter = waiter
        self.seen = 0
        self.expected = 0

    async def handle(self, m: object) -> object:
        self.seen += 1
        if self.seen == self.expected:
            trio.lowlevel.reschedule(self.waiter)
        return m + 1 if isinstance(m, int) else None


class TellSink(triobus.Actor):
    """The triobus tell handler: the same body as :meth:`RawSink.handle`."""

    def __init__(self, waiter: trio.lowlevel.Task) -> None:
        self.waiter = waiter
        self.seen = 0
        self.expected = 0

    async def receive(self, message: object) -> object:
        self.seen += 1
        if self.seen == self.expected:
            trio.lowlevel.reschedule(self.waiter)
        return message + 1 if isinstance(message, int) else None


Counting = RawSink | TellSink


async def _raw_tell_consumer(
    recv: trio.MemoryReceiveChannel[object], handler: Callable[[object], Awaitable[object]]
) -> None:
    receive_nowait = recv.receive_nowait
    while True:
        try:
            msg = receive_nowait()
        except trio.WouldBlock:
            msg = await recv.receive()
        await handler(msg)


async def _tell_batch(put: Put, sink: Counting, count: int) -> float:
    """Put ``count`` messages without waiting; seconds until the last is handled."""
    sink.seen = 0
    sink.expected = count
    t0 = clock()
    for i in range(count):
        put(("m", i))
    await trio.lowlevel.wait_task_rescheduled(_abort)
    return clock() - t0


async def _tell_batch_await(put: AsyncPut, sink: Counting, count: int) -> float:
    """``await put`` ``count`` messages; seconds until the last is handled."""
    sink.seen = 0
    sink.expected = count
    t0 = clock()
    for i in range(count):
        await put(("m", i))
    await trio.lowlevel.wait_task_rescheduled(_abort)
    return clock() - t0


async def raw_tell(n: int, warmup: int) -> float:
    """µs per message: send_nowait into a channel drained by one consumer."""
    sink = RawSink(trio.lowlevel.current_task())
    send: trio.MemorySendChannel[object]
    recv: trio.MemoryReceiveChannel[object]
    send, recv = trio.open_memory_channel(n + 1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_raw_tell_consumer, recv, sink.handle)
        await trio.testing.wait_all_tasks_blocked()
        await _tell_batch(send.send_nowait, sink, warmup)
        gc.collect()
        elapsed = await _tell_batch(send.send_nowait, sink, n)
        nursery.cancel_scope.cancel()
    return elapsed / n * 1e6


async def triobus_tell(n: int, warmup: int, *, awaited: bool) -> float:
    """µs per message: ``ref.tell_nowait`` (or ``await ref.tell``) into one actor."""
    sink = TellSink(trio.lowlevel.current_task())
    with trio.CancelScope() as cancel:
        async with triobus.ActorSystem("bench") as system:
            ref = await system.spawn(
                lambda: sink, name="sink", mailbox=triobus.MailboxSpec(capacity=n + 1)
            )
            await trio.testing.wait_all_tasks_blocked()
            if awaited:
                await _tell_batch_await(ref.tell, sink, warmup)
                gc.collect()
                elapsed = await _tell_batch_await(ref.tell, sink, n)
            else:
                await _tell_batch(ref.tell_nowait, sink, warmup)
                gc.collect()
                elapsed = await _tell_batch(ref.tell_nowait, sink, n)
            cancel.cancel()
            await trio.lowlevel.checkpoint()
    return elapsed / n * 1e6


# ---------------------------------------------------------------- spawn and memory

Probe = Callable[[], int]


def _no_probe() -> int:
    return 0


async def _raw_idle(recv: trio.MemoryReceiveChannel[object], spawner: trio.lowlevel.Task) -> None:
    trio.lowlevel.reschedule(spawner)  # the handshake: this task has run once
    while True:
        await recv.receive()


async def raw_spawn(n: int, limit: float, probe: Probe = _no_probe) -> tuple[int, float, int]:
    """Start ``n`` idle tasks, each on its own channel, with a handshake.

    Returns (tasks started, seconds until all of them are blocked, ``probe()``
    after minus before).
    """
    keep: list[trio.MemorySendChannel[object]] = []
    async with trio.open_nursery() as nursery:
        me = trio.lowlevel.current_task()
        await trio.testing.wait_all_tasks_blocked()
        before = probe()
        deadline = perf_counter() + limit
        count = 0
        t0 = clock()
        for i in range(n):
            send: trio.MemorySendChannel[object]
            recv: trio.MemoryReceiveChannel[object]
            send, recv = trio.open_memory_channel(IDLE_CAPACITY)
            nursery.start_soon(_raw_idle, recv, me)
            await trio.lowlevel.wait_task_rescheduled(_abort)
            keep.append(send)
            count = i + 1
            if not count & 255 and perf_counter() > deadline:
                break
        await trio.testing.wait_all_tasks_blocked()
        elapsed = clock() - t0
        used = probe() - before
        nursery.cancel_scope.cancel()
    return count, elapsed, used


class Idle(triobus.Actor):
    """An actor that is never told anything."""

    async def receive(self, message: object) -> None:
        return None


async def triobus_spawn(n: int, limit: float, probe: Probe = _no_probe) -> tuple[int, float, int]:
    """``await system.spawn(Idle, name=f"a{i}")`` ``n`` times (or until ``limit`` s).

    Returns (actors spawned, seconds until every task is blocked, ``probe()``
    after minus before).
    """
    spec = triobus.MailboxSpec(capacity=IDLE_CAPACITY)
    refs: list[triobus.ActorRef] = []
    with trio.CancelScope() as cancel:
        async with triobus.ActorSystem("bench") as system:
            spawn = system.spawn
            await trio.testing.wait_all_tasks_blocked()
            before = probe()
            deadline = perf_counter() + limit
            count = 0
            t0 = clock()
            for i in range(n):
                refs.append(await spawn(Idle, name=f"a{i}", mailbox=spec))
                count = i + 1
                if not count & 255 and perf_counter() > deadline:
                    break
            # Up and idle: a task that spawn started but that has not run yet is
            # work still owed (the raw side has paid it in its handshake).
            await trio.testing.wait_all_tasks_blocked()
            elapsed = clock() - t0
            used = probe() - before
            cancel.cancel()
            await trio.lowlevel.checkpoint()  # a cancelled exit skips the graceful stop
    return count, elapsed, used


def _tracemalloc_probe() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_probe() -> int:
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE_SIZE


def _memory_worker(side: Side, mode: str, n: int, limit: float) -> None:
    """Child process: spawn idle tasks/actors and print bytes used as JSON."""
    probe = _tracemalloc_probe if mode == "tracemalloc" else _rss_probe
    if mode == "tracemalloc":
        tracemalloc.start()
    run = raw_spawn if side == "raw" else triobus_spawn
    count, _, used = trio.run(run, n, limit, probe)
    print(json.dumps({"count": count, "bytes": used}))


def _memory_in_child(side: Side, mode: str, n: int, limit: float) -> tuple[int, float]:
    """Run one memory measurement in a fresh process; (count, bytes per task/actor)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--_memory", side, mode, str(n), str(limit)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    data = json.loads(out.strip().splitlines()[-1])
    return data["count"], data["bytes"] / data["count"]


def _rss_available() -> bool:
    return os.path.exists("/proc/self/statm")


# ---------------------------------------------------------------- rounds and the table


@dataclass
class Pair:
    """Per-round values of one operation, triobus and raw."""

    triobus: list[float] = field(default_factory=list)
    raw: list[float] = field(default_factory=list)
    #: (done, asked) of triobus runs stopped by the time limit.
    partial: list[tuple[int, int]] = field(default_factory=list)


def _sides(round_index: int) -> Iterator[Side]:
    """Alternate which side goes first, round by round."""
    if round_index % 2 == 0:
        yield "raw"
        yield "triobus"
    else:
        yield "triobus"
        yield "raw"


def _limit(side: Side, sizes: Sizes) -> float:
    """The wall-clock cap of one spawn/memory measurement: the raw side always finishes."""
    return sizes.spawn_limit if side == "triobus" else math.inf


def _best_of(
    repeat: int, round_index: int, runs: dict[str, Callable[[], float]]
) -> dict[str, float]:
    """Run each measurement ``repeat`` times, interleaved; the best (lowest) of each.

    The order rotates from one pass (and round) to the next, so each
    measurement goes first in turn. Interference from other processes only
    ever adds time, so the best of a few back-to-back runs is the steadiest
    figure for a round.
    """
    names = list(runs)
    best = dict.fromkeys(names, math.inf)
    for rep in range(repeat):
        k = (round_index * repeat + rep) % len(names)
        for name in names[k:] + names[:k]:
            gc.collect()
            best[name] = min(best[name], runs[name]())
    return best


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_rounds(rounds: int, sizes: Sizes, only: set[str]) -> dict[str, Pair]:
    results: dict[str, Pair] = {
        key: Pair() for key in ("ask", "tell_nowait", "tell", "spawn", "mem_tracemalloc", "mem_rss")
    }
    rss = _rss_available()
    for r in range(rounds):
        _log(f"-- round {r + 1}/{rounds}")
        if "ask" in only:
            best = _best_of(
                sizes.repeat,
                r,
                {
                    "raw": partial(trio.run, raw_ask, sizes.ask, sizes.ask_warmup),
                    "triobus": partial(trio.run, triobus_ask, sizes.ask, sizes.ask_warmup),
                },
            )
            results["ask"].raw.append(best["raw"])
            results["ask"].triobus.append(best["triobus"])
            _log(f"   ask          raw      {best['raw']:9.3f} µs/call")
            _log(f"   ask          triobus  {best['triobus']:9.3f} µs/call")
        if "tell" in only:
            best = _best_of(
                sizes.repeat,
                r,
                {
                    "raw": partial(trio.run, raw_tell, sizes.tell, sizes.tell_warmup),
                    "tell_nowait": partial(
                        trio.run,
                        partial(triobus_tell, awaited=False),
                        sizes.tell,
                        sizes.tell_warmup,
                    ),
                    "tell": partial(
                        trio.run, partial(triobus_tell, awaited=True), sizes.tell, sizes.tell_warmup
                    ),
                },
            )
            _log(f"   tell         raw      {best['raw']:9.3f} µs/msg")
            for key in ("tell_nowait", "tell"):
                results[key].raw.append(best["raw"])
                results[key].triobus.append(best[key])
                _log(f"   {key:12} triobus  {best[key]:9.3f} µs/msg")
        if "spawn" in only:
            for side in _sides(r):
                gc.collect()
                run = raw_spawn if side == "raw" else triobus_spawn
                count, elapsed, _ = trio.run(run, sizes.spawn, _limit(side, sizes))
                rate = count / elapsed
                getattr(results["spawn"], side).append(rate)
                if side == "triobus" and count < sizes.spawn:
                    results["spawn"].partial.append((count, sizes.spawn))
                note = (
                    "" if count == sizes.spawn else f"  (time limit: {count:,} of {sizes.spawn:,})"
                )
                _log(f"   spawn        {side:8} {rate:9,.0f} /s{note}")
        if "memory" in only:
            modes = ["tracemalloc", "rss"] if rss else ["tracemalloc"]
            for mode in modes:
                for side in _sides(r):
                    count, per = _memory_in_child(side, mode, sizes.spawn, _limit(side, sizes))
                    pair = results[f"mem_{mode}"]
                    getattr(pair, side).append(per)
                    if side == "triobus" and count < sizes.spawn:
                        pair.partial.append((count, sizes.spawn))
                    note = (
                        ""
                        if count == sizes.spawn
                        else f"  (time limit: {count:,} of {sizes.spawn:,})"
                    )
                    _log(f"   memory {mode:11} {side:8} {per:9,.0f} B/actor{note}")
    return results


@dataclass(frozen=True)
class Row:
    operation: str
    triobus: str
    raw: str
    ratio: str
    target: str
    verdict: str


def _verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def _ratio_row(
    name: str,
    pair: Pair,
    fmt: Callable[[float], str],
    bound: float,
    *,
    higher_is_better: bool = False,
) -> Row | None:
    if not pair.triobus or not pair.raw:
        return None
    t = statistics.median(pair.triobus)
    b = statistics.median(pair.raw)
    # Paired: the ratio of each round, then their median.
    ratio = statistics.median(x / y for x, y in zip(pair.triobus, pair.raw, strict=True))
    ok = ratio >= bound if higher_is_better else ratio <= bound
    star = "*" if pair.partial else ""
    target = f"{'≥' if higher_is_better else '≤'} {bound:.1f}x"
    return Row(name, fmt(t) + star, fmt(b), f"{ratio:.2f}x", target, _verdict(ok))


def build_rows(results: dict[str, Pair]) -> list[Row]:
    def us(v: float) -> str:
        return f"{v:.3f} µs"

    def per_s(v: float) -> str:
        return f"{v:,.0f}/s"

    def nbytes(v: float) -> str:
        return f"{v:,.0f} B"

    candidates = [
        _ratio_row("ask (µs/call)", results["ask"], us, 1.2),
        _ratio_row("tell_nowait (µs/msg)", results["tell_nowait"], us, 1.5),
        _ratio_row("await tell (µs/msg)", results["tell"], us, 2.0),
        _ratio_row("spawn (spawns/s)", results["spawn"], per_s, 0.8, higher_is_better=True),
        _ratio_row("idle memory, tracemalloc (B/actor)", results["mem_tracemalloc"], nbytes, 1.0),
    ]
    mem = results["mem_tracemalloc"]
    if mem.triobus:
        t = statistics.median(mem.triobus)
        star = "*" if mem.partial else ""
        candidates.append(
            Row(
                "idle memory, stretch (B/actor)",
                nbytes(t) + star,
                "-",
                "-",
                f"≤ {MEMORY_STRETCH:,} B",
                _verdict(t <= MEMORY_STRETCH),
            )
        )
    candidates.append(
        _ratio_row("idle memory, RSS delta (B/actor)", results["mem_rss"], nbytes, 1.0)
    )
    return [row for row in candidates if row is not None]


def format_table(rows: list[Row]) -> str:
    header = Row("operation", "triobus median", "raw baseline median", "ratio", "target", "result")
    table = [header, *rows]
    columns = list(zip(*(tuple(vars(row).values()) for row in table), strict=True))
    widths = [max(len(cell) for cell in column) for column in columns]
    aligns = ["<", ">", ">", ">", "<", "<"]

    def line(row: Row) -> str:
        cells = tuple(vars(row).values())
        return " | ".join(
            f"{cell:{align}{width}}"
            for cell, align, width in zip(cells, aligns, widths, strict=True)
        )

    rule = "-+-".join("-" * width for width in widths)
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def _partial_notes(results: dict[str, Pair], limit: float) -> list[str]:
    notes = []
    for key, label in (
        ("spawn", "spawn"),
        ("mem_tracemalloc", "memory (tracemalloc)"),
        ("mem_rss", "memory (RSS)"),
    ):
        partial = results[key].partial
        if partial:
            done = ", ".join(f"{d:,}" for d, _ in partial)
            notes.append(
                f"* {label}: triobus hit the {limit:g} s limit in {len(partial)} round(s) "
                f"after {done} of {partial[0][1]:,} actors; the median is over the actors "
                "spawned (for spawn, an upper bound: the rate falls as actors accumulate)."
            )
    return notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="triobus core costs against the raw trio baselines (benchmarks/README.md)"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds (default 5; 1 with --quick)"
    )
    parser.add_argument("--quick", action="store_true", help="a fast smoke run with small sizes")
    parser.add_argument(
        "--only",
        default="ask,tell,spawn,memory",
        help="comma-separated subset of ask,tell,spawn,memory (default: all)",
    )
    parser.add_argument(
        "--spawn-limit",
        type=float,
        default=None,
        help="wall-clock cap in seconds for one triobus spawn/memory measurement "
        f"(default {FULL.spawn_limit:g}; {QUICK.spawn_limit:g} with --quick)",
    )
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="time with process CPU time (default; robust on a shared machine) or wall time",
    )
    parser.add_argument(
        "--spawn-n",
        type=int,
        default=None,
        help=f"tasks/actors per spawn and memory measurement (default {FULL.spawn:,})",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="ask and tell: back-to-back runs per round, best kept "
        f"(default {FULL.repeat}; {QUICK.repeat} with --quick)",
    )
    parser.add_argument("--_memory", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._memory:
        side, mode, n, limit = args._memory
        _memory_worker(cast(Side, side), mode, int(n), float(limit))
        return 0

    global clock
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    sizes = QUICK if args.quick else FULL
    sizes = Sizes(
        sizes.ask,
        sizes.tell,
        args.spawn_n if args.spawn_n is not None else sizes.spawn,
        args.spawn_limit if args.spawn_limit is not None else sizes.spawn_limit,
        args.repeat if args.repeat is not None else sizes.repeat,
    )
    if sizes.repeat < 1:
        parser.error("--repeat must be at least 1")
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 5)
    if rounds < 1:
        parser.error("--rounds must be at least 1")
    only = {part.strip() for part in args.only.split(",") if part.strip()}
    unknown = only - {"ask", "tell", "spawn", "memory"}
    if unknown:
        parser.error(f"unknown --only part(s): {', '.join(sorted(unknown))}")

    print(
        f"triobus {triobus.__version__}, trio {trio.__version__}, "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPU(s); {args.clock} clock; {rounds} round(s)\n"
        f"ask n={sizes.ask:,} and tell n={sizes.tell:,}: best of {sizes.repeat} per round; "
        f"spawn/memory n={sizes.spawn:,} (triobus limit {sizes.spawn_limit:g} s); "
        "ratio = median of the per-round ratios",
        flush=True,
    )
    print(f"triobus imported from {os.path.dirname(os.path.abspath(triobus.__file__))}", flush=True)
    results = run_rounds(rounds, sizes, only)
    print()
    print(format_table(build_rows(results)))
    for note in _partial_notes(results, sizes.spawn_limit):
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
