"""An order flow: reserve stock, charge payment, ship; compensate on failure.

PlaceOrder -> ReserveStock handler reserves stock and sends ChargePayment.
ChargePayment -> the payment handler charges the card, then sends ShipOrder,
or, when the card is declined, publishes PaymentDeclined, whose handler
releases the stock (the compensation).

``build_modules(world, idempotent=False)`` is the naive version: every
delivery of ChargePayment charges the card. Under duplicate delivery (which
any at-least-once transport will do one day) a customer pays twice. The
fixed version (``idempotent=True``) remembers which orders it charged, so a
duplicate is acknowledged without a second charge. The property test beside
this file finds the bug in the naive version and passes on the fixed one.

Run: python examples/property_testing/order_flow.py
"""

from __future__ import annotations

from collections import Counter

import attrs
import trio

from triobus import Command, Event, Module, current_bus, open_bus

DECLINED_CARD = "0000"


@attrs.frozen
class PlaceOrder(Command):
    order_id: str
    sku: str
    quantity: int
    amount: int
    card: str


@attrs.frozen
class ChargePayment(Command):
    order_id: str
    amount: int
    card: str


@attrs.frozen
class ShipOrder(Command):
    order_id: str


@attrs.frozen
class PaymentDeclined(Event):
    order_id: str


class DoubleCharge(AssertionError):
    """An order was charged more than once."""


class StockLeak(AssertionError):
    """Stock stayed reserved for an order that was neither shipped nor compensated."""


@attrs.define
class World:
    """The outside world the handlers change: stock, charges, shipments."""

    stock: Counter[str] = attrs.field(factory=lambda: Counter({"book": 1_000, "lamp": 1_000}))
    reserved: dict[str, tuple[str, int]] = attrs.field(factory=dict)
    charges: list[tuple[str, int]] = attrs.field(factory=list)
    shipped: set[str] = attrs.field(factory=set)
    released: set[str] = attrs.field(factory=set)

    def check(self) -> None:
        """The invariants of the flow, once the bus is quiet."""
        counts = Counter(order_id for order_id, _ in self.charges)
        twice = sorted(order_id for order_id, n in counts.items() if n > 1)
        if twice:
            raise DoubleCharge(f"charged more than once: {twice} (charges: {self.charges})")
        for order_id in self.reserved:
            if order_id not in self.shipped and order_id not in self.released:
                raise StockLeak(f"{order_id} keeps its stock reserved")


def build_modules(world: World, *, idempotent: bool) -> list[Module]:
    """The flow's modules; ``idempotent`` picks the fixed payment handler."""

    async def reserve_stock(command: PlaceOrder) -> None:
        if command.order_id not in world.reserved:
            world.stock[command.sku] -= command.quantity
            world.reserved[command.order_id] = (command.sku, command.quantity)
        await current_bus().send(ChargePayment(command.order_id, command.amount, command.card))

    charged: set[str] = set()

    async def charge_payment(command: ChargePayment) -> None:
        if idempotent and command.order_id in charged:
            return  # a duplicate delivery: already charged, nothing to do
        if command.card == DECLINED_CARD:
            await current_bus().publish(PaymentDeclined(command.order_id))
            return
        world.charges.append((command.order_id, command.amount))
        charged.add(command.order_id)
        await current_bus().send(ShipOrder(command.order_id))

    async def ship_order(command: ShipOrder) -> None:
        world.shipped.add(command.order_id)

    async def release_stock(event: PaymentDeclined) -> None:
        if event.order_id in world.reserved and event.order_id not in world.released:
            sku, quantity = world.reserved[event.order_id]
            world.stock[sku] += quantity
            world.released.add(event.order_id)

    return [
        Module("stock")
        .bind_request(PlaceOrder, reserve_stock)
        .bind_event(PaymentDeclined, [release_stock]),
        Module("payments").bind_request(ChargePayment, charge_payment),
        Module("shipping").bind_request(ShipOrder, ship_order),
    ]


async def main() -> None:
    world = World()
    orders = [
        PlaceOrder("o-1", "book", 2, 30, "4242"),
        PlaceOrder("o-2", "lamp", 1, 55, DECLINED_CARD),
        PlaceOrder("o-3", "book", 1, 15, "4242"),
    ]
    async with open_bus(*build_modules(world, idempotent=True)) as bus:
        for order in orders:
            await bus.send(order)
        await bus.wait_quiet()
    world.check()
    print("charged:", world.charges)
    print("shipped:", sorted(world.shipped))
    print("compensated:", sorted(world.released))
    print("stock:", dict(world.stock))


if __name__ == "__main__":
    trio.run(main)
