"""Dispatch hooks: plugins that watch and steer each dispatch, as in prooph.

- A monitoring plugin at ``Phase.FINALIZE`` sees how every dispatch ended,
  counts the outcomes, and clears one exception (AlreadyGreeted), so that
  ``invoke`` returns ``None`` instead of raising it.
- A custom name detector (``open_bus(name_detector=...)``) names the
  LegacyMessage objects of an older system by their ``name`` field; other
  messages keep the default rule.
- A dict message is routed by its ``"message_name"`` key to a handler bound
  by name: ``bind_request("greet", greet)``.
- A router plugin at ``Phase.ROUTE`` sends the string message
  ``"daily-report"`` to the handler id ``"reports.daily"``, and a locator
  plugin at ``Phase.LOCATE_HANDLER`` builds that handler the first time it
  is needed.

Run: python examples/plugins.py
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
import trio

from triobus import DispatchEvent, Module, Phase, RequestHandlerNotFound, open_bus

# --- Messages that are not Request or Event classes ---


@attrs.frozen
class LegacyMessage:
    """A message of an older system: its name travels in a field."""

    name: str
    payload: Mapping[str, str]


def detect_name(message: object) -> str | None:
    """Name LegacyMessages by their field; ``None`` keeps the default rule."""
    if isinstance(message, LegacyMessage):
        return message.name
    return None


class AlreadyGreeted(Exception):
    """A second greeting: harmless, so the monitor clears it."""


# --- Handlers ---

greeted: list[str] = []


async def greet(message: Mapping[str, Any]) -> str:
    who = message["who"]
    if who in greeted:
        raise AlreadyGreeted(who)
    greeted.append(who)
    return f"Hello, {who}!"


async def charge(message: LegacyMessage) -> str:
    return f"charged {message.payload['amount']} to card {message.payload['card']}"


class DailyReport:
    """Costly to build: the locator builds it on first use only."""

    def __init__(self) -> None:
        print("  [locator] building reports.daily")

    async def handle(self, message: str) -> str:
        return f"daily report: {len(greeted)} greeted ({', '.join(greeted)})"


# --- Plugins ---


class Monitor:
    """At finalize: count each outcome, and clear AlreadyGreeted."""

    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()

    def __call__(self, event: DispatchEvent) -> None:
        if event.exception is None:
            outcome = "ok"
        elif isinstance(event.exception, AlreadyGreeted):
            outcome = "AlreadyGreeted (cleared)"
            event.exception = None
        else:
            outcome = f"failed with {type(event.exception).__name__}"
        self.outcomes[outcome] += 1
        print(f"  [monitor] {event.kind} {event.message_name!r}: {outcome}")


def route_reports(event: DispatchEvent) -> None:
    """At route: a report request goes to a handler id, resolved later."""
    if event.message_name == "daily-report":
        event.handler = "reports.daily"


class Locator:
    """At locate handler: turn a handler id into a handler, built on first use."""

    def __init__(self, factories: Mapping[str, Callable[[], DailyReport]]) -> None:
        self.factories = factories
        self.built: dict[str, Callable[[str], Awaitable[str]]] = {}

    def __call__(self, event: DispatchEvent) -> None:
        if isinstance(event.handler, str):
            handler_id = event.handler
            if handler_id not in self.built:
                self.built[handler_id] = self.factories[handler_id]().handle
            event.handler = self.built[handler_id]


async def main() -> None:
    module = (
        Module("front-desk").bind_request("greet", greet).bind_request("billing.charge", charge)
    )
    monitor = Monitor()
    async with open_bus(module, name_detector=detect_name) as bus:
        bus.attach(Phase.FINALIZE, monitor)
        bus.attach(Phase.ROUTE, route_reports)
        bus.attach(Phase.LOCATE_HANDLER, Locator({"reports.daily": DailyReport}))

        print("a dict message, named by its 'message_name' key:")
        print(" ", await bus.invoke({"message_name": "greet", "who": "Ada"}))
        print(" ", await bus.invoke({"message_name": "greet", "who": "Grace"}))
        print("the same greeting again (the monitor clears AlreadyGreeted):")
        print("  returned", await bus.invoke({"message_name": "greet", "who": "Ada"}))
        print("and sent (cleared, so neither retried nor dead-lettered):")
        await bus.send({"message_name": "greet", "who": "Grace"})
        await bus.wait_quiet()
        print("  dead letters:", bus.dead_letters.total)

        print("a LegacyMessage, named by the custom name detector:")
        legacy = LegacyMessage("billing.charge", {"amount": "12.50", "card": "4242"})
        print(" ", await bus.invoke(legacy))

        print("a string message, routed to a handler id and located lazily:")
        print(" ", await bus.invoke("daily-report"))
        print(" ", await bus.invoke("daily-report"))

        print("a message nobody handles (finalize runs in the caller):")
        try:
            await bus.invoke({"message_name": "farewell", "who": "Ada"})
        except RequestHandlerNotFound as exc:
            print(f"  raised {type(exc).__name__}")
    print()
    print("outcomes:")
    for outcome, count in sorted(monitor.outcomes.items()):
        print(f"  {outcome}: {count}")


if __name__ == "__main__":
    trio.run(main)
