"""The orders example split across processes, on RabbitMQ.

Three services run as processes of their own, each with the same routes to
one broker endpoint, ``shop``:

- orders: handles PlaceOrder (a request; its response is an OrderConfirmation)
  and publishes OrderPlaced once the order is taken;
- emails and analytics: each subscribes to OrderPlaced (each module gets
  its own subscription queue, so each gets every event once).

This process binds no handler: it routes the message types to ``shop`` and
invokes PlaceOrder across processes. The second order is out of stock: the
orders service's handler raises, and the invoke raises RemoteHandlerError
here, with the remote exception's type, message and traceback.

Run (RabbitMQ on amqp://guest:guest@127.0.0.1:5672/, or TRIOBUS_RABBITMQ_URL):

    python examples/distributed_orders/main.py

``main.py serve <service>`` runs one service; the demo starts them itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from functools import partial

import attrs
import trio

from triobus import (
    BrokerUnavailable,
    Event,
    Module,
    RemoteHandlerError,
    Request,
    current_bus,
    current_context,
    open_bus,
    rabbitmq_endpoint,
    route,
    route_module,
)

URL = os.environ.get("TRIOBUS_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")

# --- Messages (every process agrees on their names) ---


@attrs.frozen
class OrderConfirmation:
    message_name = "shop.order-confirmation"
    order_id: str
    status: str


@attrs.frozen
class PlaceOrder(Request[OrderConfirmation]):
    message_name = "shop.place-order"
    customer_id: str
    product_id: str
    quantity: int


@attrs.frozen
class OrderPlaced(Event):
    message_name = "shop.order-placed"
    order_id: str
    customer_id: str


class OutOfStock(Exception):
    """Fewer items are in stock than the order asks for."""


# --- Services ---


def orders_service() -> Module:
    stock = {"PROD-42": 3}

    async def place_order(request: PlaceOrder) -> OrderConfirmation:
        left = stock.get(request.product_id, 0)
        if request.quantity > left:
            raise OutOfStock(f"{request.quantity} x {request.product_id} wanted, {left} in stock")
        stock[request.product_id] = left - request.quantity
        order_id = f"ORD-{request.customer_id}-{request.product_id}"
        # Held until the handler returned, then published through the broker.
        await current_bus().publish(OrderPlaced(order_id, request.customer_id))
        say(f"orders: took {order_id}, {stock[request.product_id]} left")
        return OrderConfirmation(order_id, "placed")

    return Module("orders").bind_request(PlaceOrder, place_order)


def emails_service() -> Module:
    async def send_email(event: OrderPlaced) -> None:
        context = current_context()
        assert context is not None
        say(f"emails: order {event.order_id} placed, mail to {event.customer_id}")

    return Module("emails").bind_event(OrderPlaced, [send_email])


def analytics_service() -> Module:
    async def count_sale(event: OrderPlaced) -> None:
        say(f"analytics: order {event.order_id} counted")

    return Module("analytics").bind_event(OrderPlaced, [count_sale])


SERVICES = {"orders": orders_service, "emails": emails_service, "analytics": analytics_service}


def say(line: str) -> None:
    print(line, flush=True)


def endpoint(uri: str):  # type: ignore[no-untyped-def]
    return rabbitmq_endpoint(uri, url=URL)


async def serve(name: str, uri: str) -> None:
    """One service: its module routed to the shared endpoint, and the other types remotely."""
    module = SERVICES[name]()
    routing = [route_module(module).to(uri), route(PlaceOrder).to(uri), route(OrderPlaced).to(uri)]
    async with open_bus(module, endpoints=[endpoint(uri)], routing=routing):
        say("ready")
        await trio.sleep_forever()


# --- The demo: start the services, place two orders, stop them ---


class Output:
    """What the services printed, relayed here; ``wait_for`` waits for lines to appear."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._changed = trio.Event()

    def add(self, name: str, line: str) -> None:
        self.lines.append(line)
        say(f"  [{name}] {line}")
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, text: str, count: int) -> None:
        with trio.fail_after(30):
            while sum(text in line for line in self.lines) < count:
                await self._changed.wait()


async def relay(process: trio.Process, name: str, output: Output, ready: trio.Event) -> None:
    assert process.stdout is not None
    buffer = b""
    async for chunk in process.stdout:
        buffer += chunk
        while b"\n" in buffer:
            raw, buffer = buffer.split(b"\n", 1)
            line = raw.decode()
            if line == "ready":
                ready.set()
            else:
                output.add(name, line)


async def main() -> None:
    uri = f"shop-{uuid.uuid4().hex[:6]}"  # a fresh endpoint for each run of the demo
    output = Output()
    routing = [route(PlaceOrder).to(uri), route(OrderPlaced).to(uri)]
    async with (
        open_bus(endpoints=[endpoint(uri)], routing=routing) as bus,
        trio.open_nursery() as nursery,
    ):
        processes = []
        for name in SERVICES:
            command = [sys.executable, __file__, "serve", name, uri]
            run = partial(trio.run_process, command, stdout=subprocess.PIPE, check=False)
            process = await nursery.start(run)
            ready = trio.Event()
            nursery.start_soon(relay, process, name, output, ready)
            with trio.fail_after(30):
                await ready.wait()
            processes.append(process)
        say(f"services up: {', '.join(SERVICES)} on endpoint {uri!r}")

        say("place an order for 2 x PROD-42:")
        confirmation = await bus.invoke(PlaceOrder("CUST-1", "PROD-42", 2), timeout=30)
        say(f"Order {confirmation.order_id}: {confirmation.status}")
        say("place an order for 5 x PROD-42:")
        try:
            await bus.invoke(PlaceOrder("CUST-2", "PROD-42", 5), timeout=30)
        except RemoteHandlerError as exc:
            say(f"Order rejected: {exc.exception_type}: {exc.remote_message}")
        # The order's event reaches the emails and analytics services too.
        await output.wait_for("ORD-CUST-1-PROD-42", 3)
        for process in processes:
            process.terminate()
    say("services stopped")


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        trio.run(serve, sys.argv[2], sys.argv[3])
    else:
        try:
            trio.run(main)
        except BrokerUnavailable as exc:
            sys.exit(f"RabbitMQ is not reachable ({exc}); start it, or set TRIOBUS_RABBITMQ_URL")
