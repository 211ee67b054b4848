"""A process of the broker tests: serves the orders handlers on a broker endpoint until killed.

Usage: python broker_worker.py BROKER ADDRESS URI DATABASE

BROKER is ``rabbitmq`` (ADDRESS an AMQP URL) or ``kafka`` (ADDRESS the
bootstrap servers). Every handler writes its effect in the SQLite file
DATABASE inside a unit of work, with the endpoint's durable inbox on the
same file: the effect and "handled" commit together, so a redelivered
message is not applied twice. Each handler call is also counted (outside
the unit), to show the redeliveries. Prints ``ready`` once consuming.
"""

from __future__ import annotations

import os
import sqlite3
import sys

import trio
from broker_messages import GetQuote, OrderPlaced, OrderShipped, PlaceOrder, Quote

from triobus import Module, broker_endpoint, current_context, open_bus, route_module
from triobus.durability import Limits, durable_inbox, unit_of_work

#: An order whose handler raises every time, and one that kills its process every time.
POISON = -1
CRASH = -2
#: The largest message the workers take (bytes): a bigger one is a dead letter.
LIMIT = 64 * 1024

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS effects (kind TEXT NOT NULL, message_id TEXT NOT NULL, "
    "n INTEGER NOT NULL, calls INTEGER NOT NULL, PRIMARY KEY (kind, message_id))",
    "CREATE TABLE IF NOT EXISTS calls (kind TEXT NOT NULL, message_id TEXT NOT NULL)",
)


def transport(broker: str, address: str):  # type: ignore[no-untyped-def]
    if broker == "rabbitmq":
        from triobus import rabbitmq_transport

        return rabbitmq_transport(address)
    from triobus import kafka_transport

    return kafka_transport(address)


def modules(path: str) -> list[Module]:
    connection = sqlite3.connect(path, check_same_thread=False, timeout=30)
    counter = sqlite3.connect(path, check_same_thread=False, timeout=30, isolation_level=None)

    async def effect(kind: str, n: int) -> None:
        context = current_context()
        assert context is not None
        await trio.to_thread.run_sync(
            counter.execute, "INSERT INTO calls VALUES (?, ?)", (kind, context.message_id)
        )
        async with unit_of_work(connection) as uow:
            await uow.execute(
                "INSERT INTO effects VALUES (?, ?, ?, 1) ON CONFLICT (kind, message_id) "
                "DO UPDATE SET calls = calls + 1",
                (kind, context.message_id, n),
            )

    async def place(command: PlaceOrder) -> None:
        if command.n == POISON:
            raise ValueError("poison order")
        if command.n == CRASH:
            os._exit(3)  # the process dies in the handler, every time
        await effect("place", command.n)

    async def quote(request: GetQuote) -> Quote:
        if request.sku == "boom":
            raise ValueError(f"no price for {request.sku}")
        if request.sku == "slow":
            await trio.sleep(5)
        return Quote(request.sku, 42)

    async def bill(event: OrderPlaced) -> None:
        await effect("billing", event.n)

    async def audit(event: OrderPlaced | OrderShipped) -> None:
        await effect(f"audit {type(event).__name__}", event.n)

    return [
        Module("orders").bind_request(PlaceOrder, place).bind_request(GetQuote, quote),
        Module("billing").bind_event(OrderPlaced, [bill]),
        Module("audit").bind_event(OrderPlaced, [audit]).bind_event(OrderShipped, [audit]),
    ]


async def serve(broker: str, address: str, uri: str, path: str) -> None:
    setup = sqlite3.connect(path, timeout=30)
    for statement in SCHEMA:
        setup.execute(statement)
    setup.commit()
    setup.close()
    served = modules(path)
    endpoint = broker_endpoint(
        uri,
        transport(broker, address),
        inbox=durable_inbox(path=path),
        patterns={"audit": ["orders.#"]},
        prefetch=32,
        limits=Limits(max_bytes=LIMIT),
    )
    async with open_bus(
        *served, endpoints=[endpoint], routing=[route_module(m).to(uri) for m in served]
    ):
        print("ready", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(serve, *sys.argv[1:5])
