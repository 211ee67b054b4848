"""Place orders on a message bus: a typed request, an event with two handlers,
a global logging behavior and a transaction around the order handler.

PlaceOrder is a request: its one handler returns an OrderConfirmation, and
``await bus.invoke(...)`` is typed accordingly. The handler publishes
OrderPlaced through ``current_bus()``; an email handler and an analytics
handler react to it and print the correlation and causation ids that link the
event to the order that caused it. PlaceOrder runs inside a
TransactionalBehavior: a unit of work that commits when the handler returns
and rolls back when it raises. The second order is out of stock: its unit of
work rolls back, its OrderPlaced event is dropped (the bus holds what a
handler publishes until its pipeline succeeded), and ``invoke`` re-raises the
error in the caller.

Run: python examples/orders.py
"""

from __future__ import annotations

import itertools
from contextvars import ContextVar

import attrs
import trio

from triobus import (
    Event,
    EventHandler,
    Module,
    Next,
    Request,
    RequestHandler,
    TransactionalBehavior,
    current_bus,
    current_context,
    open_bus,
)

# --- Domain ---


@attrs.frozen
class OrderConfirmation:
    order_id: str
    status: str


@attrs.frozen
class PlaceOrder(Request[OrderConfirmation]):
    customer_id: str
    product_id: str
    quantity: int


@attrs.frozen
class OrderPlaced(Event):
    order_id: str
    customer_id: str


class OutOfStock(Exception):
    """Fewer items are in stock than the order asks for."""


# --- An in-memory store and its unit of work ---


@attrs.define
class Store:
    stock: dict[str, int]
    orders: dict[str, PlaceOrder] = attrs.field(factory=dict)


class InMemoryUnitOfWork:
    """Stages changes to a Store; commit applies them, rollback forgets them."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.orders: dict[str, PlaceOrder] = {}
        self.taken: dict[str, int] = {}

    def add_order(self, order_id: str, order: PlaceOrder) -> None:
        self.orders[order_id] = order

    def take_stock(self, product_id: str, quantity: int) -> None:
        left = self.store.stock.get(product_id, 0) - self.taken.get(product_id, 0)
        if quantity > left:
            raise OutOfStock(f"{quantity} x {product_id} wanted, {left} in stock")
        self.taken[product_id] = self.taken.get(product_id, 0) + quantity

    async def commit(self) -> None:
        self.store.orders.update(self.orders)
        for product_id, quantity in self.taken.items():
            self.store.stock[product_id] -= quantity
        print(f"    unit of work: commit {sorted(self.orders)}")

    async def rollback(self) -> None:
        print(f"    unit of work: rollback {sorted(self.orders)}")


#: The unit of work of the order being handled (set when the transaction begins).
unit_of_work: ContextVar[InMemoryUnitOfWork] = ContextVar("unit_of_work")


# --- Handlers ---


class PlaceOrderHandler(RequestHandler[PlaceOrder, OrderConfirmation]):
    async def handle(self, request: PlaceOrder, /) -> OrderConfirmation:
        order_id = f"ORD-{request.customer_id}-{request.product_id}"
        uow = unit_of_work.get()
        uow.add_order(order_id, request)
        # Held by the bus until the whole pipeline (the commit included) succeeded.
        await current_bus().publish(OrderPlaced(order_id=order_id, customer_id=request.customer_id))
        uow.take_stock(request.product_id, request.quantity)
        return OrderConfirmation(order_id=order_id, status="placed")


def chain() -> str:
    context = current_context()
    assert context is not None  # always set inside a handler
    return f"correlation={context.correlation_id} causation={context.causation_id}"


class SendConfirmationEmail(EventHandler[OrderPlaced]):
    async def handle(self, event: OrderPlaced, /) -> None:
        print(f"    email to {event.customer_id}: order {event.order_id} placed ({chain()})")


class UpdateAnalytics(EventHandler[OrderPlaced]):
    async def handle(self, event: OrderPlaced, /) -> None:
        print(f"    analytics: order {event.order_id} counted ({chain()})")


# --- A global behavior: around every handler of every message ---


async def log_handling(message: object, next: Next) -> object:
    context = current_context()
    assert context is not None
    name = type(message).__name__
    print(f"  -> {name} id={context.message_id}")
    try:
        result = await next()
    except Exception as exc:
        print(f"  <- {name} failed: {exc!r}")
        raise
    print(f"  <- {name} ok")
    return result


async def main() -> None:
    store = Store(stock={"PROD-42": 3})

    def begin() -> InMemoryUnitOfWork:
        uow = InMemoryUnitOfWork(store)
        unit_of_work.set(uow)
        return uow

    orders = (
        Module("orders")
        .bind_request(PlaceOrder, PlaceOrderHandler, behaviors=[TransactionalBehavior.using(begin)])
        .bind_event(OrderPlaced, [SendConfirmationEmail, UpdateAnalytics])
    )
    # Readable ids for the printout; by default they are random-prefixed.
    counter = itertools.count(1)
    async with open_bus(
        orders, pipeline=[log_handling], id_factory=lambda: f"msg-{next(counter)}"
    ) as bus:
        print("place an order for 2 x PROD-42:")
        confirmation = await bus.invoke(
            PlaceOrder(customer_id="CUST-1", product_id="PROD-42", quantity=2)
        )
        # The event handlers run on the bus's default endpoint: wait for them.
        await bus.wait_quiet()
        print(f"Order {confirmation.order_id}: {confirmation.status}")
        print()

        print("place an order for 5 x PROD-42:")
        try:
            await bus.invoke(PlaceOrder(customer_id="CUST-2", product_id="PROD-42", quantity=5))
        except OutOfStock as exc:
            await bus.wait_quiet()
            print(f"Order rejected: {exc}")
    print()
    print("saved orders:", sorted(store.orders))
    print("stock left:", store.stock)


if __name__ == "__main__":
    trio.run(main)
