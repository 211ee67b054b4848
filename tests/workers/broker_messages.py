"""The messages the broker tests' processes exchange (named, so every process agrees)."""

from __future__ import annotations

import attrs

from triobus import Command, Event, Request


@attrs.frozen
class Quote:
    message_name = "orders.quote-result"
    sku: str
    price: int


@attrs.frozen
class GetQuote(Request[Quote]):
    message_name = "orders.quote"
    sku: str


@attrs.frozen
class PlaceOrder(Command):
    message_name = "orders.place"
    n: int


@attrs.frozen
class OrderPlaced(Event):
    message_name = "orders.placed"
    n: int


@attrs.frozen
class OrderShipped(Event):
    message_name = "orders.shipped"
    n: int


REMOTE = (GetQuote, PlaceOrder, OrderPlaced, OrderShipped)
