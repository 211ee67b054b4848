"""The message bus: the front users call.

``invoke`` asks the endpoint a request is routed to, ``send`` hands a
command to its endpoint, and ``publish`` hands an event to every endpoint
that has subscribers. Plans (names, routes, behaviors) are computed once at
start-up; dispatch only looks them up and calls the endpoint seam.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from functools import partial
from threading import get_ident
from typing import Any, Final, TypeVar, final, overload

import trio

from .._errors import (
    ActorStopped,
    DeadlockError,
    InvalidHeaders,
    MailboxFull,
    NoRouteError,
    PublishError,
    RequestHandlerNotFound,
    WrongThread,
)
from ..mailbox import DeadLetters
from ._accounting import Accounting
from ._handlers import Callee
from ._handling import BusHost, EndpointActor, current_delivery
from ._messages import Request, default_message_name, message_version, short_repr
from ._outbox import Outbox
from ._plans import INVOKE, SEND, PlanTable
from ._plugins import DispatchEvent, DispatchKind, Phase, Plugin, PluginHandle
from ._probe import Probe
from ._routing import DEFAULT_ENDPOINT, DEFAULT_REQUEST_ENDPOINT
from ._seam import Delivery, Endpoint, EndpointHost, Plan, PlanKind, Step

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
        f"{short_repr(default_message_name(event))} was refused by endpoint(s) {uris}; "
        "the other subscribers got it (see dead letters)",
        uris,
    )


def _check_headers(headers: object) -> None:
    if not isinstance(headers, Mapping):
        raise InvalidHeaders(
            f"headers= takes a mapping of str to str (or None), got {type(headers).__qualname__}"
        )
    for key, value in headers.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidHeaders(
                f"headers= takes a mapping of str to str; the header {key!r} is "
                f"{type(key).__qualname__} -> {type(value).__qualname__}: convert it to str"
            )


@final
class MessageBus:
    """The bus: ``invoke`` (ask), ``send`` (tell), ``publish`` (broadcast).

    It is :class:`IMessageBus`, :class:`ISender` and :class:`IPublisher` at
    once. Make one with :func:`open_bus`; call it from the trio run it was
    opened in (other threads use :meth:`portal`).
    """

    def __init__(
        self,
        *,
        host: BusHost,
        plans: PlanTable,
        id_factory: Callable[[], str],
        pipeline: tuple[Callee, ...],
        collect_listener_exceptions: bool,
        invoke_timeout: float | None,
    ) -> None:
        self._host = host
        self._plans = plans
        self._accounting: Accounting = host.accounting
        self._new_id = id_factory
        self._collect = collect_listener_exceptions
        self._invoke_timeout = invoke_timeout
        #: Whether any plugin is attached (a plain flag: checked on every dispatch).
        self._hooked = False
        #: The global behaviors, also around handlers a plugin routes to.
        self._pipeline = pipeline
        #: The endpoints by uri.
        self.endpoints: dict[str, Endpoint] = {}
        #: The thread of the trio run the bus lives in, and that run's token.
        self._thread = get_ident()
        self._token: trio.lowlevel.TrioToken | None = None

    # ------------------------------------------------------------ views

    @property
    def dead_letters(self) -> DeadLetters:
        """Every message that could not be delivered or handled, with the reason."""
        return self._host.dead_letters

    @property
    def in_flight(self) -> int:
        """Messages accepted and not yet settled (queued, running, held or retrying)."""
        return self._accounting.in_flight

    async def wait_quiet(self) -> None:
        """Return once no message is in flight (cascades included)."""
        await self._accounting.wait_quiet()

    def topology(self) -> str:
        """Which message goes to which endpoint and handlers, as text."""
        return self._plans.topology()

    def portal(self) -> BusPortal:
        """Call this bus from another thread: ``bus.portal().send(command)``.

        The portal's calls block their thread until the bus has done the
        call in its own trio run (with ``trio.from_thread``).
        """
        assert self._token is not None, "the bus has not started"
        return BusPortal(self, self._token)

    def _opened(self, token: trio.lowlevel.TrioToken) -> None:
        """The bus started in the trio run of ``token`` (called by ``open_bus``)."""
        self._thread = get_ident()
        self._token = token

    def _caller(self, headers: Mapping[str, str] | None) -> Delivery | None:
        """Check a call's ``headers`` and thread; the delivery whose handler calls, if any.

        Raises:
            InvalidHeaders: ``headers`` is not a mapping of ``str`` to ``str``.
            WrongThread: a root call from outside the bus's trio run.
        """
        if headers is not None:
            _check_headers(headers)
        handling = current_delivery.get()
        if handling is None and get_ident() != self._thread:
            raise self._wrong_thread()
        return handling

    def _wrong_thread(self) -> WrongThread:
        return WrongThread(
            "this bus runs in another thread's trio run: call it from there, or from this "
            "thread through its portal (bus.portal().send(...) / .publish(...) / .invoke(...))"
        )

    def _due(self, delay: float | None, deliver_at: float | datetime | None) -> float:
        """The moment (the bus's wall clock) a scheduled message is due.

        Raises:
            ValueError: both, or a value that is not a number of seconds >= 0
                / a moment (a float or an aware datetime).
        """
        if delay is not None:
            if deliver_at is not None:
                raise ValueError("give delay= or deliver_at=, not both")
            if (
                not isinstance(delay, int | float)
                or isinstance(delay, bool)
                or not 0 <= delay < math.inf
            ):
                raise ValueError(
                    f"delay= takes a finite number of seconds >= 0, got {short_repr(delay)}"
                )
            return float(self._host.wall_clock() + delay)
        if isinstance(deliver_at, datetime):
            if deliver_at.tzinfo is None:
                raise ValueError(
                    "deliver_at= takes an aware datetime (with tzinfo, e.g. "
                    "datetime.now(timezone.utc)); a naive one has no single moment"
                )
            return deliver_at.timestamp()
        if (
            not isinstance(deliver_at, int | float)
            or isinstance(deliver_at, bool)
            or not math.isfinite(deliver_at)
        ):
            raise ValueError(
                "deliver_at= takes seconds since the epoch or an aware datetime, "
                f"got {short_repr(deliver_at)}"
            )
        return float(deliver_at)

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
        handling = self._caller(headers)
        plan = self._plans.request_cache.get(type(request)) or self._plans.request_plan(
            request, INVOKE
        )
        delivery = Delivery(request, plan, handling, headers, correlation_id, reply_to, True)
        probe = self._host.probe
        if probe is not None:
            probe.dispatched(DispatchKind.INVOKE, delivery)
        return await self._ask(delivery, self._invoke_timeout if timeout is _DEFAULT else timeout)

    async def _ask(self, delivery: Delivery, timeout: float | None) -> Any:
        accounting = self._accounting
        accounting.accepted()
        try:
            return await delivery.plan.endpoint.ask(delivery, timeout)
        except DeadlockError:
            if delivery.causation_id is None:
                raise
            # A re-entrant invoke whose endpoint is busy waiting on this very
            # call: handled here, in the caller, as the endpoint would.
            endpoint = delivery.plan.endpoint
            return await EndpointActor(self._host, endpoint, endpoint.uri).run_inline(delivery)
        finally:
            accounting.settled()

    # ------------------------------------------------------------ send

    async def send(
        self,
        command: object,
        *,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        delay: float | None = None,
        deliver_at: float | datetime | None = None,
    ) -> None:
        """Hand ``command`` to the endpoint of its one handler.

        Returns once the endpoint accepted it (with the ``block`` policy,
        once there was room; a durable endpoint, once it is stored). Inside
        a handler the command is held and released after the handler's
        pipeline succeeded.

        Args:
            delay: handle it this many seconds from now, not before.
            deliver_at: handle it at this moment (seconds since the epoch,
                or an aware ``datetime``), not before; a past moment means now.

        Raises:
            NoRouteError: nothing handles this command.
            ActorStopped: the endpoint is stopped (the command is a dead letter).
            MailboxFull: the endpoint is full and its policy is ``fail``.
            ValueError: ``delay`` and ``deliver_at`` both, or a value that is
                not a finite number of seconds >= 0 / a moment (a finite
                number or an aware ``datetime``).
        """
        if self._hooked:
            await self._dispatch_with_plugins(
                command,
                DispatchKind.SEND,
                headers,
                correlation_id,
                reply_to,
                due=None if delay is None and deliver_at is None else self._due(delay, deliver_at),
            )
            return
        handling = self._caller(headers)
        plan = self._plans.request_cache.get(type(command)) or self._plans.request_plan(
            command, SEND
        )
        delivery = Delivery(command, plan, handling, headers, correlation_id, reply_to)
        if delay is not None or deliver_at is not None:
            delivery.due = self._due(delay, deliver_at)
        probe = self._host.probe
        if probe is not None:
            probe.dispatched(DispatchKind.SEND, delivery)
        if Outbox.holding(handling):
            self._host.outbox.hold(handling, plan.endpoint, delivery)
            return
        endpoint = plan.endpoint
        try:
            endpoint.accept_nowait(delivery)
        except (MailboxFull, trio.WouldBlock):
            await endpoint.accept(delivery)

    # ------------------------------------------------------------ publish

    async def publish(
        self,
        event: object,
        *,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        delay: float | None = None,
        deliver_at: float | datetime | None = None,
    ) -> None:
        """Hand ``event`` to every endpoint with subscribers; none is a no-op.

        Each subscription is its own delivery: a failing handler is retried
        and dead-lettered on its own, and never stops the others. In
        listener-exception-collection mode this waits for every handler and
        raises one ``ExceptionGroup`` of the failures.

        ``delay`` and ``deliver_at`` schedule it, as for :meth:`send` (not in
        listener-exception-collection mode).

        Raises:
            PublishError: some endpoints refused the event (named); the
                others accepted it.
            ValueError: a bad ``delay`` / ``deliver_at`` (as for :meth:`send`),
                or one in listener-exception-collection mode.
        """
        due = None if delay is None and deliver_at is None else self._due(delay, deliver_at)
        if due is not None and self._collect:
            raise ValueError(
                "a scheduled publish cannot collect listener exceptions: its handlers run after "
                "publish returns; publish it without delay=/deliver_at=, or open the bus "
                "without collect_listener_exceptions=True"
            )
        if self._hooked:
            await self._dispatch_with_plugins(
                event, DispatchKind.PUBLISH, headers, correlation_id, reply_to, due=due
            )
            return
        handling = self._caller(headers)
        plans = self._plans.event_cache.get(type(event))
        if plans is None:
            plans = self._plans.event_plans(event)
        if not plans:
            return
        if self._collect:
            await self._publish_collecting(
                event, plans, handling, headers, correlation_id, reply_to
            )
            return
        await self._publish_each(event, plans, handling, headers, correlation_id, reply_to, due=due)

    async def _publish_each(
        self,
        event: object,
        plans: tuple[Plan, ...],
        handling: Delivery | None,
        headers: Mapping[str, str] | None,
        correlation_id: str | None,
        reply_to: str | None,
        dispatch: DispatchEvent | None = None,
        due: float | None = None,
    ) -> None:
        probe = self._host.probe
        holding = Outbox.holding(handling)
        first = Delivery(event, plans[0], handling, headers, correlation_id, reply_to)
        first.due = due
        refused: list[str] = []
        for plan in plans:
            # One published event is one message with one id.
            delivery = first if plan is plans[0] else first.same_message(plan)
            delivery.due = due
            if dispatch is not None:
                delivery.dispatch = dispatch
            if probe is not None:
                probe.dispatched(DispatchKind.PUBLISH, delivery)
            endpoint = plan.endpoint
            if holding:
                self._host.outbox.hold(handling, endpoint, delivery)
                continue
            try:
                try:
                    endpoint.accept_nowait(delivery)
                except (MailboxFull, trio.WouldBlock):
                    await endpoint.accept(delivery)
            except (ActorStopped, MailboxFull):
                refused.append(endpoint.uri)
        if refused:
            raise _refused(event, refused)

    async def _publish_collecting(
        self,
        event: object,
        plans: tuple[Plan, ...],
        handling: Delivery | None,
        headers: Mapping[str, str] | None,
        correlation_id: str | None,
        reply_to: str | None,
        dispatch: DispatchEvent | None = None,
    ) -> None:
        failures: list[Exception] = []
        first: Delivery | None = None
        probe = self._host.probe

        async def deliver(delivery: Delivery) -> None:
            try:
                await self._ask(delivery, None)
            except Exception as exc:
                failures.append(exc)

        async with trio.open_nursery() as nursery:
            for plan in plans:
                for step in plan.steps:
                    single = plan.only(step)
                    if first is None:
                        delivery = first = Delivery(
                            event, single, handling, headers, correlation_id, reply_to, True
                        )
                    else:
                        delivery = first.same_message(single)
                    if dispatch is not None:
                        delivery.dispatch = dispatch.for_handler(step.raw)
                    if probe is not None:
                        probe.dispatched(DispatchKind.PUBLISH, delivery)
                    nursery.start_soon(deliver, delivery)
        if not failures:
            return
        group = ExceptionGroup(
            f"{len(failures)} handler(s) of {short_repr(plans[0].name)} failed", failures
        )
        if dispatch is None:
            raise group
        # One finalize phase in the caller sees the group and may clear it.
        dispatch.exception = group
        dispatch.finalized = True
        await self._host.plugins.run(Phase.FINALIZE, dispatch)
        if dispatch.exception is not None:
            raise dispatch.exception

    # ------------------------------------------------------------ plugins

    def attach(self, phase: Phase | str, plugin: Plugin, *, priority: int = 0) -> PluginHandle:
        """Attach a plugin to a dispatch phase; higher ``priority`` runs first."""
        handle = self._host.plugins.attach(phase, plugin, priority)
        self._hooked = True
        return handle

    def detach(self, handle: PluginHandle) -> None:
        """Detach a plugin attached with :meth:`attach`."""
        self._host.plugins.detach(handle)
        self._hooked = bool(self._host.plugins)

    async def _dispatch_with_plugins(
        self,
        message: object,
        kind: DispatchKind,
        headers: Mapping[str, str] | None,
        correlation_id: str | None,
        reply_to: str | None,
        timeout: float | _Default | None = _DEFAULT,
        due: float | None = None,
    ) -> Any:
        if headers is not None:
            _check_headers(headers)
        event = DispatchEvent(message, kind)
        plugins = self._host.plugins
        try:
            handling = self._caller(None)
            await plugins.run(Phase.INITIALIZE, event)
            await plugins.run(Phase.DETECT_MESSAGE_NAME, event)
            if event.message_name is None:
                event.message_name = self._plans.identity(message)[0]
            await plugins.run(Phase.ROUTE, event)
            plans = self._plugin_plans(event, message)
        except Exception as exc:
            return await self._finalize_in_caller(event, exc)
        try:
            if kind is DispatchKind.PUBLISH:
                if not plans:
                    return None
                if self._collect:
                    await self._publish_collecting(
                        message, plans, handling, headers, correlation_id, reply_to, event
                    )
                else:
                    await self._publish_each(
                        message, plans, handling, headers, correlation_id, reply_to, event, due
                    )
                return None
            plan = plans[0]
            delivery = Delivery(
                message,
                plan,
                handling,
                headers,
                correlation_id,
                reply_to,
                kind is DispatchKind.INVOKE,
            )
            delivery.dispatch = event
            delivery.due = due
            probe = self._host.probe
            if probe is not None:
                probe.dispatched(kind, delivery)
            if kind is DispatchKind.INVOKE:
                seconds = self._invoke_timeout if timeout is _DEFAULT else timeout
                return await self._ask(delivery, seconds)
            if Outbox.holding(handling):
                self._host.outbox.hold(handling, plan.endpoint, delivery)
            else:
                await plan.endpoint.accept(delivery)
            return None
        except Exception as exc:
            if event.finalized:
                raise  # finalize ran already (the handler's own failure, or the collected group)
            # The dispatch failed here (a timeout, a refusal): finalize in the caller.
            return await self._finalize_in_caller(event, exc)

    async def _finalize_in_caller(self, event: DispatchEvent, error: Exception) -> Any:
        event.exception = error
        event.finalized = True
        await self._host.plugins.run(Phase.FINALIZE, event)
        if event.exception is not None:
            raise event.exception from None
        return event.result

    def _plugin_plans(self, event: DispatchEvent, message: object) -> tuple[Plan, ...]:
        assert event.message_name is not None
        identity = (event.message_name, message_version(message))
        if event.kind is DispatchKind.PUBLISH:
            if event.handlers is not None:
                return self._routed_plans(event, event.handlers, PlanKind.EVENT)
            return self._plans.events.get(identity, ())
        if event.handler is not None:
            return self._routed_plans(event, [event.handler], PlanKind.REQUEST)
        plan = self._plans.requests.get(identity)
        if plan is None:
            error = RequestHandlerNotFound if event.kind is DispatchKind.INVOKE else NoRouteError
            raise error(
                f"no handler is bound or routed for {short_repr(event.message_name)}: bind one, or "
                "set event.handler in a route plugin"
            )
        return (plan,)

    def _routed_plans(
        self, event: DispatchEvent, handlers: Sequence[Any], kind: PlanKind
    ) -> tuple[Plan, ...]:
        default = (
            DEFAULT_REQUEST_ENDPOINT if event.kind is DispatchKind.INVOKE else DEFAULT_ENDPOINT
        )
        uri = event.endpoint or default
        endpoint = self.endpoints.get(uri)
        if endpoint is None:
            raise NoRouteError(
                f"a plugin routed {short_repr(event.message_name)} to unknown endpoint {uri!r}"
            )
        steps = [Step(None, self._pipeline, raw=handler) for handler in handlers]
        assert event.message_name is not None
        return (Plan(self, self._new_id, event.message_name, 1, kind, endpoint, steps, self._host),)

    def __repr__(self) -> str:
        state = "open" if self._plans.open else "closed"
        return (
            f"<MessageBus {state} endpoints={list(self.endpoints)} "
            f"in_flight={self._accounting.in_flight}>"
        )


@final
class BusPortal:
    """Calls a bus from a thread outside its trio run (see :meth:`MessageBus.portal`).

    Each call blocks the calling thread until the bus did it in its own
    run, and raises what the bus raised. Never call a portal from the
    bus's own thread: that would wait on itself.
    """

    __slots__ = ("_bus", "_token")

    def __init__(self, bus: MessageBus, token: trio.lowlevel.TrioToken) -> None:
        self._bus = bus
        self._token = token

    def send(self, command: object, **options: Any) -> None:
        """``bus.send(command, **options)`` from this thread."""
        trio.from_thread.run(partial(self._bus.send, command, **options), trio_token=self._token)

    def publish(self, event: object, **options: Any) -> None:
        """``bus.publish(event, **options)`` from this thread."""
        trio.from_thread.run(partial(self._bus.publish, event, **options), trio_token=self._token)

    def invoke(self, request: object, **options: Any) -> Any:
        """``bus.invoke(request, **options)`` from this thread; returns the response."""
        return trio.from_thread.run(
            partial(self._bus.invoke, request, **options), trio_token=self._token
        )


@contextmanager
def instrumented(
    bus: MessageBus,
    probe: Probe,
    wrap: Callable[[Endpoint, EndpointHost], Endpoint] | None = None,
) -> Iterator[None]:
    """Observe ``bus``'s handling path with ``probe`` inside the block.

    ``wrap`` (optional) puts an endpoint of its own in front of each of the
    bus's endpoints, through the seam (the testing kit's fault injector).
    One instrument at a time.

    Raises:
        RuntimeError: another instrument is attached.
    """
    host = bus._host
    if host.probe is not None:
        raise RuntimeError("this bus is tracked by another session already: nest none")
    plans = bus._plans
    host.probe = probe
    if wrap is not None:
        bus._plans = plans.endpoints_replaced(lambda endpoint: wrap(endpoint, host))
    try:
        yield
    finally:
        host.probe = None
        bus._plans = plans
