"""Handling: the one path that runs handlers, for every endpoint and every case.

An endpoint's actors run :class:`EndpointActor`, whose ``receive`` hands
the coroutine of one handler attempt to the actor loop and finishes the
delivery when the loop reports back (:class:`~triobus.actors.Finisher`):
what the handler sent is released or dropped, a told delivery is settled
through its endpoint, a failed one goes through the retry policy and then
to dead letters. The same component runs an invoke inline (a re-entrant
invoke), handler classes and functions, behaviors, plugins and the testing
kit's probe: there is no second path.

A handler failure never crashes an endpoint: an ask's exception goes back
to the asker; a told message goes to the endpoint's error policy (a retry
in place, a retry later through its endpoint, or a dead letter with the
last exception), and the other handlers of an event still run (each
subscription is its own delivery).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from typing import Any, final

import trio

from .._errors import BusClosed, HandlerNotLocated
from ..actors import Actor, Frame, current_frame
from ..mailbox import DeadLetterReason, DeadLetters, Replay
from ..supervision import SupervisorRef
from ._accounting import Accounting
from ._handlers import Callee
from ._messages import short_repr
from ._module import Module
from ._outbox import Outbox
from ._plans import PlanTable
from ._plugins import DispatchEvent, Phase, Plugins
from ._policy import RetryMode
from ._probe import Probe
from ._seam import (
    CLOSED,
    TRIED_AGAIN,
    Delivery,
    DeliveryMode,
    Endpoint,
    Plan,
    Settlement,
    Step,
    hand_over,
)

logger = logging.getLogger("triobus.bus")

#: The delivery whose handler runs in this task (and in the tasks it started).
current_delivery: ContextVar[Delivery | None] = ContextVar("triobus_current_delivery", default=None)


@final
class BusHost:
    """What the bus shares with its endpoints and their handling (an ``EndpointHost``)."""

    __slots__ = (
        "_nursery",
        "_supervisor",
        "accepted",
        "accounting",
        "dead_letters",
        "modules",
        "open",
        "outbox",
        "plans",
        "plugins",
        "probe",
        "random",
        "remote_types",
        "settled",
        "wall_clock",
    )

    def __init__(
        self,
        accounting: Accounting,
        dead_letters: DeadLetters,
        rng: random.Random,
        plugins: Plugins,
        wall_clock: Callable[[], float],
    ) -> None:
        self.accounting = accounting
        #: Seconds since the epoch (``time.time``, or a clock a test drives).
        self.wall_clock = wall_clock
        #: Count a delivery in flight, and settle it (the accounting's own methods).
        self.accepted = accounting.accepted
        self.settled = accounting.settled
        self.dead_letters = dead_letters
        self.random = rng
        self.plugins = plugins
        self.outbox = Outbox(accounting, dead_letters)
        #: The testing kit's instrument; ``None`` in production.
        self.probe: Probe | None = None
        #: Whether the bus takes messages (set by ``open_bus``): dead letters
        #: are replayed only then.
        self.open = False
        self._supervisor: SupervisorRef | None = None
        self._nursery: trio.Nursery | None = None
        #: The bus's plans and bound modules (set by ``open_bus`` before endpoints start).
        self.plans: PlanTable | None = None
        self.modules: tuple[Module, ...] = ()
        #: The classes routed without a local handler (set by ``open_bus``).
        self.remote_types: tuple[type, ...] = ()

    def attach(self, supervisor: SupervisorRef, nursery: trio.Nursery) -> None:
        """The bus's supervisor (endpoints start their actors under it) and its nursery."""
        self._supervisor = supervisor
        self._nursery = nursery

    @property
    def supervisor(self) -> SupervisorRef:
        assert self._supervisor is not None, "the bus has not started"
        return self._supervisor

    @property
    def nursery(self) -> trio.Nursery:
        assert self._nursery is not None, "the bus has not started"
        return self._nursery

    def handler_actor(self, endpoint: Endpoint, path: str) -> Actor:
        return EndpointActor(self, endpoint, path)

    def replayer(self, delivery: Delivery, plan: Plan) -> Replay:
        """What replays ``delivery``'s dead letter: a fresh delivery under ``plan``."""

        async def replay() -> None:
            await self.redeliver(delivery.again(plan))

        return replay

    async def redeliver(self, delivery: Delivery) -> None:
        """Hand a dead letter's fresh ``delivery`` to its endpoint again (a replay).

        Returns once the endpoint accepted it, waiting for room as ``send`` does.

        Raises:
            BusClosed: the bus is not running.
            MailboxFull, ActorStopped: the endpoint refused it.
        """
        if not self.open:
            raise BusClosed(
                f"the bus that dead-lettered {delivery.plan.name!r} is not running (not started "
                "yet, or shut down): replay its dead letters while that bus is open"
            )
        await hand_over(delivery.plan.endpoint, delivery)

    def plans_on(self, uri: str) -> tuple[Plan, ...]:
        assert self.plans is not None, "the bus has not started"
        plans = [plan for plan in self.plans.requests.values() if plan.endpoint.uri == uri]
        for event_plans in self.plans.events.values():
            plans.extend(plan for plan in event_plans if plan.endpoint.uri == uri)
        return tuple(plans)

    def plan_for(self, uri: str, name: str, version: int, step: str = "") -> Plan | None:
        """The plan of message ``(name, version)`` on endpoint ``uri`` (only handler
        ``step`` when given, by its label), or ``None`` when no handler there takes it.
        """
        assert self.plans is not None, "the bus has not started"
        identity = (name, version)
        candidates: tuple[Plan, ...] = self.plans.events.get(identity, ())
        request = self.plans.requests.get(identity)
        if request is not None:
            candidates = (request, *candidates)
        for plan in candidates:
            if plan.endpoint.uri != uri or not plan.steps:
                continue  # elsewhere, or a remote route (no handler in this process)
            if not step:
                return plan
            for candidate in plan.steps:
                if candidate.label == step:
                    return plan.only(candidate)
        return None


class EndpointActor(Actor):
    """Runs the handlers of the deliveries of one endpoint (or one of its partitions)."""

    def __init__(self, host: BusHost, endpoint: Endpoint, path: str) -> None:
        self.host = host
        self.endpoint = endpoint
        self.path = path
        #: A durable endpoint retries through its store, even "at once": the
        #: attempt is committed before the handler runs again.
        self._stored = endpoint.delivery_mode is DeliveryMode.DURABLE

    # ------------------------------------------------------------ the actor loop's side

    def receive(self, message: Any) -> Coroutine[Any, Any, Any]:
        """Begin handling ``message`` (a :class:`Delivery`): the coroutine to await.

        The actor loop awaits it and then calls :meth:`finished`, or
        :meth:`failed` for a told delivery whose handler raised.
        """
        delivery: Delivery = message
        probe = self.host.probe
        if probe is not None:
            probe.before_receive(delivery, self.path)  # raising here crashes the actor
        frame = current_frame.get()
        assert frame is not None  # set by the worker that runs this
        frame.finish = self
        current_delivery.set(delivery)
        delivery.held = None
        step = delivery.plan.single
        if step is None:
            return self._each_step(delivery)
        return self._attempt(delivery, step)

    def finished(self, frame: Frame | None, error: BaseException | None) -> None:
        """The handed-over coroutine returned (``error is None``) or raised ``error``.

        What the handler sent is released, or dropped with it; what it sends
        from now on goes out directly. A told delivery that ended is settled
        (as ``delivery.ending``). ``error`` is an ask's failure (the asker
        gets it) or an interruption (the actor redelivers the message or
        dead-letters it).
        """
        delivery = current_delivery.get()
        assert delivery is not None
        # The variable is not set back to None: each set copies the context
        # (about 5 % of a send), and the worker runs nothing but its loop
        # until its next message sets it again. What a task of the handler
        # sends from now on goes out directly (the delivery is closed).
        if delivery.held:
            if error is None:
                self.host.outbox.release(delivery)
            else:
                self.host.outbox.drop(delivery)
        delivery.held = CLOSED
        if error is None and not delivery.asked:
            ending = delivery.ending
            if ending is not Settlement.HANDLED:
                delivery.ending = Settlement.HANDLED  # a later delivery of it starts afresh
            delivery.plan.endpoint.settle(delivery, ending)

    async def failed(self, frame: Frame, error: Exception) -> None:
        """A told delivery's only handler raised ``error``: the error policy, then settle."""
        delivery = current_delivery.get()
        assert delivery is not None
        try:
            delivery.ending = await self._retry(delivery, delivery.plan.steps[0], error)
        except BaseException as exc:
            self.finished(frame, exc)
            raise
        self.finished(frame, None)

    # ------------------------------------------------------------ inline

    async def run_inline(self, delivery: Delivery) -> Any:
        """Handle the asked ``delivery`` here, in the caller's task (a re-entrant invoke)."""
        token = current_delivery.set(delivery)
        delivery.held = None
        try:
            result = await self._attempt(delivery, delivery.plan.steps[0])
        except BaseException as exc:
            self.finished(None, exc)
            raise
        else:
            self.finished(None, None)
        finally:
            current_delivery.reset(token)
        return result

    # ------------------------------------------------------------ the path

    def _attempt(self, delivery: Delivery, step: Step) -> Coroutine[Any, Any, Any]:
        """One attempt of ``step``'s handler on ``delivery``, observed when instruments are on."""
        if self.host.probe is None and delivery.dispatch is None:
            factory = step.factory
            if factory is not None:
                return factory().handle(delivery.message)  # type: ignore[no-any-return]
            return step.call(delivery.message)  # type: ignore[return-value]
        return self._observed_attempt(delivery, step)

    async def _observed_attempt(self, delivery: Delivery, step: Step) -> Any:
        probe = self.host.probe
        try:
            if probe is not None:
                probe.before_handle(delivery, step, self.path)
            if delivery.dispatch is None:
                result = await step.call(delivery.message)
            else:
                result = await self._attempt_with_plugins(delivery.dispatch, step, delivery)
        except Exception as exc:
            if probe is not None and delivery.asked:
                probe.failed(delivery, step, self.path, exc, False)
            raise
        if probe is not None:
            probe.handled(delivery, step, self.path)
        return result

    async def _each_step(self, delivery: Delivery) -> None:
        """Every handler of an event on this endpoint, each its own delivery, in order.

        ``progress`` counts the handlers done, for a redelivery after an
        interruption (the handler cut off runs again; the ones before do not).
        """
        steps = delivery.plan.steps
        index = delivery.progress
        try:
            for step in steps[index:] if index else steps:
                delivery.progress = index  # the handlers done (a unit of work reads it)
                try:
                    await self._attempt(delivery, step)
                except Exception as exc:
                    settlement = await self._retry(delivery, step, exc)
                    if settlement in TRIED_AGAIN:
                        # Tried again later, from this handler on.
                        delivery.progress = index
                        delivery.ending = settlement
                        return
                else:
                    if delivery.held:
                        self.host.outbox.release(delivery)
                delivery.attempt = 1  # the next handler starts its own count
                index += 1
        except BaseException:
            delivery.progress = index  # cut off: this handler runs again on redelivery
            raise
        delivery.progress = index

    async def _retry(self, delivery: Delivery, step: Step, error: Exception) -> Settlement:
        """``step`` failed attempt ``delivery.attempt`` with ``error``: apply the error policy.

        What a failed attempt sent is dropped before the next one. Returns
        how the delivery of ``step`` ended: handled (after a retry in
        place), dead-lettered, or to be tried again later
        (:attr:`Settlement.RETRY`, with ``delivery.due`` and
        ``delivery.attempt`` set for the next try).
        """
        policy = self.endpoint.errors
        probe = self.host.probe
        attempt = delivery.attempt
        while True:
            if delivery.held:
                self.host.outbox.drop(delivery)
            rule = policy.rule_for(error)
            decision = rule.decide(attempt, self.host.random)
            if probe is not None:
                probe.failed(delivery, step, self.path, error, decision.retry is not None)
            logger.warning(
                "%s failed on %s id=%s at %s (attempt %d of %d): %r",
                step.label,
                delivery.plan.name,
                delivery.message_id,
                self.path,
                attempt,
                rule.attempts,
                error,
            )
            if decision.retry is None:
                self._dead_letter_failed(delivery, step, error, attempt)
                return Settlement.DEAD_LETTERED
            if decision.retry is not RetryMode.NOW or self._stored:
                # Through the endpoint: a store counts the attempt before it runs.
                delivery.attempt = attempt + 1
                delivery.due = self.host.wall_clock() + decision.delay
                if decision.retry is RetryMode.REQUEUE:
                    return Settlement.REQUEUE
                return Settlement.RETRY
            attempt += 1
            delivery.attempt = attempt
            try:
                await self._attempt(delivery, step)
            except Exception as exc:
                error = exc
            else:
                if delivery.held:
                    self.host.outbox.release(delivery)
                return Settlement.HANDLED

    def _dead_letter_failed(
        self, delivery: Delivery, step: Step, error: Exception, attempts: int
    ) -> None:
        # Recorded without the carrier's settle hook: the delivery is settled
        # once, by whoever finishes it (a later handler of an event may run).
        if delivery.failures is None:
            delivery.failures = []
        delivery.failures.append((step, error, attempts))
        # A replay runs the failed handler alone, on the endpoint it ran on.
        message, context = delivery.carried()
        assert context is not None
        plan = delivery.plan
        # (The plan's endpoint may be an instrument's, put in front of this one.)
        if plan.single is not step or plan.endpoint is not self.endpoint:
            plan = plan.only(step, self.endpoint)
        self.host.dead_letters.record(
            message,
            self.path,
            DeadLetterReason.FAILED,
            error,
            {**context, "handler": step.label, "attempts": attempts},
            endpoint=self.endpoint.uri,
            # A stored delivery's letter is stored by its endpoint: replayed there.
            replay=None if delivery.receipt is not None else self.host.replayer(delivery, plan),
        )

    async def _attempt_with_plugins(
        self, event: DispatchEvent, step: Step, delivery: Delivery
    ) -> Any:
        plugins = self.host.plugins
        if not delivery.asked:
            # Each subscription is its own delivery, each attempt finalized on its own.
            event = event.for_handler(step.raw)
        event.exception = None
        try:
            if step.handler is None:
                event.handler = step.raw
                if isinstance(event.handler, str):
                    await plugins.run(Phase.LOCATE_HANDLER, event)
                if event.handler is None or isinstance(event.handler, str):
                    raise HandlerNotLocated(
                        f"no locate plugin resolved the handler id {short_repr(step.raw)} of "
                        f"{short_repr(event.message_name)}: attach one at Phase.LOCATE_HANDLER"
                    )
                step = Step(Callee(event.handler), step.behaviors)
            else:
                event.handler = step.handler.target
                await plugins.run(Phase.LOCATE_HANDLER, event)
            await plugins.run(Phase.INVOKE_HANDLER, event)
            event.result = await step.call(delivery.message)
        except Exception as exc:
            event.exception = exc
        if not event.finalized:  # a caller that gave up (timeout) finalized already
            event.finalized = True
            await plugins.run(Phase.FINALIZE, event)
        if event.exception is not None:
            raise event.exception
        return event.result
