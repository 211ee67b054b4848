"""The endpoint actor: handlers run here as behaviors of a supervised actor.

A handler failure never crashes the endpoint. For an ask (``invoke``) the
exception goes back to the caller; for a told message (``send``,
``publish``) each handler is its own delivery: it is retried in place by the
endpoint's retry policy, then dead-lettered with the last exception, and the
other handlers of the message still run. Messages a handler sends or
publishes are held and released only once its whole pipeline succeeded.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import trio

from .._errors import ActorStopped, HandlerNotLocated, MailboxFull
from ..actors import Actor
from ..actors._ask import Frame, current_frame
from ..mailbox import DeadLetterReason
from ._context import Envelope
from ._handlers import Callee
from ._plans import EndpointRuntime, Failed, Step
from ._plugins import DispatchEvent, Phase
from ._probe import Probe
from ._routing import Endpoint

if TYPE_CHECKING:
    from ._bus import MessageBus

logger = logging.getLogger("triobus.bus")


class EndpointActor(Actor):
    """Handles the envelopes routed to one endpoint (or one of its partitions)."""

    def __init__(self, bus: MessageBus, spec: Endpoint, path: str) -> None:
        self.bus = bus
        self.spec = spec
        self.path = path

    def receive(self, message: Any) -> Coroutine[Any, Any, Any]:
        envelope: Envelope = message
        if self.bus._probe is not None or envelope.dispatch is not None:
            return self._receive_observed(envelope)
        frame = current_frame.get()
        assert frame is not None  # set by the worker that runs this
        frame.handling = envelope
        factory = envelope.plan.factory
        if factory is not None:
            # One handler class, no behaviors: hand its coroutine to the actor
            # loop, which awaits it and then calls finished() or, for a told
            # message that failed, failed() (no coroutine layer of ours).
            frame.finish = self
            return factory().handle(envelope.message)  # type: ignore[no-any-return]
        return self._receive_steps(envelope, frame)

    def finished(self, frame: Frame, error: BaseException | None) -> None:
        """The handler that ``receive`` handed over returned or raised.

        What it sent is released (``error is None``) or dropped with it; a
        told message that was handled is settled. ``error`` is an ask's
        failure (the asker gets it) or an interruption (the actor redelivers
        the message or dead-letters it).
        """
        envelope: Envelope = frame.handling
        frame.handling = None
        if envelope.held:
            if error is None:
                release(envelope)
            else:
                drop_held(envelope)
        if error is None and not envelope.asked:
            self.bus.settled()

    async def failed(self, frame: Frame, error: Exception) -> None:
        """The handler of a told message that ``receive`` handed over raised ``error``.

        Runs the endpoint's error policy, as for any handler: retries, then
        dead letters with the last exception. The message is settled after.
        """
        envelope: Envelope = frame.handling
        try:
            await self._deliver(envelope, envelope.plan.steps[0], first_error=error)
            self.bus.settled()
        finally:
            frame.handling = None
            if envelope.held:  # cut off (cancelled): what it sent goes with it
                drop_held(envelope)

    async def _receive_steps(self, envelope: Envelope, frame: Frame) -> Any:
        """Handle ``envelope`` in a coroutine of this actor's own.

        For what ``receive`` does not hand over and no probe or plugin
        observes: several handlers (an event), handler functions, behaviors.
        ``receive`` has set ``frame.handling`` already.
        """
        index = start = envelope.progress
        try:
            if envelope.asked:
                try:
                    result = await envelope.plan.call(envelope.message)
                except Exception as exc:
                    if envelope.held:
                        drop_held(envelope)
                    return Failed(exc)
                if envelope.held:
                    release(envelope)
                return result
            steps = envelope.plan.steps
            message = envelope.message
            # Each handler is its own delivery; the retry loop is entered only
            # after a first attempt failed. ``progress`` counts the handlers
            # done, for a redelivery after an interruption: it is written
            # only then, from ``index``.
            steps_left = enumerate(steps[start:], start) if start else enumerate(steps)
            for index, step in steps_left:  # noqa: B007 (read when cut off)
                try:
                    if step.factory is None:
                        await step.call(message)
                    else:
                        await step.factory().handle(message)
                except Exception as exc:
                    await self._deliver(envelope, step, first_error=exc)
                else:
                    if envelope.held:
                        release(envelope)
            self.bus.settled()
            return None
        except BaseException:
            envelope.progress = index  # cut off: this handler runs again on redelivery
            raise
        finally:
            frame.handling = None
            if envelope.held:  # cut off (cancelled): what it sent goes with it
                drop_held(envelope)

    async def _receive_observed(self, envelope: Envelope) -> Any:
        """The path with a probe (testing kit) or plugins attached."""
        probe = self.bus._probe
        if probe is not None:
            probe.before_receive(envelope, self.path)
        frame = current_frame.get()
        assert frame is not None  # set by the worker that runs this
        frame.handling = envelope
        try:
            return await self._observed(envelope, probe)
        finally:
            frame.handling = None
            if envelope.held:  # cut off (cancelled): what it sent goes with it
                drop_held(envelope)

    async def _observed(self, envelope: Envelope, probe: Probe | None) -> Any:
        dispatch = envelope.dispatch
        steps = envelope.plan.steps
        if envelope.asked:
            step = steps[0]
            try:
                if probe is not None:
                    probe.before_handle(envelope, step, self.path)
                if dispatch is None:
                    result = await step.call(envelope.message)
                else:
                    result = await self._attempt_with_plugins(dispatch, step, envelope)
            except Exception as exc:
                drop_held(envelope)
                if probe is not None:
                    probe.failed(envelope, step, self.path, exc, False)
                return Failed(exc)
            if probe is not None:
                probe.handled(envelope, step, self.path)
            if envelope.held:
                release(envelope)
            return result
        while envelope.progress < len(steps):
            step = steps[envelope.progress]
            # Each subscription is its own delivery, with its own view for plugins.
            event = None if dispatch is None else dispatch.for_handler(step.raw)
            await self._deliver(envelope, step, event)
            envelope.progress += 1
        self.bus.settled()
        return None

    async def _attempt_with_plugins(
        self, event: DispatchEvent, step: Step, envelope: Envelope
    ) -> Any:
        plugins = self.bus._plugins
        event.exception = None
        try:
            if step.handler is None:
                event.handler = step.raw
                if isinstance(event.handler, str):
                    await plugins.run(Phase.LOCATE_HANDLER, event)
                if event.handler is None or isinstance(event.handler, str):
                    raise HandlerNotLocated(
                        f"no locate plugin resolved the handler id {step.raw!r} of "
                        f"{event.message_name!r}: attach one at Phase.LOCATE_HANDLER"
                    )
                step = Step(Callee(event.handler), step.behaviors)
            else:
                event.handler = step.handler.target
                await plugins.run(Phase.LOCATE_HANDLER, event)
            await plugins.run(Phase.INVOKE_HANDLER, event)
            event.result = await step.call(envelope.message)
        except Exception as exc:
            event.exception = exc
        if not event.finalized:  # a caller that gave up (timeout) finalized already
            event.finalized = True
            await plugins.run(Phase.FINALIZE, event)
        if event.exception is not None:
            raise event.exception
        return event.result

    async def _deliver(
        self,
        envelope: Envelope,
        step: Step,
        event: DispatchEvent | None = None,
        first_error: Exception | None = None,
    ) -> None:
        """One delivery with retries: then dead letters with the last exception.

        ``first_error`` is given when the first attempt already ran (and
        failed): what that attempt sent is dropped here.
        """
        policy = self.spec.retry
        probe = self.bus._probe
        attempt = 1
        error = first_error
        if error is not None and envelope.held:
            drop_held(envelope)
        while True:
            envelope.attempt = attempt
            if error is None:
                try:
                    if probe is not None:
                        probe.before_handle(envelope, step, self.path)
                    if event is None:
                        await step.call(envelope.message)
                    else:
                        event.finalized = False  # each attempt is finalized on its own
                        await self._attempt_with_plugins(event, step, envelope)
                except Exception as exc:
                    error = exc
                    drop_held(envelope)
                else:
                    if probe is not None:
                        probe.handled(envelope, step, self.path)
                    if envelope.held:
                        release(envelope)
                    return
            if probe is not None:
                probe.failed(envelope, step, self.path, error, attempt <= policy.retries)
            logger.warning(
                "%s failed on %s id=%s at %s (attempt %d of %d): %r",
                step.label,
                envelope.plan.name,
                envelope.message_id,
                self.path,
                attempt,
                policy.retries + 1,
                error,
            )
            if attempt > policy.retries:
                self.bus.dead_letter(
                    envelope,
                    self.path,
                    DeadLetterReason.FAILED,
                    error,
                    handler=step.label,
                    attempts=attempt,
                )
                return
            if policy.backoff is not None:
                await trio.sleep(policy.backoff.delay(attempt - 1, self.bus.random))
            attempt += 1
            error = None


def hold(handling: Envelope, endpoint: EndpointRuntime, envelope: Envelope) -> None:
    """Keep ``envelope``, sent by the handler of ``handling``, until its pipeline succeeded."""
    if handling.held is None:
        handling.held = []
    handling.held.append((endpoint, envelope))
    envelope.plan.bus.accepted()


def drop_held(handling: Envelope) -> None:
    """The handler failed: what it sent is dropped with it (a retry sends it again)."""
    held = handling.held
    if held:
        handling.held = None
        for _, envelope in held:
            envelope.plan.bus.settled()


def release(handling: Envelope) -> None:
    """Deliver, in order, what a handler sent; never block the releasing actor."""
    held = handling.held
    assert held is not None
    handling.held = None
    bus = held[0][1].plan.bus
    if bus._probe is not None:
        bus.release_later(held)
        return
    for index, (endpoint, envelope) in enumerate(held):
        ref = endpoint.pick(envelope.message)
        try:
            ref.tell_nowait(envelope)
        except MailboxFull:
            # Full: the rest goes out in order from a task of the bus, so
            # this actor (which may be the target) is never blocked.
            bus.release_later(held[index:])
            return
        except ActorStopped:
            pass  # recorded as a dead letter (and settled) by the refusal


async def tell_in_order(
    items: list[tuple[EndpointRuntime, Envelope]], probe: Probe | None = None
) -> None:
    """Deliver held messages in order, waiting for room (already counted in flight)."""
    for index, (endpoint, envelope) in enumerate(items):
        bus = envelope.plan.bus
        bus.settled()  # bus.tell and the probe count it again
        try:
            if probe is not None:
                await probe.deliver(endpoint, envelope)
            else:
                await bus.tell(endpoint, envelope)
        except ActorStopped:
            pass  # a dead letter already
        except MailboxFull as exc:
            bus.dead_letter(envelope, endpoint.uri, DeadLetterReason.UNDELIVERABLE, exc)
        except BaseException:
            # Shutdown: what was not delivered yet is a dead letter, never lost.
            bus.dead_letter(envelope, endpoint.uri, DeadLetterReason.SHUTDOWN)
            for later, left in items[index + 1 :]:
                bus.dead_letters.record(left, later.uri, DeadLetterReason.SHUTDOWN)
            raise
