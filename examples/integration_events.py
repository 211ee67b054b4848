"""Integration events: what a command handler's events tell other systems, through a broker.

A command handler places an order and publishes a domain event; an event
handler turns it into an integration event (a notification, or a state
transfer carrying the whole order) and hands it to a ``MessageBroker``,
which publishes it for other systems. By default the broker is the test
broker that sends nothing (``DevnullMessageBroker``); give ``--amqp URL`` or
``--kafka HOST:PORT`` to publish to RabbitMQ or Kafka instead.

Run: ``python examples/integration_events.py [--amqp URL | --kafka HOST:PORT]``
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import AsyncIterator

import attrs
import trio

from triobus import Command, Event, Module, current_bus, open_bus
from triobus.transports import (
    AmqpMessageBroker,
    BrokerMessage,
    DevnullMessageBroker,
    KafkaMessageBroker,
    MessageBroker,
)


@attrs.frozen
class PlaceOrder(Command):
    message_name = "orders.place"
    order_id: str
    customer: str
    total: int


@attrs.frozen
class OrderPlaced(Event):
    message_name = "orders.placed"
    order_id: str
    customer: str
    total: int


def orders_module(broker: MessageBroker, saved: dict[str, PlaceOrder]) -> Module:
    async def place(command: PlaceOrder) -> None:
        saved[command.order_id] = command
        await current_bus().publish(OrderPlaced(command.order_id, command.customer, command.total))

    async def notify(event: OrderPlaced) -> None:
        # A notification: who and what, for systems that look the rest up.
        await broker.send_message(
            BrokerMessage("OrderPlaced", "orders.placed", {"order_id": event.order_id})
        )

    async def transfer_state(event: OrderPlaced) -> None:
        # Event-carried state transfer: the whole order, for systems that keep a copy.
        await broker.send_message(
            BrokerMessage("OrderState", "orders.state", attrs.asdict(saved[event.order_id]))
        )

    return (
        Module("orders")
        .bind_request(PlaceOrder, place)
        .bind_event(OrderPlaced, [notify, transfer_state])
    )


@contextlib.asynccontextmanager
async def chosen_broker(args: argparse.Namespace) -> AsyncIterator[MessageBroker]:
    if args.amqp:
        async with AmqpMessageBroker(args.amqp, exchange="events") as amqp:
            yield amqp
    elif args.kafka:
        async with KafkaMessageBroker(args.kafka) as kafka:
            yield kafka
    else:
        yield DevnullMessageBroker()


async def main(args: argparse.Namespace) -> None:
    saved: dict[str, PlaceOrder] = {}
    async with chosen_broker(args) as broker, open_bus(orders_module(broker, saved)) as bus:
        await bus.send(PlaceOrder("A-1", "ada", 1250))
        await bus.send(PlaceOrder("A-2", "grace", 990))
        await bus.wait_quiet()
    print(f"orders saved: {sorted(saved)}")
    if isinstance(broker, DevnullMessageBroker):
        for message in sorted(broker.sent, key=lambda m: (m.topic, str(m.payload))):
            print(f"published {message.message_name} to {message.topic}: {message.payload}")
    else:
        print(f"published 4 integration events through {type(broker).__name__}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)  # the test broker warns per message
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--amqp", help="a RabbitMQ URL: publish to its 'events' exchange")
    choice.add_argument("--kafka", help="a Kafka bootstrap address: publish to its topics")
    trio.run(main, parser.parse_args())
