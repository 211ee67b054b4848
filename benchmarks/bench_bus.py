"""The bus benchmark: triobus against the raw trio baselines, waku 0.43 and python-cqrs 5.3.

Run from the project root::

    .venv/bin/python benchmarks/bench_bus.py            # 5 rounds
    .venv/bin/python benchmarks/bench_bus.py --quick    # a tenth of the work, 3 rounds
    .venv/bin/python benchmarks/bench_bus.py --profile send   # cProfile of triobus only

The peers come with ``pip install -e '.[benchmark]'``; a peer that is not
installed shows ``n/a``. Every measurement runs in its own fresh event loop
(``trio.run`` or ``asyncio.run``); within a round the systems of one operation
run one after the other, in an order that rotates from round to round. The
table shows the median over the rounds, in µs per operation. The clock is this
process's CPU time (``--clock wall`` for ``perf_counter``): on a shared machine
wall time also counts the time other processes had the CPU; the two agree when
nothing else runs (every loop here is busy from the first call to the last).

The raw baselines (benchmarks/README.md): messages are small tuples
made per call, the handler is ``async def handle(m)`` returning ``m + 1`` for an
int, else ``None``, and time runs from the first call until the last handler
finished.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import gc
import logging
import math
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import attrs
import trio

from triobus import (
    Command,
    Event,
    EventHandler,
    Module,
    Request,
    RequestHandler,
    open_bus,
)
from triobus.mailbox import DEFAULT_MAILBOX_CAPACITY

#: The clock: this process's CPU time by default (``--clock wall``: ``perf_counter``).
now = time.process_time

#: The operations, in table order.
OPERATIONS = ("invoke", "send", "publish", "concurrent")
LABELS = {
    "invoke": "invoke",
    "send": "send",
    "publish": "publish x3",
    "concurrent": "invoke x100 concurrent",
}
#: Operations per measurement (``--quick`` takes a tenth).
SIZES = {"invoke": 20_000, "send": 100_000, "publish": 50_000, "concurrent": 20_000}
#: Concurrent callers of the ``concurrent`` operation.
CALLERS = 100
SYSTEMS = ("triobus", "raw", "floor", "waku", "python-cqrs")
#: Warm-up operations done in each loop before the clock starts.
WARMUP = 500

Measure = Callable[[int], float]


def _per_op(seconds: float, n: int) -> float:
    return seconds / n * 1e6


# ---------------------------------------------------------------- raw trio


async def raw_handle(m: Any) -> Any:
    return m + 1 if isinstance(m, int) else None


def _abort(_: Any) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.SUCCEEDED


async def _raw_ask_consumer(recv: trio.MemoryReceiveChannel[Any]) -> None:
    try:
        while True:
            msg, task, box = await recv.receive()
            box.append(await raw_handle(msg))
            trio.lowlevel.reschedule(task)
    except trio.EndOfChannel:
        pass


async def _raw_ask(send: trio.MemorySendChannel[Any], i: int) -> Any:
    box: list[Any] = []
    send.send_nowait((i, trio.lowlevel.current_task(), box))
    await trio.lowlevel.wait_task_rescheduled(_abort)
    return box[0]


async def _raw_ask_run(n: int, callers: int) -> float:
    send, recv = trio.open_memory_channel[Any](math.inf)
    per_caller = n // callers

    async def caller() -> None:
        for i in range(per_caller):
            await _raw_ask(send, i)

    async with trio.open_nursery() as outer:
        outer.start_soon(_raw_ask_consumer, recv)
        for i in range(WARMUP):
            await _raw_ask(send, i)
        t0 = now()
        async with trio.open_nursery() as nursery:
            for _ in range(callers):
                nursery.start_soon(caller)
        elapsed = now() - t0
        send.close()
    return _per_op(elapsed, per_caller * callers)


def raw_ask(n: int) -> float:
    return trio.run(_raw_ask_run, n, 1)


def raw_ask_concurrent(n: int) -> float:
    return trio.run(_raw_ask_run, n, CALLERS)


async def _raw_tell_consumer(
    recv: trio.MemoryReceiveChannel[Any], n: int, done: Callable[[], None]
) -> None:
    for _ in range(n):
        try:
            msg = recv.receive_nowait()
        except trio.WouldBlock:
            msg = await recv.receive()
        await raw_handle(msg)
    done()


async def _raw_fan_out_once(n: int, width: int) -> float:
    finished = trio.Event()
    left = width

    def done() -> None:
        nonlocal left
        left -= 1
        if not left:
            finished.set()

    async with trio.open_nursery() as nursery:
        sends = []
        for _ in range(width):
            send, recv = trio.open_memory_channel[Any](n + 1)
            sends.append(send)
            nursery.start_soon(_raw_tell_consumer, recv, n, done)
        await trio.lowlevel.checkpoint()  # the consumers block on their channels
        t0 = now()
        if width == 1:
            send_nowait = sends[0].send_nowait
            for i in range(n):
                send_nowait(("m", i))
        else:
            for i in range(n):
                message = ("m", i)
                for send in sends:
                    send.send_nowait(message)
        await finished.wait()
        return now() - t0


async def _raw_fan_out_run(n: int, width: int) -> float:
    await _raw_fan_out_once(WARMUP, width)
    return _per_op(await _raw_fan_out_once(n, width), n)


def raw_tell(n: int) -> float:
    return trio.run(_raw_fan_out_run, n, 1)


def raw_fan_out(n: int) -> float:
    return trio.run(_raw_fan_out_run, n, 3)


# ---------------------------------------------------------------- the send floor


class _FloorBus:
    """The least any bus with an async ``send`` and a fresh handler per message does.

    A dict lookup of the handler class by message type, a counter, and a
    ``send_nowait`` of ``(handler class, message)`` into a channel as big as
    triobus's default mailbox (waiting for room when it is full, as a
    bounded mailbox must); its consumer makes the handler and awaits
    ``handle``. No envelope, context, supervision or error policy: a lower
    bound for triobus's ``send``, not a rival.
    """

    def __init__(self, send: trio.MemorySendChannel[Any]) -> None:
        self.handlers: dict[type, Any] = {Tick: TickHandler}
        self.channel = send
        self.in_flight = 0

    async def send(self, command: object, *, headers: Any = None) -> None:
        handler = self.handlers[type(command)]
        self.in_flight += 1
        try:
            self.channel.send_nowait((handler, command))
        except trio.WouldBlock:
            await self.channel.send((handler, command))


async def _floor_consumer(
    recv: trio.MemoryReceiveChannel[Any], bus: _FloorBus, n: int, done: trio.Event
) -> None:
    for _ in range(n):
        try:
            handler, message = recv.receive_nowait()
        except trio.WouldBlock:
            handler, message = await recv.receive()
        await handler().handle(message)
        bus.in_flight -= 1
    done.set()


async def _floor_once(n: int) -> float:
    send, recv = trio.open_memory_channel[Any](DEFAULT_MAILBOX_CAPACITY)
    bus = _FloorBus(send)
    done = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_floor_consumer, recv, bus, n, done)
        await trio.lowlevel.checkpoint()
        t0 = now()
        for i in range(n):
            await bus.send(Tick(i))
        await done.wait()
        return now() - t0


async def _floor_run(n: int) -> float:
    await _floor_once(WARMUP)
    return _per_op(await _floor_once(n), n)


def floor_send(n: int) -> float:
    return trio.run(_floor_run, n)


# ---------------------------------------------------------------- triobus


@attrs.frozen
class Ping(Request[int]):
    n: int


class PingHandler(RequestHandler[Ping, int]):
    async def handle(self, request: Ping) -> int:
        return request.n + 1


@attrs.frozen
class Tick(Command):
    n: int


class TickHandler(RequestHandler[Tick, None]):
    async def handle(self, request: Tick) -> None:
        return None


@attrs.frozen
class Happened(Event):
    n: int


class HappenedA(EventHandler[Happened]):
    async def handle(self, event: Happened) -> None:
        return None


class HappenedB(EventHandler[Happened]):
    async def handle(self, event: Happened) -> None:
        return None


class HappenedC(EventHandler[Happened]):
    async def handle(self, event: Happened) -> None:
        return None


def triobus_module() -> Module:
    return (
        Module("bench")
        .bind_request(Ping, PingHandler)
        .bind_request(Tick, TickHandler)
        .bind_event(Happened, [HappenedA, HappenedB, HappenedC])
    )


async def _triobus_run(operation: str, n: int) -> float:
    async with open_bus(triobus_module()) as bus:
        if operation == "invoke":
            for i in range(WARMUP):
                await bus.invoke(Ping(i))
            t0 = now()
            for i in range(n):
                await bus.invoke(Ping(i))
            return _per_op(now() - t0, n)
        if operation == "send":
            for i in range(WARMUP):
                await bus.send(Tick(i))
            await bus.wait_quiet()
            t0 = now()
            for i in range(n):
                await bus.send(Tick(i))
            await bus.wait_quiet()
            return _per_op(now() - t0, n)
        if operation == "publish":
            for i in range(WARMUP):
                await bus.publish(Happened(i))
            await bus.wait_quiet()
            t0 = now()
            for i in range(n):
                await bus.publish(Happened(i))
            await bus.wait_quiet()
            return _per_op(now() - t0, n)
        assert operation == "concurrent"
        per_caller = n // CALLERS

        async def caller() -> None:
            for i in range(per_caller):
                await bus.invoke(Ping(i))

        for i in range(WARMUP):
            await bus.invoke(Ping(i))
        t0 = now()
        async with trio.open_nursery() as nursery:
            for _ in range(CALLERS):
                nursery.start_soon(caller)
        return _per_op(now() - t0, per_caller * CALLERS)


def triobus_measure(operation: str) -> Measure:
    return lambda n: trio.run(_triobus_run, operation, n)


# ---------------------------------------------------------------- waku (asyncio)

try:
    import waku
    import waku.messaging as waku_messaging
except ImportError:  # pragma: no cover - the benchmark extra is not installed
    waku = None  # type: ignore[assignment]


def _waku_measures() -> dict[str, Measure]:
    """waku 0.43 on asyncio: its endpoints start ``asyncio`` tasks, so trio is out."""
    if waku is None:
        return {}
    wm = waku_messaging

    @dataclasses.dataclass(frozen=True, slots=True)
    class WPing(wm.IRequest[int]):
        n: int

    class WPingHandler(wm.RequestHandler[WPing, int]):
        async def handle(self, request: WPing) -> int:
            return request.n + 1

    @dataclasses.dataclass(frozen=True, slots=True)
    class WTick(wm.IRequest[None]):
        n: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class WHappened(wm.IEvent):
        n: int

    # waku has no "wait until handled": the handlers count, the last one sets an event.
    state: dict[str, Any] = {"left": 0, "done": None}

    def handled() -> None:
        state["left"] -= 1
        if not state["left"]:
            state["done"].set()

    class WTickHandler(wm.RequestHandler[WTick, None]):
        async def handle(self, request: WTick) -> None:
            handled()

    class WHappenedA(wm.EventHandler[WHappened]):
        async def handle(self, message: WHappened) -> None:
            handled()

    class WHappenedB(wm.EventHandler[WHappened]):
        async def handle(self, message: WHappened) -> None:
            handled()

    class WHappenedC(wm.EventHandler[WHappened]):
        async def handle(self, message: WHappened) -> None:
            handled()

    def make_app() -> Any:
        extension = (
            wm.MessagingExtension()
            .bind(WPing, WPingHandler)
            .bind(WTick, WTickHandler)
            .bind(WHappened, WHappenedA, WHappenedB, WHappenedC)
        )

        @waku.module(extensions=[extension])
        class BenchModule:
            pass

        @waku.module(imports=[BenchModule, wm.MessagingModule.register()])
        class AppModule:
            pass

        return waku.WakuFactory(AppModule).create()

    async def until_handled(bus: Any, messages: Callable[[int], Any], n: int, per: int) -> float:
        state["left"] = n * per
        state["done"] = asyncio.Event()
        dispatch = bus.publish if per > 1 else bus.send
        t0 = now()
        for i in range(n):
            await dispatch(messages(i))
        await state["done"].wait()
        return now() - t0

    async def run(operation: str, n: int) -> float:
        async with make_app() as app, app.container() as scope:
            # The fastest documented setup: one request scope, opened once, reused.
            bus = await scope.get(wm.IMessageBus)
            if operation == "invoke":
                for i in range(WARMUP):
                    await bus.invoke(WPing(i))
                t0 = now()
                for i in range(n):
                    await bus.invoke(WPing(i))
                return _per_op(now() - t0, n)
            if operation == "send":
                await until_handled(bus, WTick, WARMUP, 1)
                return _per_op(await until_handled(bus, WTick, n, 1), n)
            if operation == "publish":
                await until_handled(bus, WHappened, WARMUP, 3)
                return _per_op(await until_handled(bus, WHappened, n, 3), n)
            assert operation == "concurrent"
            per_caller = n // CALLERS

            async def caller() -> None:
                for i in range(per_caller):
                    await bus.invoke(WPing(i))

            for i in range(WARMUP):
                await bus.invoke(WPing(i))
            t0 = now()
            async with asyncio.TaskGroup() as group:
                for _ in range(CALLERS):
                    group.create_task(caller())
            return _per_op(now() - t0, per_caller * CALLERS)

    def measure(operation: str) -> Measure:
        return lambda n: asyncio.run(run(operation, n))

    return {operation: measure(operation) for operation in OPERATIONS}


# ---------------------------------------------------------------- python-cqrs (trio)

try:
    import cqrs
    import di
    from cqrs.bootstrap import events as cqrs_events
    from cqrs.bootstrap import requests as cqrs_requests
except ImportError:  # pragma: no cover - the benchmark extra is not installed
    cqrs = None  # type: ignore[assignment]


def _cqrs_measures() -> dict[str, Measure]:
    """python-cqrs 5.3 on trio: ``bootstrap`` for both mediators, logger at WARNING."""
    if cqrs is None:
        return {}
    logging.getLogger("cqrs").setLevel(logging.WARNING)

    class CPing(cqrs.Request):
        n: int

    # Its logging middleware calls ``to_dict()`` on the response: a Response, not an int.
    class CPong(cqrs.Response):
        n: int

    class CPingHandler(cqrs.RequestHandler[CPing, CPong]):
        async def handle(self, request: CPing) -> CPong:
            return CPong(request.n + 1)

    class CHappened(cqrs.DomainEvent):
        n: int

    class CHappenedA(cqrs.EventHandler[CHappened]):
        async def handle(self, event: CHappened) -> None:
            return None

    class CHappenedB(cqrs.EventHandler[CHappened]):
        async def handle(self, event: CHappened) -> None:
            return None

    class CHappenedC(cqrs.EventHandler[CHappened]):
        async def handle(self, event: CHappened) -> None:
            return None

    def queries(mapper: Any) -> None:
        mapper.bind(CPing, CPingHandler)

    def events(mapper: Any) -> None:
        for handler in (CHappenedA, CHappenedB, CHappenedC):
            mapper.bind(CHappened, handler)

    async def run(operation: str, n: int) -> float:
        if operation == "publish":
            mediator = cqrs_events.bootstrap(di_container=di.Container(), events_mapper=events)
            for i in range(WARMUP):
                await mediator.send(CHappened(i))
            t0 = now()
            for i in range(n):
                await mediator.send(CHappened(i))
            return _per_op(now() - t0, n)
        requests = cqrs_requests.bootstrap(di_container=di.Container(), queries_mapper=queries)
        for i in range(WARMUP):
            await requests.send(CPing(i))
        if operation == "invoke":
            t0 = now()
            for i in range(n):
                await requests.send(CPing(i))
            return _per_op(now() - t0, n)
        assert operation == "concurrent"
        per_caller = n // CALLERS

        async def caller() -> None:
            for i in range(per_caller):
                await requests.send(CPing(i))

        t0 = now()
        async with trio.open_nursery() as nursery:
            for _ in range(CALLERS):
                nursery.start_soon(caller)
        return _per_op(now() - t0, per_caller * CALLERS)

    def measure(operation: str) -> Measure:
        return lambda n: trio.run(run, operation, n)

    return {operation: measure(operation) for operation in OPERATIONS if operation != "send"}


# ---------------------------------------------------------------- running


def measures() -> dict[str, dict[str, Measure]]:
    """``operation -> system -> measure``; a missing entry is n/a."""
    table: dict[str, dict[str, Measure]] = {
        operation: {"triobus": triobus_measure(operation)} for operation in OPERATIONS
    }
    table["invoke"]["raw"] = raw_ask
    table["send"]["raw"] = raw_tell
    table["send"]["floor"] = floor_send
    table["publish"]["raw"] = raw_fan_out
    table["concurrent"]["raw"] = raw_ask_concurrent
    for system, peer in (("waku", _waku_measures()), ("python-cqrs", _cqrs_measures())):
        for operation, measure in peer.items():
            table[operation][system] = measure
    return table


#: Systems measured once per round whatever ``--repeat`` says: waku is several
#: times off every threshold, and repeating it would triple the run.
ONCE_PER_ROUND = frozenset({"waku"})


@dataclasses.dataclass
class Results:
    """Medians per system, and the per-round samples that paired ratios come from."""

    #: operation -> system -> median µs per operation over the rounds.
    medians: dict[str, dict[str, float]]
    #: operation -> system -> the best µs per operation of each round.
    samples: dict[str, dict[str, list[float]]]

    def paired(self, operation: str, system: str, other: str) -> float | None:
        """The median over rounds of ``system / other`` in the same round."""
        row = self.samples.get(operation, {})
        if system not in row or other not in row:
            return None
        return statistics.median(a / b for a, b in zip(row[system], row[other], strict=True))


def run_rounds(rounds: int, scale: float, only: set[str] | None = None, repeat: int = 3) -> Results:
    """Measure every operation ``rounds`` times; each round keeps the best of ``repeat``.

    Within a round the systems of an operation run interleaved, ``repeat``
    times, in an order that rotates from round to round; interference from
    other processes only ever adds time, so the best of the repeats is kept.
    Ratios are paired: triobus against the other system of the same round.
    """
    table = measures()
    samples: dict[str, dict[str, list[float]]] = {op: {} for op in OPERATIONS}
    for index in range(rounds):
        for operation in OPERATIONS:
            systems = [s for s in SYSTEMS if s in table[operation]]
            if only is not None:
                systems = [s for s in systems if s in only]
            shift = index % len(systems) if systems else 0
            order = systems[shift:] + systems[:shift]
            n = max(CALLERS, int(SIZES[operation] * scale))
            best: dict[str, float] = {}
            for rep in range(repeat):
                for system in order:
                    if rep and system in ONCE_PER_ROUND:
                        continue
                    gc.collect()
                    value = table[operation][system](n)
                    best[system] = min(value, best.get(system, math.inf))
            for system, value in best.items():
                samples[operation].setdefault(system, []).append(value)
            shown = ", ".join(f"{system} {value:.2f}" for system, value in best.items())
            print(f"  round {index + 1} {operation}: {shown}", file=sys.stderr, flush=True)
        print(f"round {index + 1}/{rounds} done", file=sys.stderr, flush=True)
    medians = {
        operation: {system: statistics.median(values) for system, values in row.items()}
        for operation, row in samples.items()
    }
    return Results(medians, samples)


def _cell(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def targets(results: Results) -> dict[str, tuple[str, bool | None]]:
    """Per operation: the target as text, and whether triobus meets it (paired ratios)."""

    def check(operation: str, *limits: tuple[str, float]) -> bool | None:
        # Each limit: (other system, the most triobus / other may be).
        verdicts = []
        for system, most in limits:
            ratio = results.paired(operation, "triobus", system)
            if ratio is None:
                return None
            verdicts.append(ratio <= most)
        return all(verdicts)

    return {
        "invoke": (
            "<= 1.3x raw ask, < python-cqrs",
            check("invoke", ("raw", 1.3), ("python-cqrs", 1.0)),
        ),
        "send": ("<= 2.2x the send floor", check("send", ("floor", 2.2))),
        "publish": (
            "<= 2x raw fan-out, >= 4x cqrs, >= 15x waku",
            check("publish", ("raw", 2.0), ("python-cqrs", 1 / 4), ("waku", 1 / 15)),
        ),
        "concurrent": (
            "<= python-cqrs per call",
            check("concurrent", ("python-cqrs", 1.0)),
        ),
    }


def render(results: Results, rounds: int, scale: float, clock: str) -> str:
    medians = results.medians
    header = (
        "operation",
        "triobus",
        "raw trio",
        "waku",
        "python-cqrs",
        "tb/raw",
        "cqrs/tb",
        "waku/tb",
        "target (triobus)",
        "result",
    )
    goals = targets(results)
    rows = [header]
    for operation in OPERATIONS:
        row = medians.get(operation, {})
        mine = row.get("triobus")
        goal, ok = goals[operation]
        rows.append(
            (
                LABELS[operation],
                _cell(mine),
                _cell(row.get("raw")),
                _cell(row.get("waku")),
                _cell(row.get("python-cqrs")),
                _cell(results.paired(operation, "triobus", "raw")),
                _cell(results.paired(operation, "python-cqrs", "triobus")),
                _cell(results.paired(operation, "waku", "triobus")),
                goal,
                "n/a" if ok is None else ("PASS" if ok else "FAIL"),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for number, r in enumerate(rows):
        cells = [
            c.ljust(w) if i in (0, 8) else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("| " + " | ".join(cells) + " |")
        if number == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    sizes = ", ".join(f"{LABELS[op]} {max(CALLERS, int(SIZES[op] * scale)):,}" for op in OPERATIONS)
    notes = [
        f"µs per operation ({clock} clock), medians of {rounds} round(s), each the best of its "
        "repeats; ratios paired within each round (median of per-round ratios); "
        f"ops per measurement: {sizes}.",
        "raw trio: invoke = raw ask, send = raw tell, publish x3 = raw 3-way fan-out,",
        f"  invoke x100 = raw ask with {CALLERS} concurrent callers and one consumer.",
        "triobus: trio, open_bus() defaults, handler classes, attrs.frozen messages;",
        "  send/publish timed until bus.wait_quiet() returns.",
        "waku 0.43: asyncio (its local queue endpoint starts asyncio tasks: not trio);",
        "  one request scope opened once and reused; send/publish until handlers counted N.",
        "python-cqrs 5.3: trio; bootstrap() mediators, 'cqrs' logger at WARNING;",
        "  publish = EventMediator.send (3 bound handlers); send: no queued send (n/a).",
        f"python {sys.version.split()[0]}, trio {trio.__version__}.",
    ]
    floor = medians.get("send", {}).get("floor")
    floor_vs_raw = results.paired("send", "floor", "raw")
    mine_vs_floor = results.paired("send", "triobus", "floor")
    if floor is not None and floor_vs_raw is not None and mine_vs_floor is not None:
        notes.append(
            f"send floor (an async send that looks its handler class up and makes it fresh per "
            f"message, nothing else): {floor:.2f} µs = {floor_vs_raw:.2f}x raw tell; "
            f"triobus send = {mine_vs_floor:.2f}x the floor."
        )
    return "\n".join([*lines, "", *notes])


def message_cost() -> float:
    """µs to make one triobus message (attrs.frozen, one field): part of every triobus op."""
    n = 200_000
    t0 = now()
    for i in range(n):
        Tick(i)
    return _per_op(now() - t0, n)


def profile(operation: str, scale: float, top: int) -> None:
    measure = triobus_measure(operation)
    n = max(CALLERS, int(SIZES[operation] * scale))
    measure(n)  # warm
    profiler = cProfile.Profile()
    profiler.enable()
    measure(n)
    profiler.disable()
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(top)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 5, quick 3)")
    parser.add_argument("--quick", action="store_true", help="a tenth of the operations")
    parser.add_argument(
        "--profile",
        choices=OPERATIONS,
        help="instead of the table, cProfile the triobus part of one operation",
    )
    parser.add_argument("--top", type=int, default=30, help="functions shown by --profile")
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs per system per round, the best kept (default 3; waku always runs once)",
    )
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"comma-separated systems to run (default all: {','.join(SYSTEMS)}); others show n/a",
    )
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="this process's CPU time (default: robust on a shared machine) or wall time",
    )
    args = parser.parse_args(argv)
    global now
    now = time.process_time if args.clock == "cpu" else time.perf_counter
    scale = 0.1 if args.quick else 1.0
    if args.profile:
        profile(args.profile, scale, args.top)
        return
    rounds = args.rounds if args.rounds is not None else (3 if args.quick else 5)
    if rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    systems = {name.strip() for name in args.systems.split(",") if name.strip()}
    unknown = systems - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown system(s) {sorted(unknown)}: choose from {', '.join(SYSTEMS)}")
    results = run_rounds(rounds, scale, systems, args.repeat)
    print(render(results, rounds, scale, args.clock))
    print(f"making one triobus message (attrs.frozen) costs {message_cost():.2f} µs.")


if __name__ == "__main__":
    main()
