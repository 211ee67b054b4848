"""``ActorSystem``: the root of a supervision tree, inside an ``async with``."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import final

import trio

from .._errors import SupervisorGaveUp, SystemClosed
from .._lifecycle import Restart
from .._structured import exit_nursery, raise_as_it_was, what_leaves
from ..actors import Actor, ActorFactory, ActorRef, Runtime
from ..mailbox import DEFAULT_DEAD_LETTER_CAPACITY, DeadLetterReason, DeadLetters, MailboxSpec
from ._spec import (
    DEFAULT_SHUTDOWN,
    Backoff,
    ChildSpec,
    Strategy,
    SupervisorSpec,
    check_intensity,
    check_name,
)
from ._supervisor import SupervisorCell, SupervisorRef
from ._tree import TreeNode


@final
class ActorSystem:
    """A supervision tree whose life is one ``async with`` block.

    ``async with ActorSystem(name="app") as system:`` starts the root
    supervisor (one_for_one, ``max_restarts`` within ``within`` seconds: by
    default OTP's 1 in 5 s); :meth:`spawn` puts actors under it. Leaving the
    block normally stops every actor in reverse start order, each handling
    its backlog within its shutdown deadline; what is left goes to dead
    letters. Leaving it by an exception or a cancellation stops everything at
    once and dead-letters what is queued. No task outlives the block.

    Raises (from the ``async with``):
        SupervisorGaveUp: the root supervisor exceeded its restart intensity
            (the last failure is chained); the body is cancelled.
    """

    def __init__(
        self,
        name: str = "triobus",
        *,
        max_restarts: int = 1,
        within: float = 5.0,
        backoff: Backoff | None = None,
        dead_letter_capacity: int = DEFAULT_DEAD_LETTER_CAPACITY,
        rng: random.Random | None = None,
    ) -> None:
        check_name(name)
        check_intensity(max_restarts, within)
        self.name = name
        #: Every message that could not be delivered, with the reason.
        self.dead_letters = DeadLetters(dead_letter_capacity)
        self._runtime = Runtime(name, self.dead_letters, rng or random.Random())
        self._root = SupervisorCell(
            self._runtime,
            self,
            name,
            f"/{name}",
            strategy=Strategy.ONE_FOR_ONE,
            max_restarts=max_restarts,
            within=within,
            backoff=backoff,
            restart=Restart.PERMANENT,
            shutdown=math.inf,
        )
        self._nursery_manager: AbstractAsyncContextManager[trio.Nursery] | None = None
        self._nursery: trio.Nursery | None = None
        self._failure: BaseException | None = None
        self._entered = False

    @property
    def random(self) -> random.Random:
        """The one source of randomness of the system (backoff jitter, fault draws)."""
        return self._runtime.random

    # ------------------------------------------------------------ life cycle

    async def __aenter__(self) -> ActorSystem:
        if self._entered:
            raise RuntimeError("an ActorSystem is entered once: make a new one")
        self._entered = True
        manager = trio.open_nursery()
        nursery = await manager.__aenter__()
        self._nursery_manager, self._nursery = manager, nursery
        nursery.start_soon(self._runtime.timer.run, name=f"/{self.name}:ask-timer")
        try:
            await self._root.start(nursery)
        except BaseException:
            nursery.cancel_scope.cancel()
            await manager.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        assert self._nursery is not None and self._nursery_manager is not None
        nursery, manager = self._nursery, self._nursery_manager
        stop_error: BaseException | None = None
        try:
            if exc is None and self._failure is None:
                await self._root.stop(final=True)
        except BaseException as error:  # cancelled while stopping: stop firmly
            stop_error = error
        # Everything left is a firm stop: cancel, wait for the tasks, and
        # dead-letter what is still queued.
        self._root.cancel()
        nursery.cancel_scope.cancel()
        internal = await exit_nursery(manager)
        self._nursery = None
        self._root.finalize(DeadLetterReason.SHUTDOWN, self._failure)
        leaving = what_leaves(exc or stop_error, internal, self._failure)
        if leaving is not None:
            raise_as_it_was(leaving)
        if exc is None and stop_error is not None:
            raise stop_error
        return False

    def child_exited(self, child: object, incarnation: int, error: BaseException | None) -> None:
        # Only the root reports here: it gave up (or ended), so the system ends.
        self._failure = error or SupervisorGaveUp(
            f"the root supervisor /{self.name} ended", f"/{self.name}"
        )
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def remove_child(self, child: object) -> None:
        raise RuntimeError("the root supervisor cannot be removed: leave the async with")

    # ------------------------------------------------------------ the API

    @property
    def root(self) -> SupervisorRef:
        """The root supervisor (one_for_one)."""
        return self._root.ref

    def _running_root(self) -> SupervisorRef:
        if self._nursery is None:
            raise SystemClosed(
                f"actor system {self.name!r} is not running: use 'async with ActorSystem(...)'"
            )
        return self._root.ref

    async def spawn(
        self,
        factory: ActorFactory | type[Actor],
        *,
        name: str,
        mailbox: MailboxSpec | None = None,
        max_concurrency: int = 1,
        restart: Restart | str = Restart.PERMANENT,
        shutdown: float = DEFAULT_SHUTDOWN,
    ) -> ActorRef:
        """Start an actor under the root supervisor; see :meth:`SupervisorRef.spawn`."""
        return await self._running_root().spawn(
            factory,
            name=name,
            mailbox=mailbox,
            max_concurrency=max_concurrency,
            restart=restart,
            shutdown=shutdown,
        )

    async def spawn_supervisor(
        self,
        name: str,
        *,
        strategy: Strategy | str = Strategy.ONE_FOR_ONE,
        max_restarts: int = 1,
        within: float = 5.0,
        backoff: Backoff | None = None,
        restart: Restart | str = Restart.PERMANENT,
        shutdown: float = math.inf,
        children: Iterable[ChildSpec | SupervisorSpec] = (),
    ) -> SupervisorRef:
        """Start a supervisor under the root, with its ``children`` started in order.

        See :meth:`SupervisorRef.spawn_supervisor`.
        """
        return await self._running_root().spawn_supervisor(
            name,
            strategy=strategy,
            max_restarts=max_restarts,
            within=within,
            backoff=backoff,
            restart=restart,
            shutdown=shutdown,
            children=children,
        )

    def tree(self) -> TreeNode:
        """A snapshot of the whole supervision tree; ``print`` shows it indented."""
        return self._root.snapshot()

    def __repr__(self) -> str:
        state = "running" if self._nursery is not None else "not running"
        return f"<ActorSystem {self.name!r} {state}>"
