"""Fault injection driven by hypothesis data, so that failures shrink.

Rules say which deliveries may suffer which fault (by message type or name,
and by endpoint). For every delivery a rule matches, the injector asks its
source whether to apply a fault: a hypothesis ``data`` object (``st.data()``)
draws an integer, 0 for "no fault" and otherwise which matching rule applies,
which shrinks towards "no fault", so a failing example shrinks to the fewest
faults that still break it; a ``random.Random`` flips a coin, for plain tests.
Every fault applied is recorded in the session. Delivery faults (drop,
duplicate, delay, reorder) are injected by an endpoint put in front of each of
the bus's endpoints through the seam; crashes by the probe on the handling path.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Awaitable, Callable
from typing import Any, Self, final

import attrs
import trio

from .._errors import ActorStopped, MailboxFull
from ..bus import Delivery, DeliveryMode, Endpoint, EndpointHost, ErrorPolicy, Settlement, Step
from ..mailbox import DeadLetterReason
from ._records import Recorder, RecordKind


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

    def matches(self, delivery: Delivery, endpoint: str) -> bool:
        if (
            self.endpoint is not None
            and self.endpoint != endpoint
            and not endpoint.endswith("/" + self.endpoint)
        ):
            return False
        if self.message_type is None:
            return True
        if isinstance(self.message_type, str):
            return delivery.plan.name == self.message_type
        return isinstance(delivery.message, self.message_type)


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
        self._held_back: dict[str, list[Delivery]] = {}

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

    def _choose(self, candidates: list[int], delivery: Delivery, what: str) -> int | None:
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
            label = f"{what} of {delivery.plan.name} ({faults}; 0 = none)"
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
        self, faults: tuple[Fault, ...], delivery: Delivery, what: str
    ) -> Fault | None:
        """The fault to inject into this delivery, if any (rules match the endpoint's uri)."""
        uri = delivery.plan.endpoint.uri
        candidates = [
            index
            for index, rule in enumerate(self.rules)
            if rule.fault in faults
            and rule.matches(delivery, uri)
            and (rule.max_times is None or self._applied.get(index, 0) < rule.max_times)
        ]
        chosen = self._choose(candidates, delivery, what)
        return None if chosen is None else self.rules[chosen].fault

    # ------------------------------------------------------------ the probe side

    def wrap(
        self, session: Recorder, nursery: trio.Nursery
    ) -> Callable[[Endpoint, EndpointHost], Endpoint]:
        """What puts a faulty endpoint in front of each endpoint of the tracked bus."""

        def wrap(endpoint: Endpoint, host: EndpointHost) -> Endpoint:
            return FaultyEndpoint(endpoint, host, self, session, nursery)

        return wrap

    def before_receive(self, session: Recorder, delivery: Delivery, endpoint: str) -> None:
        if self._first_fault((Fault.CRASH_ACTOR,), delivery, "actor crash") is not None:
            session.record(RecordKind.CRASHED, delivery, endpoint=endpoint, target="actor")
            raise InjectedFault(f"injected crash of endpoint actor {endpoint}")

    def before_handle(
        self, session: Recorder, delivery: Delivery, step: Step, endpoint: str
    ) -> None:
        if self._first_fault((Fault.CRASH_HANDLER,), delivery, "handler crash") is not None:
            session.record(
                RecordKind.CRASHED,
                delivery,
                endpoint=endpoint,
                handler=step.label,
                attempt=delivery.attempt,
                target="handler",
            )
            raise InjectedFault(f"injected crash of {step.label} on {delivery.plan.name}")

    def __repr__(self) -> str:
        return f"<FaultInjector rules={len(self.rules)} source={type(self.source).__name__}>"


@final
class FaultyEndpoint:
    """An endpoint in front of another, through the seam, that injects delivery faults.

    Drops, duplicates, delays and reorders what it accepts, as its injector
    decides, and forwards the rest (asks, settles) unchanged. Delayed and
    held-back deliveries stay counted in flight until the endpoint behind
    took them; a shutdown meanwhile makes them dead letters.
    """

    def __init__(
        self,
        inner: Endpoint,
        host: EndpointHost,
        injector: FaultInjector,
        session: Recorder,
        nursery: trio.Nursery,
    ) -> None:
        self.inner = inner
        self._host = host
        self._injector = injector
        self._session = session
        self._nursery = nursery

    @property
    def uri(self) -> str:
        return self.inner.uri

    @property
    def delivery_mode(self) -> DeliveryMode:
        return self.inner.delivery_mode

    @property
    def errors(self) -> ErrorPolicy:
        return self.inner.errors

    async def start(self, host: EndpointHost) -> None:
        await self.inner.start(host)

    async def stop(self) -> None:
        await self.inner.stop()

    def accept_nowait(self, delivery: Delivery) -> None:
        for now in self._faulted(delivery):
            try:
                self.inner.accept_nowait(now)
            except MailboxFull:
                self._later(now, 0.0)  # the sender is not blocked: it goes when there is room

    async def accept(self, delivery: Delivery) -> None:
        for now in self._faulted(delivery):
            await self.inner.accept(now)

    def ask(self, delivery: Delivery, timeout: float | None) -> Awaitable[Any]:
        return self.inner.ask(delivery, timeout)

    def settle(self, delivery: Delivery, settlement: Settlement) -> None:
        self.inner.settle(delivery, settlement)

    def keep(self, delivery: Delivery) -> bool:
        return self.inner.keep(delivery)

    def _faulted(self, delivery: Delivery) -> list[Delivery]:
        """Apply at most one fault to ``delivery``; what is to be delivered at once."""
        injector, session, uri = self._injector, self._session, self.inner.uri
        if session.faults is None:
            return [delivery]  # switched off (the session is leaving by an error)
        fault = injector._first_fault(_DELIVERY_FAULTS, delivery, "delivery")
        if fault is None:
            overtaken = injector._held_back.pop(uri, None)
            if overtaken:
                for held in overtaken:
                    self._later(held, 0.0, counted=True)
            return [delivery]
        record = _FAULT_RECORDS[fault]
        if fault is Fault.DROP:
            session.record(record, delivery, endpoint=uri)
            return []
        if fault is Fault.DUPLICATE:
            session.record(record, delivery, endpoint=uri)
            return [delivery, delivery.same_message(delivery.plan)]
        if fault is Fault.DELAY:
            seconds = injector._delay_seconds()
            session.record(record, delivery, endpoint=uri, seconds=seconds)
            self._later(delivery, seconds)
            return []
        session.record(record, delivery, endpoint=uri)
        held_back = injector._held_back.setdefault(uri, [])
        held_back.append(delivery)
        self._host.accepted()
        if len(held_back) == 1:
            self._nursery.start_soon(self._release_held_back)
        return []

    def _later(self, delivery: Delivery, seconds: float, counted: bool = False) -> None:
        if not counted:
            self._host.accepted()
        self._nursery.start_soon(self._deliver_later, delivery, seconds)

    async def _deliver_later(self, delivery: Delivery, seconds: float) -> None:
        # Counted in flight by _later: the dead letter, or the hand-over, settles that.
        try:
            await trio.sleep(seconds)
            await self.inner.accept(delivery)
        except ActorStopped:
            pass  # a dead letter already
        except BaseException as exc:
            if not isinstance(exc, Exception):
                self._host.dead_letters.record(delivery, self.uri, DeadLetterReason.SHUTDOWN)
                raise
            self._host.dead_letters.record(delivery, self.uri, DeadLetterReason.UNDELIVERABLE, exc)
            return
        self._host.settled()

    async def _release_held_back(self) -> None:
        injector = self._injector
        try:
            await trio.sleep(injector.reorder_window)
        except BaseException:
            for delivery in injector._held_back.pop(self.uri, ()):
                self._host.dead_letters.record(delivery, self.uri, DeadLetterReason.SHUTDOWN)
            raise
        for delivery in injector._held_back.pop(self.uri, ()):
            self._later(delivery, 0.0, counted=True)
