"""A small supervision tree: a flaky worker restarted under one_for_one, and a
pair that restarts together under one_for_all. Prints the tree as it goes.

Run: python examples/supervision_tree.py
"""

from __future__ import annotations

import trio

import triobus


class FlakyWorker(triobus.Actor):
    """Doubles numbers, and crashes on the number 13."""

    async def receive(self, message: int) -> int:
        if message == 13:
            raise ValueError("13 is unlucky")
        return message * 2


class Counter(triobus.Actor):
    """Counts what it is told; a fresh incarnation starts again from zero."""

    def __init__(self) -> None:
        self.count = 0

    async def receive(self, message: str) -> int:
        if message == "crash":
            raise RuntimeError("asked to crash")
        self.count += 1
        return self.count


async def main() -> None:
    async with triobus.ActorSystem("shop", max_restarts=5, within=10) as system:
        worker = await system.spawn(FlakyWorker, name="worker")
        pair = await system.spawn_supervisor("pair", strategy="one_for_all", max_restarts=3)
        left = await pair.spawn(Counter, name="left")
        right = await pair.spawn(Counter, name="right")

        print("worker doubles 21:", await worker.ask(21))
        try:
            await worker.ask(13)
        except ValueError as exc:
            print("worker crashed on 13:", exc)
        print("restarted worker doubles 4:", await worker.ask(4))

        await left.ask("tick")
        print("right counted", await right.ask("tick"), "before the crash")
        try:
            await left.ask("crash")
        except RuntimeError as exc:
            print("left crashed:", exc)
        # one_for_all: right was restarted with left, so it counts from zero again.
        print("right counts", await right.ask("tick"), "after the one_for_all restart")
        print()
        print(system.tree())
    print()
    print("dead letters:", system.dead_letters.total)


if __name__ == "__main__":
    trio.run(main)
