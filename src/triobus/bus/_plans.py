"""The plan tables: which handlers run where, per message identity.

Computed once when the bus starts; dispatch only looks plans up (by the
message's class, cached, or by its identity).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import final

from .._errors import BusClosed, NoRouteError, RequestHandlerNotFound, WrongVerb
from ._messages import (
    Identity,
    NameDetector,
    default_message_name,
    message_version,
    short_repr,
    unbound_advice,
)
from ._seam import Endpoint, Plan

#: What a caller did: the verb named in errors.
INVOKE = "invoke"
SEND = "send"
PUBLISH = "publish"

_PAST = {INVOKE: "invoked", SEND: "sent", PUBLISH: "published"}


@final
class PlanTable:
    """Plans by identity, with per-class caches for the hot paths."""

    __slots__ = ("_detector", "event_cache", "events", "open", "request_cache", "requests")

    def __init__(self, detector: NameDetector | None) -> None:
        self._detector = detector
        self.requests: dict[Identity, Plan] = {}
        self.events: dict[Identity, tuple[Plan, ...]] = {}
        #: Plans by message class (filled on first dispatch of each class).
        self.request_cache: dict[type, Plan] = {}
        self.event_cache: dict[type, tuple[Plan, ...]] = {}
        self.open = False

    def close(self) -> None:
        """Refuse lookups from now on (``BusClosed``)."""
        self.open = False
        # Cached plans skip the open check: drop them, so every dispatch
        # goes through a lookup that raises BusClosed.
        self.request_cache.clear()
        self.event_cache.clear()

    def identity(self, message: object) -> Identity:
        name = None
        if self._detector is not None:
            name = self._detector(message)
        if name is None:
            name = default_message_name(message)
        return (name, message_version(message))

    def _cacheable(self, cls: type) -> bool:
        return self._detector is None and not issubclass(cls, str | Mapping)

    def _check_open(self, verb: str) -> None:
        if not self.open:
            raise BusClosed(
                f"the bus is not running (not started yet, or shutting down): {verb} inside "
                "'async with open_bus(...)', before the block ends"
            )

    def request_plan(self, message: object, verb: str) -> Plan:
        """The plan of the request or command ``message`` (``verb``: invoke or send).

        Raises:
            BusClosed, RequestHandlerNotFound (invoke), NoRouteError (send),
            WrongVerb: the message is bound as an event.
        """
        self._check_open(verb)
        identity = self.identity(message)
        plan = self.requests.get(identity)
        if plan is None:
            if identity in self.events:
                raise WrongVerb(
                    f"{short_repr(identity[0])} is bound as an event (bind_event), so it cannot be "
                    f"{_PAST[verb]}: publish it with bus.publish(...)"
                )
            error = RequestHandlerNotFound if verb == INVOKE else NoRouteError
            raise error(
                f"no handler is bound for {short_repr(identity[0])} (version {identity[1]}), so it "
                f"cannot be {_PAST[verb]}: {unbound_advice(message, verb)}"
            )
        if self._cacheable(type(message)):
            self.request_cache[type(message)] = plan
        return plan

    def event_plans(self, message: object) -> tuple[Plan, ...]:
        """The plans of the event ``message`` (none: nobody subscribed).

        Raises:
            BusClosed, WrongVerb: the message is bound as a request or command.
        """
        self._check_open(PUBLISH)
        identity = self.identity(message)
        plans = self.events.get(identity, ())
        if not plans and identity in self.requests:
            raise WrongVerb(
                f"{short_repr(identity[0])} is bound as a request or command (bind_request), so it "
                "cannot be published: use bus.send(...) or bus.invoke(...)"
            )
        if self._cacheable(type(message)):
            self.event_cache[type(message)] = plans
        return plans

    def endpoints_replaced(self, replace: Callable[[Endpoint], Endpoint]) -> PlanTable:
        """A copy whose plans go to ``replace(endpoint)`` instead (for instruments)."""
        table = PlanTable(self._detector)
        table.open = self.open
        table.requests = {k: _moved(plan, replace) for k, plan in self.requests.items()}
        table.events = {
            k: tuple(_moved(plan, replace) for plan in plans) for k, plans in self.events.items()
        }
        return table

    def topology(self) -> str:
        """Which message goes to which endpoint and handlers, as text."""
        lines: list[str] = []
        for (name, version), plan in sorted(self.requests.items()):
            lines.append(f"request {name} v{version} -> {plan.endpoint.uri}: {_labels(plan)}")
        for (name, version), plans in sorted(self.events.items()):
            for plan in plans:
                lines.append(f"event {name} v{version} -> {plan.endpoint.uri}: {_labels(plan)}")
        return "\n".join(lines)


def _labels(plan: Plan) -> str:
    if not plan.steps:
        return "(handled in another process)"
    return ", ".join(step.label for step in plan.steps)


def _moved(plan: Plan, replace: Callable[[Endpoint], Endpoint]) -> Plan:
    return Plan(
        plan.bus,
        plan.new_id,
        plan.name,
        plan.version,
        plan.kind,
        replace(plan.endpoint),
        plan.steps,
        plan.host,
    )
