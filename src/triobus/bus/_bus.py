"""The message bus: an address book over supervised endpoint actors.

``invoke`` asks the endpoint a request is routed to, ``send`` tells it, and
``publish`` tells every endpoint that has subscribers. Plans (names, routes,
behaviors) are computed once at start-up; dispatch only looks them up.
"""

from __future__ import annotations

import enum
import logging
import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeVar, final, overload

import attrs
import trio
from trio.lowlevel import wait_task_rescheduled

from .._errors import (
    ActorStopped,
    BusClosed,
    MailboxFull,
    NoRouteError,
    PublishError,
    RequestHandlerNotFound,
    TriobusError,
)
from ..actors import ActorRef
from ..actors._ask import Frame, current_frame
from ..mailbox import DeadLetterReason, DeadLetters
from ._context import Envelope, current_handling
from ._endpoint import drop_held, hold, release, tell_in_order
from ._handlers import Callee
from ._messages import (
    Identity,
    NameDetector,
    Request,
    default_message_name,
    describe,
    message_version,
)
from ._plans import EndpointRuntime, Failed, Kind, Plan, Step
from ._plugins import DispatchEvent, DispatchKind, Phase, Plugin, PluginHandle, Plugins
from ._probe import Probe
from ._routing import (
    DEFAULT_ENDPOINT,
    DEFAULT_REQUEST_ENDPOINT,
)

logger = logging.getLogger("triobus.bus")

R = TypeVar("R")

#: ``invoke`` waits this long for a response unless told otherwise.
DEFAULT_INVOKE_TIMEOUT: Final = 30.0
#: Leaving ``open_bus`` waits this long for the bus to be quiet.
DEFAULT_DRAIN_TIMEOUT: Final = 10.0


class _Default(enum.Enum):
    """The bus's own default (``invoke``'s timeout): a type of its own, so it narrows."""

    DEFAULT = "default"

    def __repr__(self) -> str:
        return "<bus default>"


_DEFAULT: Final = _Default.DEFAULT


def _refused(event: object, uris: list[str]) -> PublishError:
    return PublishError(
        f"{default_message_name(event)!r} was refused by endpoint(s) {uris}; "
        "the other subscribers got it (see dead letters)",
        uris,
    )


@final
class MessageBus:
    """The bus: ``invoke`` (ask), ``send`` (tell), ``publish`` (broadcast).

    It is :class:`IMessageBus`, :class:`ISender` and :class:`IPublisher` at
    once. Make one with :func:`open_bus`.
    """

    def __init__(
        self,
        *,
        dead_letters: DeadLetters,
        rng: random.Random,
        id_factory: Callable[[], str],
        name_detector: NameDetector | None,
        collect_listener_exceptions: bool,
        invoke_timeout: float | None,
    ) -> None:
        self.dead_letters = dead_letters
        self.random = rng
        self.new_id = id_factory
        self._detector = name_detector
        self._collect = collect_listener_exceptions
        self._invoke_timeout = invoke_timeout
        self._plugins = Plugins()
        #: Whether any plugin is attached (a plain flag: checked on every dispatch).
        self._hooked = False
        #: The global behaviors, also around handlers a plugin routes to.
        self._pipeline: tuple[Callee, ...] = ()
        self._requests: dict[Identity, Plan] = {}
        self._events: dict[Identity, tuple[Plan, ...]] = {}
        self._request_cache: dict[type, Plan] = {}
        self._event_cache: dict[type, tuple[Plan, ...]] = {}
        self.endpoints: dict[str, EndpointRuntime] = {}
        self._inflight = 0
        self._quiet: trio.Event | None = None
        self._nursery: trio.Nursery | None = None
        self._releases: trio.MemorySendChannel[list[tuple[EndpointRuntime, Envelope]]] | None = None
        self._open = False
        #: The testing kit's observer and fault injector; ``None`` in production.
        self._probe: Probe | None = None

    def close(self) -> None:
        """Refuse new dispatches from now on (``BusClosed``)."""
        self._open = False
        # Cached plans skip the open check: drop them, so every dispatch
        # goes through a lookup that raises BusClosed.
        self._request_cache.clear()
        self._event_cache.clear()

    # ------------------------------------------------------------ accounting

    def accepted(self) -> None:
        """One more message is in flight."""
        self._inflight += 1

    def settled(self) -> None:
        """One message is done: handled, dead-lettered or dropped with its handler."""
        self._inflight -= 1
        if not self._inflight and self._quiet is not None:
            self._quiet.set()
            self._quiet = None

    @property
    def in_flight(self) -> int:
        """Messages accepted and not yet settled (queued, running or held)."""
        return self._inflight

    async def wait_quiet(self) -> None:
        """Return once no message is in flight (cascades included)."""
        while self._inflight > 0:
            if self._quiet is None:
                self._quiet = trio.Event()
            await self._quiet.wait()

    def dead_letter(
        self,
        envelope: Envelope,
        recipient: str,
        reason: DeadLetterReason,
        error: BaseException | None = None,
        **context: Any,
    ) -> None:
        """Record ``envelope``'s message as a dead letter without settling it."""
        self.dead_letters.record(
            envelope.message,
            recipient,
            reason,
            error,
            {**attrs.asdict(envelope.context()), **context},
        )

    def release_later(self, items: list[tuple[EndpointRuntime, Envelope]]) -> None:
        """Deliver held messages from the bus's release task, in the order released."""
        if self._releases is not None:
            self._releases.send_nowait(items)
            return
        if self._nursery is None:
            for _, envelope in items:
                self.dead_letters.record(
                    envelope, envelope.plan.endpoint.uri, DeadLetterReason.UNDELIVERABLE
                )
            return
        self._nursery.start_soon(tell_in_order, items, self._probe)

    async def run_releases(
        self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The bus's release task: delivers queued releases one batch after another."""
        send, receive = trio.open_memory_channel[list[tuple[EndpointRuntime, Envelope]]](math.inf)
        self._releases = send
        task_status.started()
        try:
            async for items in receive:
                await tell_in_order(items, self._probe)
        finally:
            self._releases = None
            # Shutdown: whatever was still queued for release is a dead letter.
            while True:
                try:
                    items = receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                for endpoint, envelope in items:
                    self.dead_letters.record(envelope, endpoint.uri, DeadLetterReason.SHUTDOWN)

    # ------------------------------------------------------------ lookups

    def _identity(self, message: object) -> Identity:
        name = None
        if self._detector is not None:
            name = self._detector(message)
        if name is None:
            name = default_message_name(message)
        return (name, message_version(message))

    def _cacheable(self, cls: type) -> bool:
        return self._detector is None and not issubclass(cls, str | Mapping)

    def _request_plan(self, message: object, error: type[TriobusError]) -> Plan:
        if not self._open:
            raise BusClosed("the bus is not running: dispatch inside 'async with open_bus(...)'")
        identity = self._identity(message)
        plan = self._requests.get(identity)
        if plan is None:
            what = "invoke" if error is RequestHandlerNotFound else "send"
            raise error(
                f"no handler is bound for {identity[0]!r} (version {identity[1]}), so it cannot "
                f"be {what}d: bind one with Module(...).bind_request({describe(type(message))}, "
                "handler)"
            )
        if self._cacheable(type(message)):
            self._request_cache[type(message)] = plan
        return plan

    def _event_plans(self, message: object) -> tuple[Plan, ...]:
        if not self._open:
            raise BusClosed("the bus is not running: publish inside 'async with open_bus(...)'")
        plans = self._events.get(self._identity(message), ())
        if self._cacheable(type(message)):
            self._event_cache[type(message)] = plans
        return plans

    def _timeout(self, timeout: float | _Default | None) -> float | None:
        return self._invoke_timeout if timeout is _DEFAULT else timeout

    # ------------------------------------------------------------ invoke

    @overload
    async def invoke(
        self,
        request: Request[R],
        *,
        timeout: float | _Default | None = ...,
        headers: Mapping[str, str] | None = ...,
        correlation_id: str | None = ...,
        reply_to: str | None = ...,
    ) -> R: ...

    @overload
    async def invoke(
        self,
        request: object,
        *,
        timeout: float | _Default | None = ...,
        headers: Mapping[str, str] | None = ...,
        correlation_id: str | None = ...,
        reply_to: str | None = ...,
    ) -> Any: ...

    async def invoke(
        self,
        request: object,
        *,
        timeout: float | _Default | None = _DEFAULT,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
    ) -> Any:
        """Ask the one handler of ``request`` and return its response.

        Args:
            timeout: seconds to wait (default 30 s, ``None`` waits for ever).
            headers: headers for the message (merged over the chain's).
            correlation_id: the chain's id, when this call continues one.

        Raises:
            RequestHandlerNotFound: nothing handles this request.
            AskTimeout: no response within ``timeout`` (a ``TimeoutError``).
            Exception: whatever the handler (or a behavior) raised.
        """
        if self._hooked:
            return await self._dispatch_with_plugins(
                request, DispatchKind.INVOKE, headers, correlation_id, reply_to, timeout
            )
        plan = self._request_cache.get(type(request)) or self._request_plan(
            request, RequestHandlerNotFound
        )
        frame = current_frame.get()
        handling = None if frame is None else frame.handling
        envelope = Envelope(request, plan, handling, headers, correlation_id, reply_to, True)
        if self._probe is not None:
            self._probe.dispatched(DispatchKind.INVOKE, envelope)
        ref = plan.ref or plan.endpoint.pick(request)
        if handling is not None and ref._would_deadlock():
            return await self._invoke_inline(envelope)
        self._inflight += 1
        try:
            # ref.ask, without its coroutine layer
            seconds = self._invoke_timeout if timeout is _DEFAULT else timeout
            ask = ref._post_ask(envelope, seconds, frame)
            if ask.parked:
                result = await wait_task_rescheduled(ask._abort)
            else:
                result = await ref._ask_waiting(ask, seconds)
        finally:
            # settled(), inline: one call less per invoke
            self._inflight -= 1
            if not self._inflight and self._quiet is not None:
                self._quiet.set()
                self._quiet = None
        if type(result) is Failed:
            raise result.error
        return result

    async def _ask(
        self,
        plan: Plan,
        envelope: Envelope,
        timeout: float | _Default | None,
        handling: Envelope | None,
    ) -> Any:
        ref = plan.ref or plan.endpoint.pick(envelope.message)
        if handling is not None and ref._would_deadlock():
            return await self._invoke_inline(envelope)
        self._inflight += 1
        try:
            result = await ref.ask(envelope, timeout=self._timeout(timeout))
        finally:
            self.settled()
        if type(result) is Failed:
            raise result.error
        return result

    async def _invoke_inline(self, envelope: Envelope) -> Any:
        # A re-entrant invoke whose endpoint is busy waiting on this very
        # call runs here, in the caller, instead of deadlocking.
        # Run as the endpoint would, in a frame of its own for this task (and
        # the tasks the handler starts), with the caller's chain of asks.
        outer = current_frame.get()
        assert outer is not None  # inline invokes happen inside handlers only
        frame = Frame(outer.cell, outer.chain)
        frame.handling = envelope
        token = current_frame.set(frame)
        probe = self._probe
        step = envelope.plan.steps[0]
        where = envelope.plan.endpoint.uri
        try:
            if probe is not None:
                probe.before_handle(envelope, step, where)
            result = await step.call(envelope.message)
        except Exception as exc:
            drop_held(envelope)
            if probe is not None:
                probe.failed(envelope, step, where, exc, False)
            raise
        except BaseException:
            drop_held(envelope)
            raise
        finally:
            current_frame.reset(token)
        if probe is not None:
            probe.handled(envelope, step, where)
        if envelope.held:
            release(envelope)
        return result

    # ------------------------------------------------------------ send

    async def send(
        self,
        command: object,
        *,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
    ) -> None:
        """Hand ``command`` to the endpoint of its one handler.

        Returns once the endpoint accepted it (with the ``block`` policy,
        once there was room). Inside a handler the command is held and
        released after the handler's pipeline succeeded.

        Raises:
            NoRouteError: nothing handles this command.
            ActorStopped: the endpoint is stopped (the command is a dead letter).
            MailboxFull: the endpoint is full and its policy is ``fail``.
        """
        if self._hooked:
            await self._dispatch_with_plugins(
                command, DispatchKind.SEND, headers, correlation_id, reply_to
            )
            return
        plan = self._request_cache.get(type(command)) or self._request_plan(command, NoRouteError)
        frame = current_frame.get()
        handling = None if frame is None else frame.handling
        if handling is not None:
            envelope = Envelope(command, plan, handling, headers, correlation_id, reply_to)
            hold(handling, plan.endpoint, envelope)
            if self._probe is not None:
                self._probe.dispatched(DispatchKind.SEND, envelope)
            return
        envelope = Envelope(command, plan, None, headers, correlation_id, reply_to)
        if self._probe is not None:
            self._probe.dispatched(DispatchKind.SEND, envelope)
            await self._probe.deliver(plan.endpoint, envelope)
            return
        ref = plan.ref or plan.endpoint.pick(command)
        self._inflight += 1
        try:
            ref._send_nowait(envelope)
        except (trio.WouldBlock, trio.ClosedResourceError):
            await self._tell_waiting(ref, envelope)

    async def tell(self, endpoint: EndpointRuntime, envelope: Envelope) -> None:
        """Put ``envelope`` in its endpoint (counted in flight until settled)."""
        ref = endpoint.pick(envelope.message)
        self._inflight += 1
        try:
            ref._send_nowait(envelope)
        except (trio.WouldBlock, trio.ClosedResourceError):
            await self._tell_waiting(ref, envelope)

    async def _tell_waiting(self, ref: ActorRef, envelope: Envelope) -> None:
        # The slow path of a tell already counted in flight: a refusal by a
        # stopped endpoint is a dead letter, which settles it; anything else
        # that keeps the message out settles it here.
        try:
            await ref.tell(envelope)
        except ActorStopped:
            raise
        except BaseException:
            self.settled()
            raise

    # ------------------------------------------------------------ publish

    async def publish(
        self,
        event: object,
        *,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
    ) -> None:
        """Hand ``event`` to every endpoint with subscribers; none is a no-op.

        Each subscription is its own delivery: a failing handler is retried
        and dead-lettered on its own, and never stops the others. In
        listener-exception-collection mode this waits for every handler and
        raises one ``ExceptionGroup`` of the failures.

        Raises:
            PublishError: some endpoints refused the event (named); the
                others accepted it.
        """
        if self._hooked:
            await self._dispatch_with_plugins(
                event, DispatchKind.PUBLISH, headers, correlation_id, reply_to
            )
            return
        plans = self._event_cache.get(type(event))
        if plans is None:
            plans = self._event_plans(event)
        if not plans:
            return
        if self._collect:
            await self._publish_collecting(event, plans, headers, correlation_id, reply_to)
            return
        frame = current_frame.get()
        handling = None if frame is None else frame.handling
        if handling is None and self._probe is None and len(plans) == 1:
            # The common case, without the loop: a root event to one endpoint.
            plan = plans[0]
            envelope = Envelope(event, plan, None, headers, correlation_id, reply_to)
            ref = plan.ref or plan.endpoint.pick(event)
            self._inflight += 1
            try:
                ref._send_nowait(envelope)
            except (trio.WouldBlock, trio.ClosedResourceError):
                try:
                    await self._tell_waiting(ref, envelope)
                except (ActorStopped, MailboxFull):
                    raise _refused(event, [plan.endpoint.uri]) from None
            return
        await self._publish_each(event, plans, handling, headers, correlation_id, reply_to)

    async def _publish_each(
        self,
        event: object,
        plans: tuple[Plan, ...],
        handling: Envelope | None,
        headers: Mapping[str, str] | None,
        correlation_id: str | None,
        reply_to: str | None,
    ) -> None:
        probe = self._probe
        first: Envelope | None = None
        refused: list[str] = []
        for plan in plans:
            envelope = Envelope(event, plan, handling, headers, correlation_id, reply_to)
            if first is None:
                first = envelope
            else:
                # One published event is one message with one id.
                envelope._id = first.message_id
                envelope._correlation_id = first.correlation_id
            if probe is not None:
                probe.dispatched(DispatchKind.PUBLISH, envelope)
            if handling is not None:
                hold(handling, plan.endpoint, envelope)
                continue
            try:
                if probe is not None:
                    await probe.deliver(plan.endpoint, envelope)
                    continue
                ref = plan.ref or plan.endpoint.pick(event)
                self._inflight += 1
                try:
                    ref._send_nowait(envelope)
                except (trio.WouldBlock, trio.ClosedResourceError):
                    await self._tell_waiting(ref, envelope)
            except (ActorStopped, MailboxFull):
                refused.append(plan.endpoint.uri)
        if refused:
            raise _refused(event, refused)

    async def _publish_collecting(
        self,
        event: object,
        plans: tuple[Plan, ...],
        headers: Mapping[str, str] | None,
        correlation_id: str | None,
        reply_to: str | None,
        dispatch: DispatchEvent | None = None,
    ) -> None:
        handling = current_handling()
        failures: list[Exception] = []
        first: Envelope | None = None

        async def deliver(plan: Plan, envelope: Envelope) -> None:
            try:
                await self._ask(plan, envelope, None, handling)
            except Exception as exc:
                failures.append(exc)

        async with trio.open_nursery() as nursery:
            for plan in plans:
                for step in plan.steps:
                    single = Plan(self, plan.name, plan.version, plan.kind, plan.endpoint, [step])
                    envelope = Envelope(event, single, handling, headers, correlation_id, reply_to)
                    envelope.asked = True
                    if dispatch is not None:
                        envelope.dispatch = dispatch.for_handler(step.raw)
                    if self._probe is not None:
                        self._probe.dispatched(DispatchKind.PUBLISH, envelope)
                    if first is None:
                        first = envelope
                    else:
                        envelope._id = first.message_id
                        envelope._correlation_id = first.correlation_id
                    nursery.start_soon(deliver, single, envelope)
        if failures:
            raise ExceptionGroup(
                f"{len(failures)} handler(s) of {plans[0].name!r} failed", failures
            )

    # ------------------------------------------------------------ plugins

    def attach(self, phase: Phase | str, plugin: Plugin, *, priority: int = 0) -> PluginHandle:
        """Attach a plugin to a dispatch phase; higher ``priority`` runs first."""
        handle = self._plugins.attach(phase, plugin, priority)
        self._hooked = True
        return handle

    def detach(self, handle: PluginHandle) -> None:
        """Detach a plugin attached with :meth:`attach`."""
        self._plugins.detach(handle)
        self._hooked = bool(self._plugins)

    async def _dispatch_with_plugins(
        self,
        message: object,
        kind: DispatchKind,
        headers: Mapping[str, str] | None,
        correlation_id: str | None,
        reply_to: str | None,
        timeout: float | _Default | None = _DEFAULT,
    ) -> Any:
        event = DispatchEvent(message, kind)
        plugins = self._plugins
        try:
            await plugins.run(Phase.INITIALIZE, event)
            await plugins.run(Phase.DETECT_MESSAGE_NAME, event)
            if event.message_name is None:
                event.message_name = self._identity(message)[0]
            await plugins.run(Phase.ROUTE, event)
            plans = self._plugin_plans(event, message)
        except Exception as exc:
            event.exception = exc
            event.finalized = True
            await plugins.run(Phase.FINALIZE, event)
            if event.exception is not None:
                raise event.exception from None
            return event.result
        if kind is DispatchKind.PUBLISH and self._collect and plans:
            await self._publish_collecting(
                message, plans, headers, correlation_id, reply_to, dispatch=event
            )
            return None
        handling = current_handling()
        first: Envelope | None = None
        results: list[Any] = []
        try:
            for plan in plans:
                envelope = Envelope(message, plan, handling, headers, correlation_id, reply_to)
                envelope.dispatch = event
                if first is None:
                    first = envelope
                else:
                    envelope._id = first.message_id
                if self._probe is not None:
                    self._probe.dispatched(kind, envelope)
                if kind is DispatchKind.INVOKE:
                    envelope.asked = True
                    results.append(await self._ask(plan, envelope, timeout, handling))
                elif handling is not None:
                    hold(handling, plan.endpoint, envelope)
                elif self._probe is not None:
                    await self._probe.deliver(plan.endpoint, envelope)
                else:
                    await self.tell(plan.endpoint, envelope)
        except Exception as exc:
            if event.finalized:
                raise  # the endpoint ran finalize already (the handler's own failure)
            # The dispatch failed here (a timeout, a refusal): finalize in the caller.
            event.exception = exc
            event.finalized = True
            await plugins.run(Phase.FINALIZE, event)
            if event.exception is not None:
                raise event.exception from None
            return event.result
        return results[0] if results else None

    def _plugin_plans(self, event: DispatchEvent, message: object) -> tuple[Plan, ...]:
        assert event.message_name is not None
        identity = (event.message_name, message_version(message))
        if event.kind is DispatchKind.PUBLISH:
            if event.handlers is not None:
                return self._routed_plans(event, event.handlers, Kind.EVENT)
            return self._events.get(identity, ())
        if event.handler is not None:
            return self._routed_plans(event, [event.handler], Kind.REQUEST)
        plan = self._requests.get(identity)
        if plan is None:
            error = RequestHandlerNotFound if event.kind is DispatchKind.INVOKE else NoRouteError
            raise error(
                f"no handler is bound or routed for {event.message_name!r}: bind one, or "
                "set event.handler in a route plugin"
            )
        return (plan,)

    def _routed_plans(
        self, event: DispatchEvent, handlers: Sequence[Any], kind: Kind
    ) -> tuple[Plan, ...]:
        default = (
            DEFAULT_REQUEST_ENDPOINT if event.kind is DispatchKind.INVOKE else DEFAULT_ENDPOINT
        )
        uri = event.endpoint or default
        endpoint = self.endpoints.get(uri)
        if endpoint is None:
            raise NoRouteError(
                f"a plugin routed {event.message_name!r} to unknown endpoint {uri!r}"
            )
        steps = [Step(None, self._pipeline, raw=handler) for handler in handlers]
        assert event.message_name is not None
        return (Plan(self, event.message_name, 1, kind, endpoint, steps),)

    # ------------------------------------------------------------ views

    def topology(self) -> str:
        """Which message goes to which endpoint and handlers, as text."""
        lines: list[str] = []
        for (name, version), plan in sorted(self._requests.items()):
            lines.append(f"request {name} v{version} -> {plan.endpoint.uri}: {plan.steps[0].label}")
        for (name, version), plans in sorted(self._events.items()):
            for plan in plans:
                labels = ", ".join(step.label for step in plan.steps)
                lines.append(f"event {name} v{version} -> {plan.endpoint.uri}: {labels}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        state = "open" if self._open else "closed"
        return f"<MessageBus {state} endpoints={list(self.endpoints)} in_flight={self._inflight}>"
