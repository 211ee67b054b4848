"""Fault injection driven by hypothesis data, so that failures shrink.

Rules say which deliveries may suffer which fault (by message type or name,
and by endpoint). For every delivery a rule matches, the injector asks its
source whether to apply the fault: a hypothesis ``data`` object (``st.data()``)
draws a boolean, which shrinks towards "no fault", so a failing example
shrinks to the fewest faults that still break it; a ``random.Random`` flips a
coin, for plain tests. Every fault applied is recorded in the session.
"""

from __future__ import annotations

import enum
import random
from typing import TYPE_CHECKING, Any, Self, final

import attrs
import trio

from ..bus._context import Envelope
from ..bus._endpoint import tell_in_order
from ..bus._plans import EndpointRuntime, Step
from ..mailbox import DeadLetterReason
from ._records import RecordKind

if TYPE_CHECKING:
    from ._session import TrackedSession


class InjectedFault(Exception):
    """The exception an injected crash raises (in a handler or an endpoint actor)."""


class Fault(enum.StrEnum):
    """What can go wrong with a delivery."""

    #: The delivery is lost.
    DROP = "drop"
    #: The message is delivered twice (same id).
    DUPLICATE = "duplicate"
    #: The delivery waits a while (virtual time under the mock clock).
    DELAY = "delay"
    #: The delivery is held back until the next one to its endpoint overtook it.
    REORDER = "reorder"
    #: The handler raises :class:`InjectedFault` before it runs.
    CRASH_HANDLER = "crash_handler"
    #: The endpoint actor crashes (raises) as it takes the message.
    CRASH_ACTOR = "crash_actor"


@final
@attrs.frozen
class FaultRule:
    """Deliveries of ``message_type`` to ``endpoint`` may suffer ``fault``.

    ``None`` matches any message type, or any endpoint.
    """

    fault: Fault
    message_type: type | str | None = None
    endpoint: str | None = None
    #: At most this many times (``None``: no limit).
    max_times: int | None = None

    def matches(self, envelope: Envelope, endpoint: str) -> bool:
        if (
            self.endpoint is not None
            and self.endpoint != endpoint
            and not endpoint.endswith("/" + self.endpoint)
        ):
            return False
        if self.message_type is None:
            return True
        if isinstance(self.message_type, str):
            return envelope.plan.name == self.message_type
        return isinstance(envelope.message, self.message_type)


_DELIVERY_FAULTS = (Fault.DROP, Fault.DUPLICATE, Fault.DELAY, Fault.REORDER)
_FAULT_RECORDS = {
    Fault.DROP: RecordKind.DROPPED,
    Fault.DUPLICATE: RecordKind.DUPLICATED,
    Fault.DELAY: RecordKind.DELAYED,
    Fault.REORDER: RecordKind.REORDERED,
}


@final
class FaultInjector:
    """Injects faults into a tracked bus: ``tracked(bus, faults=FaultInjector(data))``.

    Args:
        source: ``data`` from hypothesis' ``st.data()`` (faults shrink), or a
            ``random.Random`` (a coin per matching delivery).
        max_delay: the longest injected delay, in seconds.
        reorder_window: how long a held-back delivery waits for another to
            overtake it before it goes anyway, in seconds.
    """

    def __init__(
        self, source: Any, *, max_delay: float = 1.0, reorder_window: float = 0.05
    ) -> None:
        if not (isinstance(source, random.Random) or hasattr(source, "draw")):
            raise TypeError(
                f"a fault source is hypothesis data (st.data()) or a random.Random, not {source!r}"
            )
        if not max_delay > 0 or not reorder_window > 0:
            raise ValueError("max_delay and reorder_window must be positive numbers of seconds")
        self.source = source
        self.max_delay = max_delay
        self.reorder_window = reorder_window
        self.rules: list[FaultRule] = []
        self._applied: dict[int, int] = {}
        self._held_back: dict[str, list[tuple[EndpointRuntime, Envelope]]] = {}

    # ------------------------------------------------------------ rules

    def _add(
        self,
        fault: Fault,
        message_type: type | str | None,
        endpoint: str | None,
        max_times: int | None,
    ) -> Self:
        if max_times is not None and max_times < 1:
            raise ValueError(f"max_times must be >= 1 or None, got {max_times!r}")
        self.rules.append(FaultRule(fault, message_type, endpoint, max_times))
        return self

    def drop(
        self,
        message_type: type | str | None = None,
        *,
        endpoint: str | None = None,
        max_times: int | None = None,
    ) -> Self:
        """Deliveries that match may be lost."""
        return self._add(Fault.DROP, message_type, endpoint, max_times)

    def duplicate(
        self,
        message_type: type | str | None = None,
        *,
        endpoint: str | None = None,
        max_times: int | None = None,
    ) -> Self:
        """Deliveries that match may arrive twice."""
        return self._add(Fault.DUPLICATE, message_type, endpoint, max_times)

    def delay(
        self,
        message_type: type | str | None = None,
        *,
        endpoint: str | None = None,
        max_times: int | None = None,
    ) -> Self:
        """Deliveries that match may be delayed (up to ``max_delay``)."""
        return self._add(Fault.DELAY, message_type, endpoint, max_times)

    def reorder(
        self,
        message_type: type | str | None = None,
        *,
        endpoint: str | None = None,
        max_times: int | None = None,
    ) -> Self:
        """Deliveries that match may be overtaken by the next one to their endpoint."""
        return self._add(Fault.REORDER, message_type, endpoint, max_times)

    def crash_handler(
        self,
        message_type: type | str | None = None,
        *,
        endpoint: str | None = None,
        max_times: int | None = None,
    ) -> Self:
        """Handler attempts on matching messages may raise :class:`InjectedFault`."""
        return self._add(Fault.CRASH_HANDLER, message_type, endpoint, max_times)

    def crash_actor(
        self,
        message_type: type | str | None = None,
        *,
        endpoint: str | None = None,
        max_times: int | None = None,
    ) -> Self:
        """Endpoint actors taking matching messages may crash (and be restarted)."""
        return self._add(Fault.CRASH_ACTOR, message_type, endpoint, max_times)

    # ------------------------------------------------------------ decisions

    def _choose(self, candidates: list[int], envelope: Envelope, what: str) -> int | None:
        """Pick one of the matching rules (by index) or none, with one draw.

        A hypothesis source draws an integer where 0 means "no fault", so a
        failing example shrinks towards fewer faults, one decision per delivery.
        """
        if not candidates:
            return None
        if isinstance(self.source, random.Random):
            if self.source.random() >= 0.5:
                return None
            chosen = self.source.choice(candidates)
        else:
            from hypothesis import strategies as st

            faults = ", ".join(str(self.rules[i].fault) for i in candidates)
            label = f"{what} of {envelope.plan.name} ({faults}; 0 = none)"
            pick = self.source.draw(st.integers(0, len(candidates)), label=label)
            if pick == 0:
                return None
            chosen = candidates[pick - 1]
        self._applied[chosen] = self._applied.get(chosen, 0) + 1
        return chosen

    def _delay_seconds(self) -> float:
        if isinstance(self.source, random.Random):
            return self.source.uniform(0, self.max_delay)
        from hypothesis import strategies as st

        millis = self.source.draw(st.integers(1, max(1, int(self.max_delay * 1000))))
        return float(millis) / 1000

    def _first_fault(
        self, faults: tuple[Fault, ...], envelope: Envelope, what: str
    ) -> Fault | None:
        """The fault to inject into this delivery, if any (rules match the endpoint's uri)."""
        uri = envelope.plan.endpoint.uri
        candidates = [
            index
            for index, rule in enumerate(self.rules)
            if rule.fault in faults
            and rule.matches(envelope, uri)
            and (rule.max_times is None or self._applied.get(index, 0) < rule.max_times)
        ]
        chosen = self._choose(candidates, envelope, what)
        return None if chosen is None else self.rules[chosen].fault

    # ------------------------------------------------------------ the probe side

    async def deliver(
        self, session: TrackedSession, endpoint: EndpointRuntime, envelope: Envelope
    ) -> None:
        """Deliver ``envelope`` to ``endpoint``, maybe with one fault."""
        bus = session.bus
        fault = self._first_fault(_DELIVERY_FAULTS, envelope, "delivery")
        if fault is Fault.DROP:
            session.record(_FAULT_RECORDS[fault], envelope, endpoint=endpoint.uri)
        elif fault is Fault.DUPLICATE:
            session.record(_FAULT_RECORDS[fault], envelope, endpoint=endpoint.uri)
            await bus.tell(endpoint, envelope)
            await bus.tell(endpoint, envelope.duplicate())
        elif fault is Fault.DELAY:
            seconds = self._delay_seconds()
            session.record(_FAULT_RECORDS[fault], envelope, endpoint=endpoint.uri, seconds=seconds)
            bus.accepted()
            assert bus._nursery is not None
            bus._nursery.start_soon(self._deliver_later, bus, endpoint, envelope, seconds)
        elif fault is Fault.REORDER:
            session.record(_FAULT_RECORDS[fault], envelope, endpoint=endpoint.uri)
            bus.accepted()
            held = self._held_back.setdefault(endpoint.uri, [])
            held.append((endpoint, envelope))
            if len(held) == 1:
                assert bus._nursery is not None
                bus._nursery.start_soon(self._release_held_back, bus, endpoint.uri)
        else:
            await bus.tell(endpoint, envelope)
            overtaken = self._held_back.pop(endpoint.uri, None)
            if overtaken:
                # Delivered from a task of the bus: a refusal is a dead letter,
                # never an error for this sender.
                assert bus._nursery is not None
                bus._nursery.start_soon(tell_in_order, overtaken)

    async def _deliver_later(
        self, bus: Any, endpoint: EndpointRuntime, envelope: Envelope, seconds: float
    ) -> None:
        try:
            await trio.sleep(seconds)
        except BaseException:
            bus.dead_letters.record(envelope, endpoint.uri, DeadLetterReason.SHUTDOWN)
            raise
        await tell_in_order([(endpoint, envelope)])

    async def _release_held_back(self, bus: Any, uri: str) -> None:
        try:
            await trio.sleep(self.reorder_window)
        except BaseException:
            for endpoint, envelope in self._held_back.pop(uri, ()):
                bus.dead_letters.record(envelope, endpoint.uri, DeadLetterReason.SHUTDOWN)
            raise
        overtaken = self._held_back.pop(uri, None)
        if overtaken:
            await tell_in_order(overtaken)

    def before_receive(self, session: TrackedSession, envelope: Envelope, endpoint: str) -> None:
        if self._first_fault((Fault.CRASH_ACTOR,), envelope, "actor crash") is not None:
            session.record(RecordKind.CRASHED, envelope, endpoint=endpoint, target="actor")
            raise InjectedFault(f"injected crash of endpoint actor {endpoint}")

    def before_handle(
        self, session: TrackedSession, envelope: Envelope, step: Step, endpoint: str
    ) -> None:
        if self._first_fault((Fault.CRASH_HANDLER,), envelope, "handler crash") is not None:
            session.record(
                RecordKind.CRASHED,
                envelope,
                endpoint=endpoint,
                handler=step.label,
                attempt=envelope.attempt,
                target="handler",
            )
            raise InjectedFault(f"injected crash of {step.label} on {envelope.plan.name}")

    def __repr__(self) -> str:
        return f"<FaultInjector rules={len(self.rules)} source={type(self.source).__name__}>"
