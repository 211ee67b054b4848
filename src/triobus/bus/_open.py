"""``open_bus``: wire modules, endpoints and routes, then run the bus.

Wiring is checked as a whole before any endpoint starts: every mistake is
reported in one :class:`WiringError`.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import final

import trio

from .._errors import PipelineBehaviorAlreadyRegistered, WiringError
from .._structured import exit_nursery, raise_as_it_was, what_leaves
from ..supervision import ActorSystem, SupervisorRef
from ._accounting import Accounting
from ._bus import DEFAULT_DRAIN_TIMEOUT, DEFAULT_INVOKE_TIMEOUT, MessageBus
from ._envelope import default_id_factory
from ._handlers import Callee
from ._handling import BusHost
from ._messages import (
    Event,
    Identity,
    NameDetector,
    describe,
    is_command,
    message_version,
    short_repr,
    type_name,
)
from ._module import EventBinding, Module, RequestBinding
from ._plans import PlanTable
from ._plugins import Plugins
from ._routing import (
    DEFAULT_ENDPOINT,
    DEFAULT_REQUEST_ENDPOINT,
    Route,
    default_endpoints,
)
from ._seam import Endpoint, Plan, PlanKind, Step, takes_remote_routes

#: Seconds a firm stop may take (cancel the endpoints, dead-letter their backlog).
FIRM_STOP_LIMIT = 5.0


@final
class _Wiring:
    """The checked configuration: endpoints, bindings and routes."""

    def __init__(
        self,
        modules: Sequence[Module],
        endpoints: Iterable[Endpoint],
        routing: Iterable[Route],
        pipeline: Iterable[object],
    ) -> None:
        problems: list[str] = []
        self.modules = list(modules)
        self.endpoints: dict[str, Endpoint] = {e.uri: e for e in default_endpoints()}
        declared: set[str] = set()
        for endpoint in endpoints:
            if not isinstance(endpoint, Endpoint):
                problems.append(
                    f"{endpoint!r} is not an endpoint: declare it with local_queue() "
                    "(or implement the Endpoint protocol)"
                )
                continue
            if endpoint.uri in declared:
                problems.append(f"endpoint {endpoint.uri!r} is declared twice")
            declared.add(endpoint.uri)
            self.endpoints[endpoint.uri] = endpoint
        self.pipeline: list[Callee] = []
        for behavior in pipeline:
            callee = Callee(behavior, behavior=True)
            if callee in self.pipeline:
                raise PipelineBehaviorAlreadyRegistered(
                    f"global behavior {callee.label} is listed twice in pipeline=: list it once"
                )
            self.pipeline.append(callee)
        self.requests: dict[Identity, RequestBinding] = {}
        self.events: dict[Identity, list[EventBinding]] = {}
        self._check_modules(problems)
        self.type_routes: dict[str, str] = {}
        self.module_routes: dict[int, str] = {}
        #: Classes routed to a cross-process endpoint with no handler here.
        self.remote: list[type] = []
        self._check_routes(routing, problems)
        if problems:
            raise WiringError(problems)

    def _check_modules(self, problems: list[str]) -> None:
        names: set[str] = set()
        classes: dict[Identity, type] = {}
        for module in self.modules:
            if not isinstance(module, Module):
                problems.append(f"{module!r} is not a Module")
                continue
            if module.name in names:
                problems.append(f"two modules are named {module.name!r}")
            names.add(module.name)
            bindings: list[RequestBinding | EventBinding] = list(module.requests.values())
            for subscribers in module.events.values():
                bindings.extend(subscribers)
            for binding in bindings:
                if isinstance(binding.target, type):
                    seen = classes.setdefault(binding.identity, binding.target)
                    if seen is not binding.target:
                        problems.append(
                            f"{describe(seen)} and {describe(binding.target)} share the identity "
                            f"{binding.identity}: give one its own message_name or version"
                        )
            for identity, request in module.requests.items():
                if identity in self.requests:
                    other = self.requests[identity]
                    problems.append(
                        f"{describe(request.target)} has a handler in module "
                        f"{other.module.name!r} ({other.handler.label}) and in "
                        f"{module.name!r} ({request.handler.label}): "
                        "a request has exactly one handler"
                    )
                    continue
                if identity in self.events:
                    problems.append(
                        f"{short_repr(identity[0])} is bound both as a request and as an event"
                    )
                self.requests[identity] = request
            for identity, subscribers in module.events.items():
                if identity in self.requests:
                    problems.append(
                        f"{short_repr(identity[0])} is bound both as a request and as an event"
                    )
                self.events.setdefault(identity, []).extend(subscribers)

    def _check_routes(self, routing: Iterable[Route], problems: list[str]) -> None:
        bound_names = {identity[0] for identity in (*self.requests, *self.events)}
        for route in routing:
            if not isinstance(route, Route):
                problems.append(f"{route!r} is not a route: use route(T).to(uri)")
                continue
            if route.uri not in self.endpoints:
                problems.append(
                    f"a route goes to {route.uri!r}, which is not declared: add "
                    f"local_queue({route.uri!r}) to endpoints="
                )
            if route.module is not None:
                if all(route.module is not m for m in self.modules):
                    problems.append(
                        f"route_module({route.module.name!r}) names a module the bus was not given"
                    )
                key = id(route.module)
                if key in self.module_routes and self.module_routes[key] != route.uri:
                    problems.append(f"module {route.module.name!r} is routed to two endpoints")
                self.module_routes[key] = route.uri
                continue
            assert route.message_type is not None
            name = (
                route.message_type
                if isinstance(route.message_type, str)
                else type_name(route.message_type)
            )
            if name not in bound_names:
                endpoint = self.endpoints.get(route.uri)
                if endpoint is None or not takes_remote_routes(endpoint):
                    problems.append(
                        f"{describe(route.message_type)} is routed to {route.uri!r} but no module "
                        "binds a handler for it"
                    )
                elif not isinstance(route.message_type, type):
                    problems.append(
                        f"{describe(route.message_type)} is routed to {route.uri!r}, handled in "
                        "another process: route it by its class, route(T).to(uri), so its "
                        "messages can be encoded and decoded"
                    )
                elif route.message_type not in self.remote:
                    self.remote.append(route.message_type)
            if name in self.type_routes and self.type_routes[name] != route.uri:
                problems.append(f"{describe(route.message_type)} is routed to two endpoints")
            self.type_routes[name] = route.uri

    def endpoint_for(
        self, identity: Identity, module: Module, target: type | str, event: bool
    ) -> str:
        uri = self.type_routes.get(identity[0]) or self.module_routes.get(id(module))
        if uri is not None:
            return uri
        if event or is_command(target):
            return DEFAULT_ENDPOINT
        return DEFAULT_REQUEST_ENDPOINT


def _make_plans(
    bus: MessageBus,
    host: BusHost,
    table: PlanTable,
    wiring: _Wiring,
    new_id: Callable[[], str],
) -> None:
    endpoints = wiring.endpoints
    for identity, binding in wiring.requests.items():
        uri = wiring.endpoint_for(identity, binding.module, binding.target, event=False)
        step = Step(
            binding.handler, (*wiring.pipeline, *binding.behaviors), module=binding.module.name
        )
        table.requests[identity] = Plan(
            bus, new_id, identity[0], identity[1], PlanKind.REQUEST, endpoints[uri], [step], host
        )
    for identity, subscribers in wiring.events.items():
        grouped: dict[str, list[Step]] = {}
        for subscriber in subscribers:
            uri = wiring.endpoint_for(identity, subscriber.module, subscriber.target, event=True)
            grouped.setdefault(uri, []).append(
                Step(
                    subscriber.handler,
                    (*wiring.pipeline, *subscriber.behaviors),
                    module=subscriber.module.name,
                )
            )
        table.events[identity] = tuple(
            Plan(bus, new_id, identity[0], identity[1], PlanKind.EVENT, endpoints[uri], steps, host)
            for uri, steps in grouped.items()
        )
    for cls in wiring.remote:
        # Handled in another process: a plan without steps, on the endpoint that carries it.
        identity = (type_name(cls), message_version(cls))
        endpoint = endpoints[wiring.type_routes[identity[0]]]
        if issubclass(cls, Event):
            plans = table.events.get(identity, ())
            if all(plan.endpoint is not endpoint for plan in plans):
                remote = Plan(bus, new_id, *identity, PlanKind.EVENT, endpoint, [], host)
                table.events[identity] = (*plans, remote)
        elif identity not in table.requests:
            table.requests[identity] = Plan(
                bus, new_id, *identity, PlanKind.REQUEST, endpoint, [], host
            )


def trio_wall_clock() -> Callable[[], float]:
    """Seconds since the epoch: the system clock now, then advanced by trio's clock."""
    anchor = time.time() - trio.current_time()
    return lambda: anchor + trio.current_time()


@final
class BusRunner:
    """The ``async with`` of :func:`open_bus`."""

    def __init__(
        self,
        modules: Sequence[Module],
        *,
        endpoints: Iterable[Endpoint],
        routing: Iterable[Route],
        pipeline: Iterable[object],
        system: ActorSystem | None,
        name: str,
        name_detector: NameDetector | None,
        collect_listener_exceptions: bool,
        drain_timeout: float,
        invoke_timeout: float | None,
        id_factory: Callable[[], str] | None,
        rng: random.Random | None,
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        self._wiring = _Wiring(modules, endpoints, routing, pipeline)
        self._system = system
        self._own_system: ActorSystem | None = None
        self._name = name
        self._detector = name_detector
        self._collect = collect_listener_exceptions
        self._drain_timeout = drain_timeout
        self._invoke_timeout = invoke_timeout
        self._id_factory = id_factory
        self._rng = rng
        self._wall_clock = wall_clock
        self._bus: MessageBus | None = None
        self._host: BusHost | None = None
        self._plans: PlanTable | None = None
        self._supervisor: SupervisorRef | None = None
        self._nursery_manager: AbstractAsyncContextManager[trio.Nursery] | None = None
        self._nursery: trio.Nursery | None = None
        #: Endpoints started so far, in start order.
        self._started: list[Endpoint] = []
        self._frozen = False

    async def __aenter__(self) -> MessageBus:
        system = self._system
        if system is None:
            system = self._own_system = ActorSystem(
                "triobus", max_restarts=10, within=5.0, rng=self._rng
            )
            await system.__aenter__()
        try:
            return await self._start(system)
        except BaseException as exc:
            await self._undo_start()
            if self._own_system is not None:
                await self._own_system.__aexit__(type(exc), exc, exc.__traceback__)
            raise

    async def _start(self, system: ActorSystem) -> MessageBus:
        for module in self._wiring.modules:
            module._freeze()
        self._frozen = True
        host = self._host = BusHost(
            Accounting(),
            system.dead_letters,
            self._rng or system.random,
            Plugins(),
            self._wall_clock or trio_wall_clock(),
        )
        plans = self._plans = PlanTable(self._detector)
        new_id = self._id_factory or default_id_factory()
        bus = self._bus = MessageBus(
            host=host,
            plans=plans,
            id_factory=new_id,
            pipeline=tuple(self._wiring.pipeline),
            collect_listener_exceptions=self._collect,
            invoke_timeout=self._invoke_timeout,
        )
        self._supervisor = await system.spawn_supervisor(self._name, max_restarts=10, within=5.0)
        manager = self._nursery_manager = trio.open_nursery()
        self._nursery = await manager.__aenter__()
        host.attach(self._supervisor, self._nursery)
        await self._nursery.start(host.outbox.run)
        bus.endpoints = dict(self._wiring.endpoints)
        _make_plans(bus, host, plans, self._wiring, new_id)
        host.plans = plans
        host.modules = tuple(self._wiring.modules)
        host.remote_types = tuple(self._wiring.remote)
        for endpoint in self._wiring.endpoints.values():
            await endpoint.start(host)
            self._started.append(endpoint)
        bus._opened(trio.lowlevel.current_trio_token())
        plans.open = host.open = True
        return bus

    async def _stop_endpoints(self) -> None:
        """Stop the started endpoints for good, in reverse order, then the bus's supervisor."""
        assert self._supervisor is not None
        while self._started:
            await self._started.pop().stop()
        await self._supervisor.stop()

    async def _firm_stop(self) -> None:
        """Cancel every endpoint at once, then stop them (their backlog is dead-lettered)."""
        with trio.CancelScope(shield=True, deadline=trio.current_time() + FIRM_STOP_LIMIT):
            if self._supervisor is not None:
                self._supervisor.cancel()
                await self._stop_endpoints()

    async def _undo_start(self) -> None:
        if self._plans is not None:
            self._plans.close()
        if self._host is not None:
            self._host.open = False
        await self._firm_stop()
        if self._nursery_manager is not None:
            assert self._nursery is not None
            with trio.CancelScope(shield=True, deadline=trio.current_time() + FIRM_STOP_LIMIT):
                self._nursery.cancel_scope.cancel()
                await exit_nursery(self._nursery_manager)
        self._thaw()

    def _thaw(self) -> None:
        if self._frozen:
            self._frozen = False
            for module in self._wiring.modules:
                module._thaw()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        bus, plans, manager = self._bus, self._plans, self._nursery_manager
        assert bus is not None and plans is not None and manager is not None
        assert self._nursery is not None
        host = self._host
        assert host is not None
        stop_error: BaseException | None = None
        try:
            if exc is None:
                with trio.move_on_after(self._drain_timeout):
                    await bus.wait_quiet()
                plans.close()
                host.open = False
                await self._stop_endpoints()
        except BaseException as error:
            stop_error = error
        plans.close()
        host.open = False
        if exc is not None or stop_error is not None:
            await self._firm_stop()
        self._nursery.cancel_scope.cancel()
        internal = await exit_nursery(manager)
        self._nursery = None
        self._thaw()
        failure = exc or stop_error
        if self._own_system is not None:
            await self._own_system.__aexit__(
                type(failure) if failure else None,
                failure,
                failure.__traceback__ if failure else None,
            )
        leaving = what_leaves(failure, internal, None)
        if leaving is not None:
            raise_as_it_was(leaving)
        if exc is None and stop_error is not None:
            raise stop_error
        return False


def open_bus(
    *modules: Module,
    endpoints: Iterable[Endpoint] = (),
    routing: Iterable[Route] = (),
    pipeline: Iterable[object] = (),
    system: ActorSystem | None = None,
    name: str = "bus",
    name_detector: NameDetector | None = None,
    collect_listener_exceptions: bool = False,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    invoke_timeout: float | None = DEFAULT_INVOKE_TIMEOUT,
    id_factory: Callable[[], str] | None = None,
    rng: random.Random | None = None,
    wall_clock: Callable[[], float] | None = None,
) -> BusRunner:
    """Wire ``modules`` and run a bus: ``async with open_bus(orders) as bus: ...``.

    Args:
        endpoints: declared endpoints (see :func:`local_queue`); ``"default"``
            (commands and events, in order) and ``"requests"`` (up to 100
            requests at once) exist unless redeclared.
        routing: ``route(T).to(uri)`` and ``route_module(M).to(uri)``.
        pipeline: global behaviors, the first outermost, around every handler.
        system: run the endpoints under this actor system (else a private one).
        name: the name of the bus's supervisor under the system's root.
        name_detector: names messages first; ``None`` falls back to the default rule.
        collect_listener_exceptions: ``publish`` runs every handler as an ask,
            waits for all and raises one ``ExceptionGroup`` of the failures.
        drain_timeout: how long leaving the block waits for the bus to be quiet.
        invoke_timeout: the default ``invoke`` timeout (``None``: none).
        id_factory: makes message ids (default: random prefix and counter).
        rng: the randomness of jitter and ids' choices (default: the system's).
        wall_clock: seconds since the epoch, for scheduled delivery and
            retries. By default the system clock read once at start plus
            trio's clock since, so waits follow trio's clock (``MockClock``
            included) and a moment is never reached early.

    Raises:
        WiringError: every wiring mistake, at once, before anything starts.
    """
    if not drain_timeout >= 0 or math.isnan(drain_timeout):
        raise ValueError(f"drain_timeout must be >= 0 seconds, got {drain_timeout!r}")
    return BusRunner(
        modules,
        endpoints=endpoints,
        routing=routing,
        pipeline=pipeline,
        system=system,
        name=name,
        name_detector=name_detector,
        collect_listener_exceptions=collect_listener_exceptions,
        drain_timeout=drain_timeout,
        invoke_timeout=invoke_timeout,
        id_factory=id_factory,
        rng=rng,
        wall_clock=wall_clock,
    )
