"""Routing: named local queues, per-type and per-module routes, additive event
routing, and a bus that drains its backlog when it shuts down.

Three modules bind handlers. ``route_module(notifications)`` sends everything
the notifications module handles to the "emails" queue, and
``route_module(analytics)`` sends the analytics module's messages to the
"analytics" queue (four handlers at once), except RebuildDashboard, whose
per-type route to "reports" wins over its module's route. The audit module
has no route, so its handler runs on the default endpoint. OrderPlaced has a
subscriber in all three modules: each runs on its own module's endpoint.
Every endpoint is a supervised actor under the bus's supervisor, which shows
in ``system.tree()``. Fifty newsletters are sent right before the ``async
with`` ends; leaving the block waits until every one was handled.

Run: python examples/routing.py
"""

from __future__ import annotations

from collections import Counter
from typing import ClassVar

import attrs
import trio

from triobus import (
    ActorSystem,
    Command,
    Event,
    Module,
    local_queue,
    open_bus,
    route,
    route_module,
)

# --- Messages (named explicitly, so topology() reads well) ---


@attrs.frozen
class OrderPlaced(Event):
    message_name: ClassVar[str] = "orders.placed"
    order_id: str


@attrs.frozen
class SendReceipt(Command):
    message_name: ClassVar[str] = "notifications.send_receipt"
    order_id: str


@attrs.frozen
class SendNewsletter(Command):
    message_name: ClassVar[str] = "notifications.send_newsletter"
    issue: int


@attrs.frozen
class RebuildDashboard(Command):
    message_name: ClassVar[str] = "analytics.rebuild_dashboard"
    reason: str


# --- Handlers: each counts what it handled ---

handled: Counter[str] = Counter()


def record(handler: str) -> None:
    handled[handler] += 1


async def email_confirmation(event: OrderPlaced) -> None:
    record("email_confirmation")


async def send_receipt(command: SendReceipt) -> None:
    record("send_receipt")


async def send_newsletter(command: SendNewsletter) -> None:
    record("send_newsletter")


async def count_sale(event: OrderPlaced) -> None:
    record("count_sale")


async def rebuild_dashboard(command: RebuildDashboard) -> None:
    record("rebuild_dashboard")


async def audit_order(event: OrderPlaced) -> None:
    record("audit_order")


notifications = (
    Module("notifications")
    .bind_event(OrderPlaced, [email_confirmation])
    .bind_request(SendReceipt, send_receipt)
    .bind_request(SendNewsletter, send_newsletter)
)
analytics = (
    Module("analytics")
    .bind_event(OrderPlaced, [count_sale])
    .bind_request(RebuildDashboard, rebuild_dashboard)
)
audit = Module("audit").bind_event(OrderPlaced, [audit_order])


def show_handled(title: str) -> None:
    print(title)
    for handler, count in sorted(handled.items()):
        print(f"  {handler}: {count}")


async def main() -> None:
    async with ActorSystem("shop") as system:
        async with open_bus(
            notifications,
            analytics,
            audit,
            system=system,
            endpoints=[
                local_queue("emails"),
                local_queue("analytics", max_concurrency=4),
                local_queue("reports"),
            ],
            routing=[
                route_module(notifications).to("emails"),
                route_module(analytics).to("analytics"),
                # A per-type route beats the route of the type's module.
                route(RebuildDashboard).to("reports"),
            ],
        ) as bus:
            print("topology:")
            print(bus.topology())
            print()
            print(system.tree())
            print()

            for n in range(1, 4):
                # One publish, three endpoints: one delivery per module.
                await bus.publish(OrderPlaced(f"ORD-{n}"))
                await bus.send(SendReceipt(f"ORD-{n}"))
            await bus.send(RebuildDashboard("three new orders"))
            await bus.wait_quiet()
            show_handled("handled after 3 orders:")
            print()

            # A backlog right before the block ends: leaving it drains the bus.
            for issue in range(1, 51):
                await bus.send(SendNewsletter(issue))
            print(f"leaving the block with {bus.in_flight} newsletters in flight")
        newsletters = handled["send_newsletter"]
        print(f"newsletters handled by the time the bus stopped: {newsletters} of 50")
        print("dead letters:", system.dead_letters.total)
        print("bus supervisor gone after shutdown:", system.tree().children == ())


if __name__ == "__main__":
    trio.run(main)
