"""Durable orders: a SQLite-backed queue, a transactional outbox, and a restart.

An order is saved and its shipment requested in one unit of work: the order
row and the ``ShipOrder`` command commit together or not at all. Shipments
go through a durable queue whose backlog lives in the same SQLite file, so
stopping the process (or a crash) loses nothing: the next start ships what
is left. A handler's writes and "this message is handled" commit together,
so a shipment is never recorded twice.

Run: ``python examples/durable_orders.py [DATABASE]`` (a temp file by default).
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
from pathlib import Path

import attrs
import trio

from triobus import Command, ErrorPolicy, Module, current_bus, current_context, open_bus, route
from triobus.durability import DurableQueue, durable_queue, unit_of_work


@attrs.frozen
class PlaceOrder(Command):
    message_name = "orders.place"
    order_id: str
    item: str


@attrs.frozen
class ShipOrder(Command):
    message_name = "shipping.ship"
    order_id: str


class OutOfStock(Exception):
    pass


SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (order_id TEXT PRIMARY KEY, item TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS shipments (order_id TEXT PRIMARY KEY, message_id TEXT NOT NULL);
"""


def modules(connection: sqlite3.Connection, shipping_open: bool) -> list[Module]:
    async def place(command: PlaceOrder) -> None:
        async with unit_of_work(connection) as uow:
            if command.item == "unicorn":
                raise OutOfStock(command.item)  # rolls back: no order, no shipment
            await uow.execute(
                "INSERT INTO orders (order_id, item) VALUES (?, ?)",
                (command.order_id, command.item),
            )
            await current_bus().send(ShipOrder(command.order_id))  # in the transaction

    async def ship(command: ShipOrder) -> None:
        if not shipping_open:
            await trio.sleep_forever()  # the warehouse is closed: the backlog waits
        context = current_context()
        assert context is not None
        async with unit_of_work(connection) as uow:
            await uow.execute(
                "INSERT INTO shipments (order_id, message_id) VALUES (?, ?)",
                (command.order_id, context.message_id),
            )
        print(f"shipped {command.order_id}")

    return [
        Module("orders").bind_request(PlaceOrder, place),
        Module("shipping").bind_request(ShipOrder, ship),
    ]


def endpoints(path: str) -> list[DurableQueue]:
    return [
        durable_queue(
            "orders",
            path=path,
            errors=ErrorPolicy().on(OutOfStock).dead_letter(),
        ),
        durable_queue("shipping", path=path, shutdown=0.5),
    ]


async def run(path: str, shipping_open: bool, orders: list[tuple[str, str]]) -> None:
    connection = sqlite3.connect(path, check_same_thread=False)
    connection.executescript(SCHEMA)
    declared = endpoints(path)
    async with open_bus(
        *modules(connection, shipping_open),
        endpoints=declared,
        routing=[route(PlaceOrder).to("orders"), route(ShipOrder).to("shipping")],
        drain_timeout=0.5,
    ) as bus:
        for order_id, item in orders:
            await bus.send(PlaceOrder(order_id, item))
        await trio.sleep(0.5)
        if shipping_open:
            await bus.wait_quiet()
        counts = await declared[1].counts()
        print(f"shipping queue: {counts.incoming} waiting")
    connection.close()


def report(path: str) -> None:
    connection = sqlite3.connect(path)
    orders = [row[0] for row in connection.execute("SELECT order_id FROM orders ORDER BY 1")]
    shipped = connection.execute("SELECT order_id, COUNT(*) FROM shipments GROUP BY 1").fetchall()
    letters = connection.execute(
        "SELECT message_name, reason, exception_type FROM triobus_dead_letters"
    ).fetchall()
    connection.close()
    print(f"orders saved: {orders}")
    print(f"shipments (order, times): {shipped}")
    print(f"dead letters: {letters}")


def main() -> None:
    if len(sys.argv) > 1:
        path = sys.argv[1]
    else:
        path = str(Path(tempfile.mkdtemp(prefix="triobus-")) / "orders.db")
    print("-- first run: the warehouse is closed")
    trio.run(run, path, False, [("A-1", "book"), ("A-2", "unicorn"), ("A-3", "lamp")])
    print("-- second run, after a restart: the backlog ships")
    trio.run(run, path, True, [])
    report(path)


if __name__ == "__main__":
    main()
